"""What subword sampling (data.tokenizer.sampling_alpha) costs: once per corpus, and per epoch.

    python scripts/bench/sampling.py experiment=quickstart data.tokenizer.sampling_alpha=0.1 --epoch-seconds 100

Positional arguments are Hydra overrides, as for seq2seq-train (sampling_alpha must be > 0). Figures:

1. `draws`: drawing `sampling_draws` sampled segmentations of the whole training split (both sides,
   max_tokens fallback included), done once and stored beside the cache (`samples.*.npz`; not timed
   again by a later run, which loads the file: `load_s`).
2. `epoch`: what an epoch adds to training: picking its segmentation (`SampledParallelDataset.set_epoch`)
   and building its token-budget batches from the new lengths, against `--epoch-seconds` (a measured
   epoch time, e.g. ~100 s for the quickstart on 2 idle cores). Also how much longer the sequences of a
   sampled epoch are (more pieces per sentence, hence more batches): a property of the lever, not of
   the pipeline.

Each time is the median of `--repeat` runs. Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import common


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="Hydra overrides (experiment=..., data.tokenizer.sampling_alpha=...)")
    p.add_argument("--repeat", type=int, default=5, help="epochs timed (and draws loaded)")
    p.add_argument("--epoch-seconds", type=float, default=100.0,
                   help="a measured epoch time to state the per-epoch cost against (default: the quickstart's ~100 s)")
    p.add_argument("--json", metavar="PATH", help="write all figures as JSON here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np

    from seq2seq.config import BatchingConfig, ConfigError, DataConfig, section
    from seq2seq.data.batching import token_budget_batches
    from seq2seq.data.cache import prepare_corpus
    from seq2seq.data.subword_sampling import SampledParallelDataset, draw, load_or_draw

    with tempfile.TemporaryDirectory() as out:
        cfg = common.compose_config(args.overrides, out)
    data_cfg = section(DataConfig, cfg.data, "data")
    batching = section(BatchingConfig, cfg.batching, "batching")
    tok = data_cfg.tokenizer
    if not tok.sampling:
        raise ConfigError("config key 'data.tokenizer.sampling_alpha' is 0: give the value to measure, "
                          "e.g. data.tokenizer.sampling_alpha=0.1")
    corpus = prepare_corpus(data_cfg)  # builds the cache on a miss (not timed)
    train = corpus.splits["train"]
    seed = int(cfg.seed)

    start, cpu = time.perf_counter(), time.process_time()
    arrays = draw(corpus.tokenizer, train.src_text, train.tgt_text, train.src, train.tgt, tok.sampling_alpha,
                  tok.sampling_nbest, tok.sampling_draws, data_cfg.filter.max_tokens)
    draw_s, draw_cpu_s = time.perf_counter() - start, time.process_time() - cpu
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "samples.npz"
        load_s = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            draws = load_or_draw(path, len(train), tok.sampling_draws, lambda: arrays)
            load_s.append(time.perf_counter() - start)
        size = path.stat().st_size

    def batches(src_lengths, tgt_lengths, epoch: int) -> list[list[int]]:
        return token_budget_batches(src_lengths, tgt_lengths, batching.max_tokens, batching.max_sentences,
                                    batching.bucket_width, np.random.default_rng([seed, epoch]))

    dataset = SampledParallelDataset(draws, seed)
    pick_s, batch_s, counts = [], [], []
    for epoch in range(1, args.repeat + 1):
        start = time.perf_counter()
        lengths = dataset.set_epoch(epoch)
        pick_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        counts.append(len(batches(*lengths, epoch)))
        batch_s.append(time.perf_counter() - start)
    fixed = (np.array([len(s) + 1 for s in train.src]), np.array([len(t) + 1 for t in train.tgt]))
    per_epoch_s = statistics.median(pick_s) + statistics.median(batch_s)

    report = {
        "environment": common.environment(torch.device("cpu")),
        "setup": {"overrides": list(args.overrides), "pairs": len(train), "model_type": tok.model_type,
                  "sampling_alpha": tok.sampling_alpha, "sampling_nbest": tok.sampling_nbest,
                  "sampling_draws": tok.sampling_draws, "repeat": args.repeat},
        "draws": {"draw_all_s": draw_s, "draw_all_cpu_s": draw_cpu_s, "per_draw_s": draw_s / tok.sampling_draws,
                  "file_mib": size / 2**20, "load_s": statistics.median(load_s)},
        "epoch": {"pick_s": statistics.median(pick_s), "batches_s": statistics.median(batch_s),
                  "added_per_epoch_s": per_epoch_s, "given_epoch_s": args.epoch_seconds,
                  "added_pct_of_epoch": 100 * per_epoch_s / args.epoch_seconds,
                  "batches_fixed": len(batches(*fixed, 1)), "batches_sampled": statistics.median(counts),
                  "pieces_fixed": int(fixed[0].sum() + fixed[1].sum()),
                  "pieces_sampled": int(lengths[0].sum() + lengths[1].sum())},
    }
    common.print_mapping(f"{tok.sampling_draws} sampled segmentations of the training split, drawn once",
                         report["draws"])
    common.print_mapping("per epoch (picking its segmentation, building its batches)", report["epoch"])
    print("\n(timings on a shared machine are noisy)")
    common.write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(common.run_cli(main))
