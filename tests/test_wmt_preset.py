"""`experiment=wmt14_en_de` and `callbacks=step_checkpoint` (issue 32, item 5): the preset composes and
validates, every command of docs/wmt.md composes, and a tiny run of the preset itself, on toy files laid
out as docs/wmt.md says, writes a checkpoint every N optimiser steps that `seq2seq-average` can use."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint

from seq2seq.cli import average
from seq2seq.config import (BatchingConfig, DataConfig, ModelConfig, OptimConfig, SchedulerConfig, SearchConfig,
                            ValidationConfig, section)
from seq2seq.training.run import train

from .conftest import synthetic_pairs, write_lines
from .helpers import REPO, compose_train

GUIDE = REPO / "docs" / "wmt.md"
SECTIONS = {"data": DataConfig, "batching": BatchingConfig, "model": ModelConfig, "optim": OptimConfig,
            "scheduler": SchedulerConfig, "search": SearchConfig, "validation": ValidationConfig}
# The WMT14 en-de training files as distributed (file prefixes), the validation and the test split.
TRAIN_PREFIXES = ["europarl-v7.de-en", "commoncrawl.de-en", "news-commentary-v9.de-en"]
STEP_CKPT = re.compile(r"step(\d{7})\.ckpt")


def sections(cfg) -> dict:
    """Every checked section of a composed training config, as its dataclass (raises on a bad value)."""
    return {key: section(cls, cfg[key], key) for key, cls in SECTIONS.items()}


def test_the_preset_composes_into_a_wmt_sized_run(tmp_path):
    cfg = compose_train(["experiment=wmt14_en_de"], tmp_path / "run")
    s = sections(cfg)
    data, model, scheduler = s["data"], s["model"], s["scheduler"]
    assert cfg.task_name == "wmt14_en_de"
    assert (data.corpus, data.src_lang, data.tgt_lang) == ("wmt14", "en", "de")
    assert (data.valid_split, data.test_split) == ("newstest2013", "newstest2014")
    assert Path(data.root) == Path(cfg.paths.data_dir) / "wmt14" and not data.download
    assert [Path(c.path) for c in data.train_corpora] == [Path(data.root) / p for p in TRAIN_PREFIXES]
    assert all(c.weight == 1.0 for c in data.train_corpora)
    assert data.tokenizer.joint and 30_000 <= data.tokenizer.vocab_size <= 2 ** 16  # ~32k, ids in uint16
    assert 0 < data.tokenizer.max_sentences <= 2_000_000  # a bounded sentencepiece sample
    assert 100 <= data.filter.max_tokens <= 128
    assert model.cell == "lstm" and model.decoder_hidden_size >= 1000
    assert model.encoder_hidden_size * (2 if model.bidirectional else 1) >= 1000
    # Steps, not epochs: the schedule, validation and the end of training count optimiser steps.
    assert scheduler.name == "warmup_decay" and scheduler.warmup_steps > 0 and scheduler.total_steps == 0
    trainer = cfg.trainer
    assert trainer.max_steps > 0 and trainer.max_epochs == -1
    assert isinstance(trainer.val_check_interval, int) and trainer.check_val_every_n_epoch is None
    assert trainer.accelerator == "gpu" and trainer.precision == "bf16-mixed"
    assert 0 < s["validation"].max_sentences < 3000  # BLEU on a part of newstest2013's 3,000
    step = instantiate(cfg.callbacks.step_checkpoint)
    assert isinstance(step, ModelCheckpoint) and step.monitor is None and step.save_top_k == -1
    assert 0 < step._every_n_train_steps <= trainer.max_steps and step.every_n_epochs == 0
    assert Path(step.dirpath) == (tmp_path / "run" / "checkpoints").resolve()


def guide_commands() -> list[list[str]]:
    """The overrides of every `seq2seq-prepare` / `seq2seq-train` command in the guide's bash blocks,
    less the SLURM launcher's (an optional extra; tests/test_sweep.py checks its config)."""
    blocks = re.findall(r"```bash\n(.*?)```", GUIDE.read_text(encoding="utf-8"), flags=re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            starts = [i for i, w in enumerate(words) if w in ("seq2seq-prepare", "seq2seq-train")]
            if starts:
                commands.append([w.replace("$DATA", "/shared/data") for w in words[starts[0] + 1:]
                                 if w != "-m" and not w.startswith(("hydra/launcher=", "hydra.launcher."))])
    return commands


def test_every_command_of_the_guide_composes(tmp_path):
    commands = guide_commands()
    assert len(commands) >= 5
    for overrides in commands:
        overrides = [o.replace("<run folder>", str(tmp_path)).replace("<that sweep folder>", str(tmp_path))
                     for o in overrides]
        cfg = compose_train(overrides, tmp_path / "run")
        sections(cfg)
        assert cfg.task_name == "wmt14_en_de"
    eight = next(c for c in commands if "trainer.devices=8" in c)
    cfg = compose_train(eight, tmp_path / "run")
    # trainer=ddp replaces the preset's trainer choice, but the preset's own trainer keys still apply.
    assert (cfg.trainer.strategy, cfg.trainer.devices, cfg.trainer.precision) == ("ddp", 8, "bf16-mixed")
    assert cfg.trainer.check_val_every_n_epoch is None and cfg.trainer.max_epochs == -1


def test_the_guides_own_experiment_file_composes(tmp_path):
    """The guide's example of more corpora: an experiment file that includes the preset."""
    text = re.search(r"```yaml\n(.*?)```", GUIDE.read_text(encoding="utf-8"), flags=re.S).group(1)
    name = re.search(r"# conf/experiment/(\w+)\.yaml", text).group(1)
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / f"{name}.yaml").write_text(text, encoding="utf-8")
    cfg = compose_train([f"hydra.searchpath=[file://{tmp_path}]", f"experiment={name}"], tmp_path / "run")
    data = sections(cfg)["data"]
    assert cfg.task_name == name and len(data.train_corpora) == 4
    assert cfg.trainer.max_steps == compose_train(["experiment=wmt14_en_de"], tmp_path / "run").trainer.max_steps
    assert cfg.callbacks.step_checkpoint._target_.endswith("ModelCheckpoint")  # the preset's callbacks came too


