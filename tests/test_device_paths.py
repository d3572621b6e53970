"""The CPU-testable half of the GPU paths: recurrence precision under autocast, sorted packing, no
per-forward weight flattening, the out-of-memory back-off of translation, and a training step that
reads nothing back from the device. The CUDA half is tests/test_cuda.py."""

from __future__ import annotations

import gc
import sys
import weakref

import pytest
import torch
from torch import nn

import seq2seq.model.encoder as encoder_module
from seq2seq.decoding import search
from seq2seq.config import ModelConfig, SearchConfig, section
from seq2seq.data.batching import collate, token_budget_batches
from seq2seq.model import Seq2Seq
from seq2seq.model.precision import precision_dtype
from seq2seq.decoding.translator import Translator

from .helpers import TINY, compose_train

PAD, BOS, EOS = 0, 2, 3


def tiny_model(cell="lstm", input_feed=False, attention="luong_general", seed=0) -> Seq2Seq:
    cfg = section(ModelConfig, dict(cell=cell, embedding_size=8, encoder_hidden_size=6, decoder_hidden_size=8,
                                    encoder_layers=2, decoder_layers=1, attention=attention, attention_size=6,
                                    input_feed=input_feed, dropout=0.0, rnn_dropout=0.0), "model")
    torch.manual_seed(seed)
    return Seq2Seq(cfg, src_vocab_size=12, tgt_vocab_size=12, pad_id=PAD, bos_id=BOS, eos_id=EOS).eval()


def examples(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(i, torch.randint(4, 12, (s,), generator=g).tolist(), torch.randint(4, 12, (t,), generator=g).tolist())
            for i, (s, t) in enumerate(lengths)]


def rnn_output_dtypes(model: nn.Module) -> tuple[list[torch.dtype], list]:
    """Record the dtype of every RNN call's output (packed outputs: their data)."""
    seen: list[torch.dtype] = []

    def hook(module, args, output):
        out = output[0]
        seen.append((out.data if isinstance(out, nn.utils.rnn.PackedSequence) else out).dtype)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.RNNBase)]
    return seen, handles


