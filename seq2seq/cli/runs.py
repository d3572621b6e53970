"""`seq2seq-runs`: collect the final metrics of several `seq2seq-train` runs (a Hydra sweep) into one table.

    seq2seq-runs multirun/train/2026-01-01_12-00-00            # markdown to stdout
    seq2seq-runs multirun/train/* --csv runs.csv --markdown runs.md
    seq2seq-runs outputs/train/2026-01-01_12-00-00 --json run.json   # + validation history
    seq2seq-runs multirun/train/2026-01-01_12-00-00 --plot sweep.png  # + overlaid curves

Each argument is a run folder or any folder above run folders (a sweep folder); a run folder is one
holding `.hydra/overrides.yaml`. Per run it reads
  .hydra/overrides.yaml         the command-line settings of the run (the sweep's varied ones among them)
  logs/metrics.csv              the last logged value of every val/* metric, the last train/loss,
                                step and training wall time (time/elapsed_s), and the best value of
                                the monitored validation metric
  checkpoints/*.scores.json     the final test scores written after training (cased BLEU/chrF/TER,
                                lowercased BLEU, and lowercased Moses-tokenized BLEU when present)
With --json, every run's validation history (step, epoch and val/* of each validation, in order) and
its row go to a JSON file: the README's per-epoch validation BLEU rows are regenerated from it.
With --plot, one PNG overlays the runs' curves (a validation metric and train loss, against steps and
against wall time), each run labelled by its folder and varied settings; it needs matplotlib.
When the runs are trials of a hyperparameter search (`seq2seq-train -m hparams_search=optuna`), the
Optuna study's best trial (its number, value, parameters and run folder) follows the table, and goes
under "optuna" in the JSON.
Settings that differ between the runs become columns (all settings with --all-settings, or when there
is a single run). A run without logs/metrics.csv still gets a row, its status saying so; a run
without test scores (test_after_training=false) leaves those cells empty.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from seq2seq.config import METRIC_MODES
from seq2seq.training.run_table import (RunsError, collect, plot_runs, runs_json, studies_markdown, sweep_studies,
                                       to_csv, to_markdown)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="seq2seq-runs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", type=Path, help="run folders or sweep folders above them")
    p.add_argument("--csv", type=Path, help="also write the table as CSV here")
    p.add_argument("--markdown", type=Path, help="write the markdown table here instead of standard output")
    p.add_argument("--all-settings", action="store_true", help="a column for every override, varied or not")
    p.add_argument("--json", type=Path, help="also write each run's row and validation history as JSON here")
    p.add_argument("--plot", type=Path, metavar="PNG",
                   help="also draw every run's validation metric and train loss against steps and wall time here")
    p.add_argument("--plot-metric", default="bleu", choices=sorted(METRIC_MODES),
                   help="the validation metric --plot draws (default: bleu)")
    args = p.parse_args(argv)
    try:
        columns, rows = collect(args.paths, args.all_settings)
        if args.plot:
            plot_runs(args.paths, columns, rows, args.plot, args.plot_metric)
    except RunsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    studies = sweep_studies(args.paths, rows)
    if args.json:
        args.json.write_text(json.dumps(runs_json(args.paths, columns, rows, studies), indent=2) + "\n",
                             encoding="utf-8")
    markdown = to_markdown(columns, rows) + studies_markdown(studies)
    if args.markdown:
        args.markdown.write_text(markdown, encoding="utf-8")
    else:
        sys.stdout.write(markdown)
    if args.csv:
        args.csv.write_text(to_csv(columns, rows), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
