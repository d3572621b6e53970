"""Batches: padding, masks and the token-budget length-bucket batch sampler.

Sequences arrive as bare sentencepiece ids (see `seq2seq.data.cache`). Here they gain their special tokens:
source = pieces + EOS (never empty, so packing always works), target input = BOS + pieces, target
output = pieces + EOS. Batches are built by token budget over length-sorted examples, so a batch
holds sentences of similar length and little padding; batch order is reshuffled every epoch from
the seed, and under DDP each rank takes a disjoint shard of an epoch's batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from seq2seq.data.tokenizer import BOS_ID, EOS_ID, PAD_ID


@dataclass
class Batch:
    """A padded batch. B sentences, S source and T target positions."""

    src: torch.Tensor  # [B, S] long, PAD beyond each length
    src_lengths: torch.Tensor  # [B] int64, kept on the CPU (pack_padded_sequence wants it there)
    src_mask: torch.Tensor  # [B, S] bool, True at real tokens
    tgt_in: torch.Tensor  # [B, T] long: BOS + pieces
    tgt_out: torch.Tensor  # [B, T] long: pieces + EOS, PAD beyond
    tgt_mask: torch.Tensor  # [B, T] bool, True at real target tokens
    indices: torch.Tensor  # [B] int64: example indices in the split (rows sorted by decreasing source length)

    def __len__(self) -> int:
        return self.src.size(0)

    @property
    def num_tgt_tokens(self) -> int:
        return int(self.tgt_mask.sum())

    def pin_memory(self) -> "Batch":
        """Called by DataLoader(pin_memory=True) so that `to(non_blocking=True)` really overlaps."""
        return Batch(self.src.pin_memory(), self.src_lengths, self.src_mask.pin_memory(),
                     self.tgt_in.pin_memory(), self.tgt_out.pin_memory(), self.tgt_mask.pin_memory(), self.indices)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        """Move to `device`; `src_lengths` and `indices` stay on the CPU."""
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return Batch(move(self.src), self.src_lengths, move(self.src_mask), move(self.tgt_in),
                     move(self.tgt_out), move(self.tgt_mask), self.indices)


def _pad(seqs: Sequence[Sequence[int]], prefix: int | None, suffix: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id sequences (optionally wrapped in `prefix`/`suffix`) -> ids [B, L], lengths [B]."""
    extra = (prefix is not None) + (suffix is not None)
    lengths = torch.tensor([len(s) + extra for s in seqs], dtype=torch.long)  # [B]
    width = int(lengths.max()) if len(seqs) else 0
    out = np.full((len(seqs), width), PAD_ID, dtype=np.int64)  # [B, L]
    start = 1 if prefix is not None else 0
    for row, seq in enumerate(seqs):
        n = len(seq)
        if prefix is not None:
            out[row, 0] = prefix
        out[row, start:start + n] = seq
        if suffix is not None:
            out[row, start + n] = suffix
    return torch.from_numpy(out), lengths


def lengths_to_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """[B] lengths -> [B, width] bool mask, True at real positions."""
    return torch.arange(width)[None, :] < lengths[:, None]


