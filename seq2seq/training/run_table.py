"""The table of several training runs (a Hydra sweep, or runs side by side): `collect` reads each run
folder's settings, logged metrics and test scores into one row; `to_markdown`, `to_csv`, `runs_json`
and `plot_runs` write it out (`seq2seq-runs`).

A run folder is one holding `.hydra/overrides.yaml`. Per run it reads
  .hydra/overrides.yaml         the command-line settings of the run (the sweep's varied ones among them)
  logs/metrics.csv              the last logged value of every val/* metric, the last train/loss,
                                step and training wall time (time/elapsed_s), and the best value of
                                the monitored validation metric (.hydra/config.yaml's validation.metric)
  checkpoints/*.scores.json     the final test scores written after training (cased BLEU/chrF/TER,
                                lowercased BLEU, and lowercased Moses-tokenized BLEU when present)
  .hydra/optuna_study.yaml      the Optuna study of a hyperparameter search's trial (`sweep_studies`)
Only the run folders are read: no torch, no Lightning (the table can be made on a login node).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path
from typing import Any

import yaml  # PyYAML comes with hydra-core/omegaconf

from seq2seq.config import METRIC_MODES
from seq2seq.training.curves import overlay_figure, read_log
from seq2seq.training.optuna_study import read_studies, study_lines

VAL_ORDER = ("val/bleu", "val/chrf", "val/ter", "val/ppl", "val/loss")
# Column-name prefixes of the figures; the other columns between "run" and "status" are settings.
METRIC_PREFIXES = ("steps", "time/", "train/", "val/", "best ", "test/", "test[")


class RunsError(ValueError):
    """No run folder to tabulate, or nothing to plot: the command's message (exit status 1)."""


def find_runs(paths: list[Path]) -> list[Path]:
    """Run folders at or below `paths`, in natural order (sweep job 2 before job 10), without repeats."""
    runs: list[Path] = []
    for path in paths:
        if (path / ".hydra" / "overrides.yaml").is_file():
            found = [path]
        else:
            found = [p.parent.parent for p in path.rglob(".hydra/overrides.yaml")]
        runs.extend(sorted(found, key=_natural_key))
    return list(dict.fromkeys(p.resolve() for p in runs))


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def read_overrides(run: Path) -> dict[str, str]:
    """`.hydra/overrides.yaml` (a YAML list of `key=value` strings) -> {key: value}."""
    items = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text(encoding="utf-8")) or []
    settings: dict[str, str] = {}
    for item in items:
        item = str(item)
        if item.startswith("~"):  # a deletion: `~key` or `~key=value`
            settings[item[1:].split("=", 1)[0]] = "(deleted)"
            continue
        key, _, value = item.partition("=")
        settings[key.lstrip("+")] = value
    return settings


def monitored_metric(run: Path) -> str:
    """The run's validation.metric (its .hydra/config.yaml), "bleu" when it names none."""
    config = run / ".hydra" / "config.yaml"
    if config.is_file():
        cfg = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        metric = (cfg.get("validation") or {}).get("metric")
        if metric in METRIC_MODES:
            return metric
    return "bleu"


def _number(text: str | None) -> float | None:
    if text in (None, ""):
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _log_rows(run: Path) -> list[dict[str, str]] | None:
    """logs/metrics.csv as rows, or None when the run has no log."""
    path = run / "logs" / "metrics.csv"
    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def read_metrics(run: Path) -> dict[str, float]:
    """Final values from logs/metrics.csv: steps, last train/loss, last val/*, best monitored."""
    rows = _log_rows(run)
    if rows is None:
        return {}
    out: dict[str, float] = {}
    steps = [_number(r.get("step")) for r in rows]
    steps = [s for s in steps if s is not None]
    if steps:
        out["steps"] = int(max(steps)) + 1  # Lightning logs step i for the (i+1)-th optimiser step
    keys = [k for k in (rows[0].keys() if rows else [])
            if k in ("train/loss", "time/elapsed_s") or k.startswith("val/")]
    for key in keys:
        values = [v for v in (_number(r.get(key)) for r in rows) if v is not None]
        if values:
            out[key] = values[-1]
    metric = monitored_metric(run)
    values = [v for v in (_number(r.get(f"val/{metric}")) for r in rows) if v is not None]
    if values:
        out[f"best val/{metric}"] = max(values) if METRIC_MODES[metric] == "max" else min(values)
    return out


def read_validations(run: Path) -> list[dict[str, float]]:
    """Every validation of logs/metrics.csv, in order: step, epoch and its val/* figures."""
    out = []
    for r in _log_rows(run) or []:
        values = {k: _number(v) for k, v in r.items() if k.startswith("val/") and _number(v) is not None}
        if values:
            out.append({"step": _number(r.get("step")), "epoch": _number(r.get("epoch")), **values})
    return out


def read_test_scores(run: Path) -> dict[str, float]:
    """checkpoints/*.scores.json -> test/bleu, test/bleu_lc, test/chrf, test/ter (prefixed by the test
    set's name when a run holds scores for several sets)."""
    files = sorted((run / "checkpoints").glob("*.scores.json"))
    out: dict[str, float] = {}
    for path in files:
        try:
            scores = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        prefix = "test" if len(files) == 1 else f"test[{path.name[:-len('.scores.json')]}]"
        cased, lower, moses = scores.get("cased", {}), scores.get("lowercase", {}), scores.get("moses", {})
        for name, value in (("bleu", cased.get("bleu")), ("bleu_lc", lower.get("bleu")),
                            ("bleu_moses", moses.get("bleu")), ("chrf", cased.get("chrf")),
                            ("ter", cased.get("ter"))):
            if isinstance(value, (int, float)):
                out[f"{prefix}/{name}"] = float(value)
    return out


