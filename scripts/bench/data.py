"""Data-side speed: sentencepiece encoding of a training split and loading a prepared cache.

    python scripts/bench/data.py experiment=quickstart --json data.json

The figures that unit tests used to assert as wall-clock limits (encoding Multi30k's 29,000 training
sentences "under 5 s", loading the prepared cache "under 2 s") are measured here instead, where a busy
machine makes a figure slower rather than a test red. Positional arguments are Hydra overrides that
locate the corpus (as for seq2seq-prepare); the cache is built first when it does not exist yet (not
timed). Each figure is the best of `--repeat` runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import torch

import common


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="Hydra overrides that locate the corpus (data.*, paths.*)")
    p.add_argument("--repeat", type=int, default=3, help="runs per figure; the best is reported")
    p.add_argument("--json", metavar="PATH", help="write all figures as JSON here")
    return p.parse_args(argv)


def best_of(repeat: int, fn) -> tuple[float, object]:
    times, result = [], None
    for _ in range(max(repeat, 1)):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main(argv=None) -> int:
    args = parse_args(argv)
    from seq2seq.config import DataConfig, section
    from seq2seq.data.corpus import find_corpus_files, read_lines
    from seq2seq.data.cache import load_prepared, prepare_corpus

    with tempfile.TemporaryDirectory() as out:
        cfg = common.compose_config(args.overrides, out)
    data_cfg = section(DataConfig, cfg.data, "data")
    corpus = prepare_corpus(data_cfg)  # builds the cache on a miss (not timed)
    src_path, _ = find_corpus_files(data_cfg, data_cfg.train_split)
    lines = read_lines(src_path)  # the whole source side of the training split, as prepare reads it
    tokenizer = corpus.tokenizer

    encode_s, ids = best_of(args.repeat, lambda: tokenizer.encode_src(lines))
    load_s, loaded = best_of(args.repeat, lambda: load_prepared(corpus.directory))
    pieces = sum(len(x) for x in ids)
    report = {
        "environment": common.environment(torch.device("cpu")),
        "corpus": {"train_src": str(src_path), "pair": f"{data_cfg.src_lang}-{data_cfg.tgt_lang}",
                   "train_sentences": len(lines), "cache": str(corpus.directory)},
        "encode_train_src": {"seconds": encode_s, "sentences_per_s": len(lines) / encode_s,
                             "pieces": pieces, "pieces_per_s": pieces / encode_s},
        "load_prepared_cache": {"seconds": load_s,
                                "pairs": sum(len(s.src) for s in loaded.splits.values())},
        "repeat": args.repeat,
    }
    common.print_mapping("sentencepiece encoding of the training sources", report["encode_train_src"])
    common.print_mapping("loading the prepared cache", report["load_prepared_cache"])
    common.write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(common.run_cli(main))
