"""Experiment trackers beside the CSV log: MLflow (`logger=mlflow`) and Weights & Biases (`logger=wandb`).

Both are Lightning's loggers, subclassed so that a tracker's run holds what the run folder holds:
- the resolved config (`start_trackers`, just before `fit`): MLflow parameters with dotted keys
  (`model.cell`), the W&B run's config as nested sections;
- every metric of the CSV log (Lightning sends each logged row to every logger, and WallClock writes its
  validation rows to every logger too);
- at the end (`finish_trackers`), the test table as metrics (`test/<score>` of the first test set, as
  `train(cfg)` returns them, and `test/<split>/<score>` of every set), then the run folder's
  `.hydra/config.yaml`, `.hydra/overrides.yaml`, `plots/curves.png` and the test table file as
  artifacts (W&B: the run's files), under the same paths without the leading dot (`hydra/config.yaml`).

The experiment (MLflow) or project (W&B) is the config's `task_name`; the run's name is the task name
and the command line's overrides (Hydra's `hydra.job.override_dirname`). A run folder remembers its
tracker runs in `trackers.json`; a run resumed in its folder (`hydra.run.dir=<folder> ckpt_path=last`)
continues them instead of starting new ones. Defaults need no server and no network: MLflow writes a
SQLite store (`outputs/mlflow.db`, artifacts beside it in `outputs/mlartifacts/`), W&B an offline run in
`<run folder>/wandb/` for `wandb sync` later.

mlflow and wandb are optional extras: `check_trackers(cfg)` turns a missing one into a ConfigError
that names the extra, before the corpus is prepared. They are imported only inside the methods that
use them (Lightning's logger classes import without them).
"""

from __future__ import annotations

import importlib
import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers import MLFlowLogger as LightningMLFlowLogger
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from omegaconf import DictConfig

from seq2seq.config import ConfigError
from seq2seq.temporaries import atomic_write_text
from seq2seq.training.curves import read_log
from seq2seq.training.trainer import run_config

log = logging.getLogger(__name__)

IDS_FILE = "trackers.json"  # in the run folder: {"mlflow": {"run_id": ...}, "wandb": {"id": ...}}
# A run folder's files that go to the tracker at the end (when they exist), beside the test table.
RUN_FILES = (".hydra/config.yaml", ".hydra/overrides.yaml", "plots/curves.png")
WHERE = ("logger", "paths", "ckpt_path")  # override keys (and groups) that run_name leaves out
MAX_RUN_NAME = 250  # MLflow's limit on a run name
MAX_PARAM_VALUE = 6000  # MLflow's limit on a parameter's value (Lightning's logger cuts at 250)
# The optional package each tracker needs (a word of its logger's `_target_`), installed by the extra of that name.
EXTRAS = ("mlflow", "wandb")


def check_trackers(cfg: DictConfig) -> None:
    """Raise ConfigError, naming the extra to install, when a configured logger needs a package that is
    missing (`logger=mlflow` without mlflow); before anything is done, so that a missing package costs
    nothing."""
    for key, node in (cfg.get("logger") or {}).items():
        target = str((node or {}).get("_target_", "")).lower()
        for extra in EXTRAS:
            if extra not in target:
                continue
            try:
                importlib.import_module(extra)
            except ImportError:
                raise ConfigError(f"logger={key} needs the {extra} extra: pip install 'seq2seq[{extra}]'") from None


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"cell": "gru"}} -> {"model.cell": "gru"}: the keys as Hydra overrides spell them."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def run_name(cfg: DictConfig) -> str:
    """`task_name` and the run's command-line overrides, e.g. 'quickstart model.dropout=0.2,optim.lr=0.002'
    (sorted and joined as Hydra's `hydra.job.override_dirname`), less the settings that say where the run
    goes, not what it is (logger, paths, ckpt_path); the task name alone outside a Hydra run."""
    try:
        task = list(HydraConfig.get().overrides.task)
    except ValueError:  # no Hydra config (a library caller)
        task = []
    kept = sorted(o for o in task if o.lstrip("+~").split("=", 1)[0].split(".", 1)[0] not in WHERE)
    name = f"{cfg.task_name} {','.join(kept)}".strip()
    return name if len(name) <= MAX_RUN_NAME else name[:MAX_RUN_NAME - 3] + "..."


