#!/usr/bin/env python
"""Ensemble trained runs of one direction: tune the ensemble's search on validation, test it, and
show it beside its members.

    python scripts/ensemble_runs.py outputs/train/RUN_A outputs/train/RUN_B ... --out ensemble/

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
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SCORE_KEYS = ("bleu", "bleu_lc", "bleu_moses", "chrf")  # table columns, in order, when present


def member_scores(ckpt: Path) -> dict[str, dict[str, Any]]:
    """split -> row of the test_scores.json training wrote beside `ckpt` ({} when there is none)."""
    scores = ckpt.parent / "test_scores.json"
    if not scores.is_file():
        return {}
    return {row["split"]: row for row in json.loads(scores.read_text(encoding="utf-8")).get("splits", [])}


def moses_language(tgt_lang: str) -> str | None:
    from seq2seq.evaluation.metrics import moses_languages

    try:
        return tgt_lang if tgt_lang in moses_languages() else None
    except RuntimeError:  # sacremoses is not installed
        return None


def ensemble_runs(paths: list[Path], out: Path, beam_sizes: list[int] | None = None,
                  length_penalties: list[float] | None = None, data_root: str | None = None,
                  device: str = "auto") -> dict[str, Any]:
    """Steps 1-3 of the module docstring; writes OUT's files and returns what test_scores.json holds."""
    from seq2seq.checkpoint.format import load_device, load_members, run_checkpoint
    from seq2seq.config import DataConfig, section
    from seq2seq.data.corpus import find_corpus_files, read_parallel
    from seq2seq.evaluation.tables import translate_and_score, write_json
    from seq2seq.decoding.search import Ensemble
    from seq2seq.decoding.translator import Translator
    from seq2seq.evaluation.search_tuning import grid_record, translate_flags, validation_text

    torch_device = load_device(device)
    ckpts = [run_checkpoint(p) for p in paths]
    models, tokenizer, search_cfg, config = load_members(ckpts, torch_device)
    model = Ensemble(models) if len(models) > 1 else models[0]
    data = section(DataConfig, config.get("data"), "data")
    if data_root is not None:
        data = dataclasses.replace(data, root=data_root)
    # Every split is read before the first translation: a missing file stops the job at once.
    split, val_src, val_ref = validation_text(config, data_root)
    test_sets = {name: read_parallel(*find_corpus_files(data, name))
                 for name in dict.fromkeys([data.test_split, *data.test_splits]) if name}

    record = grid_record(model, tokenizer, search_cfg, config, f"the ensemble of {len(models)}", val_src, val_ref,
                         split, beam_sizes, length_penalties, None, torch_device, None, sys.stderr)
    chosen = record["chosen"]
    translator = Translator(model, tokenizer, dataclasses.replace(search_cfg, **chosen), device=torch_device)
    pair = f"{data.src_lang}-{data.tgt_lang}"
    rows = translate_and_score(translator, test_sets, out, pair, moses_language(data.tgt_lang))
    flags = translate_flags(chosen)
    about = {"checkpoints": [str(c) for c in ckpts], "labels": [p.name if p.is_dir() else str(p) for p in paths],
             "pair": pair,
             "search_tuning": {**record, "translate_flags": flags},
             "members": {str(c): member_scores(c) for c in ckpts}}
    write_json(out / "test_scores.json", rows, **about)
    table = markdown(rows, about)
    (out / "ensemble.md").write_text(table, encoding="utf-8")
    print(table, end="")
    return {**about, "splits": rows}


def markdown(rows: list[dict[str, Any]], about: dict[str, Any]) -> str:
    """Per test split: a row per member (its own test scores), their mean, and the ensemble."""
    record = about["search_tuning"]
    lines = [f"# An ensemble of {len(about['checkpoints'])} ({about['pair']})", "",
             f"Search tuned on '{record['split']}' ({record['sentences']} sentences) by {record['metric']}: "
             f"{record['score']:.2f} with `{record['translate_flags']}`.", ""]
    for row in rows:
        keys = [k for k in SCORE_KEYS if k in row]
        lines += [f"## {row['split']} ({row['sentences']} sentences)", "",
                  "| system | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        members = [(label, about["members"][c].get(row["split"])) for label, c in zip(about["labels"],
                                                                                     about["checkpoints"])]
        for label, scores in members:
            cells = [f"{scores[k]:.2f}" if scores and k in scores else "-" for k in keys]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        scored = [s for _, s in members if s]
        if scored:
            cells = [f"{sum(s[k] for s in scored) / len(scored):.2f}" if all(k in s for s in scored) else "-"
                     for k in keys]
            lines.append(f"| mean of {len(scored)} member(s) | " + " | ".join(cells) + " |")
        lines.append("| **ensemble** | " + " | ".join(f"**{row[k]:.2f}**" for k in keys) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from seq2seq.evaluation.search_tuning import parse_list

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("members", nargs="+", type=Path, help="run folders (checkpoints/best.ckpt) or .ckpt files")
    p.add_argument("--out", required=True, type=Path, help="folder for test_scores.json, the .hyp files, ensemble.md")
    p.add_argument("--beam-sizes", help="comma-separated beam sizes (default: the first member's search.tune_beam_sizes)")
    p.add_argument("--length-penalties", help="comma-separated length penalties (default: the first member's "
                                              "search.tune_length_penalties)")
    p.add_argument("--data-root", help="folder of the corpus files (default: the first member's data.root, "
                                       "then data.mirrors)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    args = p.parse_args(argv)
    from seq2seq.checkpoint.format import CheckpointError
    from seq2seq.config import ConfigError, check_grid_values
    from seq2seq.data.corpus import CorpusError

    try:
        beams = parse_list(args.beam_sizes, int, "--beam-sizes") if args.beam_sizes is not None else None
        lps = parse_list(args.length_penalties, float, "--length-penalties") if args.length_penalties else None
        for values, flag, integers in ((beams, "--beam-sizes", True), (lps, "--length-penalties", False)):
            if values is not None:
                check_grid_values(values, flag, integers)
        ensemble_runs(args.members, args.out, beams, lps, args.data_root, args.device)
    except (ConfigError, CheckpointError, CorpusError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
