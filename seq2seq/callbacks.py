"""The project's own Lightning callbacks for training runs (the stock ones are configured in conf/callbacks/)."""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint


class WorkerLogging(pl.Callback):
    """Apply the run's logging config in ddp_spawn workers, which start without Hydra's setup
    (otherwise rank 0's per-validation log lines never reach the console or train.log)."""

    def __init__(self, config: dict[str, Any]):
        self.config = config

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not logging.getLogger().handlers:  # a fresh spawned process; the main one keeps its handlers
            from logging.config import dictConfig

            dictConfig(self.config)


class LastCheckpoint(ModelCheckpoint):
    """`checkpoints/last.ckpt`: written whenever Lightning's ModelCheckpoint would write it (after each
    validation, or at the end of an epoch without one), and also at the end of every training epoch whose
    last step it has not saved yet. An epoch also ends when training stops (`trainer.max_steps` reached
    mid-epoch, `trainer.max_time`), so a run that stops between validations (`check_val_every_n_epoch=2`,
    an integer `val_check_interval`) leaves its final state for `ckpt_path=last`, not an earlier one or
    none. Saved here rather than in `on_train_end`: there the epoch already counts as completed, and a
    resumed run would skip the rest of it."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if not self._should_skip_saving_checkpoint(trainer):  # fast_dev_run, or this step is saved already
            # Every rank calls this (saving is collective); rank 0 writes the file.
            self._save_none_monitor_checkpoint(trainer, self._monitor_candidates(trainer))
