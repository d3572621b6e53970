"""`seq2seq-ensemble`: ensemble trained runs of one direction: tune the ensemble's search on validation,
test it, and show it beside its members.

    seq2seq-ensemble outputs/train/RUN_A outputs/train/RUN_B ... --out ensemble/

Each argument is a run folder (its checkpoints/best.ckpt is the member) or a .ckpt file. The members
must translate one direction with one sentencepiece model: seeds of one preset on one corpus do (the
vocabulary is trained deterministically). The ensemble averages the members' log-probabilities at
every step (`seq2seq-translate --ensemble`). What `seq2seq-train test_tune_search=true` does for one
model, done for the ensemble:
  1. search: the grid (the first member's search.tune_beam_sizes x tune_length_penalties, or
     --beam-sizes / --length-penalties) on the first member's validation split, best by its
     validation metric (seq2seq.evaluation.search_tuning);
  2. test: data.test_split and data.test_splits of the first member's data config (found as training
     finds them: data.root or --data-root, then data.mirrors), translated with the winning search;
  3. scores: cased BLEU, chrF and TER, lowercased BLEU, and the lowercased Moses-tokenized BLEU when
     sacremoses is installed and knows the target language (seq2seq.evaluation.tables).
Written to OUT:
  test_scores.json       the ensemble's rows, as a run's checkpoints/test_scores.json, plus its members
                         and the tuning record (grid, winner, the flags to translate with)
  <split>.<pair>.hyp     its translations (and <split>.<pair>.scores.json, as training writes them)
  ensemble.md            one table: each member's own test scores (its checkpoints/test_scores.json,
                         when training wrote one; a run folder named by its folder's name), their
                         mean, and the ensemble's
The same table goes to standard output. Errors (a missing checkpoint, members of another direction or
vocabulary, a missing split) exit with status 2 and a message naming what is at fault.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from seq2seq.config import ConfigError, check_grid_values
from seq2seq.data.corpus import CorpusError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="seq2seq-ensemble", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("members", nargs="+", type=Path, help="run folders (checkpoints/best.ckpt) or .ckpt files")
    p.add_argument("--out", required=True, type=Path, help="folder for test_scores.json, the .hyp files, ensemble.md")
    p.add_argument("--beam-sizes", help="comma-separated beam sizes (default: the first member's search.tune_beam_sizes)")
    p.add_argument("--length-penalties", help="comma-separated length penalties (default: the first member's "
                                              "search.tune_length_penalties)")
    p.add_argument("--data-root", help="folder of the corpus files (default: the first member's data.root, "
                                       "then data.mirrors)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # torch comes with these: imported after parsing so that --help answers without it (tests/test_startup.py).
    from seq2seq.checkpoint.format import CheckpointError
    from seq2seq.evaluation.ensembles import ensemble_runs, markdown
    from seq2seq.evaluation.search_tuning import parse_list

    try:
        beams = parse_list(args.beam_sizes, int, "--beam-sizes") if args.beam_sizes is not None else None
        lps = parse_list(args.length_penalties, float, "--length-penalties") if args.length_penalties else None
        for values, flag, integers in ((beams, "--beam-sizes", True), (lps, "--length-penalties", False)):
            if values is not None:
                check_grid_values(values, flag, integers)
        result = ensemble_runs(args.members, args.out, beams, lps, args.data_root, args.device)
    except (ConfigError, CheckpointError, CorpusError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown(result), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
