"""Scores of several evaluation sets as one table: the end of training (`data.test_split` plus
`data.test_splits`) and `seq2seq-score --set NAME HYP REF ...` print and write the same rows.

A row holds cased BLEU, chrF and TER, lowercased BLEU, optionally the lowercased BLEU of Moses-tokenized
text (the figure Multi30k papers report, `metrics.score_moses_bleu`), the sentence count, and sacrebleu's
signature of every figure. Rows are scored from detokenized text only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from seq2seq.evaluation.metrics import score_corpus, score_moses_bleu

# Table columns after the set's name: (row key, header).
# The Moses column is shown when every row has it.
COLUMNS = (("bleu", "BLEU"), ("chrf", "chrF"), ("ter", "TER"), ("bleu_lc", "BLEU(lc)"), ("bleu_moses", "BLEU(moses)"))


def score_set(name: str, hyps: Sequence[str], refs: Sequence[Sequence[str]], tokenize: str = "13a",
              moses_lang: str | None = None) -> dict[str, Any]:
    """One row: `refs` is a list of reference streams (one reference per sentence: `[refs]`); with
    `moses_lang`, also the lowercased BLEU of text Moses-tokenized for that language."""
    cased = score_corpus(hyps, refs, tokenize=tokenize)
    lowercase = score_corpus(hyps, refs, lowercase=True, tokenize=tokenize, metrics=("bleu",))
    moses = score_moses_bleu(hyps, refs, moses_lang) if moses_lang is not None else None
    return make_row(name, len(hyps), cased, lowercase, moses)


def make_row(name: str, sentences: int, cased: dict[str, Any], lowercase: dict[str, Any],
             moses: dict[str, Any] | None = None) -> dict[str, Any]:
    """A row from `metrics.score_corpus` results: cased (bleu, chrf, ter) and lowercased (bleu), and
    optionally a `metrics.score_moses_bleu` result."""
    row = {"split": name, "sentences": sentences,
           "bleu": cased["bleu"], "chrf": cased["chrf"], "ter": cased["ter"], "bleu_lc": lowercase["bleu"],
           "signature": {**{k: cased["signature"][k] for k in ("bleu", "chrf", "ter")},
                         "bleu_lc": lowercase["signature"]["bleu"]}}
    if moses is not None:
        row["bleu_moses"] = moses["bleu"]
        row["signature"]["bleu_moses"] = moses["signature"]["bleu"]
    return row


def table_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """A fixed-width table, one line per row, the BLEU signature in the last column; the other
    signatures follow the table (one line each, or one per distinct value)."""
    columns = [(k, h) for k, h in COLUMNS if all(k in r for r in rows)]
    width = max([len("split"), *(len(r["split"]) for r in rows)])
    header = f"{'split':<{width}}  {'sentences':>9}" + "".join(f"  {h:>8}" for _, h in columns) + "  signature (BLEU)"
    lines = [header]
    for r in rows:
        lines.append(f"{r['split']:<{width}}  {r['sentences']:>9}"
                     + "".join(f"  {r[k]:>{max(8, len(h))}.2f}" for k, h in columns) + f"  {r['signature']['bleu']}")
    for key, head in columns[1:]:
        for signature in dict.fromkeys(r["signature"][key] for r in rows):
            lines.append(f"{head} signature: {signature}")
    return lines


def write_json(path: str | os.PathLike, rows: Sequence[dict[str, Any]], **about: Any) -> None:
    """`{**about, "splits": rows}` as JSON (e.g. about = checkpoint, language pair)."""
    Path(path).write_text(json.dumps({**about, "splits": list(rows)}, indent=2, ensure_ascii=False) + "\n",
                          encoding="utf-8")


def translate_and_score(translator: Any, sets: dict[str, tuple[list[str], list[str]]], out_dir: Path, pair: str,
                        moses_lang: str | None = None) -> list[dict[str, Any]]:
    """Translate each set's sources with `translator` (a `translator.Translator`) and score them against
    its references. `sets`: split name -> (sources, references). Writes, per split, `{split}.{pair}.hyp`
    and `{split}.{pair}.scores.json` into `out_dir`; returns the rows (`make_row`, plus "hypotheses":
    the .hyp path). With `moses_lang`, the scores also hold "moses": lowercased BLEU on text
    Moses-tokenized for that language."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for split, (sources, references) in sets.items():
        hyps = [t.text for t in translator.translate(sources)]
        prefix = out_dir / f"{split}.{pair}"
        Path(f"{prefix}.hyp").write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
        scores = {"cased": score_corpus(hyps, [references]),
                  "lowercase": score_corpus(hyps, [references], lowercase=True)}
        if moses_lang is not None:
            scores["moses"] = score_moses_bleu(hyps, [references], moses_lang)
        Path(f"{prefix}.scores.json").write_text(json.dumps(scores, indent=2), encoding="utf-8")
        rows.append({**make_row(split, len(hyps), scores["cased"], scores["lowercase"], scores.get("moses")),
                     "hypotheses": f"{prefix}.hyp"})
    return rows
