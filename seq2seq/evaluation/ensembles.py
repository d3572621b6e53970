"""An ensemble of trained runs of one direction: its search tuned on validation, its test translations
and scores, and a table of it beside its members (`seq2seq-ensemble`).

What `seq2seq-train test_tune_search=true` does for one model, `ensemble_runs` does for an ensemble
(`decoding.search.Ensemble`: the members' log-probabilities averaged at every step):
  1. search: the grid (the first member's search.tune_beam_sizes x tune_length_penalties, or the given
     beam sizes and length penalties) on the first member's validation split, best by its validation
     metric (`evaluation.search_tuning.grid_record`);
  2. test: data.test_split and data.test_splits of the first member's data config, translated with the
     winning search;
  3. scores: cased BLEU, chrF and TER, lowercased BLEU, and the lowercased Moses-tokenized BLEU when
     sacremoses is installed and knows the target language (`evaluation.tables`).
`markdown` puts each member's own test scores (the checkpoints/test_scores.json training wrote), their
mean and the ensemble's in one table per test split.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from seq2seq.checkpoint.format import run_checkpoint
from seq2seq.checkpoint.loading import load_device, load_members
from seq2seq.config import DataConfig, section
from seq2seq.data.corpus import find_corpus_files, read_parallel
from seq2seq.decoding.search import Ensemble
from seq2seq.decoding.translator import Translator
from seq2seq.evaluation.metrics import moses_languages
from seq2seq.evaluation.search_tuning import grid_record, translate_flags, validation_text
from seq2seq.evaluation.tables import translate_and_score, write_json

SCORE_KEYS = ("bleu", "bleu_lc", "bleu_moses", "chrf")  # table columns, in order, when present


def member_scores(ckpt: Path) -> dict[str, dict[str, Any]]:
    """split -> row of the test_scores.json training wrote beside `ckpt` ({} when there is none)."""
    scores = ckpt.parent / "test_scores.json"
    if not scores.is_file():
        return {}
    return {row["split"]: row for row in json.loads(scores.read_text(encoding="utf-8")).get("splits", [])}


def moses_language(tgt_lang: str) -> str | None:
    """`tgt_lang` when the Moses-tokenized BLEU can be computed for it, else None."""
    try:
        return tgt_lang if tgt_lang in moses_languages() else None
    except RuntimeError:  # sacremoses is not installed
        return None


def ensemble_runs(paths: list[Path], out: Path, beam_sizes: list[int] | None = None,
                  length_penalties: list[float] | None = None, data_root: str | None = None,
                  device: str = "auto") -> dict[str, Any]:
    """Steps 1-3 for the ensemble of `paths` (run folders or .ckpt files; corpus files found as training
    finds them: data.root, or `data_root`, then data.mirrors). Writes to `out`: test_scores.json (the
    rows, as a run's checkpoints/test_scores.json, plus members and the tuning record), each split's
    .hyp and .scores.json, and ensemble.md (`markdown`). Raises CheckpointError or CorpusError before
    the first translation. -> what test_scores.json holds."""
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
    about = {"checkpoints": [str(c) for c in ckpts], "labels": [p.name if p.is_dir() else str(p) for p in paths],
             "pair": pair,
             "search_tuning": {**record, "translate_flags": translate_flags(chosen)},
             "members": {str(c): member_scores(c) for c in ckpts}}
    write_json(out / "test_scores.json", rows, **about)
    result = {**about, "splits": rows}
    (out / "ensemble.md").write_text(markdown(result), encoding="utf-8")
    return result


def markdown(result: dict[str, Any]) -> str:
    """Per test split of `result` (what `ensemble_runs` returns): a row per member (its own test scores),
    their mean, and the ensemble."""
    record = result["search_tuning"]
    lines = [f"# An ensemble of {len(result['checkpoints'])} ({result['pair']})", "",
             f"Search tuned on '{record['split']}' ({record['sentences']} sentences) by {record['metric']}: "
             f"{record['score']:.2f} with `{record['translate_flags']}`.", ""]
    for row in result["splits"]:
        keys = [k for k in SCORE_KEYS if k in row]
        lines += [f"## {row['split']} ({row['sentences']} sentences)", "",
                  "| system | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        members = [(label, result["members"][c].get(row["split"]))
                   for label, c in zip(result["labels"], result["checkpoints"])]
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
