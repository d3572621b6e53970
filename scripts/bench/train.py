"""Benchmark one experiment config: training throughput, decoding speed, time to a BLEU threshold.

    python scripts/bench/train.py experiment=quickstart --train-steps 50 --json bench.json
    python scripts/bench/train.py experiment=multi30k_gpu data.src_lang=de --checkpoint best.ckpt
    python scripts/bench/train.py experiment=quickstart --skip-train --skip-decode --bleu-threshold 20

Positional arguments are Hydra overrides, composed exactly as `seq2seq-train` composes them (Hydra's
compose API over `seq2seq.config.CONF_DIR`). Every figure comes from the project's own code paths:

training   The real `TranslationDataModule` (token-budget length-bucketed batches of the prepared
           corpus) and `TranslationModule`, driven by a short Lightning `Trainer(max_steps=...)` built
           from the config's trainer section (so the configured precision -- bf16 autocast on CUDA for
           multi30k_gpu --, gradient clipping, optimiser and LR-schedule steps are all included), with
           validation, checkpointing and logging switched off. A timing callback takes the wall time
           between the end of step `--warmup-steps` and the end of step `warmup + --train-steps`
           (CUDA synchronised at both ends), so data loading, host-to-device copies and Lightning's loop
           overhead count, exactly as in a real run. Token counts come from the batches (real, unpadded
           lengths: target = pieces + EOS, source = pieces + EOS). On CUDA, `--profile-steps` further
           steps run under torch.profiler: GPU kernel busy time (union of kernel/memcpy/memset
           intervals) per target token, against the unprofiled wall time per target token, gives the
           share of step time spent outside GPU kernels (launch overhead, Python, host syncs, data).
decoding   `Translator.translate` (the path of validation, the final test and seq2seq-translate) on the
           test split (test_2016_flickr: 1,000 sentences), greedy and beam 5, after a warm-up call;
           checkpoint loading is excluded. Without `--checkpoint` the weights are freshly initialised:
           output lengths -- and so decode speed -- differ from a trained model's (hyp/ref length ratio
           is reported). Decoding runs in the run's precision (bf16 autocast on CUDA for bf16-mixed).
time to    `--bleu-threshold X` runs the real `seq2seq.training.run.train(cfg)` with one extra callback that
quality    records the wall time (since process start, and since train() was called) when val/bleu
           first reaches X and then stops training; the usual test of best.ckpt follows. It runs first
           so that "since process start" covers only imports, config and this training run.

All runs use one device (`--device`): the Trainer is forced to devices=1, strategy=auto.
CPU timings are sensitive to other processes on the machine; the 1-minute load average is recorded.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import lightning.pytorch as pl
import numpy as np
import torch

import common


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=quickstart data.src_lang=de")
    common.add_common_args(p)
    p.add_argument("--output-dir", help="run folder for --bleu-threshold (default outputs/benchmark/<time>)")
    p.add_argument("--skip-train", action="store_true", help="no training-throughput measurement")
    p.add_argument("--skip-decode", action="store_true", help="no decoding measurement")
    p.add_argument("--train-steps", type=int, default=100, help="timed optimiser steps")
    p.add_argument("--warmup-steps", type=int, default=10, help="untimed steps first (>= 1)")
    p.add_argument("--profile-steps", type=int, default=5,
                   help="CUDA only: steps run under torch.profiler after the timed ones (0 = none)")
    p.add_argument("--checkpoint", help="decode with this trained checkpoint (default: fresh weights)")
    p.add_argument("--beams", type=common.int_list, default=[1, 5], help="beam sizes to decode with (1 = greedy)")
    p.add_argument("--decode-batch-tokens", type=int, help="source-token budget per decode batch "
                   "(default: the config's search.batch_tokens)")
    p.add_argument("--bleu-threshold", type=float, help="time a real training run until val/bleu >= this")
    p.add_argument("--verbose", action="store_true", help="show INFO logs of seq2seq and Lightning")
    args = p.parse_args(argv)
    if args.warmup_steps < 1:
        p.error("--warmup-steps must be >= 1 (the first step includes one-off initialisation)")
    if args.train_steps < 1:
        p.error("--train-steps must be >= 1")
    return args


# ------------------------------------------------------------------------------------------ training
class TrainThroughput(pl.Callback):
    """Times steps warmup+1 .. warmup+steps (wall clock between step ends, CUDA synchronised at both
    ends), then runs `profile_steps` more under torch.profiler (CUDA only)."""

    def __init__(self, warmup: int, steps: int, profile_steps: int, tgt_lengths: np.ndarray,
                 device: torch.device, trace_dir: Path):
        self.warmup, self.steps, self.profile_steps = warmup, steps, profile_steps
        self.tgt_lengths = tgt_lengths  # [N] target pieces + EOS per training example
        self.device = device
        self.trace_dir = trace_dir
        self.memory = common.PeakMemory(device)
        self.seen = 0
        self.tokens = {"src": 0, "tgt": 0, "sentences": 0, "src_padded": 0, "tgt_padded": 0}
        self.profile_tokens = 0
        self.timer = common.Timer(device)
        self.t0 = 0.0
        self.seconds: float | None = None
        self.profile_seconds: float | None = None
        self.peak: dict[str, Any] = {}
        self.profiler = None
        self.trace: Path | None = None
        self.profile_error: str | None = None

    def _count(self, batch) -> tuple[int, int]:
        """(source, target) real tokens of a batch from host-side lengths: no device sync."""
        return int(batch.src_lengths.sum()), int(self.tgt_lengths[batch.indices.numpy()].sum())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen += 1
        end_timed = self.warmup + self.steps
        if self.seen == self.warmup:
            self.memory.reset()
            self.timer.start()
        elif self.warmup < self.seen <= end_timed:
            src, tgt = self._count(batch)
            self.tokens["src"] += src
            self.tokens["tgt"] += tgt
            self.tokens["sentences"] += len(batch)
            self.tokens["src_padded"] += batch.src.numel()
            self.tokens["tgt_padded"] += batch.tgt_in.numel()
            if self.seen == end_timed:
                self.seconds = self.timer.stop()
                self.peak = self.memory.read()
                if self.profile_steps:
                    self._start_profiler()
        elif self.profiler is not None:
            self.profile_tokens += self._count(batch)[1]
            if self.seen == end_timed + self.profile_steps:
                self._stop_profiler()

    def _start_profiler(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        try:
            self.profiler = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
            self.profiler.start()
        except Exception as e:  # a profiler problem must not cost the throughput figures
            self.profile_error, self.profiler = f"{type(e).__name__}: {e}", None
        self.t0 = time.perf_counter()

    def _stop_profiler(self) -> None:
        common.synchronize(self.device)
        self.profile_seconds = time.perf_counter() - self.t0
        try:
            self.profiler.stop()
            trace = self.trace_dir / "train_trace.json"
            self.profiler.export_chrome_trace(str(trace))
            self.trace = trace
        except Exception as e:
            self.profile_error = f"{type(e).__name__}: {e}"
        self.profiler = None


def bench_train(cfg, device: torch.device, args, workdir: Path) -> dict[str, Any]:
    """Training throughput of the configured model on real token-budget batches."""
    import hydra

    from seq2seq.config import (BatchingConfig, DataConfig, ModelConfig, OptimConfig, SchedulerConfig,
                                SearchConfig, ValidationConfig, section)
    from seq2seq.data.datamodule import TranslationDataModule
    from seq2seq.training.module import TranslationModule
    from seq2seq.training.run import check_hardware, run_config

    data = section(DataConfig, cfg.data, "data")
    batching = section(BatchingConfig, cfg.batching, "batching")
    model_cfg = section(ModelConfig, cfg.model, "model")
    check_hardware(cfg)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    datamodule = TranslationDataModule(data, batching, seed=int(cfg.seed))
    datamodule.setup("fit")
    module = TranslationModule(model_cfg, section(OptimConfig, cfg.optim, "optim"),
                               section(SchedulerConfig, cfg.scheduler, "scheduler"),
                               section(SearchConfig, cfg.search, "search"),
                               section(ValidationConfig, cfg.validation, "validation"),
                               tokenizer=datamodule.tokenizer, run_config=run_config(cfg))
    train_split = datamodule.corpus.splits["train"]
    tgt_lengths = np.array([len(t) + 1 for t in train_split.tgt], dtype=np.int64)  # pieces + EOS
    profile_steps = args.profile_steps if device.type == "cuda" else 0
    timer = TrainThroughput(args.warmup_steps, args.train_steps, profile_steps, tgt_lengths, device, workdir)
    total = args.warmup_steps + args.train_steps + profile_steps
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=[timer], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, max_steps=total, max_epochs=-1,
        min_epochs=0, limit_val_batches=0, num_sanity_val_steps=0, val_check_interval=1.0,
        check_val_every_n_epoch=1,  # a config with step-based validation (=null) would reject 1.0 above
        fast_dev_run=False)
    trainer.fit(module, datamodule=datamodule)
    if timer.seconds is None:
        raise RuntimeError(f"training stopped after {timer.seen} of {total} steps")

    seconds, tok = timer.seconds, timer.tokens
    result: dict[str, Any] = {
        "steps": args.train_steps,
        "warmup_steps": args.warmup_steps,
        "seconds": seconds,
        "step_ms": 1000 * seconds / args.train_steps,
        "tgt_tok_per_s": tok["tgt"] / seconds,
        "src_tgt_tok_per_s": (tok["src"] + tok["tgt"]) / seconds,
        "sent_per_s": tok["sentences"] / seconds,
        "mean_batch_sentences": tok["sentences"] / args.train_steps,
        "mean_batch_tgt_tokens": tok["tgt"] / args.train_steps,
        "padding_share": 1 - (tok["src"] + tok["tgt"]) / max(tok["src_padded"] + tok["tgt_padded"], 1),
        "process_cpu_util": timer.timer.cpu_util,
        "precision": str(trainer.precision),
        "batch_max_tokens": batching.max_tokens,
        "train_loss_last": float(trainer.callback_metrics.get("train/loss", float("nan"))),
        **timer.peak,
    }
    result.update(_gpu_share(timer, result))
    n_params = common.count_parameters(module)
    del trainer, module, datamodule, timer
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    result["parameters"] = n_params
    return result


def _gpu_share(timer, result: dict[str, Any]) -> dict[str, Any]:
    """Share of step time outside GPU kernels, from the profiled steps (CUDA only)."""
    if timer.trace is None:
        why = f"profiler failed ({timer.profile_error})" if timer.profile_error else "needs CUDA and --profile-steps > 0"
        return {"outside_kernels_share": None, "outside_kernels_note": f"n/a: {why}"}
    try:
        busy = common.kernel_busy_seconds(json.loads(timer.trace.read_text()))
    except (OSError, ValueError, KeyError) as e:
        return {"outside_kernels_share": None, "outside_kernels_note": f"n/a: trace unreadable ({e})"}
    per_tok_busy = busy / max(timer.profile_tokens, 1)
    per_tok_wall = 1 / result["tgt_tok_per_s"]
    return {
        "outside_kernels_share": min(max(1 - per_tok_busy / per_tok_wall, 0.0), 1.0),
        "outside_kernels_share_profiled": min(max(1 - busy / timer.profile_seconds, 0.0), 1.0),
        "kernel_busy_s_per_1k_tgt_tok": 1000 * per_tok_busy,
        "profile_steps": timer.seen - result["steps"] - result["warmup_steps"],
        "outside_kernels_note": "1 - kernel busy time per target token (profiled steps) / unprofiled "
                                "wall time per target token; *_profiled: within the profiled window",
    }


# ------------------------------------------------------------------------------------------ decoding
def bench_decode(cfg, device: torch.device, args) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    setup = common.decode_setup(cfg, device, args.checkpoint, args.max_sentences)
    dtype = common.autocast_dtype(setup.precision, device)
    batch_tokens = args.decode_batch_tokens or setup.search_cfg.batch_tokens
    rows = [common.time_decode(setup, device, dtype, beam, batch_tokens) for beam in args.beams]
    info = {"weights": setup.weights, "autocast": str(dtype) if dtype else "fp32",
            "parameters": common.count_parameters(setup.model), "model": common.model_summary(setup.model_cfg),
            "search": {k: getattr(setup.search_cfg, k) for k in ("length_penalty", "max_len_a", "max_len_b")},
            **setup.data}
    if not setup.trained:
        info["note"] = common.FRESH_NOTE
    return info, rows


# ----------------------------------------------------------------------------------- time to quality
class BleuThresholdStop(pl.Callback):
    """Records when val/bleu first reaches `threshold` (seconds since process start) and stops training.

    Instantiated by `train(cfg)` from the `callbacks.bleu_threshold` config node that
    `bench_time_to_quality` adds (`_target_`: this class where this module is loaded, `__main__` when it
    runs as a script); instances register themselves in `instances` so the caller can read them.
    It lives here, not in common.py, because it needs Lightning and common.py must not import torch.
    """

    instances: list[BleuThresholdStop] = []
    listener: Callable[[BleuThresholdStop], None] | None = None  # told after every validation

    def __init__(self, threshold: float, metric: str = "val/bleu"):
        self.threshold = float(threshold)
        self.metric = metric
        self.history: list[dict[str, Any]] = []
        self.reached: dict[str, Any] | None = None
        BleuThresholdStop.instances.append(self)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.metric not in trainer.callback_metrics:
            return
        entry = {"step": trainer.global_step, "epoch": trainer.current_epoch,
                 "seconds_since_process_start": common.since_process_start(),
                 "bleu": float(trainer.callback_metrics[self.metric])}
        self.history.append(entry)
        if self.reached is None and entry["bleu"] >= self.threshold:
            self.reached = entry
            trainer.should_stop = True
        if BleuThresholdStop.listener is not None:
            BleuThresholdStop.listener(self)


def bench_time_to_quality(cfg, threshold: float, report: dict[str, Any], json_path: str | None) -> dict[str, Any]:
    """Run `train(cfg)` with a BleuThresholdStop callback; partial results are written to `json_path`
    after every validation, so a run cut short (a time limit) still leaves its history."""
    from omegaconf import OmegaConf, open_dict

    from seq2seq.training.run import train

    with open_dict(cfg):
        if not cfg.get("callbacks"):
            cfg.callbacks = OmegaConf.create({})
        target = f"{BleuThresholdStop.__module__}.{BleuThresholdStop.__qualname__}"
        cfg.callbacks.bleu_threshold = {"_target_": target, "threshold": threshold}
    BleuThresholdStop.instances.clear()
    started = common.since_process_start()

    def progress(callback) -> None:
        report["time_to_quality"] = {"threshold": threshold, "in_progress": True,
                                     "process_seconds_before_train": started, "validations": callback.history}
        common.write_json(json_path, report, quiet=True)

    BleuThresholdStop.listener = progress
    t0 = time.perf_counter()
    metrics = train(cfg)
    total = time.perf_counter() - t0
    (callback,) = BleuThresholdStop.instances
    reached = callback.reached
    result: dict[str, Any] = {
        "threshold": threshold,
        "reached": reached is not None,
        "seconds_since_process_start": reached["seconds_since_process_start"] if reached else None,
        "seconds_since_train_call": reached["seconds_since_process_start"] - started if reached else None,
        "step": reached["step"] if reached else None,
        "epoch": reached["epoch"] if reached else None,
        "val_bleu": reached["bleu"] if reached else None,
        "best_val_bleu": max((h["bleu"] for h in callback.history), default=None),
        "validations": callback.history,
        "train_call_seconds_total": total,
        "process_seconds_before_train": started,
        "test_bleu": metrics.get("test/bleu"),
        "run_dir": str(cfg.paths.output_dir),
        "precision": str(cfg.trainer.precision),
    }
    return result


# ------------------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    if not args.verbose:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)
    common.apply_threads(args.threads)
    device = common.pick_device(args.device)
    output_dir = Path(args.output_dir or f"outputs/benchmark/{datetime.now():%Y-%m-%d_%H-%M-%S}")
    cfg = common.compose_config([*args.overrides, *common.device_overrides(device)], output_dir.resolve())

    from seq2seq.config import ModelConfig, section

    model_cfg = section(ModelConfig, cfg.model, "model")
    report: dict[str, Any] = {
        "environment": common.environment(device),
        "overrides": list(args.overrides),
        "precision": str(cfg.trainer.precision),
        "batch_max_tokens": int(cfg.batching.max_tokens),
        "model": common.model_summary(model_cfg),
        "vocab_size": int(cfg.data.tokenizer.vocab_size),
        "language_pair": f"{cfg.data.src_lang}-{cfg.data.tgt_lang}",
    }
    common.print_mapping("environment", {**report["environment"], "precision": report["precision"],
                                         "batch_max_tokens": report["batch_max_tokens"]})
    common.print_mapping("model", {**report["model"], "vocab_size": report["vocab_size"],
                                   "language_pair": report["language_pair"]})

    if args.bleu_threshold is not None:  # first: "since process start" must not include other phases
        ttq = bench_time_to_quality(cfg, args.bleu_threshold, report, args.json)
        report["time_to_quality"] = ttq
        common.print_mapping(f"time to val BLEU {args.bleu_threshold:g}",
                             {k: v for k, v in ttq.items() if k != "validations"})
        common.write_json(args.json, report)
        cfg = common.compose_config([*args.overrides, *common.device_overrides(device)], output_dir.resolve())

    with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
        if not args.skip_train:
            train_result = bench_train(cfg, device, args, Path(workdir))
            report["parameters"] = train_result["parameters"]
            report["train"] = train_result
            common.print_table(
                f"training ({args.train_steps} steps after {args.warmup_steps} warm-up, {train_result['precision']})",
                [train_result], ["steps", "step_ms", "tgt_tok_per_s", "src_tgt_tok_per_s", "sent_per_s",
                                 "mean_batch_sentences", "padding_share", "process_cpu_util",
                                 "peak_mem_mib", "outside_kernels_share"])
            print(f"  peak memory: {train_result['peak_mem_kind']}; outside-kernel share: "
                  f"{train_result['outside_kernels_note']}")
            common.write_json(args.json, report)

    if not args.skip_decode:
        info, rows = bench_decode(cfg, device, args)
        report.setdefault("parameters", info["parameters"])
        report["decode"] = {**info, "results": rows}
        common.print_table(f"decoding {info['sentences']} {info['test_split']} sentences "
                           f"({info['weights']}, {info['autocast']})", rows,
                           ["search", "batch_tokens", "sentences", "seconds", "sent_per_s", "tgt_tok_per_s",
                            "hyp_ref_len_ratio", "bleu", "process_cpu_util", "peak_mem_mib"])
        if "note" in info:
            print(f"  note: {info['note']}")
        common.write_json(args.json, report)

    if "parameters" in report:
        print(f"\nparameters: {report['parameters']:,}")
    return 0


if __name__ == "__main__":
    sys.exit(common.run_cli(main))
