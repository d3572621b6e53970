"""Training curves: plots/curves.png of a run and the sweep overlay of seq2seq-runs --plot, drawn
from a CSV log laid out as Lightning's CSVLogger writes it (checked through the figure's axes, not pixels)."""

from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path

import pytest

from seq2seq.training.curves import (ELAPSED, STEP_LABEL, TIME_LABEL, curves_figure, overlay_figure, points, read_log,
                            write_curves)

from .helpers import require

PNG = b"\x89PNG\r\n\x1a\n"


def synthetic_log(path: Path, lr_scale: float = 1.0, timed: bool = True) -> Path:
    """Rows in CSVLogger's order: per logged step the LearningRateMonitor row, then the training row (with
    WallClock's time/elapsed_s); after each validation its val/* row, then WallClock's row at its end.
    Training takes 1 s per 10 steps; each validation takes 5 s more."""
    rows: list[dict] = []
    clock = 0.0
    for step in range(9, 40, 10):
        clock += 1.0
        rows.append({"step": step, "lr-Adam": lr_scale * 0.001 * (step + 1)})
        rows.append({"step": step, "epoch": 0, "train/loss": 5.0 - step / 10, ELAPSED: clock})
        if step in (19, 39):
            rows.append({"step": step, "epoch": 0, "val/bleu": step / 2, "val/chrf": step, "val/ter": 80.0})
            clock += 5.0
            rows.append({"step": step, ELAPSED: clock})
    keys = sorted({k for r in rows for k in r} - (set() if timed else {ELAPSED}))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def lines_of(ax) -> dict[str, tuple[list[float], list[float]]]:
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}


def test_validation_points_take_the_time_their_validation_ended(tmp_path):
    """A validation's wall time is the WallClock row logged when it ended (7 s and 14 s), not that of the
    training row before it (2 s and 9 s). Mutation that makes it fail: curves.points taking
    the last time at or before each row (scanning forwards) instead of the first at or after it."""
    rows = read_log(synthetic_log(tmp_path / "metrics.csv"))
    assert points(rows, "val/bleu") == [(19.0, 7.0, 9.5), (39.0, 14.0, 19.5)]
    assert points(rows, "train/loss")[:2] == [(9.0, 1.0, 4.1), (19.0, 2.0, 3.1)]
    assert points(rows, "lr-Adam")[0] == (9.0, 1.0, 0.01)  # a row without a time takes the next one's


def test_run_figure_has_loss_scores_and_learning_rate_against_steps_and_wall_time(tmp_path):
    """Mutation that makes it fail: curves.PANELS without the "lr-" panel (no learning rate drawn)."""
    require("matplotlib")
    fig = curves_figure(read_log(synthetic_log(tmp_path / "metrics.csv")), title="run")
    axes = fig.get_axes()
    assert len(axes) == 6
    assert [ax.get_xlabel() for ax in axes] == [STEP_LABEL] * 3 + [TIME_LABEL] * 3
    assert [ax.get_ylabel() for ax in axes] == ["train loss", "validation score", "learning rate"] * 2
    by_step, by_time = [lines_of(ax) for ax in axes[:3]], [lines_of(ax) for ax in axes[3:]]
    assert [sorted(panel) for panel in by_step] == [["train/loss"], ["val/bleu", "val/chrf"], ["lr-Adam"]]
    assert by_step[1]["val/bleu"] == ([19.0, 39.0], [9.5, 19.5])
    assert by_time[1]["val/chrf"] == ([7.0 / 60, 14.0 / 60], [19.0, 39.0])  # minutes
    assert by_time[0]["train/loss"][0] == [1.0 / 60, 2.0 / 60, 8.0 / 60, 9.0 / 60]
    assert by_step[2]["lr-Adam"][1] == pytest.approx([0.01, 0.02, 0.03, 0.04])


def test_without_wall_clock_only_the_step_row_is_drawn(tmp_path):
    require("matplotlib")
    fig = curves_figure(read_log(synthetic_log(tmp_path / "metrics.csv", timed=False)))
    assert [ax.get_xlabel() for ax in fig.get_axes()] == [STEP_LABEL] * 3


def test_write_curves_saves_a_png_or_says_how_to_install_matplotlib(tmp_path, monkeypatch, caplog):
    require("matplotlib")
    log = synthetic_log(tmp_path / "metrics.csv")
    out = tmp_path / "plots" / "curves.png"
    assert write_curves(log, out) == out
    assert out.read_bytes()[:8] == PNG and out.stat().st_size > 10_000
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # not installed
    with caplog.at_level(logging.INFO, logger="seq2seq.training.curves"):
        assert write_curves(log, tmp_path / "other.png") is None
    assert "matplotlib is not installed (pip install 'seq2seq[plot]')" in caplog.text
    assert not (tmp_path / "other.png").exists()


def test_overlay_draws_every_run_on_every_panel(tmp_path):
    require("matplotlib")
    runs = [("0 optim.lr=0.01", read_log(synthetic_log(tmp_path / "a.csv"))),
            ("1 optim.lr=0.02", read_log(synthetic_log(tmp_path / "b.csv", lr_scale=2.0)))]
    fig = overlay_figure(runs, "val/bleu")
    axes = fig.get_axes()
    assert [ax.get_ylabel() for ax in axes] == ["val/bleu", "val/bleu", "train/loss", "train/loss"]
    assert [ax.get_xlabel() for ax in axes] == [STEP_LABEL, TIME_LABEL] * 2
    assert all(len(ax.get_lines()) == 2 for ax in axes)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["0 optim.lr=0.01", "1 optim.lr=0.02"]


def test_wall_clock_continues_across_a_resume():
    """Mutation that makes it fail: WallClock.load_state_dict not restoring the saved seconds."""
    from seq2seq.training.callbacks import WallClock

    before = WallClock()
    before._saved = 100.0  # as if it had run for 100 s
    after = WallClock()
    after.load_state_dict(before.state_dict())
    after.on_train_start(None, None)
    assert 100.0 <= after.elapsed() < 110.0
