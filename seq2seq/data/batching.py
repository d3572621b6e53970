"""Batches: padding, masks and the token-budget length-bucket batch sampler.

Sequences arrive as bare sentencepiece ids (see `seq2seq.data.cache`). Here they gain their special tokens:
source = pieces + EOS (never empty, so packing always works), target input = BOS + pieces, target
output = pieces + EOS. Batches are built by token budget over length-sorted examples, so a batch
holds sentences of similar length and little padding; batch order is reshuffled every epoch from
the seed, and under DDP each rank takes a disjoint shard of an epoch's batches. Weighted training
corpora are up- or down-sampled per epoch (`weighted_examples`).

An epoch's plan is built with numpy over the length arrays and held as arrays (`token_budget_plan`):
at 10M pairs per-example Python objects would cost seconds per epoch and rank, and gigabytes.
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


def sequence_lengths(seqs: Sequence[Sequence[int]]) -> np.ndarray:
    """[N] int32 bare lengths of `seqs`: a `TokenArray`'s (or any sequence's) `lengths` array when it has
    one (no pass over the sentences: a memory-mapped split of millions), else counted one by one."""
    lengths = getattr(seqs, "lengths", None)
    if lengths is not None:
        return np.asarray(lengths, dtype=np.int32)
    return np.fromiter(map(len, seqs), dtype=np.int32, count=len(seqs))


class ParallelDataset(Dataset):
    """Encoded sentence pairs (lists of id arrays, or `TokenArray`s, memory-mapped); item i is
    (i, source ids, target ids). `src_lengths`/`tgt_lengths` [N] int32 count EOS and BOS/EOS."""

    def __init__(self, src: Sequence[np.ndarray], tgt: Sequence[np.ndarray]):
        if len(src) != len(tgt):
            raise ValueError(f"{len(src)} source but {len(tgt)} target sentences")
        self.src = src
        self.tgt = tgt
        self.src_lengths = sequence_lengths(src) + 1  # + EOS
        self.tgt_lengths = sequence_lengths(tgt) + 1  # + BOS or EOS

    def __len__(self) -> int:
        return len(self.src)

    def __getitem__(self, i: int | list[int]):
        """Example i, or the list of examples of a batch of indices (what the training DataLoader asks for,
        its sampler yielding whole batches)."""
        if isinstance(i, list):
            return [(j, self.src[j], self.tgt[j]) for j in i]
        return i, self.src[i], self.tgt[i]


# ----------------------------------------------------------------------------------------- planning
# The plan of a set of batches is two arrays, not lists of lists: an epoch at 10M pairs is ~10^5
# batches of ~10^2 examples, and Python objects per example would cost seconds and ~50 bytes each.
def _radix_key(key: np.ndarray) -> np.ndarray:
    """`key` as uint16 when its values fit: numpy's stable argsort is a radix sort for 16-bit keys
    (linear time) and a timsort otherwise."""
    if len(key) and 0 <= int(key.min()) and int(key.max()) < 1 << 16:
        return key.astype(np.uint16)
    return key


def stable_argsort(key: np.ndarray) -> np.ndarray:
    """np.argsort(key, kind="stable") [N] int64, by radix sort when the values fit 16 bits."""
    return np.argsort(_radix_key(key), kind="stable")


def _capacity(width: int, max_tokens: int, max_sentences: int, unbounded: int) -> int:
    """Examples a batch of padded width `width` may hold (at least 1: a too-long example goes alone)."""
    cap = max_sentences or unbounded
    if width > 0:
        cap = min(cap, max_tokens // width)
    return max(cap, 1)


def _bounds_by_runs(run_widths: np.ndarray, run_counts: np.ndarray, max_tokens: int, max_sentences: int) -> np.ndarray:
    """Greedy packing of examples sorted by non-decreasing width, one equal-width run at a time.

    With non-decreasing widths a batch's width is that of its last example, so the example-by-example
    greedy (add while count x width fits) is: fill the open batch up to the run's capacity, then cut
    the rest of the run into batches of that capacity; the last one stays open for the next run.
    run_widths, run_counts [R] -> bounds [B+1] int64 (positions in the sorted order).
    """
    total = int(run_counts.sum())
    starts: list[np.ndarray] = []
    pos, open_count = 0, None  # examples in the batch still open (None: none yet)
    for width, count in zip(run_widths.tolist(), run_counts.tolist()):
        cap = _capacity(width, max_tokens, max_sentences, total)
        take = 0
        if open_count is not None and open_count < cap:
            take = min(cap - open_count, count)
            open_count += take
        rest = count - take
        if rest:
            starts.append(np.arange(pos + take, pos + count, cap, dtype=np.int64))
            open_count = rest - cap * ((rest - 1) // cap)
        pos += count
    return np.concatenate([*starts, np.array([total], dtype=np.int64)])


def _bounds_by_batches(widths: np.ndarray, max_tokens: int, max_sentences: int) -> np.ndarray:
    """Greedy packing of examples whose widths are not sorted (bucket_width > 1: any order inside a
    bucket), one batch at a time: a batch starting at s takes the longest prefix whose running maximum
    width x count fits (count x running maximum only grows, so the first misfit ends it).
    widths [M] -> bounds [B+1] int64. Its cost is a few numpy calls per batch, not per example.
    """
    total = len(widths)
    starts: list[int] = []
    s = 0
    while s < total:
        starts.append(s)
        limit = min(_capacity(int(widths[s]), max_tokens, max_sentences, total), total - s)
        if limit == 1:
            s += 1
            continue
        peak = np.maximum.accumulate(widths[s:s + limit]).astype(np.int64)  # the batch's width after each example
        fits = peak[1:] * np.arange(2, limit + 1) <= max_tokens
        s += limit if fits.all() else 1 + int(fits.argmin())
    return np.array([*starts, total], dtype=np.int64)


def token_budget_plan(
    src_lengths: np.ndarray,
    tgt_lengths: np.ndarray | None,
    max_tokens: int,
    max_sentences: int = 0,
    bucket_width: int = 1,
    rng: np.random.Generator | None = None,
    examples: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Token-budget batches as arrays: `token_budget_batches`'s grouping, computed with numpy.

    src_lengths, tgt_lengths [N]; `examples` [M] the example indices to batch (repeats allowed: weighted
    corpora), default all N once; `rng` shuffles them before the stable sort by (bucketed longest length,
    target length), so that ties fall differently every epoch (None: fixed).
    Returns order [M] int32 or int64 (example indices in packing order) and bounds [B+1] int64: batch b is
    order[bounds[b]:bounds[b+1]], its examples in packing order (`batch_members` sorts them for collate).
    """
    longest = src_lengths if tgt_lengths is None else np.maximum(src_lengths, tgt_lengths)
    count = len(longest) if examples is None else len(examples)
    index_dtype = np.int32 if len(longest) < 1 << 31 else np.int64  # the order is the plan's largest array
    order = np.arange(count, dtype=index_dtype) if examples is None else examples.astype(index_dtype)
    if count == 0:
        return order, np.zeros(1, dtype=np.int64)
    if rng is not None:
        # The swaps of `rng.permutation(count)` (whatever the items): the same order, the generator left
        # in the same state (the sampler then draws the batch order from it).
        rng.shuffle(order)
    primary = longest // bucket_width if bucket_width > 1 else longest
    if tgt_lengths is None:
        keys = [primary]
    else:  # secondary key: target length, to pack targets tightly too
        span = int(tgt_lengths.max()) + 1
        if (int(primary.max()) + 1) * span <= 1 << 16:  # one 16-bit key: a single radix pass
            keys = [primary.astype(np.int32) * span + tgt_lengths]
        else:  # least significant first: stable passes give the lexicographic order
            keys = [tgt_lengths, primary]
    for key in keys:
        order = order[np.argsort(_radix_key(key)[order], kind="stable")]

    if bucket_width == 1:  # widths are non-decreasing along `order`: pack whole runs of one width
        hist = np.bincount(longest if examples is None else longest[examples])
        run_widths = np.flatnonzero(hist)
        bounds = _bounds_by_runs(run_widths, hist[run_widths], max_tokens, max_sentences)
    else:
        bounds = _bounds_by_batches(longest[order], max_tokens, max_sentences)
    return order, bounds


