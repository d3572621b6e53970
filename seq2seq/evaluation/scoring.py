"""Scoring text files, as `seq2seq-score` (cli/score.py) does: reading hypothesis and reference files,
checking that they line up, and the JSON record and paired-bootstrap report of their scores.

Files are plain or gzip-compressed (detected from the content), strict UTF-8 (a leading BOM is
dropped), one segment per line; CRLF line ends count as LF, and no other character ends a line.
The scores themselves come from `evaluation/metrics.py` (sacrebleu), which this module does not
import: a missing or unreadable file is reported without loading sacrebleu.
"""

from __future__ import annotations

import gzip
import sys
import zlib
from typing import Any, Sequence


class InputError(Exception):
    """A problem with the files to score (missing, not UTF-8, line counts that differ); the message names it."""


def read_lines(path: str) -> list[str]:
    """Lines of a plain or gzip text file (or stdin for '-'), strict UTF-8, CRLF normalised."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except FileNotFoundError:
        raise InputError(f"file not found: {path}") from None
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise InputError(f"{path}: not a valid gzip file ({e})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise InputError(f"{path}: invalid UTF-8 at line {line} (byte {e.start})") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    # Split on LF only: str.splitlines() would also split on \x0b, \x1c, \u2028, ... inside a line.
    lines = text.replace("\r\n", "\n").split("\n")
    if lines[-1] == "":
        lines.pop()  # the final line end (or an empty file)
    return lines


def check_counts(first: tuple[str, list[str]], others: Sequence[tuple[str, list[str]]]) -> None:
    """Raise InputError unless every (name, lines) of `others` has as many lines as `first`."""
    name, lines = first
    for other, other_lines in others:
        if len(other_lines) != len(lines):
            raise InputError(f"line counts differ: {name} has {len(lines)} lines, "
                             f"{other} has {len(other_lines)} lines")


def _metric_entry(result: dict[str, Any], metric: str, key: str | None = None) -> dict[str, Any]:
    """One metric of a `metrics.score_corpus` result: its name, score, signature and details."""
    return {"name": result["name"][metric], "score": result[key or metric],
            "signature": result["signature"][metric], "details": result["details"][metric]}


def score_record(hyp: str, refs: Sequence[str], lines: int, lowercase: bool, tokenize: str,
                 metrics: Sequence[str], scores: dict[str, Any], moses: dict[str, Any] | None = None,
                 lang: str | None = None, compare: str | None = None,
                 test: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON object of `seq2seq-score --json`: the files, the settings and every metric's score with its
    signature; with `moses` (a `metrics.score_moses_bleu` result) also "bleu_moses" and the language; with
    `test` (a `metrics.paired_bootstrap` result of `compare` against `hyp`) also "compare"."""
    out: dict[str, Any] = {"hyp": hyp, "refs": list(refs), "lines": lines, "lowercase": lowercase,
                           "tokenize": tokenize, "scores": {m: _metric_entry(scores, m) for m in metrics}}
    if moses is not None:
        out["lang"] = lang
        out["scores"]["bleu_moses"] = _metric_entry(moses, "bleu")
    if test is not None:
        out["compare"] = {
            "hyp": compare, "n_samples": test["n_samples"], "seed": test["seed"],
            "metrics": {m: {"name": test["name"][m], "signature": test["signature"][m],
                            "baseline": test["baseline"][m], "system": test["system"][m]}
                        for m in metrics}}
    return out


def bootstrap_lines(test: dict[str, Any], hyp: str, compare: str, metrics: Sequence[str]) -> list[str]:
    """The text report of a paired bootstrap test (`metrics.paired_bootstrap`) of `compare` against the
    baseline `hyp`: a header, then per metric both scores with their means, confidence intervals and the p-value."""
    lines = [f"Paired bootstrap resampling ({test['n_samples']} samples, seed {test['seed']}): "
             f"baseline {hyp} vs system {compare}"]
    for m in metrics:
        base, system = test["baseline"][m], test["system"][m]
        lines.append(f"{test['name'][m]}: {hyp} = {base['score']:.2f} "
                     f"(mean {base['mean']:.2f} ± {base['ci']:.2f}), "
                     f"{compare} = {system['score']:.2f} (mean {system['mean']:.2f} ± {system['ci']:.2f}), "
                     f"p = {system['p_value']:.4f} (signature: {test['signature'][m]})")
    return lines
