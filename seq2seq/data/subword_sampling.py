"""Subword regularisation: the training split re-segmented by sentencepiece sampling every epoch.

With `data.tokenizer.sampling_alpha` > 0 every epoch trains on a fresh segmentation of the training
text (BPE-dropout for a bpe model, Kudo's sampling for a unigram model), drawn from the cached
sentencepiece models; validation, test and translation keep the one deterministic segmentation of
the cache.

sentencepiece's sampling cannot be reproduced in another process (0.2.x: the same seed gives the same
draws within a process, other draws in the next one), yet a resumed run and every DDP rank must see
the same segmentation. So `sampling_draws` sampled segmentations of every training sentence are drawn
once and stored beside the cache (`samples.*.npz`, published with a create-if-absent link, so that
concurrent processes all load the first one written); each epoch then picks one draw per sentence
and side with NumPy's generator seeded by (seed, epoch): a function of the seed and the epoch alone,
and a gather of arrays (milliseconds) rather than a re-encoding.

Which pairs are trained on does not change: the filter ran once, on the deterministic segmentation,
when the cache was built (so `filter.max_ratio` is not re-checked per draw). `filter.max_tokens`
stays a bound on every training sequence: a draw longer than it (sampling splits words into more
pieces) is replaced by the deterministic segmentation.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from itertools import chain
from pathlib import Path
from typing import Sequence

import numpy as np

from seq2seq.data.batching import EpochBatch, ParallelDataset
from seq2seq.data.tokenizer import Tokenizer

log = logging.getLogger(__name__)

SIDES = ("src", "tgt")


class Draws:
    """`count` sampled segmentations of N sentences per side: flat int32 ids [count] and offsets [count, N+1]."""

    def __init__(self, ids: dict[str, list[np.ndarray]], offsets: dict[str, np.ndarray]):
        self.ids, self.offsets = ids, offsets
        self.count = len(ids["src"])
        self.lengths = {side: np.diff(offsets[side], axis=1) for side in SIDES}  # [count, N]

    def pick(self, side: str, choice: np.ndarray) -> list[np.ndarray]:
        """Sentence i's ids in draw choice[i] -> N arrays (views into the flat arrays)."""
        ids, offsets = self.ids[side], self.offsets[side]
        return [ids[c][offsets[c, i]:offsets[c, i + 1]] for i, c in enumerate(choice.tolist())]


def draws_path(directory: Path, alpha: float, nbest: int, count: int, max_tokens: int) -> Path:
    return Path(directory) / f"samples.alpha{alpha:g}.nbest{nbest}.draws{count}.max{max_tokens}.npz"


def draw(tokenizer: Tokenizer, src_text: Sequence[str], tgt_text: Sequence[str], fixed_src: Sequence[np.ndarray],
         fixed_tgt: Sequence[np.ndarray], alpha: float, nbest: int, count: int, max_tokens: int) -> dict[str, np.ndarray]:
    """`count` sampled segmentations of both sides, as the arrays that `samples.*.npz` stores; a draw longer
    than `max_tokens` pieces is replaced by the fixed (cached) segmentation."""
    arrays: dict[str, np.ndarray] = {}
    for side, sample, text, fixed in (("src", tokenizer.sample_src, src_text, fixed_src),
                                      ("tgt", tokenizer.sample_tgt, tgt_text, fixed_tgt)):
        offsets = np.zeros((count, len(text) + 1), dtype=np.int64)
        for k in range(count):
            seqs = sample(text, alpha, nbest, k)
            for i, seq in enumerate(seqs):
                if len(seq) > max_tokens:
                    seqs[i] = fixed[i]
            np.cumsum([len(s) for s in seqs], out=offsets[k, 1:])
            arrays[f"{side}_ids_{k}"] = np.fromiter(chain.from_iterable(seqs), dtype=np.int32, count=int(offsets[k, -1]))
        arrays[f"{side}_offsets"] = offsets
    return arrays


def load_or_draw(path: Path, n: int, count: int, make) -> Draws:
    """The draws stored at `path`, or `make()`'s, published there first unless another process was faster
    (every process then uses the file's, so all agree)."""
    if not path.is_file():
        start = time.perf_counter()
        arrays = make()
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            try:
                os.link(tmp, path)  # fails if it exists: the first published wins
            except FileExistsError:
                pass
        finally:
            os.unlink(tmp)
        log.info("drew %d segmentations of %d training pairs in %.1f s: %s", count, n,
                 time.perf_counter() - start, path)
    with np.load(path) as z:
        ids = {side: [z[f"{side}_ids_{k}"] for k in range(count)] for side in SIDES}
        offsets = {side: z[f"{side}_offsets"] for side in SIDES}
    if any(o.shape != (count, n + 1) for o in offsets.values()):
        raise ValueError(f"{path} holds draws of another split; delete it to draw again")
    return Draws(ids, offsets)


class SampledParallelDataset(ParallelDataset):
    """The training split whose segmentation is drawn afresh for each epoch (`set_epoch`).

    `src`/`tgt` and the length arrays always hold the segmentation of `self.epoch`. The batch sampler
    calls `set_epoch` before it builds an epoch's batches (it needs that epoch's lengths) and tags each
    batch with its epoch (`EpochBatch`): a DataLoader worker process holds its own copy of this
    dataset and switches it when a batch of a new epoch arrives, which gives the same ids.
    """

    def __init__(self, draws: Draws, seed: int):
        self.draws, self.seed = draws, seed
        self.epoch: int | None = None
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Switch to `epoch`'s segmentation; returns its (source, target) lengths [N] (+ EOS/BOS)."""
        if epoch != self.epoch:
            rng = np.random.default_rng([self.seed % 2**63, epoch])
            n = self.draws.offsets["src"].shape[1] - 1
            choice = rng.integers(self.draws.count, size=(2, n))  # [side, N]: one draw per sentence and side
            self.src, self.tgt = self.draws.pick("src", choice[0]), self.draws.pick("tgt", choice[1])
            rows = np.arange(n)
            self.src_lengths = self.draws.lengths["src"][choice[0], rows] + 1  # + EOS
            self.tgt_lengths = self.draws.lengths["tgt"][choice[1], rows] + 1  # + BOS or EOS
            self.epoch = epoch
        return self.src_lengths, self.tgt_lengths

    def __getitem__(self, i):
        if isinstance(i, EpochBatch):
            self.set_epoch(i.epoch)
        return super().__getitem__(i)


def sampled_dataset(directory: Path, tokenizer: Tokenizer, src: Sequence[np.ndarray], tgt: Sequence[np.ndarray],
                    src_text: Sequence[str], tgt_text: Sequence[str], alpha: float, nbest: int, count: int,
                    max_tokens: int, seed: int) -> SampledParallelDataset:
    """The training dataset of a prepared corpus in `directory` (its cache folder) under subword sampling."""
    if not (len(src_text) == len(tgt_text) == len(src) == len(tgt)):
        raise ValueError(f"subword sampling needs the training text aligned with its ids: {len(src_text)} "
                         f"source / {len(tgt_text)} target lines for {len(src)} pairs")
    path = draws_path(directory, alpha, nbest, count, max_tokens)
    draws = load_or_draw(path, len(src), count, lambda: draw(tokenizer, src_text, tgt_text, src, tgt, alpha,
                                                             nbest, count, max_tokens))
    return SampledParallelDataset(draws, seed)
