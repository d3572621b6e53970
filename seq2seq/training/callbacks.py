"""The project's own Lightning callbacks for training runs (the stock ones are configured in conf/callbacks/):
worker logging under ddp_spawn, and the guard that skips non-finite or out-of-memory steps."""

from __future__ import annotations

import logging
import time
from logging.config import dictConfig
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)


def lightning_logs_through_root() -> None:
    """Print each of Lightning's log lines once. Its packages give their loggers console handlers of their
    own (`lightning`: "INFO: ..." always; `lightning.pytorch`, `lightning.fabric`: a bare one, and no
    propagation, when imported before logging was configured), so under Hydra's logging every line came
    out twice, or only outside the run's log file. With the root logger configured (Hydra's console and
    train.log), those handlers go and the records propagate to it."""
    if not logging.getLogger().handlers:
        return  # nothing configured (a library caller, a test): Lightning's own handlers are the only ones
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if type(h) is logging.StreamHandler]:
            logger.removeHandler(handler)
        logger.propagate = True


class WorkerLogging(pl.Callback):
    """Apply the run's logging config in ddp_spawn workers, which start without Hydra's setup
    (otherwise rank 0's per-validation log lines never reach the console or train.log)."""

    def __init__(self, config: dict[str, Any]):
        self.config = config

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not logging.getLogger().handlers:  # a fresh spawned process; the main one keeps its handlers
            dictConfig(self.config)
            lightning_logs_through_root()


class TrainingStopped(RuntimeError):
    """Training cannot go on usefully; last.ckpt holds the last good state (seq2seq-train exits with 3)."""


class TrainingDivergedError(TrainingStopped):
    """Too many consecutive optimiser steps had a non-finite loss or gradients."""


class OutOfMemoryStop(TrainingStopped):
    """Too many consecutive training steps ran out of memory."""