# ---------------------------------------------------------------------- defect 1: recurrence precision
@pytest.mark.parametrize("input_feed", [False, True], ids=["one-call", "input-feed"])
def test_rnns_run_in_float32_under_bf16_autocast(input_feed):
    """CPU autocast runs oneDNN's LSTM in bfloat16 (CUDA autocast would run cuDNN's in float16): the
    encoder, the decoder in both forms and the search steps must still run their recurrence in float32.
    Mutation: `run_rnn` calling `rnn(inputs, hx)` under autocast -> bfloat16 outputs, fails."""
    model = tiny_model(input_feed=input_feed)
    batch = collate(examples([(5, 4), (3, 6), (2, 2)]))
    seen, handles = rnn_output_dtypes(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(batch.src, batch.src_lengths, batch.src_mask, batch.tgt_in)
        loss = nn.functional.cross_entropy(logits.float().transpose(1, 2), batch.tgt_out, ignore_index=PAD)
        hyps = search.greedy(model, batch.src, batch.src_lengths, batch.src_mask, max_len_a=0, max_len_b=2)
    for h in handles:
        h.remove()
    assert torch.isfinite(loss) and len(hyps) == 3
    assert logits.dtype == torch.bfloat16  # the output layer does run under autocast
    assert len(seen) > 3 and set(seen) == {torch.float32}, seen


def test_precision_dtype_maps_every_accepted_precision():
    assert precision_dtype("32-true", "cuda") is None
    assert precision_dtype("bf16-mixed", "cuda") == torch.bfloat16
    assert precision_dtype("16-mixed", "cuda") == torch.float16
    assert precision_dtype("16-mixed", "cpu") == torch.bfloat16  # Lightning runs 16-mixed as bf16 on the CPU


# ---------------------------------------------------------------------- defect 3: sorted packing, flattening
def test_batches_are_sorted_by_source_length_and_keep_their_example_indices():
    exs = examples([(2, 3), (6, 2), (4, 4), (6, 5), (1, 1)])
    batch = collate(exs)
    assert batch.src_lengths.tolist() == [7, 7, 5, 3, 2]  # + EOS, decreasing
    assert batch.indices.tolist() == [1, 3, 2, 0, 4]  # ties keep their order
    for row, i in enumerate(batch.indices.tolist()):  # every row still pairs its own source and target
        assert batch.src[row, :len(exs[i][1])].tolist() == exs[i][1]
        assert batch.tgt_out[row, :len(exs[i][2])].tolist() == exs[i][2]
    lengths = torch.tensor([3, 9, 4, 9, 1, 5]).numpy()
    for group in token_budget_batches(lengths, None, 30):
        assert [lengths[i] for i in group] == sorted((lengths[i] for i in group), reverse=True)


def test_sorted_batches_pack_without_sorting_and_unsorted_ones_still_work(monkeypatch):
    """Mutation: packing with enforce_sorted=False always -> the first assertion fails."""
    calls = []
    original = encoder_module.pack_padded_sequence

    def spy(*args, **kwargs):
        calls.append(kwargs["enforce_sorted"])
        return original(*args, **kwargs)

    monkeypatch.setattr(encoder_module, "pack_padded_sequence", spy)
    model = tiny_model()
    batch = collate(examples([(5, 4), (3, 6), (2, 2)]))
    sorted_logits = model(batch.src, batch.src_lengths, batch.src_mask, batch.tgt_in)
    perm = torch.tensor([2, 0, 1])
    unsorted_logits = model(batch.src[perm], batch.src_lengths[perm], batch.src_mask[perm], batch.tgt_in[perm])
    assert calls == [True, False]
    torch.testing.assert_close(unsorted_logits, sorted_logits[perm])


def test_forward_and_search_do_not_reflatten_rnn_weights(monkeypatch):
    """flatten_parameters re-allocates and copies every RNN weight: once after moving, never per call.
    Mutation: the per-forward `self.rnn.flatten_parameters()` put back in Encoder.forward -> fails."""
    model = tiny_model()
    calls = []
    monkeypatch.setattr(nn.RNNBase, "flatten_parameters", lambda self: calls.append(self))
    batch = collate(examples([(5, 4), (3, 6)]))
    model(batch.src, batch.src_lengths, batch.src_mask, batch.tgt_in)
    search.beam_search(model, batch.src, batch.src_lengths, batch.src_mask, beam_size=2, length_penalty=1.0,
                       max_len_a=0, max_len_b=2)
    assert calls == []
    model.flatten_parameters()
    assert len(calls) == 2  # the explicit call reaches both RNNs


# ---------------------------------------------------------------------- defect 2: OOM back-off
class FakeTokenizer:
    src_vocab_size = tgt_vocab_size = 12

    def encode_src(self, lines):
        return [[4 + (ord(c) % 8) for c in line.split()[0]] for line in lines]

    def decode_tgt(self, ids):
        return [" ".join(map(str, seq)) for seq in ids]


def test_out_of_memory_retry_runs_after_the_failed_attempt_is_freed(monkeypatch):
    """An injected OutOfMemoryError on the whole batch: the halves are retried only once the failed
    attempt's tensors are gone, and the output equals an undisturbed run. Mutation: the retry inside
    the `except` block (the old code) -> the weakref is still alive at the retry, fails."""
    model = tiny_model()
    cfg = SearchConfig(beam_size=1, batch_tokens=10_000, max_len_a=0, max_len_b=2)
    lines = ["abc x", "defgh y", "ij z", "klmnop w"]
    expected = [t.text for t in Translator(model, FakeTokenizer(), cfg).translate(lines)]

    original = Translator._search
    state = {"ref": None, "alive_at_retry": []}

    def flaky(self, seqs, nbest, generator, attention):
        if len(seqs) == len(lines):  # the first, whole-batch attempt
            workspace = torch.zeros(1000)  # what the failed attempt had allocated
            state["ref"] = weakref.ref(workspace)
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        if state["ref"] is not None:
            gc.collect()  # only reference cycles; a live traceback would still hold the tensor
            state["alive_at_retry"].append(state["ref"]() is not None)
        return original(self, seqs, nbest, generator, attention)

    monkeypatch.setattr(Translator, "_search", flaky)
    got = [t.text for t in Translator(model, FakeTokenizer(), cfg).translate(lines)]
    assert got == expected
    assert state["alive_at_retry"] == [False, False]  # both halves ran after the tensor was freed


def test_out_of_memory_on_a_single_sentence_is_raised(monkeypatch):
    def oom(self, *args):
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(Translator, "_search", oom)
    with pytest.raises(torch.OutOfMemoryError):
        Translator(tiny_model(), FakeTokenizer(), SearchConfig(beam_size=1)).translate(["abc"])


# ---------------------------------------------------------------------- defect 3: no host reads per step
HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy")
# Host tensors by contract: the encoder's sortedness check reads src_lengths (CPU); collate builds batches
# from host data in the DataLoader.
ALLOWED = {("encoder.py", "forward"), ("batching.py", "_pad"), ("batching.py", "collate")}
ORIGINAL_READS = {name: getattr(torch.Tensor, name) for name in HOST_READS}


class HostReadCounter:
    """Lightning callback (added as `+callbacks.reads`): from the 2nd to the 5th training batch, wraps
    the Tensor methods that turn a tensor into a Python value and records the calls made by our code."""

    seen: list[tuple[str, str, str]] = []
    ran = False

    def __init__(self):
        import lightning.pytorch as pl
        self.__class__ = type("HostReadCounterCallback", (HostReadCounter, pl.Callback), {})
        self.originals = ORIGINAL_READS

    def _wrap(self, name):
        original = self.originals[name]

        def read(tensor, *args, **kwargs):
            frame = sys._getframe(1)  # the caller: our code reading a tensor directly
            path = frame.f_code.co_filename.replace("\\", "/")
            where = (path.rsplit("/", 1)[-1], frame.f_code.co_name)
            if "/seq2seq/" in path and where not in ALLOWED:
                HostReadCounter.seen.append((name, *where))
            return original(tensor, *args, **kwargs)

        return read

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 1:  # the first step builds the skip counters and the optimiser state
            for name in HOST_READS:
                setattr(torch.Tensor, name, self._wrap(name))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == 4:
            for name, original in self.originals.items():
                setattr(torch.Tensor, name, original)
            HostReadCounter.ran = True


def test_training_steps_read_nothing_back_from_the_device(tmp_path, multi30k_dir):
    """Between two logging steps, no code of ours turns a tensor into a Python value (on a GPU each
    such read waits for the device). Counted on the CPU by wrapping the Tensor methods that do it; the
    CUDA test checks the same under torch.cuda.set_sync_debug_mode('error'). Mutations: the old
    guard's `if float(flag) > 0` in StepGuard.on_before_optimizer_step, reading the skip counters every
    step (dropping the log_every_n_steps test in StepGuard.on_train_batch_end), or the schedule reading
    the applied-update count as a number (`float(step)` in WarmupDecayPlateau.get_lr) -> fails."""
    from seq2seq.training.run import train

    HostReadCounter.seen, HostReadCounter.ran = [], False
    cfg = compose_train([*TINY, "test_after_training=false", "trainer.max_steps=6", "trainer.val_check_interval=6",
                         "trainer.log_every_n_steps=100", "data.max_valid_pairs=4", "batching.max_tokens=300",
                         f"paths.data_dir={tmp_path / 'data'}",
                         f"+callbacks.reads._target_={__name__}.HostReadCounter"], tmp_path / "run")
    try:
        train(cfg)
    finally:
        for name in HOST_READS:  # never leave the wrappers installed
            setattr(torch.Tensor, name, ORIGINAL_READS[name])
    assert HostReadCounter.ran, "the probe never ran"
    assert HostReadCounter.seen == []


def test_the_progress_bar_refreshes_at_the_logging_rate(tmp_path):
    """Each refresh of the progress bar reads the logged loss back from the device: it refreshes every
    log_every_n_steps, not every step. Mutation: the refresh-rate line removed from on_fit_start -> 1."""
    from types import SimpleNamespace

    import lightning.pytorch as pl

    from seq2seq.config import OptimConfig, SchedulerConfig, ValidationConfig
    from seq2seq.training.module import TranslationModule

    model = section(ModelConfig, dict(cell="gru", embedding_size=8, encoder_hidden_size=6, decoder_hidden_size=8,
                                      encoder_layers=1, attention_size=6), "model")
    module = TranslationModule(model, OptimConfig(), SchedulerConfig(), SearchConfig(), ValidationConfig(),
                               tokenizer=SimpleNamespace(src_vocab_size=12, tgt_vocab_size=12), run_config={})
    trainer = pl.Trainer(accelerator="cpu", log_every_n_steps=7, enable_progress_bar=True, logger=False,
                         enable_checkpointing=False, default_root_dir=tmp_path,
                         callbacks=[pl.callbacks.TQDMProgressBar()])  # the bar build_trainer always gives
    module.trainer = trainer
    module.on_fit_start()
    assert trainer.progress_bar_callback.refresh_rate == 7