def wmt_layout(data_dir: Path) -> Path:
    """Toy files named and placed as docs/wmt.md lays out WMT14 (en = toy words, de = reversed words)."""
    root = data_dir / "wmt14"
    for prefix, n, seed in ((TRAIN_PREFIXES[0], 30, 1), (TRAIN_PREFIXES[1], 20, 2), (TRAIN_PREFIXES[2], 10, 3),
                            ("newstest2013", 20, 4), ("newstest2014", 10, 5)):
        en, de = synthetic_pairs(n, seed)
        write_lines(root / f"{prefix}.en", en)
        write_lines(root / f"{prefix}.de", de)
    return root


def test_step_checkpoints_every_n_steps_in_a_tiny_run_of_the_preset(tmp_path):
    """The preset shrunk to seconds on the CPU: its corpora, layers, step-based validation and schedule,
    max_epochs=-1 and its step checkpoints (every 2 steps here), across an epoch boundary."""
    data_dir, run_dir = tmp_path / "data", tmp_path / "run"
    wmt_layout(data_dir)
    every, steps = 2, 8
    cfg = compose_train([
        "experiment=wmt14_en_de", "trainer=cpu", "trainer.precision=32-true", "trainer.enable_progress_bar=false",
        f"paths.data_dir={data_dir}", "data.tokenizer.vocab_size=100", "data.tokenizer.byte_fallback=false",
        "model.embedding_size=16", "model.encoder_hidden_size=8", "model.decoder_hidden_size=16",
        "batching.max_tokens=256", f"trainer.max_steps={steps}", "trainer.val_check_interval=3",
        "trainer.log_every_n_steps=1", "scheduler.warmup_steps=2", "validation.max_sentences=5",
        f"callbacks.step_checkpoint.every_n_train_steps={every}", "test_after_training=false",
        "test_tune_search=false", "plot_curves=false"], run_dir)
    train(cfg)

    meta = json.loads(next((data_dir / "cache").glob("wmt14.en-de.*/meta.json")).read_text(encoding="utf-8"))
    assert [p["name"] for p in meta["parts"]] == ["europarl", "commoncrawl", "news-commentary"]

    folder = run_dir / "checkpoints"
    found = sorted(p.name for p in folder.glob("step*.ckpt"))
    assert found == [f"step{n:07d}.ckpt" for n in range(every, steps + 1, every)]
    for name in found:
        ckpt = torch.load(folder / name, map_location="cpu", weights_only=True)
        assert ckpt["global_step"] == int(STEP_CKPT.fullmatch(name).group(1))
        assert ckpt["optimizer_states"]  # a full training state: resumable with ckpt_path=<file>
    last = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == steps and last["epoch"] >= 1  # the run crossed an epoch boundary

    avg = tmp_path / "avg.ckpt"
    assert average.main(["--output", str(avg), "--dir", str(folder), "--last", "2"]) == 0
    averaged_from = torch.load(avg, map_location="cpu", weights_only=True)["averaged_from"]
    assert sorted(Path(p).name for p in averaged_from) == [f"step{steps - every:07d}.ckpt", f"step{steps:07d}.ckpt"]
