"""Distributed training on the CPU: 2 processes, gloo, ddp_spawn (trainer=ddp_cpu).

One real run of `python -m seq2seq.cli.train debug=tiny trainer=ddp_cpu trainer.devices=2` is shared by
the tests below: it must train, validate, checkpoint and test (once, in the launching process); each
rank must see its own shard of the batches; validation BLEU under DDP must equal the single-process
figure for the same weights; its checkpoints must resume in one process and translate. Last, data
preparation must be safe when several processes (SLURM ranks, `strategy=ddp` children) race for it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import multiprocessing
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from seq2seq.checkpoint.format import PAYLOAD_KEY, read_checkpoint
from seq2seq.config import (BatchingConfig, ConfigError, DataConfig, ModelConfig, OptimConfig, SchedulerConfig,
                            SearchConfig, TokenizerConfig, ValidationConfig, section)
from seq2seq.data.batching import TokenBucketBatchSampler
from seq2seq.data.datamodule import EvalShardSampler, TranslationDataModule
from seq2seq.training.module import TranslationModule, _rng_state, _set_rng_state
from seq2seq.data.cache import HASHES, prepare_corpus
from seq2seq.training.run import train
from seq2seq.training.trainer import check_hardware, check_launch

from .helpers import TINY, compose_train, learn, read_metrics, run_script, series

# The run learns the toy pair (helpers.learn), so its validation scores are not the trivial BLEU 0 /
# TER 100 that any gather bug would leave unchanged.
STEPS = 150  # optimiser steps ...
VAL_EVERY = 75  # ... validation every 75 steps
# All 40 validation pairs fit in one batch of 1024 tokens: sharded by batches, rank 1 would get none
# (EvalShardSampler shards sentences instead).
VALID_PAIRS = 40


class BatchRecorder(pl.Callback):
    """Test probe: writes the example indices of every batch this rank trained and validated on to
    `{out_dir}/rank{global_rank}.json`. Added from the command line as `+callbacks.recorder`."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.train: list[list[int]] = []
        self.val: list[list[list[int]]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.train.append(batch.indices.tolist())

    def on_validation_epoch_start(self, trainer, pl_module):
        self.val.append([])

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.val[-1].append(batch.indices.tolist())

    def on_fit_end(self, trainer, pl_module):
        Path(self.out_dir).mkdir(parents=True, exist_ok=True)
        record = {"rank": trainer.global_rank, "world_size": trainer.world_size, "train": self.train,
                  "val": self.val}
        (Path(self.out_dir) / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))



@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, learnable_corpus):
    """`python -m seq2seq.cli.train debug=tiny trainer=ddp_cpu trainer.devices=2` on the learnable toy pair
    (long enough to translate it), with the final test."""
    tmp = tmp_path_factory.mktemp("ddp")
    run_dir, probe = tmp / "run", tmp / "probe"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")  # on a shared 2-core machine, 2 OpenMP threads per process thrash
        proc = run_script("train", *TINY, *learn(learnable_corpus, STEPS, VAL_EVERY), "trainer=ddp_cpu",
                          "trainer.devices=2", f"data.max_valid_pairs={VALID_PAIRS}",
                          f"paths.data_dir={tmp / 'data'}", f"hydra.run.dir={run_dir}",
                          f"+callbacks.recorder._target_={BatchRecorder.__module__}.BatchRecorder",
                          f"+callbacks.recorder.out_dir={probe}", timeout=600)
    return {"dir": run_dir, "data": tmp / "data", "probe": probe, "proc": proc, "corpus": learnable_corpus}


def test_ddp_cpu_console_run_trains_validates_checkpoints_and_tests_once(ddp_run):
    run_dir, proc, corpus = ddp_run["dir"], ddp_run["proc"], ddp_run["corpus"]
    out = proc.stdout + proc.stderr
    assert "distributed_backend=gloo" in out and "Starting with 2 processes" in out
    for name in ("best.ckpt", "last.ckpt"):
        assert (run_dir / "checkpoints" / name).is_file()
    rows = read_metrics(run_dir)
    assert len(series(rows, "val/bleu")) == STEPS // VAL_EVERY  # logged once per validation (by rank 0)
    assert len(series(rows, "train/loss")) == STEPS
    # test-after-training runs once, in the launching process, after the workers have returned
    assert proc.stdout.count("test (test_2016_flickr, de->en)") == 1
    hyp = run_dir / "checkpoints" / "test_2016_flickr.de-en.hyp"
    references = (corpus / "test_2016_flickr.en").read_text(encoding="utf-8").splitlines()
    assert len(hyp.read_text(encoding="utf-8").splitlines()) == len(references)
    # the spawned rank 0 logs through the run's logging config (train.log), not into the void
    assert "val BLEU" in (run_dir / "train.log").read_text(encoding="utf-8")
    # the launching process draws plots/curves.png from rank 0's log, and leaves that log in place
    if importlib.util.find_spec("matplotlib"):
        assert (run_dir / "plots" / "curves.png").is_file() and (run_dir / "logs" / "metrics.csv").is_file()


