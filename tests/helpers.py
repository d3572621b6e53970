"""Helpers for the end-to-end tests: compose the real config, run the real console scripts."""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

from seq2seq.config import CONF_DIR

REPO = Path(__file__).resolve().parents[1]

# A tiny model on a slice of Multi30k: seconds per run on two CPU cores.
TINY = ["debug=tiny", "trainer.enable_progress_bar=false"]


def learn(root: Path, steps: int = 200, val_every: int = 50) -> list[str]:
    """Overrides (after TINY) that train the tiny model on conftest's `learnable_corpus` at `root` until
    it translates (validation BLEU ~10-30 after 200 steps, seconds on one core): for tests that compare
    scores or texts and would compare nothing on an untrained model's output."""
    return [f"data.root={root}", "data.corpus=toy", "data.mirrors=[]", "data.download=false",
            "data.tokenizer.vocab_size=100", "data.tokenizer.byte_fallback=false",
            f"trainer.max_steps={steps}", "trainer.max_epochs=1000", f"trainer.val_check_interval={val_every}",
            "trainer.check_val_every_n_epoch=null", "scheduler.warmup_steps=10", "optim.lr=0.01"]


def require(module: str):
    """Import an optional extra's module (tensorboard, the SLURM launcher) for a test; in CI (CI=true,
    where .ci/run installs the extras) its absence fails the test instead of skipping it."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true: {module} is not installed (.ci/run installs the extras the tests need)",
                        pytrace=False)
        pytest.skip(f"{module} is not installed (an optional extra; .ci/run installs it)")


def compose_train(overrides: list[str], output_dir: Path):
    """The composed training config, as `seq2seq-train` would see it, writing into `output_dir`."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("train", overrides=[*overrides, f"paths.output_dir={output_dir}"], return_hydra_config=True)
    HydraConfig().set_config(cfg)
    return cfg


def load_script(name: str):
    """scripts/<name>.py imported as a module (scripts/ is not a package), e.g. "gpu/concurrent_runs".
    It is registered in sys.modules (as scripts.gpu.concurrent_runs): dataclasses look their module up there."""
    spec = importlib.util.spec_from_file_location("scripts." + name.replace("/", "."), REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run_script(module: str, *args: str, cwd: Path = REPO, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run `python -m seq2seq.cli.<module> args...` as a user would; output captured as text."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", f"seq2seq.cli.{module}", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"seq2seq.cli.{module} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "logs" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def series(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key) not in (None, "")]


def tiny_model_and_tokenizer(model_cfg, n_pairs: int, seed: int, vocab_size: int):
    """A joint sentencepiece model trained on `n_pairs` synthetic pairs and a freshly initialised
    (seed 0) `Seq2Seq` of `model_cfg` over it: what fixtures need to write a checkpoint without
    training through Lightning. Returns (model, tokenizer, (src, tgt) lines)."""
    import torch

    from seq2seq.config import TokenizerConfig
    from seq2seq.model import Seq2Seq
    from seq2seq.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer, train_sentencepiece

    from .conftest import synthetic_pairs

    src, tgt = synthetic_pairs(n_pairs, seed)
    spm_bytes = train_sentencepiece(src + tgt, TokenizerConfig(vocab_size=vocab_size, byte_fallback=True))
    tokenizer = Tokenizer(spm_bytes, spm_bytes)
    torch.manual_seed(0)
    model = Seq2Seq(model_cfg, src_vocab_size=tokenizer.src_vocab_size,
                    tgt_vocab_size=tokenizer.tgt_vocab_size, pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID)
    return model, tokenizer, (src, tgt)