def absolute_store(uri: str) -> str:
    """A relative SQLite store (`sqlite:///outputs/mlflow.db`) made absolute from the working folder: the
    artifact folder beside it is stored with a new experiment, and must not depend on where a later run
    of that experiment starts."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


class MLflowLogger(LightningMLFlowLogger):
    """Lightning's MLFlowLogger, its store local by default (a SQLite file), continuing a resumed run.

    `tracking_uri`: `sqlite:///<file>` (relative to the working folder) or a server's `http(s)://...`;
    `artifact_location`: where a new experiment keeps its artifacts; None: `mlartifacts/` beside a
    SQLite file, the server's default otherwise. `run_name`: None gives `run_name(cfg)`.
    """

    KEY = "mlflow"

    def __init__(self, experiment_name: str, tracking_uri: str, run_name: str | None = None,
                 artifact_location: str | None = None, tags: Mapping[str, str] | None = None) -> None:
        tracking_uri = absolute_store(tracking_uri)
        if artifact_location is None and tracking_uri.startswith("sqlite:///"):
            artifact_location = str(Path(tracking_uri[len("sqlite:///"):]).parent / "mlartifacts")
        super().__init__(experiment_name=experiment_name, run_name=run_name, tracking_uri=tracking_uri,
                         tags=dict(tags or {}), artifact_location=artifact_location)

    def start(self, name: str, stored: Mapping[str, Any] | None, params: Mapping[str, Any]) -> dict[str, Any]:
        """Continue the run `stored` (this folder's, from trackers.json) when it is in this store, else
        start one named `name` (unless the config names it); log `params`. -> what trackers.json keeps."""
        from mlflow.entities import Param  # the mlflow extra: checked by check_trackers
        from mlflow.exceptions import MlflowException

        resumed = False
        if stored and stored.get("tracking_uri") == self._tracking_uri:
            try:
                self._mlflow_client.get_run(stored["run_id"])
                self._run_id, resumed = stored["run_id"], True
            except MlflowException:
                log.warning("mlflow: run %s of this folder is not in %s: starting a new run", stored["run_id"],
                            self._tracking_uri)
        self._run_name = self._run_name or name
        client, run_id = self.experiment, self.run_id  # creates the experiment and the run (rank 0 only)
        flat = {k: str(v)[:MAX_PARAM_VALUE] for k, v in flatten(params).items()}
        if resumed:
            client.update_run(run_id, status="RUNNING")
            first = client.get_run(run_id).data.params
            changed = sorted(k for k in flat if k in first and first[k] != flat[k])
            if changed:  # MLflow keeps a parameter's first value; the resumed settings are in .hydra/
                log.info("mlflow: run %s continues with its first parameters; now different: %s", run_id,
                         ", ".join(f"{k}={flat[k]}" for k in changed))
            flat = {k: v for k, v in flat.items() if k not in first}
            log.info("mlflow: continuing run %s (experiment %r, %s)", run_id, self._experiment_name,
                     self._tracking_uri)
        else:
            log.info("mlflow: run %s (experiment %r, %s)", run_id, self._experiment_name, self._tracking_uri)
        items = [Param(key=k, value=v) for k, v in flat.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 parameters per batch
            client.log_batch(run_id=run_id, params=items[i:i + 100])
        return {"run_id": run_id, "experiment": self._experiment_name, "tracking_uri": self._tracking_uri}

    def finish(self, metrics: Mapping[str, float], files: Sequence[tuple[Path, str]], step: int) -> None:
        """Log the test metrics at `step`, upload `files` ((path, artifact path) pairs), end the run."""
        if metrics:
            self.log_metrics(dict(metrics), step=step)
        for path, name in files:
            parent = str(Path(name).parent)
            self.experiment.log_artifact(self.run_id, str(path), None if parent == "." else parent)
        self.experiment.set_terminated(self.run_id, "FINISHED")


class WandbLogger(LightningWandbLogger):
    """Lightning's WandbLogger, offline by default (its run in `<save_dir>/wandb/offline-run-*`, uploaded
    later by `wandb sync`), continuing a resumed run under the same run id.

    `project`: the W&B project; `name`: the run's (None gives `run_name(cfg)`); `offline`: false logs
    live (after `wandb login`); `entity`, `group`, `tags`: as `wandb.init` takes them.
    """

    KEY = "wandb"

    def __init__(self, project: str, save_dir: str, offline: bool = True, name: str | None = None,
                 entity: str | None = None, group: str | None = None, tags: Sequence[str] | None = None) -> None:
        # The mode goes to wandb.init: Lightning's offline=True would set WANDB_MODE for the whole process.
        super().__init__(name=name, save_dir=save_dir, project=project, entity=entity, group=group,
                         tags=list(tags) if tags else None, mode="offline" if offline else "online")
        self._wandb_init.pop("anonymous", None)  # Lightning always passes it; wandb warns that it does nothing

    def start(self, name: str, stored: Mapping[str, Any] | None, params: Mapping[str, Any]) -> dict[str, Any]:
        """Continue the run `stored` (this folder's, from trackers.json) when it is in this project, else
        start one named `name` (unless the config names it); log `params` as its config. -> what
        trackers.json keeps."""
        self._wandb_init["name"] = self._wandb_init.get("name") or name
        resumed = stored is not None and stored.get("project") == self._wandb_init["project"]
        if resumed:
            self._wandb_init["id"] = stored["id"]  # resume="allow" (Lightning's): the same run id
        Path(self._wandb_init["dir"]).mkdir(parents=True, exist_ok=True)
        run = self.experiment
        run.config.update(dict(params), allow_val_change=True)  # a resumed run's changed settings replace
        log.info("wandb: %s run %s (project %r) in %s", "continuing" if resumed else "started", run.id,
                 run.project, run.dir)
        return {"id": run.id, "project": run.project}

    def finish(self, metrics: Mapping[str, float], files: Sequence[tuple[Path, str]], step: int) -> None:
        """Log the test metrics at `step`, copy `files` ((path, name) pairs) into the run's files, end it."""
        run = self.experiment
        if metrics:
            self.log_metrics(dict(metrics), step=step)
        for path, name in files:
            target = Path(run.dir) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            run.save(str(target), base_path=run.dir, policy="end")
        run.finish()


TRACKERS = (MLflowLogger, WandbLogger)


def trackers_of(trainer: pl.Trainer) -> list[MLflowLogger | WandbLogger]:
    return [lg for lg in trainer.loggers if isinstance(lg, TRACKERS)]


def start_trackers(trainer: pl.Trainer, cfg: DictConfig, run_dir: Path) -> None:
    """Just before `fit`, on rank 0: each tracker continues the run this folder's trackers.json names (when
    the run resumes: `ckpt_path` is set) or starts one, logs the resolved config, and its run id is
    written to trackers.json."""
    trackers = trackers_of(trainer)
    if not trackers or not trainer.is_global_zero:
        return
    path = run_dir / IDS_FILE
    ids = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    resuming = cfg.get("ckpt_path") not in (None, "")
    name, params = run_name(cfg), run_config(cfg)
    for tracker in trackers:
        ids[tracker.KEY] = tracker.start(name, ids.get(tracker.KEY) if resuming else None, params)
    atomic_write_text(path, json.dumps(ids, indent=2) + "\n")


def table_metrics(path: Path) -> dict[str, float]:
    """`test/<split>/<score>` of every row of a test table (checkpoints/test_scores.json)."""
    try:
        rows = json.loads(path.read_text(encoding="utf-8")).get("splits", [])
    except (OSError, ValueError, AttributeError):
        return {}
    return {f"test/{row['split']}/{key}": float(value) for row in rows for key, value in row.items()
            if key != "sentences" and isinstance(value, (int, float)) and not isinstance(value, bool)}


def last_step(trainer: pl.Trainer) -> int:
    """The step of the run's last logged row: the trainer's count, or, in the launching process of a
    ddp_spawn run (whose trainer never stepped), the CSV log's last step."""
    step = trainer.fit_loop.epoch_loop._batches_that_stepped
    csv_logger = next((lg for lg in trainer.loggers if isinstance(lg, LightningCSVLogger)), None)
    metrics_csv = Path(csv_logger.log_dir) / ExperimentWriter.NAME_METRICS_FILE if csv_logger else None
    if step == 0 and metrics_csv is not None and metrics_csv.is_file():
        step = max((int(float(r["step"])) for r in read_log(metrics_csv) if r.get("step")), default=0)
    return step


def finish_trackers(trainer: pl.Trainer, run_dir: Path, metrics: Mapping[str, float],
                    test_files: Sequence[Path] = ()) -> None:
    """At the end of a run, on rank 0: each tracker logs the `test/*` entries of `metrics` and the rows of
    `test_files` (test tables: `table_metrics`), uploads the run folder's config, overrides and
    curves and the test files, and ends its run."""
    trackers = trackers_of(trainer)
    if not trackers or not trainer.is_global_zero:
        return
    test = {k: float(v) for k, v in metrics.items() if k.startswith("test/")}
    files = [(run_dir / rel, rel.lstrip(".")) for rel in RUN_FILES if (run_dir / rel).is_file()]
    for path in test_files:
        if path.is_file():
            test.update(table_metrics(path))
            inside = path.resolve().is_relative_to(run_dir.resolve())
            files.append((path, path.resolve().relative_to(run_dir.resolve()).as_posix() if inside else path.name))
    step = last_step(trainer)
    for tracker in trackers:
        tracker.finish(test, files, step)
