"""Training curves from a run's CSV log (`logs/metrics.csv`, written by Lightning's CSVLogger).

`curves_figure` draws one run: train loss, validation BLEU/chrF and learning rate, each against the
optimiser step (top row) and against training wall time (bottom row). `overlay_figure` draws several
runs of a sweep on shared axes (seq2seq-runs --plot). Both return a matplotlib Figure
without saving it, so tests can read its axes; `write_curves` saves one run's figure as a PNG.

Wall time comes from `time/elapsed_s`, logged by `seq2seq.training.callbacks.WallClock` with the training
rows and once more when each validation ends. A row's wall time is the first `time/elapsed_s` at or
after it in the file: rows are written in the order their values were logged, so that is when the
row's values were known. A log without `time/elapsed_s` (callbacks=none) gets the step row only.

matplotlib is optional (`pip install 'seq2seq[plot]'`), imported only to draw. This module imports
neither torch nor Lightning: seq2seq-runs uses it where only the run folders are at hand.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

ELAPSED = "time/elapsed_s"
PLOT_EXTRA = "pip install 'seq2seq[plot]'"
# (y-axis label, the logged keys drawn on it); "lr-" stands for every LearningRateMonitor column.
PANELS = (("train loss", ("train/loss",)),
          ("validation score", ("val/bleu", "val/chrf")),
          ("learning rate", ("lr-",)))
STEP_LABEL = "step"
TIME_LABEL = "wall time (min)"

Point = tuple[float, "float | None", float]  # (step, wall time in seconds or None, value)


def read_log(path: Path) -> list[dict[str, str]]:
    """The rows of a CSVLogger metrics file, in the order they were logged."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _number(text: str | None) -> float | None:
    if text in (None, ""):
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def points(rows: Sequence[dict[str, str]], key: str) -> list[Point]:
    """Every logged value of `key`: (step, wall time in seconds or None, value), in log order."""
    times: list[float | None] = [None] * len(rows)
    later: float | None = None
    for i in reversed(range(len(rows))):  # backwards: the first time at or after each row
        time = _number(rows[i].get(ELAPSED))
        if time is not None:
            later = time
        times[i] = later
    out = []
    for row, time in zip(rows, times):
        value, step = _number(row.get(key)), _number(row.get("step"))
        if value is not None and step is not None:
            out.append((step, time, value))
    return out


def _keys(rows: Sequence[dict[str, str]], wanted: Sequence[str]) -> list[str]:
    """The logged keys among `wanted`; a key ending in '-' stands for every column it prefixes."""
    columns = list(rows[0]) if rows else []
    keys: list[str] = []
    for want in wanted:
        if want.endswith("-"):
            keys += [c for c in columns if c.startswith(want)]
        elif want in columns:
            keys.append(want)
    return keys


def _pyplot_free_figure(**kwargs) -> Figure:
    """A Figure that draws with Agg and leaves pyplot's global state (and the GUI backend) alone."""
    from matplotlib.figure import Figure

    return Figure(layout="constrained", **kwargs)


def _draw(ax, xy: list[tuple[float, float]], label: str, sparse: bool) -> bool:
    if not xy:
        return False
    xs, ys = zip(*xy)
    ax.plot(xs, ys, label=label, marker="o" if sparse else None, markersize=3)
    return True


def _axis(ax, row: int, ylabel: str) -> None:
    ax.set_xlabel(STEP_LABEL if row == 0 else TIME_LABEL)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)


def _xy(pts: list[Point], row: int) -> list[tuple[float, float]]:
    """(x, value) pairs: x is the step (row 0) or the wall time in minutes (row 1)."""
    if row == 0:
        return [(step, value) for step, _, value in pts]
    return [(time / 60.0, value) for _, time, value in pts if time is not None]


def _timed(rows: Sequence[dict[str, str]]) -> bool:
    return any(_number(r.get(ELAPSED)) is not None for r in rows)


def curves_figure(rows: Sequence[dict[str, str]], title: str = "") -> Figure:
    """One run's curves: a column per panel of PANELS, a row per x axis (step; wall time when logged)."""
    n_rows = 2 if _timed(rows) else 1
    fig = _pyplot_free_figure(figsize=(15, 4 * n_rows))
    axes = fig.subplots(n_rows, len(PANELS), squeeze=False)
    for row in range(n_rows):
        for col, (ylabel, wanted) in enumerate(PANELS):
            ax = axes[row][col]
            drawn = [_draw(ax, _xy(points(rows, key), row), key, key.startswith("val/"))
                     for key in _keys(rows, wanted)]
            _axis(ax, row, ylabel)
            if any(drawn):
                ax.legend(fontsize="small")
            else:
                ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
    if title:
        fig.suptitle(title)
    return fig


def overlay_figure(runs: Sequence[tuple[str, Sequence[dict[str, str]]]], metric: str = "val/bleu") -> Figure:
    """Several runs on shared axes: `metric` and train loss (rows) against step and wall time (columns),
    one colour per run, named in one legend under the axes (run labels can be long)."""
    fig = _pyplot_free_figure(figsize=(12, 8 + 0.25 * len(runs)))
    axes = fig.subplots(2, 2, squeeze=False)
    colours = [f"C{i % 10}" for i in range(len(runs))]
    for panel, key in enumerate((metric, "train/loss")):
        for x in range(2):
            ax = axes[panel][x]
            drawn = False
            for (label, rows), colour in zip(runs, colours):
                xy = _xy(points(rows, key), x)
                if xy:
                    ax.plot(*zip(*xy), color=colour, marker="o" if key.startswith("val/") else None, markersize=3)
                    drawn = True
            _axis(ax, x, key)
            if not drawn:
                ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
    from matplotlib.lines import Line2D

    fig.legend([Line2D([], [], color=c) for c in colours], [label for label, _ in runs],
               loc="outside lower center", fontsize="small")
    return fig


def write_curves(metrics_csv: Path, out: Path, title: str = "") -> Path | None:
    """Save `curves_figure` of `metrics_csv` as the PNG `out`; None (with one log line saying why) when
    matplotlib is not installed or nothing was logged."""
    try:
        import matplotlib  # noqa: F401 -- only to find out whether it is installed
    except ImportError:
        log.info("%s not written: matplotlib is not installed (%s)", out, PLOT_EXTRA)
        return None
    if not metrics_csv.is_file():
        log.info("%s not written: no CSV log at %s", out, metrics_csv)
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    curves_figure(read_log(metrics_csv), title).savefig(out, dpi=100)
    return out