def collate_source(seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bare source ids -> (src [B, S], src_lengths [B] CPU, src_mask [B, S]) with EOS appended."""
    src, lengths = _pad(seqs, prefix=None, suffix=EOS_ID)
    return src, lengths, lengths_to_mask(lengths, src.size(1))


def collate(examples: Sequence[tuple[int, Sequence[int], Sequence[int]]]) -> Batch:
    """(index, source ids, target ids) triples -> Batch, rows sorted by decreasing source length.

    Sorted rows let the encoder pack with `enforce_sorted=True`, which needs no host-device sync;
    `indices` says which example each row is (ties keep their input order).
    """
    examples = sorted(examples, key=lambda e: -len(e[1]))  # stable
    indices = torch.tensor([e[0] for e in examples], dtype=torch.long)
    src, src_lengths, src_mask = collate_source([e[1] for e in examples])
    tgt_in, tgt_lengths = _pad([e[2] for e in examples], prefix=BOS_ID, suffix=None)
    tgt_out, _ = _pad([e[2] for e in examples], prefix=None, suffix=EOS_ID)
    tgt_mask = lengths_to_mask(tgt_lengths, tgt_in.size(1))
    return Batch(src, src_lengths, src_mask, tgt_in, tgt_out, tgt_mask, indices)


class EpochBatch(list):
    """A batch of example indices tagged with the epoch whose segmentation it indexes (subword sampling:
    see `seq2seq.data.subword_sampling`); pickled with its tag to DataLoader workers."""

    def __init__(self, indices: Sequence[int], epoch: int):
        super().__init__(indices)
        self.epoch = epoch


class ParallelDataset(Dataset):
    """Encoded sentence pairs held in memory; item i is (i, source ids, target ids)."""

    def __init__(self, src: Sequence[np.ndarray], tgt: Sequence[np.ndarray]):
        if len(src) != len(tgt):
            raise ValueError(f"{len(src)} source but {len(tgt)} target sentences")
        self.src = src
        self.tgt = tgt
        self.src_lengths = np.array([len(s) + 1 for s in src], dtype=np.int64)  # + EOS
        self.tgt_lengths = np.array([len(t) + 1 for t in tgt], dtype=np.int64)  # + BOS or EOS

    def __len__(self) -> int:
        return len(self.src)

    def __getitem__(self, i: int | list[int]):
        """Example i, or the list of examples of a batch of indices (what the training DataLoader asks for,
        its sampler yielding whole batches)."""
        if isinstance(i, list):
            return [(j, self.src[j], self.tgt[j]) for j in i]
        return i, self.src[i], self.tgt[i]


def token_budget_batches(
    src_lengths: np.ndarray,
    tgt_lengths: np.ndarray | None,
    max_tokens: int,
    max_sentences: int = 0,
    bucket_width: int = 1,
    rng: np.random.Generator | None = None,
) -> list[list[int]]:
    """Group example indices into batches whose padded size fits `max_tokens`.

    Examples are sorted by (bucketed) length so that neighbours have similar lengths; `rng` breaks
    ties randomly (different batches every epoch) and is None for a fixed, deterministic grouping.
    Each batch lists its examples by decreasing source length (what `collate` needs anyway).
    The padded size of a batch is its sentence count times the longest length on either side. An
    example longer than the budget gets a batch of its own rather than being dropped.
    """
    n = len(src_lengths)
    longest = src_lengths if tgt_lengths is None else np.maximum(src_lengths, tgt_lengths)
    order = rng.permutation(n) if rng is not None else np.arange(n)
    key = longest[order] // bucket_width
    if tgt_lengths is not None:  # secondary key: target length, to pack targets tightly too
        key = key * (int(tgt_lengths.max(initial=0)) + 1) + tgt_lengths[order]
    order = order[np.argsort(key, kind="stable")]

    batches: list[list[int]] = []
    current: list[int] = []
    width = 0
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
    # Within a batch: decreasing source length (ties in order), so `collate` keeps the sampler's order
    # and the encoder packs the rows without a host sync.
    return [sorted(batch, key=lambda i: -src_lengths[i]) for batch in batches]


class TokenBucketBatchSampler(Sampler[list[int]]):
    """Token-budget batches of length-sorted examples, reshuffled each epoch, sharded by rank.

    Every rank builds the same batches from `seed + epoch`, then takes every `num_replicas`-th one.
    The batch list is padded (by repeating batches from its start) to a multiple of `num_replicas`,
    so all ranks run the same number of steps and the union of the shards covers the whole split.

    It yields whole batches of example indices; the DataLoader takes it as its `sampler` with
    `batch_size=None` (see `ParallelDataset.__getitem__`), which is also where Lightning looks for
    `set_epoch`. The position in the data order is `(epoch, batches_done)`, like fairseq's
    `(epoch, iterations_in_epoch)`: `batches_done` counts this rank's batches of `epoch` that have
    reached training (`ResumableDataLoader` counts them at its output, so batches that workers have
    prefetched are not counted); an iteration starts after them, so a restored position resumes
    mid-epoch; a new epoch, or a complete one iterated again, starts from its first batch.

    `resegment` (subword sampling): called with an epoch before its batches are built, it switches the
    dataset to that epoch's segmentation and returns its (source, target) lengths; batches are then
    yielded as `EpochBatch`es. The segmentation depends on (seed, epoch) only, so the position above
    still says everything.
    """

    def __init__(
        self,
        src_lengths: np.ndarray,
        tgt_lengths: np.ndarray,
        max_tokens: int,
        max_sentences: int = 0,
        bucket_width: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        resegment: Callable[[int], tuple[np.ndarray, np.ndarray]] | None = None,
    ):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        self.src_lengths = src_lengths
        self.tgt_lengths = tgt_lengths
        self.max_tokens = max_tokens
        self.max_sentences = max_sentences
        self.bucket_width = bucket_width
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.batches_done = 0
        self.resegment = resegment
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch: a new shuffle per epoch."""
        if epoch != self.epoch:
            self.batches_done = 0
        self.epoch = epoch
        if self.resegment is not None:
            # Now rather than when iteration starts: worker processes started for this epoch copy the
            # dataset before the first batch is asked for.
            self.epoch_batches()

    def state_dict(self) -> dict:
        """Position in the data order: epoch and batches of this rank's shard already consumed."""
        return {"epoch": self.epoch, "batches_done": self.batches_done, "seed": self.seed,
                "num_replicas": self.num_replicas, "num_batches": len(self)}

    def load_state_dict(self, state: dict) -> None:
        """Resume mid-epoch: the next iteration of `state['epoch']` starts after the consumed batches."""
        self.epoch = int(state["epoch"])
        done = int(state["batches_done"])
        replicas = int(state.get("num_replicas", self.num_replicas))
        if replicas != self.num_replicas:  # another world size: same global position, rounded down
            done = done * replicas // self.num_replicas
        self.batches_done = done
        if self.resegment is not None:
            self.epoch_batches()

    def epoch_batches(self) -> list[list[int]]:
        """All ranks' batches of the current epoch, in order (padded to a multiple of num_replicas)."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        if self.resegment is not None:
            self.src_lengths, self.tgt_lengths = self.resegment(self.epoch)
        rng = np.random.default_rng([self.seed, self.epoch]) if self.shuffle else None
        batches = token_budget_batches(self.src_lengths, self.tgt_lengths, self.max_tokens,
                                       self.max_sentences, self.bucket_width, rng)
        if rng is not None:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        if batches:
            total = math.ceil(len(batches) / self.num_replicas) * self.num_replicas
            batches = batches + [batches[i % len(batches)] for i in range(total - len(batches))]
        self._cache = (self.epoch, batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        shard = self.epoch_batches()[self.rank::self.num_replicas]
        if self.batches_done >= len(shard):  # the epoch was complete: iterating it again starts it over
            self.batches_done = 0
        # The start is read once, as iteration begins; counting is the loader's (see the class docstring).
        if self.resegment is None:
            yield from shard[self.batches_done:]
        else:
            epoch = self.epoch
            yield from (EpochBatch(batch, epoch) for batch in shard[self.batches_done:])

    def __len__(self) -> int:
        return len(self.epoch_batches()[self.rank::self.num_replicas])
