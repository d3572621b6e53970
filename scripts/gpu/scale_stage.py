"""Stage (g) of the GPU check, `scripts/gpu/check.sh --scale` (a device call of its own; `--scale-smoke` runs it
tiny on the CPU, tests/test_gpu_check.py): a corpus of WMT size on one GPU (issue 32).

    corpus+prepare  scripts/bench/scale.py --skip-train --loader-batches N: a ~1M-pair synthetic de-en corpus
                    drawn from the carried Multi30k (scripts/bench/synthetic_corpus.py), `seq2seq-prepare` on
                    it with the WMT preset's data settings (wall time, peak RSS, cache size on disk), then the
                    training DataLoader alone, no model, for N batches: the batches per second the data side
                    can deliver (CPU only, in the training process's own way: batching.num_workers of the preset)
    throughput      scripts/bench/train.py --skip-decode on that cache: the WMT preset's training step on one
                    GPU, fp32 (TF32) and then bf16-mixed: target tokens/s, step time, peak memory, share of
                    step time outside GPU kernels
    keeps up        per precision: loader batches/s >= 3 x the batches/s the GPU consumes (1000 / step ms)

The preset is conf/experiment/wmt14_en_de.yaml when this checkout has it, else multi30k_gpu (EXPERIMENT);
the corpus replaces its training data (data.train_corpora=[] where the config knows that key) and Multi30k's
val and test_2016_flickr files are the held-out splits. Each step is a subprocess with a time cap; what
fails or runs out of time is recorded and the next step still runs.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
WMT_PRESET = "wmt14_en_de"
EXPERIMENT = WMT_PRESET if (REPO / "conf" / "experiment" / f"{WMT_PRESET}.yaml").is_file() else "multi30k_gpu"
KEEP_UP_FACTOR = 3.0

# Full: one 600-s device call from a bare machine (check.sh's wheel install ~10 s first). The caps leave the
# throughput rows at least 2 x 100 s even when preparation takes all of its 300.
SCALE = {
    "budget_s": 570,
    "data": [],
    "scale": {"pairs": "1M", "experiment": EXPERIMENT, "pair": "preset", "overrides": [], "prepare_cap": 330,
              "loader_batches": 400, "precisions": ["32-true", "bf16-mixed"], "train_steps": 60, "warmup_steps": 10,
              "profile_steps": 5, "device": "cuda", "cap_each": 100, "extra": []},
}
# Smoke: every piece tiny on the CPU, within ~60 s on 2 busy cores.
SCALE_SMOKE = {
    "budget_s": 150,
    "data": [],
    "scale": {"pairs": "20k", "experiment": "quickstart", "pair": "de-en",
              "overrides": ["data.tokenizer.vocab_size=1000", "model.embedding_size=32", "model.encoder_hidden_size=32",
                            "model.decoder_hidden_size=32", "batching.max_tokens=1000"],
              "prepare_cap": 60, "loader_batches": 50, "precisions": ["32-true"], "train_steps": 3, "warmup_steps": 1,
              "profile_steps": 0, "device": "cpu", "cap_each": 60, "extra": ["--threads", "1"]},
}


def held_out_overrides() -> list[str]:
    """Multi30k's val and test as the held-out splits, the synthetic corpus as the only training data."""
    overrides = ["data.valid_split=val", "data.test_split=test_2016_flickr", "data.test_splits=[]"]
    if "train_corpora" in (REPO / "seq2seq" / "config.py").read_text():  # issue 32's key, where this checkout has it
        overrides.append("data.train_corpora=[]")
    return overrides