def batch_members(order: np.ndarray, bounds: np.ndarray, b: int, src_lengths: np.ndarray) -> list[int]:
    """Batch b of a plan as example indices by decreasing source length (ties in packing order): the
    order `collate` would give them anyway, so the encoder packs the rows without a host sync."""
    members = order[bounds[b]:bounds[b + 1]]
    return members[np.argsort(-src_lengths[members].astype(np.int64), kind="stable")].tolist()


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
    src_lengths, tgt_lengths [N] -> B lists of indices (`token_budget_plan` gives the arrays).
    """
    order, bounds = token_budget_plan(src_lengths, tgt_lengths, max_tokens, max_sentences, bucket_width, rng)
    return [batch_members(order, bounds, b, src_lengths) for b in range(len(bounds) - 1)]


# ---------------------------------------------------------------------------------- weighted parts
SUBSET_STREAM = 1  # the fraction's subsets draw from rng([seed, epoch, SUBSET_STREAM]), not the shuffle's stream


def split_parts(split: object) -> list[tuple[int, int, float]] | None:
    """A split's `parts` (`CorpusPart`s) as (start, end, weight) tuples; None when it has none (a split of
    an older cache: one corpus of weight 1)."""
    parts = getattr(split, "parts", None)
    if not parts:
        return None
    return [(int(p.start), int(p.end), float(p.weight)) for p in parts]


def weighted_examples(parts: Sequence[tuple[int, int, float]] | None, n: int, longest: np.ndarray,
                      rng: np.random.Generator) -> np.ndarray | None:
    """One epoch's example indices [M] int64 under corpus weights, or None for "each of the n once".

    Part (start, end, w) of n_p pairs contributes round(w * n_p) examples (half up): floor(w) copies of
    all its pairs and a random subset of the rest (drawn from `rng`); w = 0 leaves it out. The subset is
    stratified by `longest` [N] (the packing width): from every width it takes its share, by largest
    remainder, so every epoch has the same histogram of widths and hence, with bucket_width 1, the same
    number of batches (Lightning reads an epoch's length once). All weights 1 (or no parts) -> None.
    """
    if parts is None:
        return None
    end_before = 0
    for start, end, weight in parts:
        if start != end_before or end < start or not weight >= 0 or math.isinf(weight):
            raise ValueError(f"corpus parts must tile the split in order with finite weights >= 0, got {list(parts)}")
        end_before = end
    if end_before != n:
        raise ValueError(f"corpus parts cover {end_before} pairs of a split of {n}")
    if all(weight == 1 for _, _, weight in parts):
        return None
    pieces: list[np.ndarray] = []
    for start, end, weight in parts:
        size = end - start
        copies = math.floor(weight)
        extra = math.floor(weight * size + 0.5) - copies * size  # pairs of the fraction
        pieces += [np.arange(start, end, dtype=np.int64)] * copies
        if extra > 0:
            pieces.append(start + _stratified_subset(longest[start:end], extra, rng))
    if not pieces:
        raise ValueError(f"every training corpus has weight 0 (parts {list(parts)}): nothing to train on")
    return np.concatenate(pieces)


def _stratified_subset(strata: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` random positions of `strata` [n] (small non-negative ints), each stratum (value) getting
    its quota: floor(count x size / n), plus one for the strata with the largest remainders (ties:
    smaller values first). -> [size] int64 positions, grouped by stratum."""
    n = len(strata)
    counts = np.bincount(strata).astype(np.int64)  # [S]
    quota, remainder = np.divmod(counts * size, n)
    short = size - int(quota.sum())
    quota[np.argsort(-remainder, kind="stable")[:short]] += 1
    shuffled = rng.permutation(n)
    grouped = shuffled[stable_argsort(strata[shuffled])]  # by stratum, random within each
    value = strata[grouped]
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])  # [S] position of each stratum's first member
    rank = np.arange(n) - first[value]
    return grouped[rank < quota[value]]


