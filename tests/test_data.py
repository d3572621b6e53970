"""Batches: special tokens, masks, token budgets, per-epoch shuffling and rank sharding."""

import numpy as np
import pytest
import torch

from seq2seq.data.batching import (ParallelDataset, TokenBucketBatchSampler, collate, collate_source,
                          token_budget_batches)
from seq2seq.data.tokenizer import BOS_ID, EOS_ID, PAD_ID


def test_collate_adds_special_tokens_and_masks():
    batch = collate([(7, [5, 6, 7], [8, 9]), (3, [5], [8, 9, 10, 11])])
    assert batch.src.tolist() == [[5, 6, 7, EOS_ID], [5, EOS_ID, PAD_ID, PAD_ID]]
    assert batch.src_lengths.tolist() == [4, 2]
    assert batch.src_lengths.device.type == "cpu" and batch.src_lengths.dtype == torch.int64
    assert batch.src_mask.tolist() == [[True] * 4, [True, True, False, False]]
    assert batch.tgt_in.tolist() == [[BOS_ID, 8, 9, PAD_ID, PAD_ID], [BOS_ID, 8, 9, 10, 11]]
    assert batch.tgt_out.tolist() == [[8, 9, EOS_ID, PAD_ID, PAD_ID], [8, 9, 10, 11, EOS_ID]]
    assert batch.tgt_mask.sum().item() == 3 + 5 == batch.num_tgt_tokens
    assert batch.indices.tolist() == [7, 3]


def test_empty_source_still_has_eos():
    src, lengths, mask = collate_source([[], [4, 5]])
    assert lengths.tolist() == [1, 3] and src[0, 0].item() == EOS_ID and mask[0].tolist() == [True, False, False]


def random_lengths(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(2, 60, n), rng.integers(2, 60, n)


def test_token_budget_respected_and_every_example_once():
    src, tgt = random_lengths(1000)
    batches = token_budget_batches(src, tgt, max_tokens=500, rng=np.random.default_rng(1))
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(1000))
    for b in batches:
        width = max(max(src[i], tgt[i]) for i in b)
        assert width * len(b) <= 500 or len(b) == 1


def test_oversized_example_gets_its_own_batch():
    batches = token_budget_batches(np.array([3, 900, 4]), None, max_tokens=100)
    assert [900] in [[[3, 900, 4][i] for i in b] for b in batches]


def test_length_sorting_keeps_padding_low():
    src, tgt = random_lengths(2000)
    batches = token_budget_batches(src, tgt, max_tokens=1000, rng=np.random.default_rng(0))
    longest = np.maximum(src, tgt)
    padded = sum(max(longest[b]) * len(b) for b in batches)
    assert padded / longest.sum() < 1.1


def test_epochs_reshuffle_reproducibly():
    src, tgt = random_lengths(300)
    a = TokenBucketBatchSampler(src, tgt, max_tokens=400, seed=5)
    b = TokenBucketBatchSampler(src, tgt, max_tokens=400, seed=5)
    first = list(a)
    assert first == list(b)
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)


@pytest.mark.parametrize("replicas", [2, 3, 4])
def test_rank_shards_are_disjoint_complete_and_equal(replicas):
    src, tgt = random_lengths(257, seed=replicas)
    samplers = [TokenBucketBatchSampler(src, tgt, max_tokens=300, seed=1, num_replicas=replicas, rank=r)
                for r in range(replicas)]
    for s in samplers:
        s.set_epoch(3)
    shards = [list(s) for s in samplers]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == len(samplers[0])
    seen = [i for shard in shards for b in shard for i in b]
    assert set(seen) == set(range(257))
    # Batches repeated to even out the step counts are fewer than the number of ranks.
    distinct = token_budget_batches(src, tgt, max_tokens=300, rng=np.random.default_rng([1, 3]))
    assert 0 <= sum(len(s) for s in shards) - len(distinct) < replicas


def test_dataset_lengths_count_special_tokens():
    ds = ParallelDataset([np.array([1, 2, 3], np.int32)], [np.array([4], np.int32)])
    assert ds.src_lengths.tolist() == [4] and ds.tgt_lengths.tolist() == [2]
    assert ds[0][0] == 0
