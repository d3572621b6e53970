"""Subword regularisation (data.tokenizer.sampling_alpha): a sampled segmentation of the training split every
epoch, reproducible from (seed, epoch) under resume, DDP, DataLoader workers and in another process; never at
validation."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from seq2seq.config import BatchingConfig, ConfigError, DataConfig, MonolingualDataConfig, TokenizerConfig, section
from seq2seq.data.datamodule import TranslationDataModule
from seq2seq.data.subword_sampling import draw
from seq2seq.data.tokenizer import Tokenizer, train_sentencepiece

from .conftest import synthetic_pairs

MAX_TOKENS = 40  # filter.max_tokens of these tests


def data_config(root: Path, cache: Path, alpha: float = 0.2, model_type: str = "bpe", joint: bool = True,
                nbest: int = -1) -> DataConfig:
    return section(DataConfig, dict(
        corpus="toy", root=str(root), mirrors=[], download=False, cache_dir=str(cache),
        tokenizer=dict(model_type=model_type, vocab_size=100 if joint else 50, joint=joint, byte_fallback=False,
                       sampling_alpha=alpha, sampling_nbest=nbest),
        filter=dict(max_tokens=MAX_TOKENS)), "data")


def datamodule(cfg: DataConfig, seed: int = 7, workers: int = 0) -> TranslationDataModule:
    dm = TranslationDataModule(cfg, BatchingConfig(max_tokens=300, num_workers=workers), seed=seed)
    dm.setup()
    return dm


def epoch_batches(loader, epoch: int) -> list[tuple]:
    """What training sees in `epoch`: (example indices, source ids, target ids) of every batch."""
    loader.sampler.set_epoch(epoch)  # as Lightning does before each epoch
    return [(b.indices.tolist(), b.src.tolist(), b.tgt_out.tolist()) for b in loader]


def by_example(batches: list[tuple]) -> dict[int, tuple]:
    """example index -> (source ids, target ids) without padding and EOS."""
    out = {}
    for indices, src, tgt in batches:
        for i, s, t in zip(indices, src, tgt):
            out[i] = (tuple(x for x in s if x > 3), tuple(x for x in t if x > 3))
    return out


@pytest.fixture
def corpus(toy_corpus, tmp_path):
    return toy_corpus(n_train=200, n_valid=20, n_test=10), tmp_path / "cache"


# ------------------------------------------------------------------------------------- the draws
def test_the_stored_draws_differ_from_each_other_and_spell_the_same_text():
    """Mutation: one seed for every draw in subword_sampling.draw (`sample(text, alpha, nbest, 0)`: within a
    process sentencepiece then repeats itself) fails `differ`."""
    src, tgt = synthetic_pairs(300, 0)
    tok = Tokenizer(*[train_sentencepiece(src + tgt, TokenizerConfig(vocab_size=100, byte_fallback=False))] * 2)
    fixed_src, fixed_tgt = [np.array(s) for s in tok.encode_src(src)], [np.array(t) for t in tok.encode_tgt(tgt)]
    arrays = draw(tok, src, tgt, fixed_src, fixed_tgt, alpha=0.3, nbest=-1, count=3, max_tokens=1000)
    draws = [[a[o[i]:o[i + 1]] for i in range(len(src))]
             for a, o in ((arrays[f"src_ids_{k}"], arrays["src_offsets"][k]) for k in range(3))]
    differ = [sum(not np.array_equal(a, b) for a, b in zip(draws[k], draws[k + 1])) for k in range(2)]
    assert min(differ) > len(src) // 4
    assert any(not np.array_equal(a, b) for a, b in zip(draws[0], fixed_src))  # sampled, not the fixed one
    for k in range(3):  # pieces of the very same text
        assert tok.decode_src(draws[k]) == tok.decode_src(fixed_src)


# ------------------------------------------------------------------- training split vs validation
@pytest.mark.parametrize("model_type,joint,nbest", [("bpe", True, -1), ("unigram", False, 4)])
def test_training_segmentation_changes_every_epoch_but_validation_never(corpus, model_type, joint, nbest):
    """Mutations: seeding the pick from `seed` alone (not the epoch) in SampledParallelDataset.set_epoch fails
    `!= epoch 0`;
    building the sampled dataset for validation too (dropping `shuffle and` in datamodule._loader) fails the
    validation comparison; dropping the max_tokens fallback in `draw` fails the length bound (max_tokens=6)."""
    root, cache = corpus
    dm = datamodule(data_config(root, cache, model_type=model_type, joint=joint, nbest=nbest))
    tok, train, valid = dm.tokenizer, dm.corpus.splits["train"], dm.corpus.splits["valid"]
    loader = dm.train_dataloader()
    epochs = [by_example(epoch_batches(loader, e)) for e in (0, 1)]
    fixed = {i: (tuple(train.src[i].tolist()), tuple(train.tgt[i].tolist())) for i in range(len(train))}
    for seen in epochs:
        assert sorted(seen) == list(range(len(train)))  # every pair once
        assert seen != fixed  # sampled, not the cached segmentation
        for i, (s, t) in seen.items():  # pieces of the very same text, each side with its own model
            assert tok.decode_src([s]) == [train.src_text[i]] and tok.decode_tgt([t]) == [train.tgt_text[i]]
    assert epochs[1] != epochs[0]
    assert sum(epochs[1][i] != epochs[0][i] for i in fixed) > len(fixed) // 4

    val = dm.val_dataloader()
    for _ in range(2):  # validation, before and after training epochs: always the cached ids
        for b in val:
            for i, s in zip(b.indices.tolist(), b.src.tolist()):
                assert [x for x in s if x > 3] == valid.src[i].tolist()

    tight = datamodule(data_config(root, cache, model_type=model_type, joint=joint, nbest=nbest))
    tight.data_cfg.filter.max_tokens = 6  # what the cache was filtered with stays; only the bound is checked
    seen = by_example(epoch_batches(tight.train_dataloader(), 0))
    for i, (s, t) in seen.items():
        assert len(s) <= max(6, len(train.src[i])) and len(t) <= max(6, len(train.tgt[i]))
    assert any(len(s) == len(train.src[i]) and len(train.src[i]) > 6 for i, (s, _) in seen.items())


def test_sampling_off_trains_on_the_cache_exactly_as_before(corpus):
    """Mutations: keying the cache on the sampling keys (removing SAMPLING_KEYS from cache_settings) fails the
    same-folder check; sampling when sampling_alpha == 0 (`tok.sampling` -> True in the datamodule) fails the
    identity with the cached ids."""
    root, cache = corpus
    off = datamodule(data_config(root, cache, alpha=0.0))
    on = datamodule(data_config(root, cache, alpha=0.2))
    assert on.corpus.directory == off.corpus.directory  # one cache: switching sampling rebuilds nothing
    assert off.corpus.splits["train"].src_text == []  # ... and reads no training text when off
    loader = off.train_dataloader()
    assert loader.sampler.resegment is None
    train = off.corpus.splits["train"]
    fixed = {i: (tuple(train.src[i].tolist()), tuple(train.tgt[i].tolist())) for i in range(len(train))}
    for epoch in (0, 1):
        assert by_example(epoch_batches(loader, epoch)) == fixed


# -------------------------------------------------------------------- resume, DDP ranks, workers
def test_resume_mid_epoch_with_sampling_continues_with_the_same_batches(corpus):
    """A fresh datamodule restored to (epoch 1, 3 batches done) yields exactly the rest of epoch 1 of an
    uninterrupted run. Mutation: an unseeded generator for the pick in SampledParallelDataset.set_epoch fails it."""
    root, cache = corpus
    cfg = data_config(root, cache)
    straight = datamodule(cfg).train_dataloader()
    epoch_batches(straight, 0)
    reference = epoch_batches(straight, 1)
    state = {**straight.state_dict(), "batches_done": 3}

    resumed = datamodule(cfg).train_dataloader()
    resumed.load_state_dict(state)
    rest = [(b.indices.tolist(), b.src.tolist(), b.tgt_out.tolist()) for b in resumed]  # as Lightning resumes
    assert len(reference) > 5 and rest == reference[3:]
    assert epoch_batches(datamodule(cfg, seed=8).train_dataloader(), 1) != reference  # the seed matters


def test_ddp_ranks_and_dataloader_workers_agree_on_the_batches(corpus, monkeypatch):
    """Two ranks (separate datamodules) take disjoint shards of one batch list; persistent DataLoader workers
    re-segment their copies when a new epoch's batches arrive. Mutation: yielding plain lists instead of
    EpochBatch (no epoch tag) leaves the workers on epoch 0's segmentation and fails the worker comparison."""
    root, cache = corpus
    cfg = data_config(root, cache)
    single = datamodule(cfg).train_dataloader()
    whole = [epoch_batches(single, e) for e in (0, 1)]

    ranks = []
    for rank in (0, 1):
        dm = datamodule(cfg)
        monkeypatch.setattr(dm, "_rank", lambda rank=rank: (2, rank))
        ranks.append(dm.train_dataloader())
    for epoch in (0, 1):
        shards = [by_example(epoch_batches(loader, epoch)) for loader in ranks]
        everything = by_example(whole[epoch])
        union = {**shards[0], **shards[1]}
        assert union == everything  # same segmentation on both ranks, every pair covered
        assert len(shards[0]) + len(shards[1]) >= len(everything)

    workers = datamodule(cfg, workers=2).train_dataloader()
    assert workers.persistent_workers
    assert [epoch_batches(workers, e) for e in (0, 1)] == whole


