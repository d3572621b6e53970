"""Lightning's CSV logger, made to continue a resumed run's `logs/metrics.csv`.

Lightning's writer deletes an existing metrics.csv when it starts, so a run resumed with
`ckpt_path=last` (same run folder) used to lose every row logged before the kill, and with them the
first part of plots/curves.png. This writer keeps the file and appends to it under its header; the
rows logged after the checkpoint the run resumes from (which the resumed run logs again) are dropped
first, by `keep_until(step)`.
"""

from __future__ import annotations

import csv
import os
from typing import Any

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class ContinuingExperimentWriter(ExperimentWriter):
    """An ExperimentWriter that appends to an existing metrics.csv instead of deleting it."""

    def _check_log_dir_exists(self) -> None:
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            header = next(csv.reader(f), [])
        self.metrics_keys = sorted(header)  # the writer's own order: appended rows follow the header

    def keep_until(self, step: int) -> None:
        """Drop the rows logged after `step` (a resumed run logs those steps again)."""
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            reader = csv.DictReader(f)
            header, rows = reader.fieldnames or [], list(reader)
        kept = [r for r in rows if not r.get("step") or int(float(r["step"])) <= step]
        if len(kept) == len(rows):
            return
        tmp = f"{self.metrics_file_path}.{os.getpid()}~"
        with self._fs.open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(kept)
        os.replace(tmp, self.metrics_file_path)


class CSVLogger(LightningCSVLogger):
    """`logs/metrics.csv` of a run, continued (not replaced) when the run resumes in its folder."""

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ContinuingExperimentWriter(log_dir=self.log_dir)
        return self._experiment
