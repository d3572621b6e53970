"""The project's own Lightning callbacks for training runs (the stock ones are configured in conf/callbacks/)."""

from __future__ import annotations

import logging
import time
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


class WallClock(pl.Callback):
    """Log `time/elapsed_s`, the seconds of training so far, with every logged training step and again
    when each validation has ended: the wall-time axis of plots/curves.png and collect_runs.py --plot.

    The clock starts when training starts (after data preparation and the sanity check) and is saved in
    checkpoints, so a resumed run continues its count instead of starting again at 0.
    """

    KEY = "time/elapsed_s"

    def __init__(self) -> None:
        self._saved = 0.0  # seconds counted before this process started training (resume)
        self._start: float | None = None

    def elapsed(self) -> float:
        return self._saved + (time.perf_counter() - self._start if self._start is not None else 0.0)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        pl_module.log(self.KEY, self.elapsed(), batch_size=1)  # joins the step's row (log_every_n_steps)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After the module's on_validation_epoch_end (where validation decodes and scores), where self.log
        # is no longer allowed: written straight to the loggers, at the step Lightning gives the val row.
        if trainer.sanity_checking:
            return
        for logger in trainer.loggers:
            logger.log_metrics({self.KEY: self.elapsed()}, step=trainer.fit_loop.epoch_loop._batches_that_stepped)

    def state_dict(self) -> dict[str, float]:
        return {"elapsed_s": self.elapsed()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._saved = float(state_dict["elapsed_s"])
