"""Hydra sweeps: `seq2seq-train -m` runs every job in its own folder, `seq2seq-runs` turns
the folders into one table, a script-relaunching DDP launch is refused inside a sweep, and the SLURM
launcher config composes into the expected sbatch resources (the slurm extra: installed in CI)."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from seq2seq.cli import runs as collect

from .helpers import TINY, read_metrics, require, run_script, series

FAST_DECODE = ["search.max_len_a=3", "search.max_len_b=0.5"]  # plumbing, not quality: a quick final test


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, multi30k_dir):
    """`seq2seq-train -m model.cell=gru,lstm debug=tiny`: two tiny runs, one after the other."""
    tmp = tmp_path_factory.mktemp("sweep")
    sweep_dir = tmp / "sweep"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")  # on a shared 2-core machine, 2 OpenMP threads per process thrash
        proc = run_script("train", "-m", "model.cell=gru,lstm", *TINY, *FAST_DECODE, f"paths.data_dir={tmp / 'data'}",
                          f"hydra.sweep.dir={sweep_dir}")
    return sweep_dir, proc


def test_sweep_runs_each_job_in_its_own_folder(sweep):
    sweep_dir, proc = sweep
    assert (sweep_dir / "multirun.yaml").is_file()
    for job, cell in (("0", "gru"), ("1", "lstm")):
        run = sweep_dir / job
        assert f"model.cell={cell}" in (run / ".hydra" / "overrides.yaml").read_text()
        assert (run / "checkpoints" / "best.ckpt").is_file()
        assert (run / "checkpoints" / "test_2016_flickr.de-en.scores.json").is_file()
        assert series(read_metrics(run), "val/bleu")
    assert proc.stdout.count("test (test_2016_flickr, de->en)") == 2


def test_collect_runs_tabulates_the_sweep(sweep, tmp_path):
    sweep_dir, _ = sweep
    out_csv, out_md, out_png = tmp_path / "runs.csv", tmp_path / "runs.md", tmp_path / "sweep.png"
    plot = ["--plot", str(out_png)] if importlib.util.find_spec("matplotlib") else []
    subprocess.run([sys.executable, "-m", "seq2seq.cli.runs", str(sweep_dir), "--csv", str(out_csv), "--markdown", str(out_md),
                    *plot], check=True, capture_output=True, text=True)
    if plot:  # every run drew its own curves, and the sweep's overlay exists
        assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert all((sweep_dir / job / "plots" / "curves.png").is_file() for job in ("0", "1"))
    with open(out_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["model.cell"] for r in rows] == ["gru", "lstm"]
    assert "debug" not in rows[0]  # the same in every run: not a varied setting
    for job, row in zip(("0", "1"), rows):
        run = sweep_dir / job
        metrics = read_metrics(run)
        assert float(row["val/bleu"]) == series(metrics, "val/bleu")[-1]
        assert float(row["val/chrf"]) == series(metrics, "val/chrf")[-1]
        assert int(row["steps"]) == 6
        scores = json.loads((run / "checkpoints" / "test_2016_flickr.de-en.scores.json").read_text())
        assert float(row["test/chrf"]) == scores["cased"]["chrf"]
        assert float(row["test/bleu_lc"]) == scores["lowercase"]["bleu"]
        assert row["status"] == "ok"
    lines = out_md.read_text().splitlines()
    assert lines[0].startswith("| run | model.cell |") and "val/bleu" in lines[0] and "test/bleu" in lines[0]
    assert len(lines) == 4 and lines[2].startswith("| 0 | gru |") and lines[3].startswith("| 1 | lstm |")


def _fake_run(root: Path, overrides: list[str], metric_rows: list[dict] | None, scores: dict | None) -> Path:
    (root / ".hydra").mkdir(parents=True)
    (root / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (root / ".hydra" / "config.yaml").write_text("validation:\n  metric: ter\n")
    if metric_rows is not None:
        (root / "logs").mkdir()
        keys = list(dict.fromkeys(k for r in metric_rows for k in r))
        with open(root / "logs" / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(metric_rows)
    if scores is not None:
        (root / "checkpoints").mkdir()
        (root / "checkpoints" / "test.de-en.scores.json").write_text(json.dumps(scores))
    return root


def test_collect_runs_last_best_varied_columns_and_failed_runs(tmp_path):
    rows = [{"step": 9, "train/loss": 2.5, "time/elapsed_s": 30.0}, {"step": 9, "val/ter": 60.0, "val/bleu": 20.0},
            {"step": 19, "val/ter": 70.0, "val/bleu": 22.0}, {"step": 19, "time/elapsed_s": 75.0}]
    scores = {"cased": {"bleu": 21.5, "chrf": 50.0, "ter": 65.0}, "lowercase": {"bleu": 22.5},
              "moses": {"bleu": 24.5}}
    _fake_run(tmp_path / "s" / "10", ["debug=tiny", "+optim.lr=0.01", "model.cell=gru"], rows, scores)
    _fake_run(tmp_path / "s" / "2", ["debug=tiny", "+optim.lr=0.02", "model.cell=gru"], rows[:2], None)
    _fake_run(tmp_path / "s" / "3", ["debug=tiny", "optim.lr=0.03", "model.cell=lstm"], None, None)
    columns, table = collect.collect([tmp_path / "s"])
    assert [r["run"] for r in table] == ["2", "3", "10"]  # natural order
    assert columns[:3] == ["run", "optim.lr", "model.cell"] and "debug" not in columns
    last = table[2]
    assert last["steps"] == 20 and last["val/ter"] == 70.0 and last["best val/ter"] == 60.0  # ter: lower is better
    assert last["test/bleu"] == 21.5 and last["test/bleu_lc"] == 22.5 and last["train/loss"] == 2.5
    assert last["test/bleu_moses"] == 24.5 and last["time/elapsed_s"] == 75.0  # training wall time
    assert table[0]["val/bleu"] == 20.0 and "test/bleu" not in table[0]
    assert table[1]["status"].startswith("no metrics") and table[1]["optim.lr"] == "0.03"
    markdown = collect.to_markdown(columns, table)
    assert "| 10 | 0.01 | gru | 20 | 75.00 | 2.500 | 22.00 | 70.00 |" in markdown
    out = tmp_path / "runs.json"
    assert collect.main([str(tmp_path / "s"), "--json", str(out), "--markdown", str(tmp_path / "runs.md")]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert [r["run"] for r in runs] == ["2", "3", "10"]
    assert runs[2]["validations"] == [{"step": 9, "epoch": None, "val/ter": 60.0, "val/bleu": 20.0},
                                      {"step": 19, "epoch": None, "val/ter": 70.0, "val/bleu": 22.0}]
    assert runs[1]["validations"] == [] and runs[2]["test/bleu"] == 21.5


def test_collect_runs_plot_overlays_the_runs_with_logs(tmp_path, monkeypatch):
    """--plot: one line per run that has a CSV log on each panel, labelled by its folder and the settings
    that differ between runs, even with --all-settings. Mutation that makes it fail: training.run_table.plot_runs
    labelling with every settings column (the shared `debug=tiny` would appear in the labels)."""
    require("matplotlib")
    from matplotlib.figure import Figure

    rows = [{"step": 9, "train/loss": 2.5, "time/elapsed_s": 30.0}, {"step": 9, "val/bleu": 20.0},
            {"step": 9, "time/elapsed_s": 40.0}]
    _fake_run(tmp_path / "s" / "0", ["debug=tiny", "optim.lr=0.01"], rows, None)
    _fake_run(tmp_path / "s" / "1", ["debug=tiny", "optim.lr=0.02"], rows, None)
    _fake_run(tmp_path / "s" / "2", ["debug=tiny", "optim.lr=0.03"], None, None)  # failed: no log, no line
    figures = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, path, **kw: figures.append((fig, path)))
    out = tmp_path / "sweep.png"
    assert collect.main([str(tmp_path / "s"), "--plot", str(out), "--all-settings",
                         "--markdown", str(tmp_path / "runs.md")]) == 0
    (fig, path), = figures
    assert path == out
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["0 optim.lr=0.01", "1 optim.lr=0.02"]
    axes = fig.get_axes()
    assert [ax.get_ylabel() for ax in axes] == ["val/bleu", "val/bleu", "train/loss", "train/loss"]
    assert [len(ax.get_lines()) for ax in axes] == [2, 2, 2, 2]
    assert list(axes[1].get_lines()[0].get_xdata()) == [40.0 / 60]  # the validation's end, in minutes


def test_script_relaunching_ddp_is_refused_inside_a_sweep(tmp_path, multi30k_dir, monkeypatch):
    """strategy=ddp re-runs the command per device: under -m every child would rerun the sweep."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    proc = run_script("train", "-m", *TINY, "trainer=cpu", "trainer.devices=2", f"paths.data_dir={tmp_path / 'data'}",
                      f"hydra.sweep.dir={tmp_path / 'sweep'}", check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: config key 'trainer.strategy'" in proc.stderr and "ddp_spawn" in proc.stderr