_EPOCH_IN_A_NEW_PROCESS = """
import hashlib, sys
from seq2seq.config import BatchingConfig, DataConfig, section
from seq2seq.data.datamodule import TranslationDataModule
from seq2seq.data.subword_sampling import draw
cfg = section(DataConfig, dict(corpus="toy", root=sys.argv[1], mirrors=[], download=False, cache_dir=sys.argv[2],
              tokenizer=dict(vocab_size=100, byte_fallback=False, sampling_alpha=0.2)), "data")
dm = TranslationDataModule(cfg, BatchingConfig(max_tokens=300), seed=7)
dm.setup()
loader = dm.train_dataloader()
loader.sampler.set_epoch(1)
print(hashlib.sha256(repr([b.src.tolist() for b in loader]).encode()).hexdigest())
"""


def test_another_process_sees_the_same_segmentation(corpus):
    """What a resumed run and every DDP rank rely on; sentencepiece's own sampling differs between processes
    even with the same seed. Mutation: drawing afresh in every process (load_or_draw ignoring a stored file)
    fails it."""
    import subprocess
    import sys

    from .helpers import REPO

    root, cache = corpus
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    hashes = [subprocess.run([sys.executable, "-c", _EPOCH_IN_A_NEW_PROCESS, str(root), str(cache)], env=env,
                             capture_output=True, text=True, check=True).stdout for _ in range(2)]
    assert hashes[0] == hashes[1] and len(hashes[0].strip()) == 64