def _corpus_and_config(ckpt_path: Path):
    config = read_checkpoint(ckpt_path)[PAYLOAD_KEY]["config"]
    return prepare_corpus(section(DataConfig, config["data"], "data")), config


def test_each_rank_trains_and_validates_on_its_own_shard(ddp_run):
    corpus, config = _corpus_and_config(ddp_run["dir"] / "checkpoints" / "last.ckpt")
    records = [json.loads((ddp_run["probe"] / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in records] == [2, 2]
    batching = section(BatchingConfig, config["batching"], "batching")
    train, valid = corpus.splits["train"], corpus.splits["valid"]

    def shard(split, rank, train):
        src_lengths = np.array([len(s) + 1 for s in split.src])  # + EOS, as ParallelDataset counts them
        tgt_lengths = np.array([len(t) + 1 for t in split.tgt])
        args = (src_lengths, tgt_lengths, batching.max_tokens, batching.max_sentences, batching.bucket_width)
        if train:
            return list(TokenBucketBatchSampler(*args, shuffle=True, seed=config["seed"], num_replicas=2, rank=rank))
        return list(EvalShardSampler(*args, num_replicas=2, rank=rank))

    assert len(valid) == VALID_PAIRS
    first_epoch = [shard(train, rank, True) for rank in range(2)]
    for rank, record in enumerate(records):
        assert len(record["train"]) == STEPS
        # exactly the rank's shard of the first epoch, in order (later epochs reshuffle)
        assert record["train"][:len(first_epoch[rank])] == first_epoch[rank]
        assert len(record["val"]) == STEPS // VAL_EVERY
        for epoch in record["val"]:
            assert epoch == shard(valid, rank, False) and epoch  # every rank validates something
    # together the shards are the single-process epoch (padded by repeating its first batches)
    lengths = np.array([len(s) + 1 for s in train.src]), np.array([len(t) + 1 for t in train.tgt])
    whole = [tuple(b) for b in TokenBucketBatchSampler(*lengths, batching.max_tokens, batching.max_sentences,
                                                       batching.bucket_width, shuffle=True, seed=config["seed"])]
    assert {tuple(b) for r in range(2) for b in first_epoch[r]} == set(whole)
    assert len(first_epoch[0]) == len(first_epoch[1]) == (len(whole) + 1) // 2
    for epoch in range(STEPS // VAL_EVERY):  # the validation shards partition the split: no duplicates, no gaps
        seen = sorted(i for r in records for batch in r["val"][epoch] for i in batch)
        assert seen == list(range(len(valid)))


def test_evaluation_shards_give_every_rank_examples_and_partition_the_split():
    rng = np.random.default_rng(0)
    src, tgt = rng.integers(1, 40, 100), rng.integers(1, 40, 100)
    unsharded = list(TokenBucketBatchSampler(src, tgt, 300, shuffle=False))
    assert list(EvalShardSampler(src, tgt, 300)) == unsharded  # one process: the usual batches
    for replicas in (2, 3, 8):
        shards = [list(EvalShardSampler(src, tgt, 100_000, num_replicas=replicas, rank=r)) for r in range(replicas)]
        assert all(len(s) == 1 for s in shards)  # the whole split is one batch, yet no rank goes without
        assert sorted(i for s in shards for b in s for i in b) == list(range(100))
    with pytest.raises(ConfigError, match="3 sentences for 4 processes"):
        EvalShardSampler(src[:3], tgt[:3], 300, num_replicas=4, rank=0)


def _validate_one_process(ckpt_path: Path) -> dict[str, float]:
    """`trainer.validate` of a checkpoint in a single process, on the same data as its run."""
    corpus, config = _corpus_and_config(ckpt_path)
    datamodule = TranslationDataModule(section(DataConfig, config["data"], "data"),
                                       section(BatchingConfig, config["batching"], "batching"), seed=config["seed"])
    datamodule.corpus = corpus
    module = TranslationModule(section(ModelConfig, config["model"], "model"),
                               section(OptimConfig, config["optim"], "optim"),
                               section(SchedulerConfig, config["scheduler"], "scheduler"),
                               section(SearchConfig, config["search"], "search"),
                               section(ValidationConfig, config["validation"], "validation"),
                               tokenizer=corpus.tokenizer, run_config=config)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False)
    trainer.validate(module, datamodule=datamodule, ckpt_path=str(ckpt_path), verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_validation_scores_under_ddp_equal_single_process(ddp_run):
    """The 2-rank run validated its weights (sharded decoding, gathered, scored once; loss sums reduced);
    one process validating the checkpoint saved at that moment must get the same figures. The model has
    learned the toy pair, so the figures are far from the trivial BLEU 0 / TER 100 first. Mutations that
    make it fail: lit_module.decode_split keeping only rank 0's part of the gather (`gathered[:1]`), or
    concatenating the parts rank by rank instead of restoring the sentence order."""
    best = ddp_run["dir"] / "checkpoints" / "best.ckpt"
    step = read_checkpoint(best)["global_step"]
    rows = [r for r in read_metrics(ddp_run["dir"]) if r.get("val/bleu")]
    logged = {k: float(v) for k, v in rows[step // VAL_EVERY - 1].items() if k.startswith("val/")}
    one = _validate_one_process(best)
    assert one["val/bleu"] > 5 and 20 < one["val/chrf"] < 100 and one["val/ter"] < 90, one  # non-trivial
    for name in ("val/bleu", "val/chrf", "val/ter"):  # exact: the very same hypotheses were scored
        assert logged[name] == one[name], name
    for name in ("val/loss", "val/ppl"):  # equal up to summation order (rank 0's shard alone is ~1e-4 off)
        assert logged[name] == pytest.approx(one[name], rel=1e-6), name


def test_ddp_checkpoint_resumes_in_a_single_process(ddp_run, tmp_path):
    last = ddp_run["dir"] / "checkpoints" / "last.ckpt"
    step = read_checkpoint(last)["global_step"]
    run_dir = tmp_path / "resumed"
    cfg = compose_train([*TINY, *learn(ddp_run["corpus"], step + 2, VAL_EVERY), "trainer=cpu",
                         f"paths.data_dir={ddp_run['data']}", f"ckpt_path={last}", "test_after_training=false"],
                        run_dir)
    train(cfg)
    rows = read_metrics(run_dir)
    assert sorted({int(r["step"]) for r in rows if r.get("train/loss")}) == [step, step + 1]  # continues
    lr = {int(r["step"]): float(r["lr-Adam"]) for r in rows if r.get("lr-Adam")}
    # learn(): lr 0.01, 10 warm-up steps, then inverse square root: the schedule continues, not restarted
    assert lr[step] == pytest.approx(0.01 * (10 / (step + 1)) ** 0.5)


def test_ddp_checkpoint_keeps_every_ranks_rng_state(ddp_run):
    """A DDP checkpoint holds one RNG state per rank (gathered when saving; rank 0 writes the file), so
    a resumed DDP run continues every rank's dropout stream, not only rank 0's."""
    states = read_checkpoint(ddp_run["dir"] / "checkpoints" / "last.ckpt")[PAYLOAD_KEY]["rng"]
    assert len(states) == 2 and all(torch.is_tensor(s["torch"]) for s in states)


def test_each_rank_restores_its_own_rng_state():
    """Rank r restores state r; a rank the checkpoint has no state for gets a distinct one; an older
    checkpoint's single state (a dict) is rank 0's. Mutation that makes it fail: every rank restoring
    rank 0's state (`state = states[0]`)."""
    before = _rng_state()
    states = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        states.append(_rng_state())
    try:
        for rank in (0, 1):
            _set_rng_state(states, rank)
            assert torch.equal(torch.get_rng_state(), states[rank]["torch"])
        _set_rng_state(states, 2)
        assert not any(torch.equal(torch.get_rng_state(), s["torch"]) for s in states)
        _set_rng_state(states[1], 0)
        assert torch.equal(torch.get_rng_state(), states[1]["torch"])
    finally:
        _set_rng_state(before, 0)


def test_ddp_checkpoint_translates_like_its_final_test(ddp_run, tmp_path):
    from seq2seq.cli.translate import main as translate_main

    ckpt = ddp_run["dir"] / "checkpoints" / "best.ckpt"
    written = (ddp_run["dir"] / "checkpoints" / "test_2016_flickr.de-en.hyp").read_text(encoding="utf-8")
    src, out = ddp_run["corpus"] / "test_2016_flickr.de", tmp_path / "out.en"
    assert translate_main(["--checkpoint", str(ckpt), "--input", str(src), "--output", str(out), "--quiet"]) == 0
    assert out.read_text(encoding="utf-8").splitlines() == written.splitlines()


# ------------------------------------------------------------------------ concurrent data preparation


def _prepare_in_process(root: str, cache: str, barrier, results) -> None:
    from seq2seq.data.cache import prepare_corpus as prepare

    cfg = DataConfig(root=root, cache_dir=cache, download=False, mirrors=[],
                     tokenizer=TokenizerConfig(vocab_size=60, byte_fallback=False))
    barrier.wait()  # all processes start building at the same moment
    corpus = prepare(cfg)
    model = hashlib.sha256(corpus.tokenizer.state_dict()["src_model"]).hexdigest()
    ids = hashlib.sha256(b"".join(a.tobytes() for a in corpus.splits["train"].src)).hexdigest()
    results.put((str(corpus.directory), model, ids))


class InjectOutOfMemory(pl.Callback):
    """Test probe: on rank `rank`, the training steps of `steps` raise torch.OutOfMemoryError in their
    forward pass. Added from the command line as `+callbacks.oom` (it reaches the spawned ranks)."""

    def __init__(self, rank: int, steps: list[int]):
        self.rank, self.steps = rank, set(steps)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == self.rank and trainer.global_step in self.steps:
            def _losses(batch):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
            pl_module._losses = _losses  # this step only: removed again below

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        pl_module.__dict__.pop("_losses", None)


def test_out_of_memory_on_one_rank_is_skipped_by_all_ranks(tmp_path, multi30k_dir):
    """Rank 1 runs out of memory at step 2 of 6 under trainer=ddp_cpu: the run goes on, and rank 0, which
    had memory, skipped that update too (its saved optimiser applied 5 updates), so the replicas stay
    equal. Mutation that makes it fail: TranslationModule._out_of_memory returning a zero loss instead of
    a NaN one (rank 0 then applies the half-zero average gradient: 6 updates)."""
    run_dir = tmp_path / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        proc = run_script("train", *TINY, "trainer=ddp_cpu", "trainer.devices=2", "test_after_training=false",
                          "data.max_valid_pairs=4", f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={run_dir}",
                          f"+callbacks.oom._target_={InjectOutOfMemory.__module__}.InjectOutOfMemory",
                          "+callbacks.oom.rank=1", "+callbacks.oom.steps=[2]", timeout=600)
    ckpt = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 6
    assert {int(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values()} == {5}
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    assert series(read_metrics(run_dir), "train/skipped_steps")[-1] == 1
    assert "out of memory in the forward pass on rank 1" in proc.stdout + proc.stderr


def test_concurrent_prepare_calls_agree_and_leave_one_cache(toy_corpus, tmp_path):
    """SLURM starts every rank at once and each prepares the data: the losers of the race must load
    the winner's cache (one tokenizer for all ranks), and no temporary folder may stay behind."""
    root, cache = toy_corpus(), tmp_path / "cache"
    ctx = multiprocessing.get_context("fork")
    n = 4
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_prepare_in_process, args=(str(root), str(cache), barrier, results))
             for _ in range(n)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=90) for _ in range(n)]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert len(set(outcomes)) == 1, outcomes
    assert [p.name for p in cache.iterdir() if p.name != HASHES] == [Path(outcomes[0][0]).name]


# ------------------------------------------------------------------- launches that cannot work


def test_several_nodes_without_a_cluster_launcher_are_refused(monkeypatch):
    """Without SLURM (or MASTER_ADDR/NODE_RANK) node 0 would wait forever for the other nodes."""
    for var in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "SLURM_NTASKS", "SLURM_JOB_NAME", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    trainer = pl.Trainer(accelerator="cpu", devices=2, num_nodes=2, strategy="ddp_spawn", logger=False)
    with pytest.raises(ConfigError, match="trainer.num_nodes"):
        check_launch(trainer)
    check_launch(pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False))  # one node: fine


def _bf16_lstm_runs_on_this_cpu() -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.nn.LSTM(2, 2)(torch.zeros(1, 1, 2))
    except RuntimeError:
        return False
    return True


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_cpu_mixed_precision_is_checked_before_training(tmp_path, precision):
    """oneDNN runs an LSTM in bf16 only on some CPUs: elsewhere a clear error, not a crash mid-run."""
    lstm = compose_train([*TINY, "trainer=cpu", f"trainer.precision={precision}", "model.cell=lstm"], tmp_path)
    if _bf16_lstm_runs_on_this_cpu():
        check_hardware(lstm)
    else:
        with pytest.raises(ConfigError, match="trainer.precision=32-true"):
            check_hardware(lstm)
    check_hardware(compose_train([*TINY, "trainer=cpu", f"trainer.precision={precision}", "model.cell=gru"], tmp_path))
