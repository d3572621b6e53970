#!/usr/bin/env python
"""Sequence-level knowledge distillation (Kim & Rush, 2016): a teacher (one model or an ensemble)
translates its own training sources, and a student trains on those translations instead of the
references. The student learns the teacher's (an ensemble's) output with one model's cost.

    python scripts/distill.py RUN_A RUN_B RUN_C --out kd/ --beam-size 5 --length-penalty 1.4
    seq2seq-train experiment=cpu_hour data.src_lang=en data.tgt_lang=de $(cat kd/student_overrides.txt)

Each TEACHER is a run folder (its checkpoints/best.ckpt) or a .ckpt file; several are ensembled with
the checks of `seq2seq-translate --ensemble` (one direction, one sentencepiece model). The training
split is the first teacher's (`data.train_split`, found as training finds it: data.root or
--data-root, then data.mirrors; its first `data.max_train_pairs` pairs when that is set). The search
is the first teacher's stored defaults unless --beam-size / --length-penalty say otherwise
(scripts/ensemble_runs.py prints an ensemble's tuned ones).

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
import dataclasses
import gzip
import json
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_gz(path: Path, lines: list[str]) -> None:
    """One line per sentence, gzip without a timestamp: the same text gives the same bytes, so the
    student's corpus cache (keyed by the files' hashes) is reused when a distillation is repeated."""
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write("".join(line + "\n" for line in lines).encode("utf-8"))


def student_overrides(data: Any, corpus_dir: Path, tokenizer_from: Path | None) -> list[str]:
    """The Hydra overrides that train a student on the distilled corpus (same pair, same splits)."""
    overrides = [f"data.corpus={data.corpus}_distilled", f"data.root={corpus_dir}", "data.mirrors=[]",
                 "data.download=false", f"data.src_lang={data.src_lang}", f"data.tgt_lang={data.tgt_lang}"]
    return overrides + ([f"data.tokenizer_from={tokenizer_from}"] if tokenizer_from is not None else [])


def distill(paths: list[Path], out: Path, beam_size: int | None = None, length_penalty: float | None = None,
            batch_tokens: int | None = None, data_root: str | None = None, device: str = "auto",
            own_vocabulary: bool = False) -> dict[str, Any]:
    """The module docstring's steps; writes OUT's files and returns what distill.json holds."""
    from seq2seq.checkpoint.format import load_device, load_members, run_checkpoint
    from seq2seq.config import DataConfig, section
    from seq2seq.data.corpus import find_corpus_files, read_parallel
    from seq2seq.decoding.search import Ensemble
    from seq2seq.decoding.translator import Translator

    started = time.monotonic()
    torch_device = load_device(device)
    ckpts = [run_checkpoint(p).resolve() for p in paths]
    models, tokenizer, search_cfg, config = load_members(ckpts, torch_device)
    model = Ensemble(models) if len(models) > 1 else models[0]
    data = section(DataConfig, config.get("data"), "data")
    if data_root is not None:
        data = dataclasses.replace(data, root=data_root)
    changes = {k: v for k, v in (("beam_size", beam_size), ("length_penalty", length_penalty),
                                 ("batch_tokens", batch_tokens)) if v is not None}
    search_cfg = dataclasses.replace(search_cfg, **changes)

    # Every split is found before the first translation: a missing file stops the job at once.
    train_files = find_corpus_files(data, data.train_split)
    kept_splits = {name: find_corpus_files(data, name)
                   for name in dict.fromkeys([data.valid_split, data.test_split, *data.test_splits]) if name}
    sources, _ = read_parallel(*train_files)
    if data.max_train_pairs:
        sources = sources[:data.max_train_pairs]

    corpus_dir = (out / "corpus").resolve()
    corpus_dir.mkdir(parents=True, exist_ok=True)
    for name, files in kept_splits.items():
        for lang, path in zip((data.src_lang, data.tgt_lang), files):
            target = corpus_dir / f"{name}.{lang}{'.gz' if path.suffix == '.gz' else ''}"
            shutil.copyfile(path, target)

    done, last_report, translate_started = 0, 0.0, time.monotonic()

    def progress(n: int) -> None:
        nonlocal done, last_report
        done += n
        now = time.monotonic()
        if now - last_report > 30 or done == len(sources):
            last_report = now
            rate = done / max(now - translate_started, 1e-9)
            print(f"translated {done}/{len(sources)} ({rate:.0f} sentences/s)", file=sys.stderr, flush=True)

    translator = Translator(model, tokenizer, search_cfg, device=torch_device)
    translations = [t.text for t in translator.translate(sources, progress=progress)]
    translate_seconds = time.monotonic() - translate_started
    write_gz(corpus_dir / f"{data.train_split}.{data.src_lang}.gz", sources)
    write_gz(corpus_dir / f"{data.train_split}.{data.tgt_lang}.gz", translations)

    overrides = student_overrides(data, corpus_dir, None if own_vocabulary else ckpts[0])
    about = {"teachers": [str(c) for c in ckpts], "pair": f"{data.src_lang}-{data.tgt_lang}",
             "train_files": [str(p) for p in train_files], "sentences": len(sources),
             "empty_translations": sum(not t for t in translations),
             "search": {"beam_size": search_cfg.beam_size, "length_penalty": search_cfg.length_penalty,
                        "batch_tokens": search_cfg.batch_tokens},
             "device": str(torch_device), "translate_seconds": round(translate_seconds, 1),
             "seconds": round(time.monotonic() - started, 1), "corpus": str(corpus_dir),
             "student_overrides": overrides}
    (out / "distill.json").write_text(json.dumps(about, indent=2) + "\n", encoding="utf-8")
    (out / "student_overrides.txt").write_text("".join(o + "\n" for o in overrides), encoding="utf-8")
    print(f"distilled {len(sources)} training sentences with {'an ensemble of ' + str(len(ckpts)) if len(ckpts) > 1 else 'one model'} "
          f"(beam {search_cfg.beam_size}, lp {search_cfg.length_penalty}) in {translate_seconds:.0f} s on "
          f"{torch_device}; the student's overrides:", file=sys.stderr)
    print(shlex.join(overrides))
    return about


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    args = p.parse_args(argv)
    from seq2seq.checkpoint.format import CheckpointError
    from seq2seq.config import ConfigError
    from seq2seq.data.corpus import CorpusError

    try:
        for flag, value in (("--beam-size", args.beam_size), ("--batch-tokens", args.batch_tokens)):
            if value is not None and value < 1:
                raise ConfigError(f"{flag} must be at least 1, got {value}")
        if args.length_penalty is not None and args.length_penalty < 0:
            raise ConfigError(f"--length-penalty must be >= 0, got {args.length_penalty}")
        distill(args.teachers, args.out, args.beam_size, args.length_penalty, args.batch_tokens, args.data_root,
                args.device, args.own_vocabulary)
    except (ConfigError, CheckpointError, CorpusError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
