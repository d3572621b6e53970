"""`seq2seq-average`: write a checkpoint whose parameters are the mean of several checkpoints'.

    seq2seq-average --output avg.ckpt CKPT [CKPT ...]
    seq2seq-average --output avg.ckpt --dir RUN/checkpoints --last N

Averaging the last few checkpoints of a run usually translates a little better than any one of them.
To have several to average, train with one checkpoint per epoch kept:

    seq2seq-train 'callbacks=[default,periodic_checkpoint]'    # writes checkpoints/epoch000.ckpt, ...

`--dir DIR --last N` picks the N newest `*.ckpt` in DIR by the training step stored in each
(`global_step`), never the output itself nor an earlier average; files saved at the same step
(last.ckpt, best.ckpt and an epochNNN.ckpt of one step hold the same weights) count once.

All inputs must have the same checkpoint format version, sentencepiece models, model config and
parameter names/shapes; otherwise nothing is written and the error names the checkpoint that differs
from the first. Floating-point parameters are averaged (in float64, stored back in their own dtype);
other tensors are taken from the newest input. The output keeps the newest input's seq2seq payload
(run config, tokenizer) and step counters, plus `averaged_from` (the input paths). It has NO
optimizer, scheduler or loop state: it is for `seq2seq-translate`, not for resuming training.
The output is written atomically (temporary file + rename). Exit status: 0 on success, 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

# torch and the checkpoint code are imported once the command line is checked: `--help` and usage
# errors are answered without them (tests/test_startup.py).

PROG = "seq2seq-average"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="*", metavar="CKPT", help="checkpoints to average (at least one)")
    p.add_argument("--output", "-o", required=True, help="the averaged checkpoint to write")
    p.add_argument("--dir", metavar="FOLDER", help="pick inputs from this folder (with --last)")
    p.add_argument("--last", type=int, metavar="N", help="average the N newest checkpoints of --dir")
    args = p.parse_args(argv)
    if args.dir is None and args.last is None and not args.checkpoints:
        p.error("name the checkpoints to average, or use --dir FOLDER --last N")
    if (args.dir is None) != (args.last is None):
        p.error("--dir and --last go together")
    if args.dir is not None and args.checkpoints:
        p.error("give either checkpoint paths or --dir/--last, not both")
    if args.last is not None and args.last < 1:
        p.error(f"--last must be >= 1, got {args.last}")
    return args


def usage_problem(args: argparse.Namespace, output: Path) -> str | None:
    """What is wrong with the output path or the named inputs, found without reading any checkpoint."""
    if not output.parent.is_dir():
        return f"output folder {output.parent} does not exist (for --output {args.output})"
    if output.is_dir():
        return f"--output {args.output} is a folder"
    missing = [p for p in args.checkpoints if not Path(p).is_file()]
    if missing:  # read_checkpoint's message
        return f"checkpoint {missing[0]} does not exist"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    output = Path(args.output)
    problem = usage_problem(args, output)
    if problem is not None:
        print(f"{PROG}: error: {problem}", file=sys.stderr)
        return 2
    from seq2seq.checkpoint.averaging import average, newest_checkpoints
    from seq2seq.checkpoint.format import atomic_torch_save

    try:
        paths = (newest_checkpoints(args.dir, args.last, exclude=output) if args.dir is not None
                 else [Path(p) for p in args.checkpoints])
        averaged = average(paths)
        atomic_torch_save(averaged, output)
    except (ValueError, OSError) as e:  # AverageError, CheckpointError
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    print(f"averaged {len(paths)} checkpoint(s) into {output}: {', '.join(str(p) for p in paths)}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
