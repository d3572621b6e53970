"""Shared fixtures: the real Multi30k (read in place; skipped when absent, a failure under CI=true) and
small synthetic corpora, one of them learnable by a tiny model in seconds."""

from __future__ import annotations

import gzip
import os
import random
from pathlib import Path

import pytest

MULTI30K = Path(__file__).resolve().parents[1].parent / "shared/data/multi30k"

# A toy "language pair": target words are the source words reversed, so the pairs are aligned,
# learnable, and sentencepiece has real structure to merge.
_WORDS = ("the a man woman dog cat runs sits on under red blue green small big house street "
          "water ball child plays with near old young tree car").split()


def synthetic_pairs(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """n aligned (src, tgt) sentence pairs of 3-10 words each."""
    rng = random.Random(seed)
    src, tgt = [], []
    for _ in range(n):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 10))]
        src.append(" ".join(words))
        tgt.append(" ".join(w[::-1] for w in words))
    return src, tgt


def write_lines(path: Path, lines: list[str]) -> Path:
    """Write lines (UTF-8, "\\n"-terminated); gzip when the name ends in .gz."""
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny test models run faster on one thread, and CI shares two cores with subprocesses."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def multi30k_dir() -> Path:
    """The Multi30k folder; in CI (CI=true) its absence fails the test instead of skipping it, so a
    wrong checkout layout cannot turn off the end-to-end tests behind a green run."""
    if not (MULTI30K / "train.en.gz").is_file():
        message = (f"Multi30k not found at {MULTI30K} (the end-to-end tests read it there: put the corpus "
                   "in ../shared/data/multi30k next to this checkout)")
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true: {message}", pytrace=False)
        pytest.skip(message)
    return MULTI30K


@pytest.fixture(scope="session")
def learnable_corpus(tmp_path_factory) -> Path:
    """The toy pair (target = source words reversed) as a corpus folder that a tiny model learns in a
    few hundred steps (validation BLEU well above 0): for end-to-end tests whose comparisons are
    vacuous on an untrained model's output (BLEU 0 against BLEU 0). Use with helpers.learn()."""
    root = tmp_path_factory.mktemp("learnable")
    for split, n, seed in (("train", 600, 1), ("val", 40, 2), ("test_2016_flickr", 30, 3)):
        src, tgt = synthetic_pairs(n, seed)
        write_lines(root / f"{split}.de", src)
        write_lines(root / f"{split}.en", tgt)
    return root


@pytest.fixture
def toy_corpus(tmp_path):
    """Factory: write a synthetic de-en corpus (train/val/test_2016_flickr) under a folder; returns it.

    `make(root=None, n_train=300, n_valid=40, n_test=30, gz=False, extra={})`; `extra` maps
    "split.lang" to lines appended to that file (to inject bad pairs).
    """

    def make(root: Path | None = None, n_train: int = 300, n_valid: int = 40, n_test: int = 30,
             gz: bool = False, extra: dict | None = None) -> Path:
        root = root or tmp_path / "corpus"
        suffix = ".gz" if gz else ""
        for split, n, seed in (("train", n_train, 1), ("val", n_valid, 2), ("test_2016_flickr", n_test, 3)):
            src, tgt = synthetic_pairs(n, seed)
            for lang, lines in (("de", src), ("en", tgt)):
                lines = lines + list((extra or {}).get(f"{split}.{lang}", []))
                write_lines(root / f"{split}.{lang}{suffix}", lines)
        return root

    return make