def stage_scale(report, cfg: dict, workdir: Path, multi30k: str | None,
                run: Callable[[list[str], float], tuple[Any, float, str]]) -> None:
    """Prepare the synthetic corpus, time its loader and the preset's training step; `report.stage('scale', ...)`
    after each step (check.py's Report, run and budget)."""
    s = cfg["scale"]
    fields: dict[str, Any] = {"experiment": s["experiment"], "pairs": s["pairs"]}
    common = [*held_out_overrides(), *s["overrides"]]
    out_json = workdir / "scale.json"
    cmd = [PY, "scripts/bench/scale.py", "--work", str(workdir / "scale"), "--sizes", s["pairs"], "--skip-train",
           "--experiment", s["experiment"], "--pair", s["pair"], "--loader-batches", str(s["loader_batches"]),
           *(["--multi30k", multi30k] if multi30k else []), *[f"--override={o}" for o in common],
           "--json", str(out_json)]
    rc, seconds, output = run(cmd, min(s["prepare_cap"], cfg["budget_s"] - report.elapsed()))
    fields["prepare"] = {"command": shlex.join(cmd[1:]), "exit": rc, "seconds": round(seconds, 1)}
    size = json.loads(out_json.read_text())["sizes"][0] if out_json.is_file() else {}
    prep, loader = size.get("prepare") or {}, size.get("loader") or {}
    fields["prepare"].update({"corpus_seconds": (size.get("corpus") or {}).get("seconds"),
                              "prepare_seconds": prep.get("seconds"), "prepare_exit": prep.get("exit"),
                              "peak_rss_mib": prep.get("peak_rss_single_mib"),
                              "peak_rss_tree_mib": prep.get("peak_rss_tree_mib"), "cache_mib": prep.get("cache_mib"),
                              "prepared": prep.get("prepared")})
    fields["loader"] = {k: loader.get(k) for k in ("exit", "setup_s", "batches", "batches_per_s",
                                                  "sentences_per_batch", "tgt_tokens_per_s", "peak_rss_mib")}
    if rc != 0 or prep.get("exit") != 0:
        fields["prepare"]["error"] = (prep.get("tail") or output)[-1500:]
    report.stage("scale", **fields)
    if prep.get("exit") != 0:
        return

    data = [*size["data_overrides"], *common]
    rows = []
    for precision in s["precisions"]:
        cap = min(s["cap_each"], cfg["budget_s"] - report.elapsed())
        if cap < 15:
            rows.append({"precision": precision, "error": "skipped: out of time"})
            continue
        row_json = workdir / f"scale_throughput_{precision}.json"
        cmd = [PY, "scripts/bench/train.py", f"experiment={s['experiment']}", *data, f"trainer.precision={precision}",
               "test_after_training=false", "--skip-decode", "--device", s["device"], "--train-steps",
               str(s["train_steps"]), "--warmup-steps", str(s["warmup_steps"]), "--profile-steps",
               str(s["profile_steps"]), *s["extra"], "--json", str(row_json)]
        rc, seconds, output = run(cmd, cap)
        row: dict[str, Any] = {"precision": precision, "command": shlex.join(cmd[1:]), "exit": rc,
                               "seconds": round(seconds, 1)}
        if rc == 0 and row_json.is_file():
            train = json.loads(row_json.read_text()).get("train", {})
            row.update({k: train.get(k) for k in ("tgt_tok_per_s", "step_ms", "peak_mem_mib", "outside_kernels_share",
                                                  "mean_batch_sentences")})
            if row.get("step_ms") and loader.get("batches_per_s"):
                gpu_batches_per_s = 1000 / row["step_ms"]
                row["gpu_batches_per_s"] = round(gpu_batches_per_s, 2)
                row["loader_over_gpu"] = round(loader["batches_per_s"] / gpu_batches_per_s, 2)
                row["data_keeps_up"] = row["loader_over_gpu"] >= KEEP_UP_FACTOR
        else:
            row["error"] = output[-1500:]
        rows.append(row)
        fields["throughput"] = rows
        report.stage("scale", **fields)
    fields["throughput"] = rows
    report.stage("scale", **fields)


def scale_markdown(s: dict[str, Any], fmt: Callable[..., str]) -> list[str]:
    """The report's section of stage (g)."""
    prep, loader = s.get("prepare", {}), s.get("loader", {})
    prepared = (f"`{prep.get('command')}` -> exit {prep.get('exit')}, {prep.get('seconds')} s: corpus written in "
                f"{prep.get('corpus_seconds')} s; seq2seq-prepare {prep.get('prepare_seconds')} s, peak RSS "
                f"{fmt(prep.get('peak_rss_mib'))} MiB (process tree {fmt(prep.get('peak_rss_tree_mib'))} MiB), "
                f"cache {fmt(prep.get('cache_mib'))} MiB on disk; {prep.get('prepared') or ''}")
    loaded = (f"The training DataLoader alone: {fmt(loader.get('batches_per_s'))} batches/s over "
              f"{loader.get('batches')} batches ({fmt(loader.get('sentences_per_batch'))} sentences each; setup "
              f"{loader.get('setup_s')} s).")
    lines = [f"## (g) Scale: a {s.get('pairs')}-pair synthetic corpus, experiment={s.get('experiment')}", "",
             prepared, "", loaded, ""]
    if prep.get("error"):
        lines += ["```", prep["error"], "```", ""]
    if "throughput" in s:
        header = (f"| precision | target tok/s (one GPU) | step ms | GPU batches/s | loader / GPU "
                  f"(>= {KEEP_UP_FACTOR:g}) | peak MiB | outside kernels | note |")
        lines += [header, "|---|---|---|---|---|---|---|---|"]
        for r in s["throughput"]:
            keeps = {True: " (keeps up)", False: " (too slow)"}.get(r.get("data_keeps_up"), "")
            note = "" if "error" not in r else (r["error"].strip().splitlines() or ["error"])[-1][:120]
            lines.append(f"| {r['precision']} | {fmt(r.get('tgt_tok_per_s'))} | {fmt(r.get('step_ms'))} | "
                         f"{fmt(r.get('gpu_batches_per_s'))} | {fmt(r.get('loader_over_gpu'))}{keeps} | "
                         f"{fmt(r.get('peak_mem_mib'))} | {fmt(r.get('outside_kernels_share'))} | {note} |")
        cmds = [r["command"] for r in s["throughput"] if "command" in r]
        lines += ["", "Commands (`python ...`):", "", *[f"- `{c}`" for c in cmds], ""]
    if s.get("error"):
        lines += ["```", s["error"], "```", ""]
    return lines
