"""The epoch plan built with numpy (`token_budget_plan`) against the list-and-loop implementation it
replaced, kept here as the oracle; weighted corpora (`parts`); lengths taken from a `TokenArray`.

The oracle is the code of seq2seq/data/batching.py and datamodule.py before issue 32: batches must be
identical to it (membership, order within and across batches, every rank's shard, the padding to a
multiple of the ranks, a mid-epoch resume) for unweighted splits.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from seq2seq.config import BatchingConfig
from seq2seq.data import batching
from seq2seq.data.batching import (ParallelDataset, TokenBucketBatchSampler, split_parts, token_budget_batches,
                                   token_budget_plan)
from seq2seq.data.datamodule import EvalShardSampler
from seq2seq.data.store import CorpusPart, TokenArray
from seq2seq.training.run import train_batches_per_epoch


# ------------------------------------------------------------------------------ the oracle (old code)
def oracle_batches(src_lengths, tgt_lengths, max_tokens, max_sentences=0, bucket_width=1, rng=None):
    n = len(src_lengths)
    longest = src_lengths if tgt_lengths is None else np.maximum(src_lengths, tgt_lengths)
    order = rng.permutation(n) if rng is not None else np.arange(n)
    key = longest[order] // bucket_width
    if tgt_lengths is not None:
        key = key * (int(tgt_lengths.max(initial=0)) + 1) + tgt_lengths[order]
    order = order[np.argsort(key, kind="stable")]
    batches, current, width = [], [], 0
    for i in order.tolist():
        new_width = max(width, int(longest[i]))
        full = current and (new_width * (len(current) + 1) > max_tokens
                            or (max_sentences and len(current) >= max_sentences))
        if full:
            batches.append(current)
            current, new_width = [], int(longest[i])
        current.append(i)
        width = new_width
    if current:
        batches.append(current)
    return [sorted(batch, key=lambda i: -src_lengths[i]) for batch in batches]


def oracle_epoch(src, tgt, max_tokens, max_sentences, bucket_width, seed, epoch, replicas, shuffle=True):
    rng = np.random.default_rng([seed, epoch]) if shuffle else None
    batches = oracle_batches(src, tgt, max_tokens, max_sentences, bucket_width, rng)
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    if batches:
        total = math.ceil(len(batches) / replicas) * replicas
        batches = batches + [batches[i % len(batches)] for i in range(total - len(batches))]
    return batches


def oracle_shard(src, tgt, max_tokens, max_sentences, bucket_width, seed, epoch, replicas, rank, done=0):
    shard = oracle_epoch(src, tgt, max_tokens, max_sentences, bucket_width, seed, epoch, replicas)[rank::replicas]
    if done >= len(shard):
        done = 0
    return shard[done:]


def oracle_eval(src, tgt, max_tokens, max_sentences, bucket_width, replicas, rank):
    order = np.argsort(np.maximum(src, tgt), kind="stable")
    mine = order[rank::replicas] if replicas > 1 else np.arange(len(src))
    groups = oracle_batches(src[mine], tgt[mine], max_tokens, max_sentences, bucket_width)
    return [[int(mine[i]) for i in group] for group in groups]


def multi30k_like(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Source and target lengths (+ EOS / BOS) distributed like Multi30k de-en's 29k training pairs
    (bare pieces: mean ~14.5 and ~14, std ~5, correlation ~0.87, 1st-99th percentile 6-32)."""
    rng = np.random.default_rng(seed)
    base = rng.gamma(9.0, 14.5 / 9.0, n)
    src = np.clip(np.rint(base * rng.normal(1.0, 0.12, n)), 1, None).astype(np.int32) + 1
    tgt = np.clip(np.rint(base * rng.normal(0.97, 0.12, n)), 1, None).astype(np.int32) + 1
    return src, tgt


MULTI30K = multi30k_like(29_000, seed=0)


# ----------------------------------------------------------------------------- identical to the oracle
@pytest.mark.parametrize("max_tokens,max_sentences", [(2000, 0), (4096, 0), (300, 0), (4096, 64), (1000, 7)])
@pytest.mark.parametrize("bucket_width", [1, 3])
def test_grouping_matches_the_old_loop(max_tokens, max_sentences, bucket_width):
    src, tgt = MULTI30K
    for seed in (0, 11):
        new = token_budget_batches(src, tgt, max_tokens, max_sentences, bucket_width, np.random.default_rng(seed))
        assert new == oracle_batches(src, tgt, max_tokens, max_sentences, bucket_width, np.random.default_rng(seed))
    fixed = token_budget_batches(src, tgt, max_tokens, max_sentences, bucket_width)  # no shuffle
    assert fixed == oracle_batches(src, tgt, max_tokens, max_sentences, bucket_width)
    one_side = token_budget_batches(src, None, max_tokens, max_sentences, bucket_width)  # translator, LM
    assert one_side == oracle_batches(src, None, max_tokens, max_sentences, bucket_width)


