"""Experiment trackers (seq2seq/training/trackers.py): `logger=mlflow` and `logger=wandb`, alone or with
other loggers, read back with each tracker's own means after a real tiny run and its resume.

MLflow runs are read with MlflowClient from the SQLite store; W&B's offline runs from their
`run-<id>.wandb` files (wandb's record protobufs in its LevelDB-style log: `wandb_records` below; wandb
0.31 ships no Python reader) and their `files/` folders. Each test names in its docstring the mutations
of the guarded code that make it fail (each was applied once and seen to fail).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from seq2seq.config import ConfigError
from seq2seq.training.trackers import absolute_store, check_trackers, flatten, run_name, table_metrics

from .helpers import TINY, compose_train, learn, read_metrics, require, run_script

# Short decodes and a small validation set: validation here is plumbing, not quality.
QUICK = ["data.max_valid_pairs=4", "search.max_len_a=2", "search.max_len_b=0.5"]
ARTIFACTS = {"hydra/config.yaml", "hydra/overrides.yaml", "plots/curves.png", "checkpoints/test_scores.json"}


def tiny_args(corpus: Path, tmp: Path, steps: int, *extra: str) -> list[str]:
    return [*TINY, *learn(corpus, steps, 10), f"paths.data_dir={tmp / 'data'}", *QUICK, *extra]


def csv_points(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every metric of the run's CSV log: key -> sorted (step, value) pairs."""
    points: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for row in read_metrics(run_dir):
        for key, value in row.items():
            if key != "step" and value not in (None, ""):
                points[key].append((int(row["step"]), float(value)))
    return {k: sorted(v) for k, v in points.items()}


def assert_same_points(got: list[tuple[int, float]], want: list[tuple[int, float]], key: str) -> None:
    assert [s for s, _ in got] == [s for s, _ in want], key
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6), key


# --------------------------------------------------------------------------------------- fast tier
@pytest.mark.parametrize("option, loggers", [
    ("logger=mlflow", {"csv", "mlflow"}),
    ("logger=wandb", {"csv", "wandb"}),
    ("logger=[csv,mlflow]", {"csv", "mlflow"}),
    ("logger=[mlflow,wandb]", {"csv", "mlflow", "wandb"}),
    ("logger=[tensorboard,mlflow,wandb]", {"csv", "tensorboard", "mlflow", "wandb"}),
])
def test_logger_options_compose_and_keep_the_csv_log(option, loggers, tmp_path):
    """Each tracker brings the CSV log (the learning-rate monitor and plots/curves.png read it), and
    several compose as a list. Mutation that makes it fail: conf/logger/mlflow.yaml without its
    `defaults: [csv]`."""
    cfg = compose_train([*TINY, option], tmp_path)
    assert set(cfg.logger) == loggers
    assert cfg.logger.csv._target_ == "seq2seq.training.csv_logger.CSVLogger"


def test_a_missing_tracker_package_names_its_extra(tmp_path, monkeypatch):
    """Without mlflow (or wandb) installed, the config check before any work says, in one line, which
    extra to install; the other loggers need nothing. Mutation that makes it fail: check_trackers
    looking the package up only when the logger is built (no error here)."""
    check_trackers(compose_train([*TINY, "logger=[tensorboard,csv]"], tmp_path))
    for package in ("mlflow", "wandb"):
        with monkeypatch.context() as mp:
            mp.setitem(sys.modules, package, None)  # `import mlflow` now fails as if it were not installed
            with pytest.raises(ConfigError) as error:
                check_trackers(compose_train([*TINY, f"logger=[csv,{package}]"], tmp_path))
        assert str(error.value) == f"logger={package} needs the {package} extra: pip install 'seq2seq[{package}]'"


