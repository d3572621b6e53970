"""The Lightning callback that `scale.py` adds to a `seq2seq-train` run through Hydra, without a line of the
package changed:

    +callbacks.scale_probe._target_=scale_probe.StepProbe +callbacks.scale_probe.out=DIR
    +callbacks.scale_probe.steps=50 +callbacks.scale_probe.ack_timeout_s=30

(scripts/bench on PYTHONPATH: every rank imports it, also the ones ddp_spawn starts). Every rank writes
DIR/rank{R}.json with wall-clock times (time.time(), comparable with the time scale.py started the
process): when training started (`on_train_start`, after the corpus is loaded and the ranks are up) and
when the first optimizer step ended; and after `steps` optimizer steps its own memory: VmRSS and VmHWM
from /proc/self/status, Rss and Pss (with their anonymous and file-backed parts) from
/proc/self/smaps_rollup. RSS counts a memory-mapped page in every process that maps it; PSS splits it
among them, so PSS summed over ranks is the memory they really take together.

At that step each rank then waits (at most `ack_timeout_s`) for DIR/ack, which scale.py writes once it
has read the whole process tree (ranks and ddp_spawn's launcher) at that moment: training ends right after.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from scale import memory_figures  # scripts/bench/, on the training process's PYTHONPATH


class StepProbe(pl.Callback):
    def __init__(self, out: str, steps: int = 50, ack_timeout_s: float = 30.0):
        self.out, self.steps, self.ack_timeout_s = Path(out), int(steps), float(ack_timeout_s)
        self.record: dict[str, Any] = {}
        self.done = False

    def _write(self, trainer: pl.Trainer) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / f"rank{trainer.global_rank}.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.record))
        os.replace(tmp, path)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.record = {"rank": trainer.global_rank, "world_size": trainer.world_size, "pid": os.getpid(),
                       "ppid": os.getppid(), "train_start_time": time.time()}
        self._write(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.done:
            return
        now = time.time()
        if "first_step_time" not in self.record and trainer.global_step >= 1:
            self.record["first_step_time"] = now
            self._write(trainer)
        if trainer.global_step >= self.steps:
            self.done = True
            self.record.update({"step": trainer.global_step, "step_time": now, "memory_kib": memory_figures()})
            self._write(trainer)
            ack = self.out / "ack"
            deadline = time.monotonic() + self.ack_timeout_s
            while not ack.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