# ---------------------------------------------------------------------------------------- sampler
class TokenBucketBatchSampler(Sampler[list[int]]):
    """Token-budget batches of length-sorted examples, reshuffled each epoch, sharded by rank.

    Every rank builds the same batches from `seed + epoch`, then takes every `num_replicas`-th one.
    The batch list is padded (by repeating batches from its start) to a multiple of `num_replicas`,
    so all ranks run the same number of steps and the union of the shards covers the whole split.
    An epoch's plan is held as arrays (`token_budget_plan`: example order and batch bounds, plus the
    batch order); a batch becomes a list when it is yielded.

    It yields whole batches of example indices; the DataLoader takes it as its `sampler` with
    `batch_size=None` (see `ParallelDataset.__getitem__`), which is also where Lightning looks for
    `set_epoch`. The position in the data order is `(epoch, batches_done)`, like fairseq's
    `(epoch, iterations_in_epoch)`: `batches_done` counts this rank's batches of `epoch` that have
    reached training (`ResumableDataLoader` counts them at its output, so batches that workers have
    prefetched are not counted); an iteration starts after them, so a restored position resumes
    mid-epoch; a new epoch, or a complete one iterated again, starts from its first batch.

    `parts` (weighted corpora): (start, end, weight) per training corpus, tiling [0, N); an epoch then
    batches round(weight x n) pairs of each (`weighted_examples`; subsets drawn from (seed, epoch)).
    None, or all weights 1: every pair once, the batches of an unweighted split.

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
        parts: Sequence[tuple[int, int, float]] | None = None,
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
        self.parts = list(parts) if parts is not None else None
        self._plan: EpochPlan | None = None
        self._unplanned_count: int | None = None  # __len__ before a plan exists (the same for every epoch)

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch: a new shuffle per epoch."""
        if epoch != self.epoch:
            self.batches_done = 0
        self.epoch = epoch
        if self.resegment is not None:
            # Now rather than when iteration starts: worker processes started for this epoch copy the
            # dataset before the first batch is asked for.
            self.epoch_plan()

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
            self.epoch_plan()

    def epoch_plan(self) -> EpochPlan:
        """All ranks' batches of the current epoch (built once per epoch)."""
        if self._plan is not None and self._plan.epoch == self.epoch:
            return self._plan
        if self.resegment is not None:
            self.src_lengths, self.tgt_lengths = self.resegment(self.epoch)
        examples = None
        if self.parts is not None:
            longest = np.maximum(self.src_lengths, self.tgt_lengths)
            examples = weighted_examples(self.parts, len(longest), longest,
                                         np.random.default_rng([self.seed, self.epoch, SUBSET_STREAM]))
        rng = np.random.default_rng([self.seed, self.epoch]) if self.shuffle else None
        order, bounds = token_budget_plan(self.src_lengths, self.tgt_lengths, self.max_tokens, self.max_sentences,
                                          self.bucket_width, rng, examples)
        count = len(bounds) - 1
        # The same generator, after the example shuffle, orders the batches (as the list version did).
        sequence = rng.permutation(count) if rng is not None else np.arange(count, dtype=np.int64)
        if count:  # pad with the first batches to a multiple of num_replicas
            total = math.ceil(count / self.num_replicas) * self.num_replicas
            sequence = np.concatenate([sequence, sequence[np.arange(total - count) % count]])
        self._plan = EpochPlan(self.epoch, order, bounds, sequence, self.src_lengths)
        return self._plan

    def epoch_batches(self) -> list[list[int]]:
        """All ranks' batches of the current epoch, in order, as lists (inspection and tests; iterating
        builds them one at a time)."""
        plan = self.epoch_plan()
        return [plan.batch(j) for j in range(len(plan))]

    def __iter__(self) -> Iterator[list[int]]:
        plan = self.epoch_plan()
        shard = range(self.rank, len(plan), self.num_replicas)
        if self.batches_done >= len(shard):  # the epoch was complete: iterating it again starts it over
            self.batches_done = 0
        # The start is read once, as iteration begins; counting is the loader's (see the class docstring).
        for j in shard[self.batches_done:]:
            batch = plan.batch(j)
            yield batch if self.resegment is None else EpochBatch(batch, plan.epoch)

    def __len__(self) -> int:
        unweighted = self.parts is None or all(weight == 1 for _, _, weight in self.parts)
        if (self._plan is None or self._plan.epoch != self.epoch) and self.bucket_width == 1 \
                and self.resegment is None and unweighted:
            # Asked before the epoch is built (the trainer's set-up): with exact widths and no weights the
            # packing depends on the histogram of widths alone, not on the shuffle, so count without it
            # (a plan at 10M pairs takes seconds).
            # Lightning asks several times during set-up (~0.1 s each at 10M pairs): counted once.
            if self._unplanned_count is None:
                hist = np.bincount(np.maximum(self.src_lengths, self.tgt_lengths))
                widths = np.flatnonzero(hist)
                self._unplanned_count = len(_bounds_by_runs(widths, hist[widths], self.max_tokens,
                                                            self.max_sentences)) - 1
            total = math.ceil(self._unplanned_count / self.num_replicas) * self.num_replicas
        else:
            total = len(self.epoch_plan())
        return len(range(self.rank, total, self.num_replicas))


@dataclass
class EpochPlan:
    """An epoch's batches for all ranks: the epoch's j-th batch (j < len) holds the examples
    order[bounds[k]:bounds[k + 1]] with k = sequence[j] (padding repeats some k)."""

    epoch: int
    order: np.ndarray  # [M] example indices in packing order (int32; int64 for splits of 2^31 pairs or more)
    bounds: np.ndarray  # [B+1] int64 batch boundaries in `order`
    sequence: np.ndarray  # [B'] int64 batch ids in epoch order, B' = B rounded up to a multiple of num_replicas
    src_lengths: np.ndarray  # [N] the source lengths the batches were built from (decreasing order in a batch)

    def __len__(self) -> int:
        return len(self.sequence)

    def batch(self, j: int) -> list[int]:
        return batch_members(self.order, self.bounds, int(self.sequence[j]), self.src_lengths)
