"""The token-bucket sampler's epoch plan at corpus scale: what building one epoch's batches costs.

    python scripts/bench/batch_plan.py --sizes 1000000,10000000 --json batch_plan.json
    python scripts/bench/batch_plan.py --sizes 1000000 --against <git revision>   # also that revision's sampler

Every rank builds the whole epoch's plan (shuffle, sort by length, pack by token budget, order the
batches) when the epoch starts, so at WMT scale it is time to the first step of every epoch. The plan
depends on the lengths only, so no corpus is needed: source and target lengths are drawn like
Multi30k de-en's (mean ~14.5 pieces, std ~5, correlation ~0.87, + EOS/BOS), N pairs of them.

Figures per size, the best of `--repeat` epochs (epochs 1, 2, ...: a fresh shuffle each):
- `plan_s`: `set_epoch` and the first `len()`, which builds the plan (what the epoch start costs);
- `yield_s`: iterating one rank's batches as lists (spread over the epoch by the DataLoader);
- `plan_mib`: the arrays the plan holds (order, batch bounds, batch order);
- `plan_cpu_util`: CPU seconds / wall seconds of `plan_s` (far below 1: other processes had the core);
- `permutation_s`: `rng.permutation(N)` alone, the floor of a plan that gives the list-based sampler's
  batches (it shuffles the N examples first; the shuffle is random memory access, which dominates at 10M).
`--against REV` times `seq2seq/data/batching.py` of git revision REV the same way, in the same process
(e.g. the list-based sampler before issue 32; it builds every batch list in `plan_s`). Timings on a
shared machine are noisy: compare figures of one sitting.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import common


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=common.int_list, default=[1_000_000, 10_000_000], help="pairs, comma-separated")
    p.add_argument("--max-tokens", type=int, default=4096, help="batching.max_tokens (the config's default)")
    p.add_argument("--max-sentences", type=int, default=0, help="batching.max_sentences")
    p.add_argument("--bucket-width", type=int, default=1, help="batching.bucket_width")
    p.add_argument("--replicas", type=int, default=1, help="ranks: the plan is padded and rank 0's shard iterated")
    p.add_argument("--weights", type=lambda s: [float(w) for w in s.split(",")], default=None,
                   help="corpus weights, e.g. 2,0.5,1: the pairs split into that many equal parts")
    p.add_argument("--repeat", type=int, default=3, help="epochs timed per size; the best is reported")
    p.add_argument("--against", metavar="REV", help="also time the sampler of this git revision")
    p.add_argument("--json", metavar="PATH", help="write all figures as JSON here")
    return p.parse_args(argv)


def multi30k_like(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """[n] int32 source and target lengths (+ EOS / BOS) distributed like Multi30k de-en's training pairs
    (as tests/test_batch_plan.py draws them)."""
    rng = np.random.default_rng(seed)
    base = rng.gamma(9.0, 14.5 / 9.0, n)
    src = np.clip(np.rint(base * rng.normal(1.0, 0.12, n)), 1, None).astype(np.int32) + 1
    tgt = np.clip(np.rint(base * rng.normal(0.97, 0.12, n)), 1, None).astype(np.int32) + 1
    return src, tgt


def module_at(revision: str):
    """seq2seq/data/batching.py as of git `revision`, imported under another name."""
    source = subprocess.run(["git", "show", f"{revision}:seq2seq/data/batching.py"], cwd=common.REPO,
                            capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "batching_at_revision.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("batching_at_revision", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure(sampler_cls, src, tgt, args, parts) -> dict:
    extra = {"parts": parts} if parts is not None else {}
    sampler = sampler_cls(src, tgt, args.max_tokens, args.max_sentences, args.bucket_width, shuffle=True, seed=1,
                          num_replicas=args.replicas, rank=0, **extra)
    plan_s, plan_cpu_s, yield_s, batches = [], [], [], 0
    for epoch in range(1, max(args.repeat, 1) + 1):
        start, cpu = time.perf_counter(), time.process_time()
        sampler.set_epoch(epoch)
        batches = len(sampler)
        plan_s.append(time.perf_counter() - start)
        plan_cpu_s.append(time.process_time() - cpu)
        start = time.perf_counter()
        for _ in sampler:
            pass
        yield_s.append(time.perf_counter() - start)
    best = int(np.argmin(plan_s))
    row = {"plan_s": plan_s[best], "plan_cpu_util": plan_cpu_s[best] / plan_s[best], "yield_s": min(yield_s),
           "batches_per_rank": batches}
    if hasattr(sampler, "epoch_plan"):
        plan = sampler.epoch_plan()
        row["plan_mib"] = (plan.order.nbytes + plan.bounds.nbytes + plan.sequence.nbytes) / 2**20
        row["examples"] = len(plan.order)
    return row


def permutation_seconds(n: int, repeat: int) -> float:
    """`rng.permutation(n)` alone, the best of `repeat`: the floor of any plan that gives the batches of
    the list-based sampler (its shuffle of the N examples)."""
    times = []
    for seed in range(max(repeat, 1)):
        start = time.perf_counter()
        np.random.default_rng(seed).permutation(n)
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None) -> int:
    args = parse_args(argv)
    from seq2seq.data.batching import TokenBucketBatchSampler

    samplers = {"current": TokenBucketBatchSampler}
    if args.against:
        samplers[args.against] = module_at(args.against).TokenBucketBatchSampler
    rows = []
    for n in args.sizes:
        src, tgt = multi30k_like(n)
        parts = None
        if args.weights:
            edges = np.linspace(0, n, len(args.weights) + 1).astype(int).tolist()
            parts = [(edges[i], edges[i + 1], w) for i, w in enumerate(args.weights)]
        for name, sampler_cls in samplers.items():
            if parts is not None and name != "current":
                continue  # an older sampler has no weights
            row = {"code": name, "pairs": n, **measure(sampler_cls, src, tgt, args, parts),
                   "permutation_s": permutation_seconds(n, args.repeat)}
            rows.append(row)
            common.print_mapping(f"{n:,} pairs, {name}", row)
    report = {"environment": common.environment(),
              "setup": {"max_tokens": args.max_tokens, "max_sentences": args.max_sentences,
                        "bucket_width": args.bucket_width, "replicas": args.replicas, "weights": args.weights,
                        "repeat": args.repeat, "lengths": "synthetic, Multi30k-like"},
              "results": rows}
    common.print_table("epoch plan (best of --repeat epochs)", rows,
                       ["code", "pairs", "plan_s", "plan_cpu_util", "permutation_s", "yield_s", "batches_per_rank",
                        "plan_mib"])
    print("\n(timings on a shared machine are noisy: compare figures of one sitting)")
    common.write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(common.run_cli(main))
