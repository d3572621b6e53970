"""LightningDataModule of monolingual text: the translation data module's samplers over `seq2seq.lm.data` batches."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from seq2seq.config import BatchingConfig, MonolingualDataConfig
from seq2seq.data.batching import TokenBucketBatchSampler
from seq2seq.data.datamodule import EvalShardSampler, ResumableDataLoader, TranslationDataModule
from seq2seq.lm.data import MonolingualCorpus, TextDataset, collate_lm, prepare_monolingual


class LMDataModule(TranslationDataModule):
    """Token-budget batches of sentences (each its own sequence), sharded by rank, resumable mid-epoch:
    the same samplers and loaders as translation, with one length per example."""

    def __init__(self, data: MonolingualDataConfig, batching: BatchingConfig, seed: int):
        super().__init__(data, batching, seed)  # type: ignore[arg-type]  # the base only stores it
        self.corpus: MonolingualCorpus | None = None

    def prepare_data(self) -> None:
        if self.corpus is None:
            prepare_monolingual(self.data_cfg)

    def setup(self, stage: str | None = None) -> None:
        if self.corpus is None:
            self.corpus = prepare_monolingual(self.data_cfg)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = TextDataset(self.corpus.splits[split])
        replicas, rank = self._rank()
        if shuffle:
            sampler = TokenBucketBatchSampler(
                dataset.lengths, dataset.lengths, max_tokens=self.batching.max_tokens,
                max_sentences=self.batching.max_sentences, bucket_width=self.batching.bucket_width,
                shuffle=True, seed=self.seed, num_replicas=replicas, rank=rank)
        else:
            sampler = EvalShardSampler(dataset.lengths, dataset.lengths, self.batching.max_tokens,
                                       self.batching.max_sentences, self.batching.bucket_width, replicas, rank)
        generator = torch.Generator().manual_seed(self.seed + rank)
        common = dict(collate_fn=collate_lm, generator=generator, num_workers=self.batching.num_workers,
                      pin_memory=self.batching.pin_memory, persistent_workers=self.batching.num_workers > 0)
        if shuffle:  # the sampler yields whole batches (see TranslationDataModule._loader)
            return ResumableDataLoader(dataset, sampler=sampler, batch_size=None, **common)
        return DataLoader(dataset, batch_sampler=sampler, **common)