def test_slurm_launcher_config_gives_one_task_per_gpu(tmp_path, monkeypatch):
    """The slurm extra (hydra-submitit-launcher) is installed by .ci/run: in CI this test runs, never skips.
    Mutation that makes it fail: conf/hydra/launcher/slurm.yaml with tasks_per_node: 1."""
    require("hydra_plugins.hydra_submitit_launcher")
    submitit = require("submitit")
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    from .helpers import compose_train

    cfg = compose_train(["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2",
                         "hydra.launcher.partition=gpu", f"hydra.sweep.dir={tmp_path}"], tmp_path)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (2, 4, 4)
    # The sbatch file the plugin would submit (its own steps, without submitting: a stand-in srun).
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{Path(sys.executable).parent}:/usr/bin:/bin")
    params = OmegaConf.to_container(launcher, resolve=True)
    params.pop("_target_")
    executor = submitit.AutoExecutor(folder=params.pop("submitit_folder"), cluster="slurm",
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    sbatch = executor._executor._make_submission_file_text("python -u -m submitit.core._submit x", "uid")
    for flag in ("--nodes=2", "--gpus-per-node=4", "--ntasks-per-node=4", "--partition=gpu", "--time=720"):
        assert f"#SBATCH {flag}\n" in sbatch, sbatch
