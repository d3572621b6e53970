"""LightningDataModule: prepare the corpus once, then serve token-budget batches per process."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from seq2seq.config import BatchingConfig, ConfigError, DataConfig
from seq2seq.data.batching import (Batch, ParallelDataset, TokenBucketBatchSampler, batch_members, collate, split_parts,
                                   stable_argsort, token_budget_plan)
from seq2seq.data.cache import PreparedCorpus, prepare_corpus
from seq2seq.data.subword_sampling import SampledParallelDataset, sampled_dataset
from seq2seq.data.tokenizer import Tokenizer


class ResumableDataLoader(DataLoader):
    """A DataLoader over a `TokenBucketBatchSampler` that Lightning can checkpoint and resume mid-epoch.

    Lightning saves `state_dict()` of every training loader that has one (the fit loop's
    "combined_loader" entry) and, when a run restarts mid-epoch, calls `load_state_dict()` before
    iterating again. The sampler's `batches_done` is advanced here, at the loader's output: batches
    that workers have prefetched are not consumed yet.
    """

    def __iter__(self):
        for batch in super().__iter__():
            self.sampler.batches_done += 1
            yield batch

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


class EvalShardSampler(Sampler[list[int]]):
    """One rank's evaluation batches: every `num_replicas`-th example in length order, grouped by token
    budget. Sharding examples rather than batches gives every rank batches whenever the split has at
    least as many examples as there are ranks (Lightning refuses a rank without validation batches,
    and Multi30k's validation set is only 3 batches of 8192 tokens). The shards partition the split:
    nothing is repeated, so loss sums over ranks are exact. With one rank: the unsharded batches.
    """

    def __init__(self, src_lengths: np.ndarray, tgt_lengths: np.ndarray, max_tokens: int, max_sentences: int = 0,
                 bucket_width: int = 1, num_replicas: int = 1, rank: int = 0):
        n = len(src_lengths)
        if n < num_replicas:
            raise ConfigError(f"the validation split has {n} sentences for {num_replicas} processes; each process "
                              "needs at least one (raise data.max_valid_pairs or use fewer devices)")
        mine = (stable_argsort(np.maximum(src_lengths, tgt_lengths))[rank::num_replicas] if num_replicas > 1
                else np.arange(n))  # [n / num_replicas] this rank's examples
        order, self.bounds = token_budget_plan(src_lengths[mine], tgt_lengths[mine], max_tokens, max_sentences,
                                               bucket_width)
        self.order = mine[order]  # [n / num_replicas] example indices in packing order; batches as arrays
        self.src_lengths = src_lengths

    def __iter__(self):
        for b in range(len(self)):
            yield batch_members(self.order, self.bounds, b, self.src_lengths)

    def __len__(self) -> int:
        return len(self.bounds) - 1


class TranslationDataModule(pl.LightningDataModule):
    """Training and validation batches of a prepared parallel corpus.

    `prepare_data` builds the cache (once per node); `setup` loads it in every process (a cache hit
    does no work). The training sampler shards batches by rank itself, so the Trainer runs with
    `use_distributed_sampler=False`. `tokenizer`: a checkpoint's sentencepiece models to encode with
    (`init_from`, `data.tokenizer_from`: the caller loads them); None trains the corpus's own.
    The training split's `parts` (one per training corpus, with its weight) go to the sampler, which
    draws each epoch's pairs by weight; a split without them is one corpus of weight 1.
    """

    def __init__(self, data: DataConfig, batching: BatchingConfig, seed: int, tokenizer: Tokenizer | None = None):
        super().__init__()
        self.data_cfg = data
        self.batching = batching
        self.seed = seed
        self.given_tokenizer = tokenizer
        self.corpus: PreparedCorpus | None = None

    def prepare_data(self) -> None:
        if self.corpus is None:  # train() already loaded it in this process
            corpus = prepare_corpus(self.data_cfg, self.given_tokenizer)
            if self.data_cfg.tokenizer.sampling:  # draw the segmentations once per node, not in every rank
                self._sampled_train(corpus)

    def setup(self, stage: str | None = None) -> None:
        if self.corpus is None:
            self.corpus = prepare_corpus(self.data_cfg, self.given_tokenizer)

    @property
    def tokenizer(self):
        return self.corpus.tokenizer

    def _sampled_train(self, corpus: PreparedCorpus) -> SampledParallelDataset:
        data, tok = corpus.splits["train"], self.data_cfg.tokenizer
        return sampled_dataset(corpus.directory, corpus.tokenizer, data.src, data.tgt, data.src_text, data.tgt_text,
                               tok.sampling_alpha, tok.sampling_nbest, tok.sampling_draws,
                               self.data_cfg.filter.max_tokens, self.seed)

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        data = self.corpus.splits[split]
        tok = self.data_cfg.tokenizer
        if shuffle and tok.sampling:  # training with subword sampling: a fresh segmentation per epoch
            dataset = self._sampled_train(self.corpus)
        else:
            dataset = ParallelDataset(data.src, data.tgt)
        replicas, rank = self._rank()
        if shuffle:
            sampler = TokenBucketBatchSampler(
                dataset.src_lengths, dataset.tgt_lengths, max_tokens=self.batching.max_tokens,
                max_sentences=self.batching.max_sentences, bucket_width=self.batching.bucket_width,
                shuffle=True, seed=self.seed, num_replicas=replicas, rank=rank,
                resegment=dataset.set_epoch if isinstance(dataset, SampledParallelDataset) else None,
                parts=split_parts(data))
        else:  # evaluation: shard examples, not batches (see EvalShardSampler)
            sampler = EvalShardSampler(dataset.src_lengths, dataset.tgt_lengths, self.batching.max_tokens,
                                       self.batching.max_sentences, self.batching.bucket_width, replicas, rank)
        # The loader's own generator: creating an iterator must not draw from the global torch RNG,
        # which dropout uses (a resumed run then draws exactly what an uninterrupted run draws).
        generator = torch.Generator().manual_seed(self.seed + rank)
        common = dict(collate_fn=collate, generator=generator, num_workers=self.batching.num_workers,
                      pin_memory=self.batching.pin_memory, persistent_workers=self.batching.num_workers > 0)
        if shuffle:  # the sampler yields whole batches: no automatic batching (batch_size=None)
            return ResumableDataLoader(dataset, sampler=sampler, batch_size=None, **common)
        return DataLoader(dataset, batch_sampler=sampler, **common)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        # Validation loss is summed over ranks; each rank takes its own share of the sentences.
        return self._loader("valid", shuffle=False)

    def transfer_batch_to_device(self, batch: Batch, device: torch.device, dataloader_idx: int) -> Batch:
        return batch.to(device, non_blocking=self.batching.pin_memory)