class StepGuard(pl.Callback):
    """Skips an optimiser step whose gradients are not finite (on all ranks) and stops training when
    such steps keep coming: `max_bad_steps` in a row, or `max_oom_steps` in a row that ran out of memory
    (`TranslationModule` turns an out-of-memory step into non-finite gradients and calls
    `out_of_memory()`). 0 = never stop. The module adds it itself (`configure_callbacks`): every run has it.

    Sync-free: the decision stays on the device. A fused Adam takes it as `found_inf` (the GradScaler
    protocol: the kernel leaves parameters, moments and step count untouched, so the learning-rate
    schedule, which counts applied updates, does not advance either), and the counters are device
    tensors read every log_every_n_steps: a stop comes at the first logging step after the limit is
    reached. No extra collective per step: under DDP the gradients are already all-reduced, so every
    rank computes the same norm and decides alike; a rank's non-finite loss (or out-of-memory step)
    makes its gradients, hence everyone's, non-finite. Only the out-of-memory counts are per rank; the
    logging steps take their maximum over the ranks, so that all stop together.
    """

    # Device counters, in this order: skipped steps in total, in a row now, longest run since the last
    # read; then the same three for steps that ran out of memory (on this rank).
    FIELDS = ("skipped", "skipped_run", "skipped_longest", "oom", "oom_run", "oom_longest")

    def __init__(self, max_bad_steps: int, max_oom_steps: int):
        self.max_bad_steps = max_bad_steps
        self.max_oom_steps = max_oom_steps
        self.skipped = {"total": 0, "consecutive": 0, "oom": 0, "oom_consecutive": 0}  # as of the last read
        self._counts: torch.Tensor | None = None  # FIELDS, on the device; built at the first step
        self._oom_now = False  # this step ran out of memory on this rank (set by out_of_memory)

    def out_of_memory(self) -> None:
        """Called by the module when this rank's training step ran out of memory (it was made non-finite)."""
        self._oom_now = True

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        opt = getattr(optimizer, "optimizer", optimizer)
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if not grads:
            return
        norm = torch.nn.utils.get_total_norm(grads)  # one fused norm: non-finite iff some gradient is
        pl_module.log("train/grad_norm", norm, batch_size=1)
        oom, self._oom_now = float(self._oom_now), False
        # Under a GradScaler (16-mixed), overflowing gradients are normal: the scaler skips those steps
        # (out-of-memory ones included), so only the out-of-memory ones are counted here.
        scaled = getattr(trainer.precision_plugin, "scaler", None) is not None
        bad = torch.zeros_like(norm) if scaled else (~torch.isfinite(norm)).float()  # [] 1.0 = skip this step
        if self._counts is None:  # a resumed run continues its runs
            s = self.skipped
            start = [s["total"], s["consecutive"], 0, s["oom"], s["oom_consecutive"], 0]
            self._counts = torch.tensor(start, dtype=torch.float32, device=bad.device)
        c = self._counts
        run, oom_run = (c[1] + 1.0) * bad, (c[4] + 1.0) * oom
        self._counts = torch.stack([c[0] + bad, run, torch.maximum(c[2], run),
                                    c[3] + oom, oom_run, torch.maximum(c[5], oom_run)])
        if scaled:
            opt.found_inf = None
        elif opt.defaults.get("fused"):
            opt.found_inf = bad
        elif bool(bad):  # an optimiser that cannot skip on the device: one host read per step (free on the CPU)
            for p in pl_module.parameters():
                p.grad = None  # optimisers leave parameters without gradients untouched
        pl_module.log("train/skipped_steps", self._counts[0], batch_size=1)
        pl_module.log("train/oom_steps", self._counts[3], batch_size=1)

    def _read(self, trainer: pl.Trainer) -> dict[str, int]:
        """Copy the device counters to `self.skipped` (one small host read, and under DDP one all-reduce
        of the maximum); -> all FIELDS as numbers, the longest runs since the previous read included."""
        if self._counts is None:
            s = self.skipped
            return dict(zip(self.FIELDS, (s["total"], s["consecutive"], 0, s["oom"], s["oom_consecutive"], 0)))
        counts = self._counts
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            counts = counts.clone()
            torch.distributed.all_reduce(counts, op=torch.distributed.ReduceOp.MAX)
        now = dict(zip(self.FIELDS, (int(x) for x in counts.tolist())))
        skipped_before = self.skipped["total"]
        self.skipped = {"total": now["skipped"], "consecutive": now["skipped_run"], "oom": now["oom"],
                        "oom_consecutive": now["oom_run"]}
        self._counts[2] = 0  # the current runs live on in [1] and [4]: counted again if they go on
        self._counts[5] = 0
        if now["skipped"] > skipped_before and trainer.is_global_zero:
            log.warning("step %d: %d update(s) skipped for non-finite loss or gradients or lack of memory since "
                        "the last report (%d in total, %d of them out of memory; %d in a row now)",
                        trainer.global_step, now["skipped"] - skipped_before, now["skipped"], now["oom"],
                        now["skipped_run"])
        return now

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        """Every log_every_n_steps: read the counters; past a limit, write last.ckpt and stop with a clear error."""
        if trainer.global_step % max(int(trainer.log_every_n_steps), 1):
            return
        now = self._read(trainer)
        oom_stop = bool(self.max_oom_steps) and now["oom_longest"] >= self.max_oom_steps
        bad_stop = bool(self.max_bad_steps) and now["skipped_longest"] >= self.max_bad_steps
        if not (oom_stop or bad_stop):
            return
        path = self.last_checkpoint_path(trainer)
        trainer.save_checkpoint(path)  # all ranks take part; rank 0 writes
        step, total = trainer.global_step, now["skipped"]
        if oom_stop:
            raise OutOfMemoryStop(
                f"training stopped at step {step}: {now['oom_longest']} consecutive steps ran out of memory "
                f"(max_oom_steps={self.max_oom_steps}; {total} steps skipped in total). The last good state is in "
                f"{path}. Set a smaller batching.max_tokens (or batching.max_sentences), then resume with "
                "ckpt_path=last.")
        raise TrainingDivergedError(
            f"training stopped at step {step}: {now['skipped_longest']} consecutive steps had a non-finite loss "
            f"or gradients (max_bad_steps={self.max_bad_steps}; {total} skipped in total, {now['oom']} of them out "
            f"of memory). The last good state is in {path}. Lower optim.lr, clip gradients "
            "(trainer.gradient_clip_val), check the data, then resume with ckpt_path=last.")

    @staticmethod
    def last_checkpoint_path(trainer: pl.Trainer) -> str:
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.dirpath:
                return str(Path(cb.dirpath) / f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}")
        return str(Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt")

    def state_dict(self) -> dict[str, Any]:
        if self._counts is not None:  # the device counters are ahead of self.skipped between reads
            c = [int(x) for x in self._counts.tolist()]
            return {"total": c[0], "consecutive": c[1], "oom": c[3], "oom_consecutive": c[4]}
        return dict(self.skipped)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped.update(state_dict)
        self._counts = None  # rebuilt from self.skipped at the next step


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


class WallClock(pl.Callback):
    """Log `time/elapsed_s`, the seconds of training so far, with every logged training step and again
    when each validation has ended: the wall-time axis of plots/curves.png and seq2seq-runs --plot.

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
        elapsed = self.elapsed()  # one value for every logger (the CSV log and the trackers agree)
        for logger in trainer.loggers:
            logger.log_metrics({self.KEY: elapsed}, step=trainer.fit_loop.epoch_loop._batches_that_stepped)

    def state_dict(self) -> dict[str, float]:
        return {"elapsed_s": self.elapsed()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._saved = float(state_dict["elapsed_s"])
