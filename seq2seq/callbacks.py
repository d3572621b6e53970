"""The project's own Lightning callbacks for training runs (the stock ones are configured in conf/callbacks/)."""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl


class WorkerLogging(pl.Callback):
    """Apply the run's logging config in ddp_spawn workers, which start without Hydra's setup
    (otherwise rank 0's per-validation log lines never reach the console or train.log)."""

    def __init__(self, config: dict[str, Any]):
        self.config = config

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not logging.getLogger().handlers:  # a fresh spawned process; the main one keeps its handlers
            from logging.config import dictConfig

            dictConfig(self.config)
