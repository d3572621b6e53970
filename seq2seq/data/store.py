"""The on-disk token store of a prepared split: flat id arrays plus offsets, memory-mapped when read.

One side of a split (N sentences) is two files, in the spirit of fairseq's binarized `mmap` datasets:

* `{name}.bin`: every sentence's bare sentencepiece ids back to back, as uint16 when the vocabulary fits
  (65,536 pieces) and uint32 otherwise;
* `{name}.idx`: N + 1 int64 offsets into it (offsets[0] = 0, offsets[N] = the number of ids).

Both are raw arrays (no header): meta.json of the cache records the dtype and the counts. Reading maps
them (`np.memmap`, read-only), so a process holds only the pages it touches and the processes of one
node share them; the per-sentence cost in RAM is the length array (`TokenArray.lengths`, 4 bytes).
Writing appends chunk by chunk (`TokenArrayWriter`), so a corpus of any size is written in bounded memory.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

OFFSET_DTYPE = np.dtype(np.int64)


def id_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id below `vocab_size`."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


@dataclass
class CorpusPart:
    """Pairs [start, end) of a training split came from corpus `name`; `weight` scales how many of
    them an epoch draws (data.train_corpora[i].weight; 1 for a single corpus and for valid/test)."""

    name: str
    start: int
    end: int
    weight: float = 1.0

    def __len__(self) -> int:
        return self.end - self.start


class TokenArray(Sequence[np.ndarray]):
    """N id sequences held as one flat array `ids` [total] and `offsets` [N + 1] (int64).

    Item i is the view `ids[offsets[i]:offsets[i + 1]]` (no copy): a batch copies only its own
    sentences out of the map. `lengths` [N] int32 (piece counts) is computed once, on first use.
    """

    def __init__(self, ids: np.ndarray, offsets: np.ndarray):
        if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(ids):
            raise ValueError(f"ids ({len(ids)}) and offsets (last {offsets[-1] if len(offsets) else None}) "
                             "do not match")
        self.ids = ids  # np.memmap when mapped from a file (kept for what it says: the file, read-only)
        self.offsets = offsets
        # Items are sliced from plain ndarray views of the maps (the same pages): a slice of an np.memmap
        # is a memmap too, built through the subclass's hooks, several times slower per sentence.
        self._ids = ids.view(np.ndarray)
        self._offsets = offsets.view(np.ndarray)
        self._lengths: np.ndarray | None = None
        self.source: tuple | None = None  # open_token_array's arguments when mapped from files

    def __reduce__(self):
        # A mapped array travels to other processes (ddp_spawn, DataLoader workers started by spawn) as its
        # file names, and is mapped again there: pickling the maps would copy the whole split into each.
        if self.source is not None:
            return open_token_array, self.source
        return TokenArray, (self.ids, self.offsets)

    @classmethod
    def from_sequences(cls, seqs: Iterable[Sequence[int]], dtype: np.dtype = np.dtype(np.int32)) -> "TokenArray":
        """An in-memory array of `seqs` (tests, small splits)."""
        seqs = [np.asarray(s, dtype=dtype) for s in seqs]
        offsets = np.zeros(len(seqs) + 1, dtype=OFFSET_DTYPE)
        np.cumsum([len(s) for s in seqs], out=offsets[1:])
        ids = np.concatenate(seqs) if seqs else np.zeros(0, dtype=dtype)
        return cls(ids.astype(dtype, copy=False), offsets)

    @property
    def lengths(self) -> np.ndarray:
        """[N] int32: the number of ids of each sequence."""
        if self._lengths is None:
            self._lengths = np.diff(self._offsets).astype(np.int32)
        return self._lengths

    @property
    def total(self) -> int:
        return int(self.offsets[-1])

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i):  # noqa: ANN001 (an int or a slice, as a list takes)
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        return self._ids[self._offsets[i]:self._offsets[i + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        ids, offsets = self._ids, self._offsets
        for i in range(len(self)):
            yield ids[offsets[i]:offsets[i + 1]]


class TokenArrayWriter:
    """Appends id sequences to `{prefix}.bin` and their offsets to `{prefix}.idx`, chunk by chunk."""

    def __init__(self, prefix: str | os.PathLike, dtype: np.dtype):
        self.prefix = Path(prefix)
        self.dtype = np.dtype(dtype)
        self.limit = np.iinfo(self.dtype).max
        self._ids = open(self.prefix.with_name(self.prefix.name + ".bin"), "wb")
        self._offsets = open(self.prefix.with_name(self.prefix.name + ".idx"), "wb")
        self._offsets.write(np.zeros(1, dtype=OFFSET_DTYPE).tobytes())
        self.count = 0  # sequences written
        self.total = 0  # ids written

    def append(self, seqs: Sequence[Sequence[int]]) -> None:
        """Write `seqs` (lists of ids, each < the dtype's limit) after those written before."""
        if not seqs:
            return
        lengths = np.fromiter(map(len, seqs), dtype=OFFSET_DTYPE, count=len(seqs))
        flat = np.fromiter(chain.from_iterable(seqs), dtype=np.int64, count=int(lengths.sum()))
        if len(flat) and int(flat.max()) > self.limit:
            raise ValueError(f"id {int(flat.max())} does not fit {self.dtype}")
        self._ids.write(flat.astype(self.dtype).tobytes())
        self._offsets.write((np.cumsum(lengths) + self.total).tobytes())
        self.count += len(seqs)
        self.total += len(flat)

    def close(self) -> None:
        self._ids.close()
        self._offsets.close()

    def __enter__(self) -> "TokenArrayWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _map(path: Path, dtype: np.dtype, count: int) -> np.ndarray:
    expected = count * dtype.itemsize
    size = path.stat().st_size
    if size != expected:
        raise ValueError(f"{path}: {size} bytes, expected {expected} ({count} x {dtype})")
    if count == 0:  # mmap cannot map an empty file
        return np.zeros(0, dtype=dtype)
    array = np.memmap(path, dtype=dtype, mode="r", shape=(count,))
    # Batches read a few sentences from all over the file: without this, each page fault on a page not yet
    # in the page cache also reads the pages after it from disk (read-ahead). The kernel still maps the
    # neighbouring pages that are already cached (fault-around), which RSS counts (docs/results.md).
    mapped = getattr(array, "_mmap", None)
    if mapped is not None and hasattr(mmap, "MADV_RANDOM"):
        mapped.madvise(mmap.MADV_RANDOM)
    return array


def open_token_array(prefix: str | os.PathLike, dtype: str | np.dtype, count: int, total: int) -> TokenArray:
    """Map `{prefix}.bin` / `.idx` written by `TokenArrayWriter` (`count` sequences, `total` ids), read-only."""
    prefix = Path(prefix)
    ids = _map(prefix.with_name(prefix.name + ".bin"), np.dtype(dtype), total)
    offsets = _map(prefix.with_name(prefix.name + ".idx"), OFFSET_DTYPE, count + 1)
    array = TokenArray(ids, offsets)
    array.source = (str(prefix), np.dtype(dtype).name, count, total)
    return array
