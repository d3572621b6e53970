"""Start-up: what the console scripts import before they answer.

`--help` and usage errors of every console script are answered in a process where importing torch
fails; translation, averaging and scoring run in a process where importing Lightning, Hydra or
omegaconf fails. Each subprocess installs an import blocker (a meta-path finder that raises
ImportError) before running the script's module as `python -m` would. Timings are not tested here:
scripts/bench/startup.py measures them.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from seq2seq.cli import translate
from seq2seq.cli.hydra_help import _defaults, _options, app_help
from seq2seq.checkpoint.format import MODEL_PREFIX, make_payload
from seq2seq.checkpoint.loading import load_for_translation
from seq2seq.config import CONF_DIR, ModelConfig, SearchConfig

from .conftest import synthetic_pairs, write_lines
from .helpers import REPO, tiny_model_and_tokenizer

TRAINING_STACK = ("lightning", "pytorch_lightning", "hydra", "omegaconf")

# argv: BLOCKED (comma-separated top-level packages) TARGET ARGS..., where TARGET is a module run as
# `python -m` runs it, or `module:function`, called as a console script's wrapper calls it.
BLOCKED_RUN = textwrap.dedent("""
    import sys

    class Blocker:
        def __init__(self, names):
            self.names = names

        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in self.names:
                raise ImportError(f"import of {name} blocked by the test")
            return None

    sys.meta_path.insert(0, Blocker(set(sys.argv.pop(1).split(","))))
    target = sys.argv.pop(1)
    if ":" in target:
        import importlib
        module, function = target.split(":")
        sys.exit(getattr(importlib.import_module(module), function)())
    import runpy
    runpy.run_module(target, run_name="__main__", alter_sys=True)
""")


def run_blocked(blocked: tuple[str, ...], module: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", BLOCKED_RUN, ",".join(blocked), module, *args], input=stdin,
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_the_blocker_blocks():
    """The harness itself: a blocked import fails (else every test below would pass vacuously)."""
    proc = run_blocked(("torch",), "seq2seq.model")
    assert proc.returncode != 0 and "import of torch blocked by the test" in proc.stderr


# ------------------------------------------------------------------------------- --help without torch

def console_scripts() -> dict[str, str]:
    """[project.scripts] of pyproject.toml: command name -> module (tomllib needs Python 3.11)."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    section = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    entries = re.findall(r'^(\S+)\s*=\s*"([\w.]+):main"', section, flags=re.M)  # all call a main()
    assert len(entries) == len(re.findall(r"^\S+\s*=", section, flags=re.M)), section  # every entry parsed
    return dict(entries)


def test_console_scripts_are_found():
    assert {"seq2seq-translate", "seq2seq-score", "seq2seq-average", "seq2seq-prepare",
            "seq2seq-train"} <= set(console_scripts())


@pytest.mark.parametrize("command, module", sorted(console_scripts().items()))
def test_help_needs_no_torch(command, module):
    """Every console script, those added later included, answers --help without torch.
    Mutation: `import torch` at the top of translate.py (or lightning in train.py) fails this."""
    proc = run_blocked(("torch", "lightning", "pytorch_lightning"), f"{module}:main", "--help")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"usage: {command}" in proc.stdout.lower()


def test_usage_errors_need_no_torch(tmp_path):
    """A bad flag and missing files are reported before torch is imported, with the usual messages.
    Mutation: dropping the checkpoint check of translate.check_files fails the missing-checkpoint case."""
    missing = tmp_path / "nope.ckpt"
    src = write_lines(tmp_path / "in.de", ["ein Satz"])
    blocked = ("torch", "lightning", "pytorch_lightning")
    cases = [
        (("seq2seq.cli.translate", "--checkpoint", str(missing), "--bogus"), "unrecognized arguments: --bogus"),
        (("seq2seq.cli.translate", "--checkpoint", str(missing), "--input", str(tmp_path / "no.de")), "no.de"),
        (("seq2seq.cli.translate", "--checkpoint", str(missing), "--input", str(src)),
         f"error: checkpoint {missing} does not exist"),
        (("seq2seq.cli.average", "-o", str(tmp_path / "avg.ckpt"), str(missing)), f"checkpoint {missing} does not exist"),
        (("seq2seq.cli.score", "--hyp", str(tmp_path / "no.txt"), "--ref", str(src)), "file not found"),
    ]
    for (module, *args), message in cases:
        proc = run_blocked(blocked, module, *args)
        assert proc.returncode == 2, (args, proc.stderr[-3000:])
        assert message in proc.stderr, (args, proc.stderr)


# --------------------------------------------------------------- translation without the training stack

TINY = ModelConfig(cell="gru", embedding_size=16, encoder_hidden_size=16, decoder_hidden_size=32, encoder_layers=1,
                   attention_size=16, dropout=0.0, rnn_dropout=0.0)


