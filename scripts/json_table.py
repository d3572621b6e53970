#!/usr/bin/env python
"""Print a markdown table from the JSON that the benchmark scripts write (`--json`), so the README's
tables are regenerated from stored measurements instead of copied by hand.

    python scripts/json_table.py decode.json --rows results \
        --columns search,batch_tokens,seconds,sent_per_s,tgt_tok_per_s,bleu,peak_mem_mib
    python scripts/json_table.py bench.json --rows decode.results --columns search,seconds,bleu
    python scripts/json_table.py run.json --rows runs --columns run,test/bleu,test/chrf   # collect_runs --json

`--rows` is a dotted path to a list of objects (or to one object: a single row); each column is a key
of those objects (a dotted path for nested ones). Several files give one table (their rows in order),
with a first column naming the file when `--file-column` is set. Only the standard library is used.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def lookup(obj: Any, path: str) -> Any:
    """obj['a']['b'] for path 'a.b'; a key that itself contains dots (e.g. 'test/bleu') is tried whole first."""
    if isinstance(obj, dict) and path in obj:
        return obj[path]
    for part in path.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


def fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path, help="JSON files written by a benchmark script's --json")
    p.add_argument("--rows", required=True, help="dotted path to the list of row objects")
    p.add_argument("--columns", required=True, help="comma-separated keys (dotted paths) of the row objects")
    p.add_argument("--file-column", action="store_true", help="a first column naming each row's file")
    args = p.parse_args(argv)
    columns = [c for c in args.columns.split(",") if c]
    header = (["file"] if args.file_column else []) + columns
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for path in args.files:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            print(f"error: {path}: {e}", file=sys.stderr)
            return 2
        rows = lookup(data, args.rows)
        if isinstance(rows, dict):
            rows = [rows]
        if not isinstance(rows, list):
            print(f"error: {path}: no list of rows at '{args.rows}'", file=sys.stderr)
            return 2
        for row in rows:
            cells = ([path.name] if args.file_column else []) + [fmt(lookup(row, c)) for c in columns]
            lines.append("| " + " | ".join(cells) + " |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
