"""Checkpoint averaging at the end of training (`average_last: N`).

The mean of the weights of the last N validations usually translates better than any one of them: the
points the optimiser visits near the end of training scatter around a flatter, better region. Here it
is part of every run rather than a separate step (`seq2seq-average` remains for ad-hoc use):

1. `ValidatedCheckpoints` keeps the checkpoints of the last N validations in the checkpoint folder
   (`validated-step<step>.ckpt`; older ones are deleted as new ones come). They are files, so a resumed
   run averages the same N checkpoints an uninterrupted one would.
2. After `trainer.fit`, `average_last_validated` averages them (`seq2seq.checkpoint.averaging.average`),
   validates the average exactly as training validates (same split, search and metric), and compares it
   with the best single checkpoint by `validation.metric`. If the average scores higher, it becomes
   best.ckpt (the final test, `seq2seq-translate` and export then use it); otherwise best.ckpt stays.
   Either way the log and the returned metrics say which won, by how much.

An averaged best.ckpt holds weights, run config and tokenizer but no optimiser state
(`seq2seq.checkpoint.averaging`): it is for translation. Resuming always uses last.ckpt, which is never
replaced.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from seq2seq.checkpoint.averaging import average
from seq2seq.checkpoint.format import atomic_torch_save

log = logging.getLogger(__name__)

FILENAME = "validated-step{step}"


class ValidatedCheckpoints(ModelCheckpoint):
    """Keeps the checkpoints of the last `keep` validations (`validated-step<step>.ckpt`)."""

    def __init__(self, dirpath: str | Path, keep: int) -> None:
        # monitor="step", mode="max": Lightning ranks the files by training step and keeps the newest.
        super().__init__(dirpath=dirpath, filename=FILENAME, monitor="step", mode="max", save_top_k=keep,
                         save_last=False, auto_insert_metric_name=False, enable_version_counter=False,
                         save_on_train_epoch_end=False)

    def paths(self) -> list[Path]:
        """The kept checkpoints that exist, oldest first."""
        ranked = sorted(self.best_k_models.items(), key=lambda item: float(item[1]))
        return [Path(path) for path, _ in ranked if Path(path).is_file()]


def best_checkpoint_callback(callbacks: Iterable[Any]) -> ModelCheckpoint | None:
    """The callback that writes best.ckpt: the first checkpoint callback ranking by a validation metric."""
    return next((cb for cb in callbacks
                 if isinstance(cb, ModelCheckpoint) and cb.monitor and not isinstance(cb, ValidatedCheckpoints)),
                None)


def best_checkpoint_path(trainer: pl.Trainer) -> str:
    """best.ckpt's path as its callback knows it ("" without such a callback or before it saved)."""
    best_cb = best_checkpoint_callback(trainer.checkpoint_callbacks)
    return best_cb.best_model_path if best_cb is not None else ""


def best_validation(trainer: pl.Trainer) -> dict[str, float]:
    """{'best val/<metric>': best.ckpt's validation score}, the best validation of the run by
    validation.metric (the objective `seq2seq-train` returns to a hyperparameter search); {} without a
    best-checkpoint callback (callbacks=none) or before any validation."""
    best_cb = best_checkpoint_callback(trainer.checkpoint_callbacks)
    if best_cb is None or best_cb.best_model_score is None:
        return {}
    return {f"best {best_cb.monitor}": float(best_cb.best_model_score)}


def validated_checkpoints(trainer: pl.Trainer) -> ValidatedCheckpoints | None:
    return next((cb for cb in trainer.callbacks if isinstance(cb, ValidatedCheckpoints)), None)


def average_last_validated(trainer: pl.Trainer, module: pl.LightningModule, datamodule: Any) -> dict[str, float]:
    """After `trainer.fit`: validate the average of the kept checkpoints; it replaces best.ckpt if better.

    Runs on every rank (validation is collective under DDP); rank 0 writes. -> metrics
    `average/<metric>` (the average's validation score), `average/best_single` and `average/chosen`
    (1.0 when best.ckpt is now the average), or {} when there was nothing to average.
    """
    keeper, best_cb = validated_checkpoints(trainer), best_checkpoint_callback(trainer.checkpoint_callbacks)
    if keeper is None or best_cb is None or best_cb.best_model_score is None:
        return {}
    paths = keeper.paths()
    if len(paths) < 2:
        log.info("average_last: only %d validated checkpoint(s); nothing to average", len(paths))
        return {}
    averaged = average(paths)
    module.load_state_dict(averaged["state_dict"])
    monitor = best_cb.monitor  # val/<metric>
    results = trainer.validate(module, datamodule=datamodule, verbose=False)
    score = float(results[0][monitor])
    best = float(best_cb.best_model_score)
    better = score > best if best_cb.mode == "max" else score < best
    steps = ", ".join(str(p.stem.removeprefix("validated-step")) for p in paths)
    log.info("average of the last %d validated checkpoints (steps %s): %s %.2f; best single checkpoint %.2f: "
             "best.ckpt is %s", len(paths), steps, monitor, score, best,
             "the average" if better else "unchanged")
    if better and trainer.is_global_zero:
        atomic_torch_save(averaged, best_cb.best_model_path)
    if better:
        best_cb.best_model_score = torch.tensor(score)
    trainer.strategy.barrier("average_last")  # no rank reads best.ckpt before it is written
    name = monitor.removeprefix("val/")
    return {f"average/{name}": score, "average/best_single": best, "average/chosen": float(better)}