def test_grouping_matches_with_odd_lengths():
    """Lengths over the budget (alone in a batch), zero lengths, long tails, wide keys (two sort passes)."""
    rng = np.random.default_rng(5)
    src, tgt = rng.integers(0, 700, 3000), rng.integers(0, 700, 3000)
    for max_tokens, max_sentences, bucket_width in [(500, 0, 1), (500, 3, 1), (2000, 0, 7), (50, 0, 1), (1, 0, 1)]:
        for r in (None, np.random.default_rng(3)):
            args = (src, tgt, max_tokens, max_sentences, bucket_width)
            new = token_budget_batches(*args, None if r is None else np.random.default_rng(3))
            assert new == oracle_batches(*args, r)
    assert token_budget_batches(np.zeros(0, np.int64), None, 100) == []


@pytest.mark.parametrize("max_tokens,max_sentences,bucket_width,seed", [(2000, 0, 1, 1), (4096, 0, 1, 7),
                                                                         (3000, 50, 1, 2), (2000, 0, 4, 3)])
def test_every_rank_and_epoch_matches_the_old_sampler(max_tokens, max_sentences, bucket_width, seed):
    src, tgt = MULTI30K
    for epoch in (0, 1, 5):
        for replicas in (1, 2, 3, 8):
            expected = oracle_epoch(src, tgt, max_tokens, max_sentences, bucket_width, seed, epoch, replicas)
            for rank in range(replicas):
                sampler = TokenBucketBatchSampler(src, tgt, max_tokens, max_sentences, bucket_width, seed=seed,
                                                  num_replicas=replicas, rank=rank)
                sampler.set_epoch(epoch)
                assert list(sampler) == expected[rank::replicas] and len(sampler) == len(expected) // replicas


def test_padding_to_the_ranks_matches_when_batches_are_fewer_than_ranks():
    src, tgt = MULTI30K[0][:50], MULTI30K[1][:50]
    for rank in range(8):
        sampler = TokenBucketBatchSampler(src, tgt, 400, seed=4, num_replicas=8, rank=rank)
        assert list(sampler) == oracle_shard(src, tgt, 400, 0, 1, 4, 0, 8, rank)


