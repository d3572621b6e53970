"""Subword regularisation: the training split re-segmented by sentencepiece sampling every epoch.

With `data.tokenizer.sampling_alpha` > 0 every epoch trains on a fresh segmentation of the training
text (BPE-dropout for a bpe model, Kudo's sampling for a unigram model), drawn from the cached
sentencepiece models; validation, test and translation keep the one deterministic segmentation of
the cache. The draw is a function of (seed, epoch) alone, so DDP ranks build the same batches and a
run resumed mid-epoch sees the same segmentation and batch order as one never interrupted.

Which pairs are trained on does not change: the filter ran once, on the deterministic segmentation,
when the cache was built (so `filter.max_ratio` is not re-checked per sample). `filter.max_tokens`
stays a bound on every training sequence: a sampled side longer than it (sampling splits words into
more pieces) falls back to its deterministic segmentation for that epoch.

The next epoch's segmentation is drawn in a background thread while the current one trains
(sentencepiece releases the GIL); `scripts/bench_sampling.py` measures what it costs.
"""

from __future__ import annotations

import os
import threading
from itertools import chain
from typing import Sequence

import numpy as np

from seq2seq.data import EpochBatch, ParallelDataset
from seq2seq.tokenizer import Tokenizer


def _arrays(seqs: list[list[int]]) -> list[np.ndarray]:
    """Id lists -> int32 arrays (views into one flat array, as the cache stores them)."""
    lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
    flat = np.fromiter(chain.from_iterable(seqs), dtype=np.int32, count=int(lengths.sum()))
    return np.split(flat, np.cumsum(lengths)[:-1]) if seqs else []


def sample_split(tokenizer: Tokenizer, src_text: Sequence[str], tgt_text: Sequence[str],
                 fixed_src: Sequence[np.ndarray], fixed_tgt: Sequence[np.ndarray], alpha: float, nbest: int,
                 seed: int, epoch: int, max_tokens: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Epoch `epoch`'s sampled segmentation of N training pairs -> (N source, N target) bare id arrays.

    Each side is sampled with its own model and a seed derived from (seed, epoch, side); a sampled
    sequence longer than `max_tokens` pieces is replaced by its fixed (cached) segmentation.
    """
    # sentencepiece takes a 32-bit seed (2**32 - 1 means "none"); SeedSequence mixes seed and epoch.
    seeds = np.random.SeedSequence([seed % 2**63, epoch]).generate_state(2) % (2**32 - 1)
    out = []
    for sample, text, fixed, side_seed in ((tokenizer.sample_src, src_text, fixed_src, seeds[0]),
                                           (tokenizer.sample_tgt, tgt_text, fixed_tgt, seeds[1])):
        seqs = sample(text, alpha, nbest, int(side_seed))
        for i, seq in enumerate(seqs):
            if len(seq) > max_tokens:
                seqs[i] = fixed[i]
        out.append(_arrays(seqs))
    return out[0], out[1]


class SampledParallelDataset(ParallelDataset):
    """The training split whose segmentation is drawn afresh for each epoch (`set_epoch`).

    `src`/`tgt` and the length arrays always hold the segmentation of `self.epoch`. The batch sampler
    calls `set_epoch` before it builds an epoch's batches (it needs that epoch's lengths) and tags each
    batch with its epoch (`EpochBatch`): a DataLoader worker process holds its own copy of this
    dataset and re-segments it when a batch of a new epoch arrives, which gives the same ids.
    """

    def __init__(self, fixed_src: Sequence[np.ndarray], fixed_tgt: Sequence[np.ndarray], src_text: Sequence[str],
                 tgt_text: Sequence[str], tokenizer: Tokenizer, alpha: float, nbest: int, seed: int,
                 max_tokens: int):
        if not (len(src_text) == len(tgt_text) == len(fixed_src) == len(fixed_tgt)):
            raise ValueError(f"subword sampling needs the training text aligned with its ids: {len(src_text)} "
                             f"source / {len(tgt_text)} target lines for {len(fixed_src)} pairs")
        super().__init__(fixed_src, fixed_tgt)
        self.fixed_src, self.fixed_tgt = fixed_src, fixed_tgt
        self.src_text, self.tgt_text = src_text, tgt_text
        self.tokenizer = tokenizer
        self.alpha, self.nbest, self.seed, self.max_tokens = alpha, nbest, seed, max_tokens
        self.epoch: int | None = None  # the epoch whose segmentation src/tgt hold (None: the fixed one)
        # The next epoch, drawn in the background: (epoch, thread, result box, process id).
        self._next: tuple[int, threading.Thread, list, int] | None = None

    def _sample(self, epoch: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        return sample_split(self.tokenizer, self.src_text, self.tgt_text, self.fixed_src, self.fixed_tgt,
                            self.alpha, self.nbest, self.seed, epoch, self.max_tokens)

    def _prefetch(self, epoch: int) -> None:
        box: list = []
        thread = threading.Thread(target=lambda: box.append(self._sample(epoch)), daemon=True,
                                  name=f"subword-sampling-epoch-{epoch}")
        thread.start()
        self._next = (epoch, thread, box, os.getpid())

    def set_epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Switch to `epoch`'s segmentation; returns its (source, target) lengths [N] (+ EOS/BOS)."""
        if epoch != self.epoch:
            result = None
            if self._next is not None:
                next_epoch, thread, box, pid = self._next
                # A forked worker inherits the object but not the thread: it draws for itself.
                if next_epoch == epoch and pid == os.getpid():
                    thread.join()
                    result = box[0] if box else None  # empty if the thread failed: draw here and raise
            self._next = None
            src, tgt = result if result is not None else self._sample(epoch)
            self.src, self.tgt = src, tgt
            self.src_lengths = np.array([len(s) + 1 for s in src], dtype=np.int64)  # + EOS
            self.tgt_lengths = np.array([len(t) + 1 for t in tgt], dtype=np.int64)  # + BOS or EOS
            self.epoch = epoch
            self._prefetch(epoch + 1)
        return self.src_lengths, self.tgt_lengths

    def __getitem__(self, i):
        if isinstance(i, EpochBatch):
            self.set_epoch(i.epoch)
        return super().__getitem__(i)

    def __getstate__(self) -> dict:
        # Spawned workers and ddp_spawn pickle the dataset: a thread does not travel.
        return {**self.__dict__, "_next": None}
