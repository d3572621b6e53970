"""`seq2seq-tune-search`: choose beam size and length penalty on the validation split, and store the
winner in the checkpoint as its search defaults.

The validation split is the one training validated on: `data.valid_split` of the checkpoint's own data
config, found as training finds it (`data.corpus.find_corpus_files`: `data.root`, then `data.mirrors`) and
cut to `data.max_valid_pairs`. Every point of the grid (beam sizes x length penalties; beam size 1 is
greedy search, which has no length penalty, so it is decoded once) translates the whole split; the
table shows BLEU, chrF, the hypothesis/reference length ratio (BLEU's) and the seconds it took. The
best point by the run's `validation.metric` (BLEU when that metric does not depend on the search: ppl,
loss) wins; a tie goes to the point listed first.

The winner replaces `beam_size`, `length_penalty` and `min_len` in the checkpoint's stored config
(`seq2seq["config"]["search"]`), which is where every tool reads "the checkpoint's defaults" from
(`checkpoint.loading.load_for_translation`: seq2seq-translate, seq2seq-serve, seq2seq-export, the end-of-training
test), and `seq2seq["search_tuning"]` records how: split, metric, grid, scores, and the defaults it
replaced. Nothing else changes, so the checkpoint stays loadable and resumable (a resumed run writes its
own config into the checkpoints it saves afterwards). The file is rewritten atomically.

`--ensemble A.ckpt B.ckpt ...` tunes the search of those checkpoints' ensemble instead (the members
must share a direction and a sentencepiece model; the validation split, grid and metric are the first
member's). It writes no checkpoint: it prints the winner as the flags of `seq2seq-translate --ensemble`.
`--json FILE` writes the record (either way) to FILE.

`seq2seq-train test_tune_search=true` runs the same grid (`search.tune_beam_sizes`,
`search.tune_length_penalties`) on best.ckpt after training, before the test (`tune_after_training`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from seq2seq.config import ConfigError, check_grid_values


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="seq2seq-tune-search", description=__doc__.split("\n\n")[0],
        epilog="Example: seq2seq-tune-search --checkpoint outputs/RUN/checkpoints/best.ckpt --beam-sizes 1,5 "
               "--length-penalties 0.8,1.0,1.2")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="a .ckpt written by seq2seq-train (rewritten in place)")
    which.add_argument("--ensemble", nargs="+", metavar="CKPT",
                       help="tune the search of these checkpoints' ensemble (seq2seq-translate --ensemble); "
                            "writes no checkpoint, prints the flags to translate with")
    p.add_argument("--beam-sizes", help="comma-separated beam sizes (default: the checkpoint's "
                                        "search.tune_beam_sizes, 1,5,10)")
    p.add_argument("--length-penalties", help="comma-separated length penalties (default: the checkpoint's "
                                              "search.tune_length_penalties, 0.6,0.8,1.0,1.2,1.4)")
    p.add_argument("--min-len", type=int, help="min_len for every grid point, stored with the winner "
                                               "(default: the checkpoint's)")
    p.add_argument("--data-root", help="folder of the validation files (default: the checkpoint's data.root, "
                                       "then data.mirrors)")
    p.add_argument("--max-sentences", type=int, default=0, help="tune on the first N sentences only (0 = all)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--dry-run", action="store_true", help="print the table and the change; write nothing")
    p.add_argument("--json", metavar="FILE", help="also write the record (grid rows, the winner) to this JSON file")
    args = p.parse_args(argv)
    if args.dry_run and args.ensemble:
        p.error("--dry-run goes with --checkpoint: --ensemble never writes a checkpoint")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # torch and the library are imported once the command line is parsed: `--help` and usage errors are
    # answered without them (tests/test_startup.py).
    from seq2seq.checkpoint.format import PAYLOAD_KEY, CheckpointError, read_checkpoint
    from seq2seq.checkpoint.loading import load_device
    from seq2seq.data.corpus import CorpusError
    from seq2seq.evaluation.search_tuning import parse_list, tune_checkpoint, tune_ensemble, validation_text

    try:
        beams = parse_list(args.beam_sizes, int, "--beam-sizes") if args.beam_sizes is not None else None
        lps = parse_list(args.length_penalties, float, "--length-penalties") if args.length_penalties is not None else None
        for values, flag, integers in ((beams, "--beam-sizes", True), (lps, "--length-penalties", False)):
            if values is not None:  # before the checkpoint and corpus are read
                check_grid_values(values, flag, integers)
        if args.min_len is not None and args.min_len < 0:
            raise ConfigError(f"--min-len must be >= 0 (0 = no minimum), got {args.min_len}")
        if args.max_sentences < 0:
            raise ConfigError(f"--max-sentences must be >= 0 (0 = all), got {args.max_sentences}")
        device = load_device(args.device)
        first = args.checkpoint or args.ensemble[0]
        config = read_checkpoint(first)[PAYLOAD_KEY]["config"]
        split, src, ref = validation_text(config, args.data_root)
        if args.max_sentences:
            src, ref = src[: args.max_sentences], ref[: args.max_sentences]
        if args.ensemble:
            record = tune_ensemble(args.ensemble, src, ref, split, beams, lps, args.min_len, device)
        else:
            record = tune_checkpoint(args.checkpoint, src, ref, split, beams, lps, args.min_len, device,
                                     dry_run=args.dry_run)
        if args.json:
            Path(args.json).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    except (ConfigError, CheckpointError, CorpusError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