@pytest.fixture(scope="module")
def lightning_style_ckpt(tmp_path_factory) -> Path:
    """A checkpoint in seq2seq-train's format, optimiser state included, built without training."""
    tmp = tmp_path_factory.mktemp("startup")
    model, tokenizer, _ = tiny_model_and_tokenizer(TINY, 300, 5, 300)
    config = {"model": dataclasses.asdict(TINY),
              "search": dataclasses.asdict(SearchConfig(max_len_a=4, max_len_b=0.5, batch_tokens=512))}
    params = list(model.parameters())
    adam = {"state": {i: {"step": torch.tensor(3.0), "exp_avg": torch.randn_like(p), "exp_avg_sq": torch.rand_like(p)}
                      for i, p in enumerate(params)},
            "param_groups": [{"lr": 1e-3, "params": list(range(len(params)))}]}
    ckpt = {"epoch": 0, "global_step": 3, "state_dict": {MODEL_PREFIX + k: v for k, v in model.state_dict().items()},
            "optimizer_states": [adam], "lr_schedulers": [], "seq2seq": make_payload(config, tokenizer)}
    path = tmp / "tiny.ckpt"
    torch.save(ckpt, path)
    return path


def in_process_translation(ckpt: Path, src: Path, tmp_path: Path) -> str:
    out = tmp_path / "in_process.en"
    assert translate.main(["--checkpoint", str(ckpt), "--input", str(src), "--output", str(out), "--quiet"]) == 0
    return out.read_text(encoding="utf-8")


def test_translate_average_score_without_training_stack(lightning_style_ckpt, tmp_path):
    """seq2seq-translate, -average and -score run where Lightning, Hydra and omegaconf cannot be imported,
    and translate exactly as in a process that has them all. Mutation: importing
    lightning.pytorch.plugins.io in checkpoint.py (as before) fails this."""
    lines = synthetic_pairs(12, 9)[0]
    src = write_lines(tmp_path / "in.de", lines)
    expected = in_process_translation(lightning_style_ckpt, src, tmp_path)
    assert len(expected.split("\n")) == len(lines) + 1

    proc = run_blocked(TRAINING_STACK, "seq2seq.cli.translate", "--checkpoint", str(lightning_style_ckpt),
                       "--quiet", stdin="".join(line + "\n" for line in lines))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == expected

    averaged = tmp_path / "avg.ckpt"
    proc = run_blocked(TRAINING_STACK, "seq2seq.cli.average", "-o", str(averaged), str(lightning_style_ckpt),
                       str(lightning_style_ckpt))
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_blocked(TRAINING_STACK, "seq2seq.cli.translate", "--checkpoint", str(averaged), "--input", str(src),
                       "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == expected  # the mean of two equal checkpoints is the same model

    ref = write_lines(tmp_path / "ref.en", synthetic_pairs(12, 9)[1])
    proc = run_blocked(TRAINING_STACK, "seq2seq.cli.score", "--hyp", str(ref), "--ref", str(ref))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("BLEU = 100.00")


def test_loading_leaves_the_optimiser_state_alone_and_reads_legacy_files(lightning_style_ckpt, tmp_path):
    """The memory-mapped load gives the same model as an eager one, also for a file in torch's legacy
    (pre-zip) format, which cannot be memory-mapped. Mutation: `mmap=True` unconditionally fails this."""
    model, *_ = load_for_translation(lightning_style_ckpt)
    legacy = tmp_path / "legacy.ckpt"
    torch.save(torch.load(lightning_style_ckpt, weights_only=True), legacy, _use_new_zipfile_serialization=False)
    legacy_model, *_ = load_for_translation(legacy)
    eager = torch.load(lightning_style_ckpt, weights_only=True)["state_dict"]
    for name, value in model.state_dict().items():
        assert torch.equal(value, eager[MODEL_PREFIX + name]), name
        assert torch.equal(legacy_model.state_dict()[name], value), name


# ------------------------------------------------------------------------------- the Hydra apps' help

def test_quick_help_lists_every_group_and_default():
    """The bare --help of the Hydra apps shows each config group of conf/, its options and its default as
    train.yaml names it. Mutation: reading options from the wrong folder level drops hydra/launcher."""
    text = app_help("seq2seq-train", "summary", "experiment=quickstart", CONF_DIR)
    defaults = _defaults(CONF_DIR / "train.yaml")
    assert defaults["model"][0] == "rnn" and defaults["experiment"][0] == "null"
    for group, options in _options(CONF_DIR).items():
        line = next(line for line in text.splitlines() if line.split()[:1] == [group])
        for option in options:
            assert (f"[{option}]" if defaults.get(group, ("",))[0] == option else option) in line
    assert "quickstart" in next(line for line in text.splitlines() if line.split()[:1] == ["experiment"])
    assert "hydra/launcher" in text and "slurm" in text


def test_help_with_overrides_is_hydras():
    """`--help` with an override is Hydra's own help, showing the config those overrides compose."""
    proc = run_blocked(("torch", "lightning", "pytorch_lightning"), "seq2seq.cli.train", "seed=4321", "--help")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "seed: 4321" in proc.stdout and "Powered by Hydra" in proc.stdout
