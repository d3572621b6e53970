"""Shared fixtures: the real Multi30k (read in place; skipped when absent, a failure under CI=true) and
small synthetic corpora, one of them learnable by a tiny model in seconds. And the rule that marks the
heavy tests `slow` (docs/development.md: `pytest -m "not slow"` is the fast tier)."""

from __future__ import annotations

import gzip
import inspect
import os
import random
import types
from pathlib import Path

import pytest

from .helpers import TINY, learn, run_script

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


@pytest.fixture
def ddp_launch_env():
    """For a test that launches DDP workers from this process (trainer=ddp_cpu spawns them): Lightning's
    launch sets MASTER_PORT here, as a console run does in its own process; restored afterwards."""
    before = os.environ.get("MASTER_PORT")
    yield
    if before is None:
        os.environ.pop("MASTER_PORT", None)
    else:
        os.environ["MASTER_PORT"] = before


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


@pytest.fixture(scope="session")
def learned_run(tmp_path_factory, learnable_corpus):
    """One real `seq2seq-train` run (the console script) of the tiny model on `learnable_corpus`, long
    enough to translate it (200 steps, seconds), with its final test: (run folder, CompletedProcess).
    Shared: tests/test_train.py checks the run, tests/test_translate.py translates with its best.ckpt."""
    tmp = tmp_path_factory.mktemp("learned")
    proc = run_script("train", *TINY, *learn(learnable_corpus), f"paths.data_dir={tmp / 'data'}",
                      f"hydra.run.dir={tmp / 'run'}")
    return tmp / "run", proc


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


# ------------------------------------------------------------------------------------------ test tiers
# `pytest -m "not slow"` is the fast tier (docs/development.md). A test is marked slow here, never by hand
# unless it is slow for a reason none of these rules sees:
# 1. the code it runs starts a process or trains through Lightning: its own function, the fixtures it
#    uses (and theirs), and the functions and classes of tests/ that any of these call name one of
#    SLOW_NAMES or SLOW_OBJECTS. So a quick test on a fixture that trains a model or runs a console
#    script is slow too: in the fast tier it would pay for that fixture;
# 2. it uses a fixture that its module lists in `SLOW_FIXTURES = (...)`: costly set-up that rule 1 cannot
#    see (a model trained by a plain optimisation loop, an input every test translates end to end);
# 3. it is a case of a grid (one test function parametrized into more than GRID cases) other than the
#    first: the first case exercises the code, the whole grid runs in the full suite.
SLOW_NAMES = {"subprocess", "multiprocessing", "run_script",  # processes: console scripts, servers, DDP
              "fit"}  # Lightning's Trainer.fit
# also when imported under another name; tests/test_layout.py checks that each of them exists
SLOW_OBJECTS = {"torch.multiprocessing", "seq2seq.training.run.train", "seq2seq.cli.train.train",
                "seq2seq.lm.training.train_language_model"}  # train(cfg), the console's and the LM's
GRID = 16


def _qualified(obj) -> str:
    """'seq2seq.training.run.train' for that function, 'torch.multiprocessing' for that module."""
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"


def _code_names(code: types.CodeType) -> set[str]:
    """The global, attribute and imported names that a code object and the functions in it use."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _in_tests(obj) -> bool:
    return ((inspect.isfunction(obj) or inspect.isclass(obj))
            and getattr(obj, "__module__", "").split(".")[0] == "tests")


def _runs_slow_code(func, seen: dict) -> bool:
    """Rule 1 for a function or class of tests/ and what it calls there."""
    func = inspect.unwrap(func)
    if func in seen:
        return seen[func]  # False while in progress: a recursion adds nothing
    seen[func] = False
    if inspect.isclass(func):
        seen[func] = any(_runs_slow_code(m, seen) for m in vars(func).values() if inspect.isfunction(m))
        return seen[func]
    names = _code_names(func.__code__)
    values = [func.__globals__.get(n) for n in names]
    local_imports = {f"{a}.{b}" for a in names for b in names}  # `from x.y import z` in a function body
    seen[func] = (bool(names & SLOW_NAMES) or bool(local_imports & SLOW_OBJECTS)
                  or any(v is not None and _qualified(v) in SLOW_OBJECTS for v in values)
                  or any(_runs_slow_code(v, seen) for v in values if _in_tests(v)))
    return seen[func]


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by the marks
def pytest_collection_modifyitems(config, items):
    seen: dict = {}
    grids: dict = {}
    for item in items:
        if not hasattr(item, "function"):
            continue
        fixtures = getattr(item, "fixturenames", ())
        funcs = [item.function] + [d.func for name in fixtures
                                   for d in item._fixtureinfo.name2fixturedefs.get(name, ()) if _in_tests(d.func)]
        declared = set(getattr(item.module, "SLOW_FIXTURES", ())) & set(fixtures)
        if declared or any(_runs_slow_code(f, seen) for f in funcs):
            item.add_marker(pytest.mark.slow)
        if hasattr(item, "callspec"):
            grids.setdefault((item.module.__name__, item.originalname), []).append(item)
    for cases in grids.values():
        if len(cases) > GRID:
            for item in cases[1:]:
                item.add_marker(pytest.mark.slow)
