"""Synthetic parallel corpora of any size from Multi30k, for the scale benchmark (`scale.py`) and the GPU
check's scale stage (`scripts/gpu/check.py --mode scale`).

    python scripts/bench/synthetic_corpus.py --pairs 1M --out synth_1M [--multi30k ../shared/data/multi30k]

Each synthetic training pair joins one to three Multi30k training pairs drawn at random (with a space
between the sentences; the same draws on both sides, so the pair stays a translation): about 2 Multi30k
pairs, ~26 sentencepiece pieces a side, per line. The folder gets `train.{src,tgt}` (plain, or `.gz` with
`--gzip`) and links to Multi30k's `val` and `test_2016_flickr` files, so it is a corpus folder for
`data.root=`. The draws are seeded and come in fixed chunks of 100,000 lines: the same --seed and --pairs
give the same bytes. Nothing here goes through the package: 10M pairs (~2.6 GB of text) take about a
minute on one core (numpy gathers the bytes of a whole chunk at once, no Python loop per line).

A finished folder holds `synthetic.json` (pairs, seed, languages, bytes); a call that finds one with the
same settings reuses the folder; a half-written folder (killed run) is rebuilt.
Only the standard library and numpy are used.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MULTI30K = REPO.parent / "shared" / "data" / "multi30k"
CHUNK = 100_000  # lines per draw: fixed, so the output depends on (seed, pairs) only
HELD_OUT = ("val", "test_2016_flickr")  # Multi30k's splits linked as the validation and test splits
MARKER = "synthetic.json"


def parse_size(text: str) -> int:
    """'100k' -> 100000, '1M' -> 1000000, '2.5M', '20000' (k = 1e3, M = 1e6, G = 1e9)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)\s*", text)
    if not m:
        raise ValueError(f"not a size: {text!r} (e.g. 100k, 1M, 20000)")
    value = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2).lower()]
    if value < 1:
        raise ValueError(f"size must be >= 1, got {text!r}")
    return round(value)


def size_label(n: int) -> str:
    """100000 -> '100k', 1000000 -> '1M', 12345 -> '12345'."""
    for unit, factor in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)


def _read_side(path: Path) -> list[bytes]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        return [line.strip() for line in f]


def find_side(folder: Path, split: str, lang: str) -> Path:
    for name in (f"{split}.{lang}", f"{split}.{lang}.gz"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder}/{split}.{lang}[.gz] not found (the Multi30k folder, --multi30k)")


class SidePool:
    """One language's Multi30k training sentences as one byte buffer, each followed by a space."""

    def __init__(self, sentences: list[bytes]):
        self.lengths = np.array([len(s) for s in sentences], dtype=np.int64)  # [M] bytes, no separator
        self.starts = np.concatenate([[0], np.cumsum(self.lengths + 1)[:-1]])  # [M]
        self.buffer = np.frombuffer(b" ".join(sentences) + b" ", dtype=np.uint8)

    def lines(self, picks: np.ndarray, last: np.ndarray) -> bytes:
        """The text of the lines made of `picks` ([P] sentence indices, in order); `last` ([P] bool)
        marks each line's final sentence, which ends with a newline instead of a space."""
        sizes = self.lengths[picks] + 1  # [P] sentence + separator
        ends = np.cumsum(sizes)
        out_starts = ends - sizes
        # byte j of the output comes from buffer[start of its sentence + j - start of its output slot]
        source = np.repeat(self.starts[picks] - out_starts, sizes) + np.arange(int(ends[-1]), dtype=np.int64)
        out = self.buffer[source]
        out[ends[last] - 1] = ord("\n")
        return out.tobytes()


def make_corpus(out: str | os.PathLike, pairs: int, seed: int = 1, multi30k: str | os.PathLike = DEFAULT_MULTI30K,
                langs: tuple[str, str] = ("de", "en"), gzip_level: int = 0, quiet: bool = False) -> dict:
    """Write (or reuse) the synthetic corpus folder `out` of `pairs` training pairs; returns its
    synthetic.json record (pairs, seed, langs, bytes per side, seconds it took to write)."""
    out, multi30k = Path(out), Path(multi30k)
    suffix = ".gz" if gzip_level else ""
    settings = {"pairs": pairs, "seed": seed, "langs": list(langs), "chunk": CHUNK, "gzip_level": gzip_level}
    marker = out / MARKER
    if marker.is_file():
        record = json.loads(marker.read_text())
        if {k: record.get(k) for k in settings} == settings:
            return record
    out.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    t0 = time.perf_counter()
    pools = [SidePool(_read_side(find_side(multi30k, "train", lang))) for lang in langs]
    if len(pools[0].lengths) != len(pools[1].lengths):
        raise ValueError(f"{multi30k}: train.{langs[0]} and train.{langs[1]} differ in line count")
    n_source = len(pools[0].lengths)
    rng = np.random.default_rng(seed)
    tmp_paths = [out / f".train.{lang}{suffix}.tmp" for lang in langs]
    written = [0, 0]
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(gzip.open(p, "wb", compresslevel=gzip_level) if gzip_level else open(p, "wb"))
                 for p in tmp_paths]
        for first in range(0, pairs, CHUNK):
            n = min(CHUNK, pairs - first)
            joined = rng.integers(1, 4, size=n)  # [n] Multi30k pairs per synthetic line: 1..3
            picks = rng.integers(0, n_source, size=int(joined.sum()))  # [P]
            last = np.zeros(len(picks), dtype=bool)
            last[np.cumsum(joined) - 1] = True
            for side, (pool, f) in enumerate(zip(pools, files)):
                text = pool.lines(picks, last)
                f.write(text)
                written[side] += len(text)
            if not quiet and (first // CHUNK) % 20 == 19:
                print(f"  {first + n:,} / {pairs:,} pairs written", file=sys.stderr, flush=True)
    for lang, tmp in zip(langs, tmp_paths):
        for stale in (out / f"train.{lang}", out / f"train.{lang}.gz"):
            stale.unlink(missing_ok=True)
        os.replace(tmp, out / f"train.{lang}{suffix}")
    for split in HELD_OUT:
        for lang in langs:
            source = find_side(multi30k, split, lang).resolve()
            link = out / source.name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(source)
    record = {**settings, "multi30k": str(multi30k.resolve()), "source_pairs": n_source,
              "text_bytes": dict(zip(langs, written)), "seconds": round(time.perf_counter() - t0, 1)}
    marker.write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", required=True, help="training pairs, e.g. 100k, 1M, 10M")
    p.add_argument("--out", required=True, help="the corpus folder to write (data.root=...)")
    p.add_argument("--multi30k", default=str(DEFAULT_MULTI30K), help="the Multi30k folder (train/val/test files)")
    p.add_argument("--langs", default="de,en", help="the two language suffixes")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--gzip", type=int, default=0, metavar="LEVEL", help="write train.*.gz at this level (0: plain)")
    args = p.parse_args(argv)
    langs = tuple(args.langs.split(","))
    if len(langs) != 2:
        p.error("--langs takes two suffixes, e.g. de,en")
    try:
        record = make_corpus(args.out, parse_size(args.pairs), args.seed, args.multi30k, langs, args.gzip)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
