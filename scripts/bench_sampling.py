"""What subword sampling (data.tokenizer.sampling_alpha) costs an epoch.

    python scripts/bench_sampling.py experiment=quickstart data.tokenizer.sampling_alpha=0.1 --json s.json

Positional arguments are Hydra overrides, as for seq2seq-train (sampling_alpha must be > 0). Figures:

1. `resegment`: drawing one epoch's segmentation of the whole training split (both sides, filter
   fallback and id arrays included: `SampledParallelDataset.set_epoch` with nothing prefetched), and
   rebuilding that epoch's token-budget batches; best of `--repeat` epochs.
2. `overlap`: what the background draw really costs training. Training steps of the configured model
   on real batches are timed alternately without and with the next epoch being drawn in the
   background thread (`--steps` steps each time, enough to cover one draw), plus the wait at the
   epoch boundary if the draw was not done: extra step time + wait = the cost per epoch.
3. `epoch`: an estimated epoch time (mean step time x batches per epoch), which the costs above are
   a percentage of, and how much longer an epoch's sequences get when sampled (more pieces per
   sentence, hence more batches): a property of the lever, not of the pipeline.

Timings on a shared machine are noisy: the script alternates the cases and reports the median of each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench  # noqa: E402
import torch  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="Hydra overrides (experiment=..., data.tokenizer.sampling_alpha=...)")
    p.add_argument("--repeat", type=int, default=3, help="draws / alternations per figure")
    p.add_argument("--steps", type=int, default=8, help="training steps timed per alternation (0: skip 2 and 3)")
    p.add_argument("--epoch-seconds", type=float, help="a measured epoch time (e.g. from a quickstart run's log) "
                   "to state the costs against, besides the estimate")
    p.add_argument("--json", metavar="PATH", help="write all figures as JSON here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np

    from seq2seq.config import BatchingConfig, ConfigError, DataConfig, section
    from seq2seq.data import token_budget_batches
    from seq2seq.prepare import prepare_corpus
    from seq2seq.subword_sampling import SampledParallelDataset

    with tempfile.TemporaryDirectory() as out:
        cfg = _bench.compose_config(args.overrides, out)
    data_cfg = section(DataConfig, cfg.data, "data")
    batching = section(BatchingConfig, cfg.batching, "batching")
    tok = data_cfg.tokenizer
    if not tok.sampling:
        raise ConfigError("config key 'data.tokenizer.sampling_alpha' is 0: give the value to measure, "
                          "e.g. data.tokenizer.sampling_alpha=0.1")
    corpus = prepare_corpus(data_cfg)  # builds the cache on a miss (not timed)
    train = corpus.splits["train"]

    def dataset() -> SampledParallelDataset:
        return SampledParallelDataset(train.src, train.tgt, train.src_text, train.tgt_text, corpus.tokenizer,
                                      tok.sampling_alpha, tok.sampling_nbest, int(cfg.seed),
                                      data_cfg.filter.max_tokens)

    def batches(src_lengths, tgt_lengths, epoch: int) -> list[list[int]]:
        return token_budget_batches(src_lengths, tgt_lengths, batching.max_tokens, batching.max_sentences,
                                    batching.bucket_width, np.random.default_rng([int(cfg.seed), epoch]))

    # 1. one epoch's draw, in the foreground
    draw_s, draw_cpu_s, batch_s = [], [], []
    for epoch in range(args.repeat):
        ds = dataset()
        start, cpu = time.perf_counter(), time.process_time()
        lengths = ds.set_epoch(epoch)
        draw_s.append(time.perf_counter() - start)
        draw_cpu_s.append(time.process_time() - cpu)
        ds._next[1].join()  # the prefetch of epoch + 1 must not run into the next measurement
        start = time.perf_counter()
        sampled_batches = batches(*lengths, epoch)
        batch_s.append(time.perf_counter() - start)
    fixed_lengths = (np.array([len(s) + 1 for s in train.src]), np.array([len(t) + 1 for t in train.tgt]))
    fixed_batches = batches(*fixed_lengths, 0)

    pieces = lambda lengths: int(sum(lengths[0]) + sum(lengths[1]))  # noqa: E731
    report = {
        "environment": _bench.environment(torch.device("cpu")),
        "setup": {"overrides": list(args.overrides), "pairs": len(train), "model_type": tok.model_type,
                  "sampling_alpha": tok.sampling_alpha, "sampling_nbest": tok.sampling_nbest,
                  "torch_threads": torch.get_num_threads(), "steps_per_alternation": args.steps,
                  "repeat": args.repeat},
        "resegment": {"draw_s": statistics.median(draw_s), "draw_cpu_s": statistics.median(draw_cpu_s),
                      "draw_s_all": draw_s, "batches_s": statistics.median(batch_s)},
        "epoch": {"batches_fixed": len(fixed_batches), "batches_sampled": len(sampled_batches),
                  "pieces_fixed": pieces(fixed_lengths), "pieces_sampled": pieces(lengths)},
    }
    if args.epoch_seconds:
        report["epoch"]["given_epoch_s"] = args.epoch_seconds
        report["epoch"]["draw_cpu_pct_of_given_epoch"] = 100 * statistics.median(draw_cpu_s) / args.epoch_seconds
    if args.steps > 0:
        report.update(overlap(args, cfg, corpus, dataset, batches, report))
    _bench.print_mapping("one epoch's segmentation drawn in the foreground", report["resegment"])
    if "overlap" in report:
        _bench.print_mapping("training steps without / with the next epoch drawn in the background",
                             report["overlap"])
    _bench.print_mapping("an epoch of this configuration", report["epoch"])
    print("\n(timings on a shared machine are noisy; compare figures from one run)")
    _bench.write_json(args.json, report)
    return 0


def overlap(args, cfg, corpus, dataset, batches, report) -> dict:
    """Training steps timed alternately without and with the next epoch drawn in the background."""
    import torch.nn.functional as F

    from seq2seq.config import ModelConfig, section
    from seq2seq.data import collate
    from seq2seq.model import Seq2Seq
    from seq2seq.tokenizer import BOS_ID, EOS_ID, PAD_ID

    model_cfg = section(ModelConfig, cfg.model, "model")
    vocab = corpus.tokenizer
    model = Seq2Seq(model_cfg, vocab.src_vocab_size, vocab.tgt_vocab_size, PAD_ID, BOS_ID, EOS_ID)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    ds = dataset()
    ds.set_epoch(0)
    ds._next[1].join()
    plan = [ds[b] for b in batches(ds.src_lengths, ds.tgt_lengths, 0)]

    def steps(n: int, offset: int) -> float:
        start = time.perf_counter()
        for k in range(n):
            batch = collate(plan[(offset + k) % len(plan)])
            logits = model(batch.src, batch.src_lengths, batch.src_mask, batch.tgt_in)  # [B, T, V]
            loss = F.cross_entropy(logits.transpose(1, 2), batch.tgt_out, ignore_index=PAD_ID)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return time.perf_counter() - start

    steps(3, 0)  # warm-up
    plain, busy, wait = [], [], []
    for r in range(args.repeat):
        plain.append(steps(args.steps, r * args.steps))
        ds.set_epoch(2 * r + 1)  # starts drawing 2r + 2 in the background
        busy.append(steps(args.steps, r * args.steps))
        start = time.perf_counter()
        ds.set_epoch(2 * r + 2)  # the epoch boundary: waits for the draw if it is not done
        wait.append(time.perf_counter() - start)
        ds._next[1].join()
    step_s = statistics.median(plain) / args.steps
    extra_s = max(0.0, statistics.median(busy) - statistics.median(plain)) + statistics.median(wait)
    epoch = report["epoch"]
    epoch_s = step_s * epoch["batches_sampled"]
    draw_cpu_s = report["resegment"]["draw_cpu_s"]
    return {
        "overlap": {"steps_s_without": statistics.median(plain), "steps_s_with_background_draw": statistics.median(busy),
                    "boundary_wait_s": statistics.median(wait), "measured_cost_per_epoch_s": extra_s},
        "epoch": {**epoch, "step_s": step_s, "estimated_epoch_s": epoch_s,
                  "draw_cpu_pct_of_estimated_epoch": 100 * draw_cpu_s / epoch_s,
                  "measured_cost_pct_of_estimated_epoch": 100 * extra_s / epoch_s},
    }


if __name__ == "__main__":
    sys.exit(_bench.run_cli(main))
