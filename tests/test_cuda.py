"""The CUDA tier: runs wherever a GPU is visible (`pytest -m cuda`; scripts/gpu/check.sh stage a) and
skips elsewhere. Tiny models, seconds each. The CPU half of these checks is tests/test_device_paths.py."""

from __future__ import annotations

import os
import weakref
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from seq2seq.decoding import search
from seq2seq.config import SearchConfig
from seq2seq.data.batching import collate
from seq2seq.model.precision import precision_dtype
from seq2seq.decoding.translator import Translator

from .test_device_paths import FakeTokenizer, examples, rnn_output_dtypes, tiny_model

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible (torch.cuda.is_available() is False)")]

CUDA = torch.device("cuda")


def cuda_batch(lengths=((6, 5), (4, 7), (3, 3), (2, 4))):
    return collate(examples(list(lengths))).to(CUDA)


def loss_of(model, batch):
    logits = model(batch.src, batch.src_lengths, batch.src_mask, batch.tgt_in)
    return nn.functional.cross_entropy(logits.float().transpose(1, 2), batch.tgt_out, ignore_index=0), logits


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("input_feed", [False, True], ids=["one-call", "input-feed"])
def test_rnns_run_in_float32_and_the_rest_in_the_autocast_dtype(precision, input_feed):
    """cuDNN's autocast wrapper would run every RNN in float16 whatever the autocast dtype."""
    model = tiny_model(input_feed=input_feed).to(CUDA)
    batch = cuda_batch()
    dtype = precision_dtype(precision, "cuda")
    seen, handles = rnn_output_dtypes(model)
    with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
        loss, logits = loss_of(model, batch)
        search.greedy(model.eval(), batch.src, batch.src_lengths, batch.src_mask, max_len_a=0, max_len_b=2)
    for h in handles:
        h.remove()
    assert set(seen) == {torch.float32}
    assert logits.dtype == (dtype or torch.float32)
    assert torch.isfinite(loss)


def test_16_mixed_has_a_working_grad_scaler(tmp_path):
    import lightning.pytorch as pl

    trainer = pl.Trainer(accelerator="gpu", devices=1, precision="16-mixed", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path)
    scaler = trainer.precision_plugin.scaler
    assert isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled()
    model = tiny_model().to(CUDA).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(5):  # the first steps may overflow at the initial scale and be skipped: that is its job
        with torch.autocast("cuda", dtype=torch.float16):
            loss, _ = loss_of(model, cuda_batch())
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert 0 < scaler.get_scale() < float("inf")


def test_cpu_and_cuda_agree_in_fp32():
    saved = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")  # exact fp32 on both sides
    torch.backends.cudnn.allow_tf32 = False
    try:
        cpu_model = tiny_model()
        gpu_model = tiny_model().to(CUDA)
        batch = collate(examples([(6, 5), (4, 7), (3, 3)]))
        cpu_loss, _ = loss_of(cpu_model, batch)
        gpu_loss, _ = loss_of(gpu_model, batch.to(CUDA))
        torch.testing.assert_close(gpu_loss.cpu(), cpu_loss, rtol=1e-4, atol=1e-5)
        kw = dict(max_len_a=0, max_len_b=2)
        cpu_out = search.greedy(cpu_model, batch.src, batch.src_lengths, batch.src_mask, **kw)
        g = batch.to(CUDA)
        gpu_out = search.greedy(gpu_model, g.src, g.src_lengths, g.src_mask, **kw)
        assert [h.tokens for h in gpu_out] == [h.tokens for h in cpu_out]
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cudnn.allow_tf32 = saved[1]