# --------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("tokenizer,key", [
    (dict(sampling_alpha=-0.1), "sampling_alpha"),
    (dict(sampling_alpha=1.0), "sampling_alpha"),  # bpe: a dropout probability
    (dict(sampling_alpha=0.1, model_type="char"), "sampling_alpha"),
    (dict(sampling_alpha=0.1, model_type="unigram", sampling_nbest=1), "sampling_nbest"),
    (dict(sampling_alpha=0.1, model_type="unigram", sampling_nbest=513), "sampling_nbest"),
])
def test_bad_sampling_values_name_their_key(tokenizer, key):
    """Mutation: dropping the bpe range check in TokenizerConfig.check_sampling fails the alpha=1.0 case."""
    with pytest.raises(ConfigError, match=rf"'data\.tokenizer\.{key}'"):
        section(DataConfig, {"tokenizer": tokenizer}, "data")
    section(DataConfig, {"tokenizer": dict(model_type="unigram", sampling_alpha=2.0, sampling_nbest=64)}, "data")


def test_a_language_model_refuses_subword_sampling():
    """Mutation: dropping the check in MonolingualDataConfig.check fails it (the LM would train unsampled)."""
    with pytest.raises(ConfigError, match=r"'data\.tokenizer\.sampling_alpha'.*language model"):
        section(MonolingualDataConfig, {"tokenizer": {"sampling_alpha": 0.1}}, "data")


# ------------------------------------------------------------------------------- through Lightning
class _Crash(Exception):
    pass


def _record(monkeypatch, crash_at: int | None = None) -> list:
    """Patch training_step to record (epoch, step, example indices, source ids) of every batch."""
    from seq2seq.training.module import TranslationModule

    seen: list = []
    original = TranslationModule.training_step

    def training_step(module, batch, batch_idx):
        if crash_at is not None and module.global_step == crash_at:
            raise _Crash()
        seen.append((module.current_epoch, module.global_step, batch.indices.tolist(), batch.src.tolist()))
        return original(module, batch, batch_idx)

    monkeypatch.setattr(TranslationModule, "training_step", training_step)
    return seen


def test_training_resumed_mid_epoch_with_sampling_sees_the_batches_of_an_uninterrupted_run(
        tmp_path, learnable_corpus, monkeypatch):
    """seq2seq's train(): Lightning saves the loader's position in last.ckpt; the resumed run picks the same
    segmentation of that epoch and continues its batches. Mutations: an unseeded generator for the pick in
    SampledParallelDataset.set_epoch fails the resumed batches; seeding it from the seed alone (not the
    epoch) fails `sampled`."""
    from seq2seq.training.run import train

    from .helpers import TINY, compose_train, learn

    args = [*TINY, *learn(learnable_corpus), "trainer.max_steps=-1", "trainer.max_epochs=2",
            "trainer.val_check_interval=3", "data.max_train_pairs=60", "data.max_valid_pairs=4",
            "batching.max_tokens=150", "search.max_len_a=2", "search.max_len_b=0.5", "test_after_training=false",
            "plot_curves=false", "deterministic=true", "data.tokenizer.sampling_alpha=0.3",
            f"paths.data_dir={tmp_path / 'data'}"]
    with monkeypatch.context() as mp:
        straight = _record(mp)
        train(compose_train(args, tmp_path / "straight"))
    steps_in_epoch0 = sum(1 for s in straight if s[0] == 0)
    saved = 3 * (steps_in_epoch0 // 3 + 1)  # the first validation (and last.ckpt) inside epoch 1
    assert steps_in_epoch0 < saved < len(straight) - 2
    with monkeypatch.context() as mp:
        _record(mp, crash_at=saved + 2)
        with pytest.raises(_Crash):
            train(compose_train(args, tmp_path / "run"))
    with monkeypatch.context() as mp:
        resumed = _record(mp)
        train(compose_train([*args, "ckpt_path=last"], tmp_path / "run"))
    assert resumed == [s for s in straight if s[1] >= saved]  # same epoch, step, examples and pieces

    def pieces(epoch: int) -> dict:
        return {i: [x for x in row if x > 3] for e, _, indices, src in straight if e == epoch
                for i, row in zip(indices, src)}
    first, second = pieces(0), pieces(1)
    sampled = any(first[i] != second[i] for i in first.keys() & second.keys())
    assert sampled