def test_parameters_run_names_and_test_tables(tmp_path, monkeypatch):
    """The pieces a tracker's run is made of: dotted parameter keys, a run name from the task and the
    overrides that say what the run is (not where it logs), an absolute SQLite store, and the test table
    as `test/<split>/<score>`."""
    assert flatten({"model": {"cell": "gru", "sizes": [1, 2]}, "tags": {}, "seed": 1}) == {
        "model.cell": "gru", "model.sizes": [1, 2], "tags": {}, "seed": 1}
    cfg = compose_train([*TINY, "optim.lr=0.02", "logger=mlflow", "logger.mlflow.tags={team: mt}", "ckpt_path=last"],
                        tmp_path)
    assert run_name(cfg) == "train debug=tiny,optim.lr=0.02,trainer.enable_progress_bar=false"
    monkeypatch.chdir(tmp_path)
    assert absolute_store("sqlite:///outputs/mlflow.db") == f"sqlite:///{tmp_path}/outputs/mlflow.db"
    assert absolute_store("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert absolute_store("http://host:5000") == "http://host:5000"
    table = tmp_path / "test_scores.json"
    table.write_text(json.dumps({"splits": [{"split": "a", "sentences": 3, "bleu": 1.5, "signature": {}},
                                            {"split": "b", "sentences": 4, "bleu": 2.0, "chrf": 9.0}]}))
    assert table_metrics(table) == {"test/a/bleu": 1.5, "test/b/bleu": 2.0, "test/b/chrf": 9.0}


# --------------------------------------------------------------------------------------- slow tier
def test_missing_extra_stops_the_console_script_with_one_line(tmp_path, learnable_corpus):
    """`seq2seq-train logger=mlflow` without mlflow: exit status 2 and one `error:` line naming the
    extra, before the corpus is prepared. Mutation that makes it fail: train() calling check_trackers
    after the corpus is prepared (the cache folder exists)."""
    (tmp_path / "mlflow").mkdir()  # `python -m` puts the working folder first on sys.path: this hides mlflow
    (tmp_path / "mlflow" / "__init__.py").write_text("raise ImportError('mlflow is hidden by the test')\n")
    proc = run_script("train", *tiny_args(learnable_corpus, tmp_path, 4, "logger=mlflow"),
                      f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1:] == [
        "error: logger=mlflow needs the mlflow extra: pip install 'seq2seq[mlflow]'"]
    assert not (tmp_path / "data" / "cache").exists()


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, learnable_corpus):
    """One run with `logger=[csv,mlflow,wandb]` (several trackers at once) into a SQLite store and W&B
    offline, then `hydra.run.dir=<same> ckpt_path=last` with 10 more steps: (run folder, MLflow store)."""
    require("mlflow")
    require("wandb")
    require("matplotlib")  # plots/curves.png
    tmp = tmp_path_factory.mktemp("trackers")
    run_dir, store = tmp / "run", tmp / "store" / "mlflow.db"
    args = tiny_args(learnable_corpus, tmp, 20, "logger=[csv,mlflow,wandb]",
                     f"logger.mlflow.tracking_uri=sqlite:///{store}", f"hydra.run.dir={run_dir}")
    run_script("train", *args)
    run_script("train", *args, "trainer.max_steps=30", "ckpt_path=last")
    return run_dir, store