def test_bf16_training_follows_fp32_training():
    losses = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        model = tiny_model(seed=3).to(CUDA).train()
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        batch = cuda_batch()
        for _ in range(30):
            with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
                loss, _ = loss_of(model, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
        losses[name] = float(loss)
    assert abs(losses["bf16"] - losses["fp32"]) < 0.05 * losses["fp32"] + 0.05, losses


# ---------------------------------------------------------------------- no host syncs
def test_a_training_step_does_not_sync(tmp_path):
    """Forward, loss, backward, the non-finite guard, a fused Adam step and the learning-rate schedule
    (a device tensor following the applied updates) under sync debug mode."""
    from seq2seq.config import ModelConfig, OptimConfig, SchedulerConfig, ValidationConfig, section
    from seq2seq.training.module import TranslationModule
    from seq2seq.training.schedule import WarmupDecayPlateau

    model_cfg = section(ModelConfig, dict(cell="lstm", embedding_size=8, encoder_hidden_size=6, decoder_hidden_size=8,
                                          encoder_layers=2, attention_size=6, dropout=0.1, rnn_dropout=0.0), "model")
    module = TranslationModule(model_cfg, OptimConfig(), SchedulerConfig(), SearchConfig(), ValidationConfig(),
                               tokenizer=SimpleNamespace(src_vocab_size=12, tgt_vocab_size=12), run_config={}).to(CUDA)
    module._trainer = SimpleNamespace(world_size=1, precision_plugin=SimpleNamespace(), training=True)
    module.log = lambda *args, **kwargs: None
    opt = torch.optim.Adam(module.parameters(), lr=torch.tensor(1e-3, device=CUDA), fused=True)
    sched = WarmupDecayPlateau(opt, SchedulerConfig(), 0, "bleu")
    batch = cuda_batch()

    def step():
        loss = module.training_step(batch, 0)
        loss.backward()
        module.step_guard.on_before_optimizer_step(module._trainer, module, opt)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up: cuDNN/cuBLAS handles, optimiser state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            step()
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_a_decoding_step_does_not_sync():
    """Decoder steps queue without waiting; search syncs only every `sync_every` steps (not tested here)."""
    model = tiny_model().to(CUDA).eval()
    batch = cuda_batch()
    with torch.inference_mode():
        state = model.init_state(batch.src, batch.src_lengths, batch.src_mask)
        tokens = torch.full((len(batch),), model.bos_id, device=CUDA)
        model.step(tokens, state)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(3):
                log_probs, state, _ = model.step(tokens, state)
                tokens = log_probs.argmax(-1)
            order = torch.arange(len(batch), device=CUDA).flip(0)
            state = model.reorder_state(state, order, sources=order)
        finally:
            torch.cuda.set_sync_debug_mode(0)


def count_syncs(fn) -> int:
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchronizing" in str(w.message) for w in caught)


def test_greedy_search_syncs_only_every_sync_every_steps():
    """Search copies the finished flags to the host every `sync_every` steps, plus a few copies when it
    starts and ends; never once per step."""
    model = tiny_model().to(CUDA).eval()
    batch = cuda_batch()
    # min_len holds EOS back for 32 steps: the untrained model would otherwise end every row at once
    # (then both counts are the start-and-end copies alone, and the test proves nothing).
    kw = dict(max_len_a=40, max_len_b=0, min_len=32)
    with torch.inference_mode():
        search.greedy(model, batch.src, batch.src_lengths, batch.src_mask, **kw)  # warm-up
        every_step = count_syncs(lambda: search.greedy(model, batch.src, batch.src_lengths, batch.src_mask,
                                                       sync_every=1, **kw))
        every_8 = count_syncs(lambda: search.greedy(model, batch.src, batch.src_lengths, batch.src_mask,
                                                    sync_every=8, **kw))
    assert every_step >= 32, every_step  # the step loop really ran
    # Both share the start-and-end copies; of S >= 32 per-step copies, sync_every=8 keeps about S/8.
    assert every_step - every_8 >= 32 - 32 // 8 - 2, (every_8, every_step)


def test_encoding_a_sorted_batch_does_not_sync():
    model = tiny_model().to(CUDA).eval()
    batch = cuda_batch()
    with torch.inference_mode():
        model.init_state(batch.src, batch.src_lengths, batch.src_mask)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            model.init_state(batch.src, batch.src_lengths, batch.src_mask)
        finally:
            torch.cuda.set_sync_debug_mode(0)


# ---------------------------------------------------------------------- out of memory
def test_cuda_out_of_memory_in_translation_is_recovered(monkeypatch):
    model = tiny_model().to(CUDA)
    cfg = SearchConfig(beam_size=2, batch_tokens=10_000, max_len_a=0, max_len_b=2)
    lines = ["abc x", "defgh y", "ij z", "klmnop w"]
    expected = [t.text for t in Translator(model, FakeTokenizer(), cfg, device=CUDA).translate(lines)]
    original = Translator._search
    refs = []

    def flaky(self, seqs, nbest, generator, attention):
        if len(seqs) == len(lines):
            workspace = torch.empty(64 << 20, device=CUDA)  # 256 MiB held by the failed attempt
            refs.append(weakref.ref(workspace))
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        assert refs and refs[0]() is None
        return original(self, seqs, nbest, generator, attention)

    monkeypatch.setattr(Translator, "_search", flaky)
    got = [t.text for t in Translator(model, FakeTokenizer(), cfg, device=CUDA).translate(lines)]
    assert got == expected


# ---------------------------------------------------------------------- DDP on one GPU
@pytest.mark.skipif(not os.path.isdir(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "multi30k"))
                    and not os.environ.get("SEQ2SEQ_DATA_ROOT"), reason="Multi30k not found")
def test_one_gpu_ddp_smoke_run(tmp_path):
    import subprocess
    import sys

    from .helpers import REPO, TINY

    root = os.environ.get("SEQ2SEQ_DATA_ROOT")  # scripts/gpu/check.sh: the carried corpus
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "seq2seq.cli.train", *TINY, "trainer=ddp", "trainer.devices=1",
                           "trainer.strategy=ddp_spawn", "trainer.max_steps=4", "trainer.val_check_interval=2",
                           "test_after_training=false", "data.max_valid_pairs=8", f"paths.data_dir={tmp_path / 'data'}",
                           f"hydra.run.dir={tmp_path / 'run'}", *([f"data.root={root}"] if root else [])],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