def test_mid_epoch_resume_matches_the_old_sampler():
    src, tgt = MULTI30K
    for replicas, saved_replicas, done in [(1, 1, 17), (2, 2, 40), (2, 1, 33), (3, 2, 10), (1, 1, 10**6)]:
        for rank in range(replicas):
            sampler = TokenBucketBatchSampler(src, tgt, 2000, seed=9, num_replicas=replicas, rank=rank)
            sampler.load_state_dict({"epoch": 2, "batches_done": done, "num_replicas": saved_replicas})
            expected = oracle_shard(src, tgt, 2000, 0, 1, 9, 2, replicas, rank, done * saved_replicas // replicas)
            assert list(sampler) == expected


def test_unshuffled_sampler_and_evaluation_shards_match_the_old_code():
    src, tgt = MULTI30K[0][:5000], MULTI30K[1][:5000]
    assert list(TokenBucketBatchSampler(src, tgt, 2000, shuffle=False)) == oracle_epoch(src, tgt, 2000, 0, 1, 0, 0, 1,
                                                                                       shuffle=False)
    for replicas in (1, 2, 3):
        for rank in range(replicas):
            for max_sentences, bucket_width in [(0, 1), (20, 1), (0, 5)]:
                shard = EvalShardSampler(src, tgt, 3000, max_sentences, bucket_width, replicas, rank)
                assert list(shard) == oracle_eval(src, tgt, 3000, max_sentences, bucket_width, replicas, rank)
                assert len(shard) == len(list(shard))


def test_weights_of_one_give_todays_batches():
    src, tgt = MULTI30K
    n = len(src)
    one = [(0, 10_000, 1.0), (10_000, n, 1.0)]
    for epoch in (0, 3):
        plain = TokenBucketBatchSampler(src, tgt, 2000, seed=2, num_replicas=2, rank=1)
        weighted = TokenBucketBatchSampler(src, tgt, 2000, seed=2, num_replicas=2, rank=1, parts=one)
        plain.set_epoch(epoch)
        weighted.set_epoch(epoch)
        assert list(weighted) == list(plain) == oracle_shard(src, tgt, 2000, 0, 1, 2, epoch, 2, 1)


# ------------------------------------------------------------------------------------- weighted corpora
PARTS = [(0, 4000, 2.0), (4000, 10_000, 0.5), (10_000, 13_000, 1.0), (13_000, 14_000, 0.0), (14_000, 17_000, 1.3)]


def epoch_counts(sampler: TokenBucketBatchSampler, epoch: int, n: int) -> np.ndarray:
    """How often each example occurs in `epoch` over all ranks' batches, the padding left out -> [n]."""
    sampler.set_epoch(epoch)
    plan = sampler.epoch_plan()
    return np.bincount(plan.order, minlength=n)


def check_weights(sampler: TokenBucketBatchSampler, parts, n: int, epochs=(0, 1)) -> None:
    """Assert that each epoch draws round(w * n_p) examples of each part (floor(w) of every pair and one
    more of a subset) and that the subsets differ from epoch to epoch."""
    subsets = []
    for epoch in epochs:
        counts = epoch_counts(sampler, epoch, n)
        chosen = []
        for start, end, weight in parts:
            mine = counts[start:end]
            assert mine.sum() == math.floor(weight * (end - start) + 0.5), (start, weight, epoch)
            assert set(np.unique(mine).tolist()) <= {math.floor(weight), math.floor(weight) + 1}
            chosen.append(start + np.flatnonzero(mine > math.floor(weight)))
        subsets.append(np.concatenate(chosen))
    for a, b in zip(subsets, subsets[1:]):
        assert len(np.intersect1d(a, b)) < 0.75 * len(a), "the same subset in two epochs"


def test_weighted_parts_are_up_and_down_sampled_per_epoch():
    """Weights 2, 0.5, 1, 0, 1.3 -> every pair of part 1 twice, half of part 2 (another half each epoch),
    part 3 once, nothing of part 4, part 5 once and 0.3 of it twice."""
    src, tgt = MULTI30K[0][:17_000], MULTI30K[1][:17_000]
    n = len(src)
    sampler = TokenBucketBatchSampler(src, tgt, 2000, seed=3, parts=PARTS)
    check_weights(sampler, PARTS, n, epochs=(0, 1, 2))
    assert len(sampler.epoch_plan().order) == 8000 + 3000 + 3000 + 3900
    # deterministic per (seed, epoch), whatever came before
    again = TokenBucketBatchSampler(src, tgt, 2000, seed=3, parts=PARTS)
    again.set_epoch(1)
    sampler.set_epoch(1)
    assert list(again) == list(sampler)
    # as many batches every epoch (the subsets keep the length histogram): Lightning reads the count once
    sizes = set()
    for epoch in range(4):
        sampler.set_epoch(epoch)
        sizes.add(len(sampler))
    assert len(sizes) == 1


def test_weight_check_fails_when_the_weighting_is_broken(monkeypatch):
    """The mutation check of `check_weights`: a sampler that ignores the weights (every pair once), or
    draws the same subset every epoch, fails it."""
    src, tgt = MULTI30K[0][:17_000], MULTI30K[1][:17_000]
    n = len(src)
    with monkeypatch.context() as m:
        m.setattr(batching, "weighted_examples", lambda parts, n, longest, rng: None)
        with pytest.raises(AssertionError):
            check_weights(TokenBucketBatchSampler(src, tgt, 2000, seed=3, parts=PARTS), PARTS, n)
    subset = batching._stratified_subset
    with monkeypatch.context() as m:
        fixed = lambda strata, size, rng: subset(strata, size, np.random.default_rng(0))  # noqa: E731
        m.setattr(batching, "_stratified_subset", fixed)
        with pytest.raises(AssertionError, match="same subset"):
            check_weights(TokenBucketBatchSampler(src, tgt, 2000, seed=3, parts=PARTS), PARTS, n)


def test_weighted_epochs_shard_by_rank_and_resume_mid_epoch():
    src, tgt = MULTI30K[0][:17_000], MULTI30K[1][:17_000]
    whole = TokenBucketBatchSampler(src, tgt, 2000, seed=5, parts=PARTS)
    whole.set_epoch(2)
    batches = whole.epoch_batches()
    ranks = [TokenBucketBatchSampler(src, tgt, 2000, seed=5, parts=PARTS, num_replicas=2, rank=r) for r in range(2)]
    shards = []
    for sampler in ranks:
        sampler.set_epoch(2)
        shards.append(list(sampler))
    assert len(shards[0]) == len(shards[1])
    assert sorted(map(tuple, shards[0] + shards[1])) == sorted(map(tuple, batches + batches[:len(batches) % 2]))
    resumed = TokenBucketBatchSampler(src, tgt, 2000, seed=5, parts=PARTS, num_replicas=2, rank=1)
    resumed.load_state_dict({"epoch": 2, "batches_done": 7, "num_replicas": 2})
    assert list(resumed) == shards[1][7:]


def test_parts_come_from_the_split_and_must_tile_it():
    split = SimpleNamespace(parts=[CorpusPart("europarl", 0, 5, 1.0), CorpusPart("news", 5, 9, 0.5)])
    assert split_parts(split) == [(0, 5, 1.0), (5, 9, 0.5)]
    assert split_parts(object()) is None  # a split of an older cache: one part of weight 1
    src = np.full(9, 5)
    for bad in ([(0, 4, 1.0), (5, 9, 1.0)], [(0, 9, -1.0)], [(0, 8, 2.0)]):
        with pytest.raises(ValueError, match="parts"):
            TokenBucketBatchSampler(src, src, 100, parts=bad).epoch_plan()
    with pytest.raises(ValueError, match="weight 0"):
        TokenBucketBatchSampler(src, src, 100, parts=[(0, 9, 0.0)]).epoch_plan()


# ---------------------------------------------------------------------------------- lengths and arrays
def test_dataset_lengths_come_from_a_token_array_without_touching_the_sentences():
    seqs = [np.arange(k, dtype=np.int32) for k in (3, 0, 7)]
    tokens = TokenArray.from_sequences(seqs)

    class NoIteration(TokenArray):
        def __iter__(self):
            raise AssertionError("lengths must come from the lengths array")

    mapped = NoIteration(tokens.ids, tokens.offsets)
    ds = ParallelDataset(mapped, mapped)
    assert ds.src_lengths.tolist() == ds.tgt_lengths.tolist() == [4, 1, 8]
    assert ParallelDataset(seqs, seqs).src_lengths.tolist() == [4, 1, 8]  # plain lists still work


def test_plan_is_held_as_arrays():
    src, tgt = MULTI30K
    sampler = TokenBucketBatchSampler(src, tgt, 2000, seed=1)
    plan = sampler.epoch_plan()
    assert plan.order.dtype == np.int32 and len(plan.order) == len(src)
    assert plan.bounds.dtype == np.int64 and plan.bounds[0] == 0 and plan.bounds[-1] == len(src)
    order, bounds = token_budget_plan(src, tgt, 2000, rng=np.random.default_rng([1, 0]))
    assert np.array_equal(order, plan.order) and np.array_equal(bounds, plan.bounds)


def test_batches_per_epoch_come_from_the_length_arrays_and_the_weights():
    src, tgt = MULTI30K[0][:3000], MULTI30K[1][:3000]

    class NoIteration(TokenArray):
        def __iter__(self):
            raise AssertionError("lengths must come from the lengths array")

    def tokens(lengths):
        array = TokenArray.from_sequences([np.zeros(k - 1, np.int32) for k in lengths])
        return NoIteration(array.ids, array.offsets)

    parts = [CorpusPart("a", 0, 1000, 2.0), CorpusPart("b", 1000, 3000, 0.5)]
    split = SimpleNamespace(src=tokens(src), tgt=tokens(tgt), parts=parts)
    datamodule = SimpleNamespace(corpus=SimpleNamespace(splits={"train": split}),
                                 batching=BatchingConfig(max_tokens=500), seed=4)
    for world_size in (1, 3):
        expected = TokenBucketBatchSampler(src, tgt, 500, seed=4, num_replicas=world_size,
                                           parts=[(0, 1000, 2.0), (1000, 3000, 0.5)])
        assert train_batches_per_epoch(datamodule, world_size) == len(expected)
    older = SimpleNamespace(src=split.src, tgt=split.tgt)  # a split without parts: every pair once
    datamodule.corpus.splits["train"] = older
    assert train_batches_per_epoch(datamodule, 1) == len(TokenBucketBatchSampler(src, tgt, 500, seed=4))


def test_the_length_asked_before_the_epoch_is_built_is_its_length():
    """`len(sampler)` before any plan exists (the trainer's set-up, train_batches_per_epoch) counts the
    batches from the histogram of widths; it must equal the number the epoch then yields on every rank.
    Mutations that make it fail: the count leaving out the padding to a multiple of num_replicas; a
    single corpus of weight 1 building the plan to count."""
    rng = np.random.default_rng(7)
    for n, max_tokens, max_sentences, replicas in ((500, 300, 0, 1), (777, 256, 9, 3), (50, 4096, 0, 8), (3, 64, 0, 4)):
        src = rng.integers(1, 60, n)
        tgt = rng.integers(1, 60, n)
        for rank in range(replicas):
            for epoch in (0, 3):
                # A prepared split always has parts: one corpus of weight 1 counts without a plan too.
                parts = [(0, n, 1.0)] if epoch else None
                sampler = TokenBucketBatchSampler(src, tgt, max_tokens, max_sentences, seed=5, num_replicas=replicas,
                                                  rank=rank, parts=parts)
                sampler.set_epoch(epoch)
                assert sampler._plan is None
                counted = len(sampler)
                assert sampler._plan is None  # counted from the histogram: no seconds-long plan at set-up
                assert counted == len(list(sampler)) == len(sampler), (n, max_tokens, max_sentences, replicas, rank)