def test_mlflow_run_holds_config_metrics_test_table_and_artifacts_and_resume_continues_it(tracked_run, tmp_path):
    """The MLflow run of `tracked_run`, read back with MlflowClient: one run (the resume continued it),
    named after the task and its overrides; the resolved config as dotted parameters (first values
    kept); every metric of the CSV log with the same steps and values across both parts; the test table
    as metrics; the config, the overrides, the curves and the test table as artifacts. Mutations that
    make it fail: start_trackers handing the trackers no stored run (a second run starts);
    finish_trackers logging no test metrics; RUN_FILES without plots/curves.png; MLflowLogger.start
    flattening with '/'; WallClock calling elapsed() once per logger (the trackers' validation-time
    values differ from the CSV log's)."""
    from mlflow import MlflowClient  # the mlflow extra (required by tracked_run)

    run_dir, store = tracked_run
    first_id = json.loads((run_dir / "trackers.json").read_text())["mlflow"]["run_id"]
    client = MlflowClient(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("train")  # the task name
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [first_id], "the resumed run started a second MLflow run"
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.run_name.startswith("train data.corpus=toy,") and "optim.lr=0.01" in run.info.run_name
    assert "logger" not in run.info.run_name and "ckpt_path" not in run.info.run_name

    params = run.data.params
    config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert set(params) == set(flatten(config))
    assert params["model.cell"] == str(config["model"]["cell"]) and params["optim.lr"] == "0.01"
    assert params["trainer.max_steps"] == "20" and params["ckpt_path"] == "None"  # the first values

    csv = csv_points(run_dir)
    assert max(s for s, _ in csv["train/loss"]) == 29  # both parts are in the CSV log
    assert set(csv) <= set(run.data.metrics)
    for key, want in csv.items():
        got = sorted((m.step, m.value) for m in client.get_metric_history(first_id, key))
        assert_same_points(got, want, key)

    table = json.loads((run_dir / "checkpoints" / "test_scores.json").read_text())["splits"][0]
    assert run.data.metrics["test/bleu"] == pytest.approx(table["bleu"])
    for key in ("bleu", "bleu_lc", "chrf", "ter", "bleu_moses"):
        assert run.data.metrics[f"test/test_2016_flickr/{key}"] == pytest.approx(table[key]), key

    def files(path=None):
        for item in client.list_artifacts(first_id, path):
            yield from files(item.path) if item.is_dir else [item.path]

    assert ARTIFACTS <= set(files())
    copy = Path(client.download_artifacts(first_id, "hydra/config.yaml", str(tmp_path / "download")))
    assert copy.read_text() == (run_dir / ".hydra" / "config.yaml").read_text()  # the resumed run's config


def wandb_records(path: Path):
    """The records of a W&B run file (`run-<id>.wandb`): a 7-byte header (':W&B', magic, version), then
    LevelDB-log records (crc32c, length, type: 1 full, 2 first, 3 middle, 4 last) in 32 KiB blocks,
    each record a `wandb_internal_pb2.Record`."""
    from wandb.proto import wandb_internal_pb2  # the wandb extra (required by tracked_run)

    data, block, pos, pending = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B", data[:7]
    while pos + 7 <= len(data):
        left = block - pos % block
        kind = data[pos + 6] if left >= 7 else 0
        if kind == 0:  # the end of a block: padding
            pos += left
            continue
        length = int.from_bytes(data[pos + 4:pos + 6], "little")
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            yield wandb_internal_pb2.Record.FromString(pending)
            pending = b""


def read_wandb_run(path: Path) -> dict:
    """run id, config (top-level sections), history rows and saved file names of one offline run file."""
    out = {"config": {}, "history": [], "files": set(), "ids": set()}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["ids"].add(record.run.run_id)
            out["name"] = record.run.display_name
        elif kind == "config":
            out["config"].update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            out["history"].append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                   for item in record.history.item})
        elif kind == "files":
            out["files"] |= {f.path for f in record.files.files}
    return out


def test_wandb_offline_run_holds_the_same_and_resume_keeps_its_id(tracked_run):
    """The W&B offline runs of `tracked_run` (one folder per part, both with the run id trackers.json
    keeps) hold the resolved config, every metric of the CSV log at the same steps with the same values,
    the test table, and the config, overrides, curves and test table as files. Mutations that make it
    fail: WandbLogger.start ignoring the stored run id (the resume gets a new id); WandbLogger.finish
    saving no files; finish_trackers logging no test metrics."""
    run_dir, _ = tracked_run
    ids = json.loads((run_dir / "trackers.json").read_text())
    parts = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(parts) == 2
    runs = [read_wandb_run(p) for p in parts]
    assert [r["ids"] for r in runs] == [{ids["wandb"]["id"]}] * 2, "the resume started another W&B run"
    assert runs[0]["name"].startswith("train data.corpus=toy,")
    config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert runs[1]["config"]["model"]["cell"] == config["model"]["cell"]
    assert runs[1]["config"]["trainer"]["max_steps"] == 30 and runs[0]["config"]["trainer"]["max_steps"] == 20

    history = [row for r in runs for row in r["history"]]
    csv = csv_points(run_dir)
    for key, want in csv.items():
        got = sorted((row["trainer/global_step"], row[key]) for row in history if key in row)
        assert_same_points(got, want, key)
    table = json.loads((run_dir / "checkpoints" / "test_scores.json").read_text())["splits"][0]
    last = runs[1]["history"][-1]
    assert last["test/bleu"] == pytest.approx(table["bleu"])
    assert last["test/test_2016_flickr/chrf"] == pytest.approx(table["chrf"])
    assert ARTIFACTS <= runs[1]["files"]
    files = parts[1].parent / "files"
    assert (files / "hydra" / "config.yaml").read_text() == (run_dir / ".hydra" / "config.yaml").read_text()
    assert (files / "plots" / "curves.png").read_bytes() == (run_dir / "plots" / "curves.png").read_bytes()
