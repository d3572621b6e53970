"""`seq2seq-distill`: sequence-level knowledge distillation (Kim & Rush, 2016): a teacher (one model or
an ensemble) translates its own training sources, and a student trains on those translations instead
of the references. The student learns the teacher's (an ensemble's) output with one model's cost.

    seq2seq-distill RUN_A RUN_B RUN_C --out kd/ --beam-size 5 --length-penalty 1.4
    seq2seq-train experiment=cpu_hour data.src_lang=en data.tgt_lang=de $(cat kd/student_overrides.txt)

Each TEACHER is a run folder (its checkpoints/best.ckpt) or a .ckpt file; several are ensembled with
the checks of `seq2seq-translate --ensemble` (one direction, one sentencepiece model). The training
split is the first teacher's (`data.train_split`, found as training finds it: data.root or
--data-root, then data.mirrors; its first `data.max_train_pairs` pairs when that is set). The search
is the first teacher's stored defaults unless --beam-size / --length-penalty say otherwise
(seq2seq-ensemble prints an ensemble's tuned ones).

Written to OUT:
  corpus/<train>.<src>.gz   the training sources as training reads them (one sentence a line)
  corpus/<train>.<tgt>.gz   the teacher's translation of each
  corpus/<split>.<lang>.gz  the validation and test splits, copied unchanged: the student is validated
                            and tested against the real references
  distill.json              teachers, search, sentences, seconds, and the student's overrides
  student_overrides.txt     those overrides, one a line: `seq2seq-train ... $(cat OUT/student_overrides.txt)`
The student's overrides (printed last, one line) point its data section at OUT/corpus
(`data.corpus=<corpus>_distilled data.root=... data.mirrors=[] data.download=false`) and, unless
--own-vocabulary, reuse the teachers' sentencepiece models (`data.tokenizer_from`), so that the student
can join the teachers' ensemble. Errors (a missing checkpoint or split, teachers of another direction or
vocabulary) exit with status 2 and a message naming what is at fault.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from seq2seq.config import ConfigError
from seq2seq.data.corpus import CorpusError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="seq2seq-distill", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("teachers", nargs="+", type=Path, help="run folders (checkpoints/best.ckpt) or .ckpt files")
    p.add_argument("--out", required=True, type=Path, help="folder for corpus/ and distill.json")
    p.add_argument("--beam-size", type=int, help="default: the first teacher's search.beam_size")
    p.add_argument("--length-penalty", type=float, help="default: the first teacher's search.length_penalty")
    p.add_argument("--batch-tokens", type=int, help="source tokens x beam per batch (default: the first "
                                                    "teacher's search.batch_tokens)")
    p.add_argument("--data-root", help="folder of the corpus files (default: the first teacher's data.root, "
                                       "then data.mirrors)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--own-vocabulary", action="store_true",
                   help="let the student train its own sentencepiece models on the distilled text instead of "
                        "reusing the teachers' (it then cannot join their ensemble)")
    return p.parse_args(argv)


def check_search_flags(args: argparse.Namespace) -> None:
    for flag, value in (("--beam-size", args.beam_size), ("--batch-tokens", args.batch_tokens)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    if args.length_penalty is not None and args.length_penalty < 0:
        raise ConfigError(f"--length-penalty must be >= 0, got {args.length_penalty}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # torch comes with these: imported after parsing so that --help answers without it (tests/test_startup.py).
    from seq2seq.checkpoint.format import CheckpointError
    from seq2seq.decoding.distillation import distill

    try:
        check_search_flags(args)
        about = distill(args.teachers, args.out, args.beam_size, args.length_penalty, args.batch_tokens,
                        args.data_root, args.device, args.own_vocabulary)
    except (ConfigError, CheckpointError, CorpusError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    teachers = len(about["teachers"])
    search = about["search"]
    print(f"distilled {about['sentences']} training sentences with "
          f"{'an ensemble of ' + str(teachers) if teachers > 1 else 'one model'} "
          f"(beam {search['beam_size']}, lp {search['length_penalty']}) in {about['translate_seconds']:.0f} s on "
          f"{about['device']}; the student's overrides:", file=sys.stderr)
    print(shlex.join(about["student_overrides"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
