"""The Lightning Trainer of a training run and what surrounds it, shared by translation models
(`seq2seq.training.run`) and language models (`seq2seq.lm.training`).

Checks of the config that need the machine or the launch (`check_hardware`, `check_launch`, `step_limit`,
`resolve_ckpt_path`), the Trainer with the configured callbacks and loggers (`build_trainer`), what a
resumed run does before `fit` (`resume_in_place`), the config stored in checkpoints (`run_config`) and
the end-of-run figure (`write_run_curves`).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from omegaconf import DictConfig, OmegaConf

from seq2seq.config import ConfigError
from seq2seq.model.precision import bf16_supported, precision_dtype
from seq2seq.temporaries import remove_stale
from seq2seq.training.average_last import ValidatedCheckpoints, best_checkpoint_callback
from seq2seq.training.callbacks import WorkerLogging, lightning_logs_through_root
from seq2seq.training.checkpoint_io import AtomicCheckpointIO
from seq2seq.training.csv_logger import CSVLogger
from seq2seq.training.curves import write_curves

log = logging.getLogger(__name__)


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain containers (without Hydra's own node), for checkpoints: choices
    are stored as strings, so `torch.load(weights_only=True)` reads them."""
    # Hydra's node is left out before resolving: under compose() (tests) it holds unresolvable keys.
    keys = [k for k in cfg.keys() if k != "hydra"]
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=True, enum_to_str=True)


def check_hardware(cfg: DictConfig) -> None:
    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config key 'trainer.accelerator' is {accelerator!r} but no CUDA GPU is visible "
                          "on this machine; use trainer=cpu (or trainer=ddp_cpu for several processes)")
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if (on_cpu and precision_dtype(cfg.trainer.get("precision"), "cpu") is not None and cfg.model.cell == "lstm"
            and not bf16_supported("cpu")):
        raise ConfigError(f"config key 'trainer.precision' is {cfg.trainer.precision!r}, but this CPU cannot "
                          "run an LSTM in bfloat16 (oneDNN needs AVX512-BF16); on the CPU use "
                          "trainer.precision=32-true (or model.cell=gru)")


def step_limit(cfg: DictConfig, key: str) -> int:
    """`max_bad_steps` or `max_oom_steps`: consecutive skipped steps that stop the run (0 = never)."""
    value = cfg.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"config key '{key}' must be an integer >= 0 (0 = never stop), got {value!r}")
    return value


def resolve_ckpt_path(cfg: DictConfig, run_dir: Path) -> str | None:
    path = cfg.get("ckpt_path")
    if path in (None, ""):
        return None
    if path == "last":
        last = run_dir / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise ConfigError(f"config key 'ckpt_path' is 'last' but {last} does not exist; resume a run by "
                              "naming its folder: hydra.run.dir=<run folder> ckpt_path=last")
        return str(last)
    if not Path(path).is_file():
        raise ConfigError(f"config key 'ckpt_path': checkpoint {path} does not exist")
    return str(path)


def continue_csv_logs(loggers: list[Any], ckpt_path: str) -> None:
    """A resumed run continues its logs/metrics.csv: the rows logged after the checkpoint's step (the
    resumed run logs them again) are dropped, the rest kept (seq2seq.training.csv_logger)."""
    csv_loggers = [lg for lg in loggers if isinstance(lg, CSVLogger)]
    if not csv_loggers:
        return
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True)
    # The step Lightning logs rows with (optimiser steps, skipped ones included).
    step = ckpt.get("loops", {}).get("fit_loop", {}).get("epoch_loop.state_dict", {}).get(
        "_batches_that_stepped", ckpt["global_step"])
    for lg in csv_loggers:
        lg.experiment.keep_until(int(step))  # a no-op on ranks other than 0


def instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every `_target_` entry of a callbacks/logger group."""
    if not group:
        return []
    return [hydra.utils.instantiate(node) for node in group.values() if node and "_target_" in node]


def hydra_logging_config() -> dict[str, Any] | None:
    """Hydra's job logging config, resolved, or None outside a Hydra run."""
    try:
        return OmegaConf.to_container(HydraConfig.get().job_logging, resolve=True) or None
    except Exception:  # no Hydra run (tests compose configs), or an unresolvable output folder
        return None


def check_launch(trainer: pl.Trainer) -> None:
    """Refuse launches that cannot work: a DDP launch that re-runs the script (strategy=ddp) inside a
    Hydra multirun (every child would start the whole sweep again), and several nodes without anything
    that tells this process where the other nodes are (it would wait for them forever)."""
    environment = getattr(trainer.strategy, "cluster_environment", None)
    if (trainer.num_nodes > 1 and type(environment).__name__ == "LightningEnvironment"
            and not {"MASTER_ADDR", "NODE_RANK"} <= set(os.environ)):
        raise ConfigError(f"config key 'trainer.num_nodes' is {trainer.num_nodes}, but no cluster launcher started "
                          "this process: submit through SLURM (hydra/launcher=slurm, or srun), or set MASTER_ADDR, "
                          "MASTER_PORT and NODE_RANK on every node (see docs/cluster.md)")

    launcher = getattr(trainer.strategy, "launcher", None)
    relaunches = (type(launcher).__name__ == "_SubprocessScriptLauncher"
                  and getattr(launcher, "num_processes", 1) > 1
                  and not launcher.cluster_environment.creates_processes_externally)
    if relaunches and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise ConfigError("config key 'trainer.strategy': ddp starts each device's process by re-running the "
                          "command, which under -m (multirun) would run the sweep again in every process; in a "
                          "sweep use trainer=ddp_cpu (ddp_spawn), trainer.strategy=ddp_spawn, one device per "
                          "job, or the SLURM launcher (hydra/launcher=slurm)")


