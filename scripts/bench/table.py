#!/usr/bin/env python
"""Print a markdown table from the JSON that the benchmark scripts write (`--json`), so the README's
tables are regenerated from stored measurements instead of copied by hand.

    python scripts/bench/table.py decode.json --rows results \
        --columns search,batch_tokens,seconds,sent_per_s,tgt_tok_per_s,bleu,peak_mem_mib
    python scripts/bench/table.py bench.json --rows decode.results --columns search,seconds,bleu
    python scripts/bench/table.py run.json --rows runs --columns run,test/bleu,test/chrf   # seq2seq-runs --json

`--rows` is a dotted path to a list of objects (or to one object: a single row); each column is a key
of those objects (a dotted path for nested ones). Several files give one table (their rows in order),
with a first column naming the file when `--file-column` is set. Only the standard library is used.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import lookup, markdown_cell, markdown_table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path, help="JSON files written by a benchmark script's --json")
    p.add_argument("--rows", required=True, help="dotted path to the list of row objects")
    p.add_argument("--columns", required=True, help="comma-separated keys (dotted paths) of the row objects")
    p.add_argument("--file-column", action="store_true", help="a first column naming each row's file")
    args = p.parse_args(argv)
    columns = [c for c in args.columns.split(",") if c]
    cells = []
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
        cells += [([path.name] if args.file_column else []) + [markdown_cell(lookup(row, c)) for c in columns]
                  for row in rows]
    print("\n".join(markdown_table((["file"] if args.file_column else []) + columns, cells)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
