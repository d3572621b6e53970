"""Decoding throughput of a checkpoint at several batch sizes: greedy and beam search, peak memory.

    python scripts/bench/translate.py --checkpoint outputs/.../checkpoints/best.ckpt \
        --batch-tokens 1000,4000,16000 --beams 1,5 --json translate.json

Every measurement is one `Translator.translate` call over the test split (test_2016_flickr, 1,000
sentences; `--max-sentences N` for the first N) after a warm-up call, with `search.batch_tokens`
(the source-token budget per batch) and `search.beam_size` set per cell; the rest of the search
settings are the checkpoint's. Checkpoint loading is excluded. Peak memory per cell: CUDA
max_memory_allocated, or the RSS high-water mark of the cell on the CPU (see scripts/bench/common.py).

Without `--checkpoint`, a freshly initialised model of the composed config is used (positional
arguments are Hydra overrides, e.g. experiment=quickstart): output lengths -- and so speed -- then
differ from a trained model's. With a checkpoint, the overrides only locate the corpus files.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from typing import Any

import common

from seq2seq.model.precision import precision_dtype

PRECISIONS = ("fp32", "bf16", "fp16")  # --precision: seq2seq-translate's choices


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="Hydra overrides (data location; model without --checkpoint)")
    p.add_argument("--checkpoint", help="a .ckpt written by seq2seq-train (default: fresh weights)")
    p.add_argument("--batch-tokens", type=common.int_list, default=[1000, 4000, 16000],
                   help="comma-separated source-token budgets per batch")
    p.add_argument("--beams", type=common.int_list, default=[1, 5], help="comma-separated beam sizes")
    common.add_common_args(p)
    p.add_argument("--precision", choices=("auto", *PRECISIONS), default="auto",
                   help="autocast on CUDA; auto = the run's trainer precision (bf16-mixed -> bf16)")
    p.add_argument("--warmup-sentences", type=int, default=64, help="untimed warm-up call per cell")
    p.add_argument("--no-bleu", action="store_true", help="skip scoring the outputs")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    common.apply_threads(args.threads)
    device = common.pick_device(args.device)
    with tempfile.TemporaryDirectory(prefix="bench-translate-") as tmp:
        cfg = common.compose_config([*args.overrides, *common.device_overrides(device)], tmp)
        setup = common.decode_setup(cfg, device, args.checkpoint, args.max_sentences)
    if args.precision == "auto":
        dtype = common.autocast_dtype(setup.precision, device)
    else:
        dtype = precision_dtype(args.precision, device.type) if device.type == "cuda" else None
    report: dict[str, Any] = {
        "environment": common.environment(device),
        "weights": setup.weights,
        "autocast": str(dtype) if dtype else "fp32",
        "parameters": common.count_parameters(setup.model),
        "model": common.model_summary(setup.model_cfg),
        "search": {k: getattr(setup.search_cfg, k) for k in ("length_penalty", "max_len_a", "max_len_b")},
        **setup.data,
        "results": [],
    }
    if not setup.trained:
        report["note"] = common.FRESH_NOTE
    common.print_mapping("environment", report["environment"])
    columns = ["search", "batch_tokens", "sentences", "seconds", "sent_per_s", "tgt_tok_per_s",
               "hyp_ref_len_ratio", "bleu", "process_cpu_util", "peak_mem_mib"]
    for beam in args.beams:
        for batch_tokens in args.batch_tokens:
            row = common.time_decode(setup, device, dtype, beam, batch_tokens,
                                     warmup_sentences=args.warmup_sentences, score=not args.no_bleu)
            report["results"].append(row)
            print(f"  {row['search']} batch_tokens={batch_tokens}: {row['sent_per_s']:.1f} sent/s", flush=True)
            common.write_json(args.json, report)
    common.print_table(f"decoding {setup.data['sentences']} {setup.data['test_split']} sentences "
                       f"({setup.weights}, {report['autocast']}, {report['parameters']:,} parameters)",
                       report["results"], columns)
    if rows := report["results"]:
        print(f"  peak memory: {rows[0]['peak_mem_kind']}")
    if "note" in report:
        print(f"  note: {report['note']}")
    common.write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(common.run_cli(main))
