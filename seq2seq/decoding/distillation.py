"""Sequence-level knowledge distillation (Kim & Rush, 2016): a teacher (one model or an ensemble)
translates its own training sources, and a student trains on those translations instead of the
references (`seq2seq-distill`).

`distill` writes the distilled corpus: the training split's sources as training reads them, the
teacher's translation of each, and the validation and test splits copied unchanged (the student is
validated and tested against the real references); `student_overrides` are the Hydra overrides that
train the student on it, with the teachers' sentencepiece models unless it is to learn its own.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from seq2seq.checkpoint.format import run_checkpoint
from seq2seq.checkpoint.loading import load_device, load_members
from seq2seq.config import DataConfig, section
from seq2seq.data.corpus import find_corpus_files, read_parallel
from seq2seq.decoding.search import Ensemble
from seq2seq.decoding.translator import Translator

PROGRESS_EVERY_S = 30  # seconds between two progress lines on standard error


def write_gz(path: Path, lines: list[str]) -> None:
    """One line per sentence, gzip without a timestamp: the same text gives the same bytes, so the
    student's corpus cache (keyed by the files' hashes) is reused when a distillation is repeated."""
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write("".join(line + "\n" for line in lines).encode("utf-8"))


def student_overrides(data: DataConfig, corpus_dir: Path, tokenizer_from: Path | None) -> list[str]:
    """The Hydra overrides that train a student on the distilled corpus (same pair, same splits)."""
    overrides = [f"data.corpus={data.corpus}_distilled", f"data.root={corpus_dir}", "data.mirrors=[]",
                 "data.download=false", f"data.src_lang={data.src_lang}", f"data.tgt_lang={data.tgt_lang}"]
    return overrides + ([f"data.tokenizer_from={tokenizer_from}"] if tokenizer_from is not None else [])


def distill(paths: list[Path], out: Path, beam_size: int | None = None, length_penalty: float | None = None,
            batch_tokens: int | None = None, data_root: str | None = None, device: str = "auto",
            own_vocabulary: bool = False) -> dict[str, Any]:
    """Translate the first teacher's training split with the teachers (`paths`: run folders or .ckpt
    files; several are ensembled) and write OUT/corpus/, OUT/distill.json, OUT/student_overrides.txt.

    The search is the first teacher's stored defaults with `beam_size`, `length_penalty` and
    `batch_tokens` replaced where given; the corpus files are found as training finds them (data.root,
    or `data_root`, then data.mirrors), the training split cut to data.max_train_pairs. Raises
    CheckpointError (a missing checkpoint, teachers of another direction or vocabulary) or CorpusError
    (a missing split) before the first translation. -> what distill.json holds."""
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
        if now - last_report > PROGRESS_EVERY_S or done == len(sources):
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
    return about