def collect(paths: list[Path], all_settings: bool = False) -> tuple[list[str], list[dict[str, Any]]]:
    """-> (column names, one row per run). Settings that differ between the runs become columns (all
    settings with `all_settings`, or when there is a single run); a run without logs/metrics.csv still
    gets a row, its status saying so."""
    runs = find_runs(paths)
    if not runs:
        raise RunsError(f"no run folders (with .hydra/overrides.yaml) under {', '.join(map(str, paths))}")
    base = _common_parent(runs)
    rows, settings = [], []
    for run in runs:
        metrics = read_metrics(run)
        row: dict[str, Any] = {"run": str(run.relative_to(base)) if run != base else run.name,
                               "status": "ok" if metrics else "no metrics (failed, or still running)"}
        row.update(metrics)
        row.update(read_test_scores(run))
        rows.append(row)
        settings.append(read_overrides(run))

    keys = list(dict.fromkeys(k for s in settings for k in s))  # in command-line order
    if not all_settings and len(runs) > 1:
        keys = [k for k in keys if len({s.get(k) for s in settings}) > 1]
    for row, s in zip(rows, settings):
        row.update({k: s.get(k, "") for k in keys})

    present = {k for r in rows for k in r}
    metric_cols = [c for c in ("steps", "time/elapsed_s", "train/loss", *VAL_ORDER) if c in present]
    metric_cols += sorted(c for c in present if c.startswith("val/") and c not in metric_cols)
    metric_cols += sorted(c for c in present if c.startswith("best "))
    metric_cols += sorted(c for c in present if c.startswith(("test/", "test[")))
    return ["run", *keys, *metric_cols, "status"], rows


def _common_parent(runs: list[Path]) -> Path:
    if len(runs) == 1:
        return runs[0].parent
    parts = zip(*(r.parts for r in runs))
    common = [p[0] for p in parts if len(set(p)) == 1]
    return Path(*common) if common else Path("/")


# A setting written with many decimals (a value a hyperparameter search drew, such as optim.lr=0.000587194737873281)
LONG_DECIMAL = re.compile(r"[-+]?\d+\.\d{6,}([eE][-+]?\d+)?")


def _fmt(value: Any) -> str:
    """Markdown cells: scores with 2 decimals, small values (losses) with 3; integers as they are;
    settings drawn with many decimals with 4 significant digits."""
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.2f}" if abs(value) >= 10 else f"{value:.3f}"
    if isinstance(value, str) and LONG_DECIMAL.fullmatch(value):
        return f"{float(value):.4g}"
    return str(value)


def to_markdown(columns: list[str], rows: list[dict[str, Any]]) -> str:
    def cell(v: Any) -> str:
        return _fmt(v).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---:" if _numeric(rows, c) else "---" for c in columns) + "|"]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _numeric(rows: list[dict[str, Any]], column: str) -> bool:
    values = [r.get(column) for r in rows if r.get(column) not in (None, "")]
    return bool(values) and all(isinstance(v, (int, float)) for v in values)


def to_csv(columns: list[str], rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: ("" if row.get(c) is None else row.get(c, "")) for c in columns})
    return buffer.getvalue()


def runs_json(paths: list[Path], columns: list[str], rows: list[dict[str, Any]],
              studies: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The columns, each run's row with its folder and validation history (in order), and the Optuna
    studies (`sweep_studies`) under "optuna" when there are any."""
    out: dict[str, Any] = {"columns": columns,
                           "runs": [{**row, "path": str(run), "validations": read_validations(run)}
                                    for row, run in zip(rows, find_runs(paths))]}
    if studies:
        out["optuna"] = studies
    return out


def sweep_studies(paths: list[Path], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Optuna studies of a hyperparameter search among the runs (`seq2seq.training.optuna_study`):
    each with its best trial and the run of the table that trained it; [] for other runs and sweeps."""
    runs = find_runs(paths)
    return read_studies(paths, runs, [row["run"] for row in rows], [read_overrides(run) for run in runs])


def studies_markdown(studies: list[dict[str, Any]]) -> str:
    """The studies' summaries as markdown paragraphs, for under the table ("" without a study)."""
    return "".join("\n" + "\n\n".join(study_lines(study)) + "\n" for study in studies)


def plot_runs(paths: list[Path], columns: list[str], rows: list[dict[str, Any]], out: Path, metric: str) -> None:
    """Overlay every run's curves (validation `metric` and train loss, against steps and wall time) in
    one PNG at `out`, each run labelled by its folder and the settings that tell the runs apart."""
    try:
        import matplotlib  # noqa: F401 -- an optional extra: only to find out whether it is installed
    except ImportError:
        raise RunsError("--plot needs matplotlib: pip install 'seq2seq[plot]'") from None
    settings = [c for c in columns[1:-1] if not c.startswith(METRIC_PREFIXES)]  # between "run" and "status"
    varied = [c for c in settings if len({r.get(c) for r in rows}) > 1]
    runs = []
    for run, row in zip(find_runs(paths), rows):
        path = run / "logs" / "metrics.csv"
        if path.is_file():
            label = " ".join([row["run"], *(f"{k}={_fmt(row[k])}" for k in varied if row.get(k) not in (None, ""))])
            runs.append((label, read_log(path)))
    if not runs:
        raise RunsError("--plot: no run has logs/metrics.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    overlay_figure(runs, f"val/{metric}").savefig(out, dpi=100)