def instantiate_trainer(cfg: DictConfig, **kwargs: Any) -> pl.Trainer:
    """The configured Trainer; a setting Lightning refuses becomes a ConfigError naming `trainer`.
    `kwargs`: Trainer arguments beside the config's (callbacks, logger, plugins, ...)."""
    try:
        return hydra.utils.instantiate(cfg.trainer, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, (MisconfigurationException, ValueError, TypeError)):
            raise ConfigError(f"config key 'trainer': {cause}") from None
        raise


def quiet_third_party() -> None:
    """Silence, narrowly and by message, start-up noise the user cannot act on: torch's FutureWarning
    about Lightning's own use of `LeafSpec` (lightning/pytorch/utilities/_pytree.py) and Lightning's
    advert for its cloud logger, printed at every Trainer start; torch's advice against copying a tensor
    with `torch.tensor(t)`, which LearningRateMonitor does with our learning rate (a device tensor: see
    `seq2seq.training.schedule`). Lightning's log lines go through the run's logging, once each."""
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"To copy construct from a tensor", category=UserWarning,
                            module=r"lightning\.pytorch\.callbacks\.lr_monitor")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage())
    lightning_logs_through_root()


def build_trainer(cfg: DictConfig, run_dir: Path) -> pl.Trainer:
    """The configured Trainer with its callbacks and loggers (translation and language models alike);
    temporaries left in its checkpoint folders by a killed run are removed first."""
    if not isinstance(cfg.average_last, int) or cfg.average_last < 0:
        raise ConfigError(f"config key 'average_last' must be an integer >= 0 (0 or 1 = off), got {cfg.average_last!r}")
    callbacks = instantiate_all(cfg.get("callbacks"))
    loggers = instantiate_all(cfg.get("logger"))
    logging_config = hydra_logging_config()
    extra = [WorkerLogging(logging_config)] if logging_config else []
    # Checkpoints are what conf/callbacks/ configures: with none there (callbacks=none), Lightning must not
    # add its own (epoch=N-step=M.ckpt files in the logger's folder).
    checkpointing = any(isinstance(cb, pl.callbacks.ModelCheckpoint) for cb in callbacks)
    best = best_checkpoint_callback(callbacks)
    if cfg.average_last >= 2 and best is not None:
        extra.append(ValidatedCheckpoints(best.dirpath, keep=cfg.average_last))
    elif cfg.average_last >= 2:
        log.warning("average_last=%d: no best-checkpoint callback (callbacks=none?), so nothing is averaged",
                    cfg.average_last)
    # tqdm's bar, which TranslationModule.on_fit_start refreshes at the logging rate, whatever else is installed:
    # Lightning's default is Rich's bar where `rich` is (the optuna extra brings it), and that one reads the
    # logged loss back from the device after every step.
    if cfg.trainer.get("enable_progress_bar", True) and not any(isinstance(cb, ProgressBar) for cb in callbacks):
        extra.append(TQDMProgressBar())
    trainer = instantiate_trainer(cfg, callbacks=callbacks + extra, logger=loggers or False,
                                  plugins=[AtomicCheckpointIO()], enable_checkpointing=checkpointing)
    check_launch(trainer)
    checkpoint_dirs = {run_dir / "checkpoints", *(Path(cb.dirpath) for cb in trainer.checkpoint_callbacks
                                                  if getattr(cb, "dirpath", None))}
    for folder in checkpoint_dirs:
        remove_stale(folder)  # saves cut short by a killed run (a save in progress elsewhere stays)
    return trainer


def resume_in_place(trainer: pl.Trainer, ckpt_path: str) -> None:
    """Before resuming in the run's own folder: its CSV log continues, and its checkpoints are meant to be there."""
    continue_csv_logs(trainer.loggers, ckpt_path)
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


def write_run_curves(trainer: pl.Trainer, run_dir: Path) -> None:
    """plots/curves.png in the run folder, drawn from the run's CSV log (seq2seq.training.curves)."""
    out = run_dir / "plots" / "curves.png"
    csv_logger = next((lg for lg in trainer.loggers if isinstance(lg, LightningCSVLogger)), None)
    if csv_logger is None:
        log.info("%s not written: it is drawn from the CSV log, and this run has no CSV logger (logger=csv)", out)
        return
    # Not `csv_logger.experiment`: in the launching process of a ddp_spawn run (whose rank 0 wrote the log),
    # creating the writer deletes the metrics file it finds.
    metrics_csv = Path(csv_logger.log_dir) / ExperimentWriter.NAME_METRICS_FILE
    try:
        written = write_curves(metrics_csv, out, title=run_dir.name)
    except Exception:  # noqa: BLE001 -- a figure must not turn a finished run into a failed one
        log.exception("%s not written: drawing it failed", out)
        return
    if written is not None:
        log.info("training curves: %s", written)
