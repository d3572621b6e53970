"""Smoke test of the benchmark scripts on tiny settings: they run and their JSON has every field.

No timing assertions: figures are printed by the scripts, never checked by tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .helpers import REPO, learn, load_script

common = load_script("bench/common")

TINY = ["debug=tiny", "test_after_training=false"]
# One thread: tiny per-step ops would otherwise spin in OpenMP behind other processes on a shared CPU.
COMMON = ["--device", "cpu", "--threads", "1", "--max-sentences", "6"]


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / script), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


DECODE_ROW = {"search", "beam_size", "batch_tokens", "sentences", "seconds", "sent_per_s", "tgt_tok_per_s",
              "out_tokens", "hyp_ref_len_ratio", "bleu", "process_cpu_util", "peak_mem_mib", "peak_mem_kind"}
ENVIRONMENT = {"device", "device_name", "torch", "cuda", "python", "cpu_count", "torch_threads", "git"}


VAL_EVERY = 25
THRESHOLD = 5.0


@pytest.fixture(scope="module")
def bench(tmp_path_factory, learnable_corpus):
    """bench/train.py: training throughput, decoding and time-to-quality on a tiny run of the learnable toy
    pair, whose validation BLEU climbs from 0 past THRESHOLD within a few hundred steps."""
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "bench.json"
    proc = run("bench/train.py", *TINY, *learn(learnable_corpus, 400, VAL_EVERY), f"paths.data_dir={tmp / 'data'}",
               *COMMON, "--train-steps", "2", "--warmup-steps", "1", "--beams", "1,2",
               "--bleu-threshold", str(THRESHOLD), "--output-dir", str(tmp / "run"), "--json", str(out))
    return tmp, json.loads(out.read_text()), proc.stdout


def test_benchmark_json_has_every_figure(bench):
    _, report, stdout = bench
    assert ENVIRONMENT <= set(report["environment"])
    assert report["environment"]["torch_threads"] == 1
    assert report["precision"] == "32-true"
    assert report["batch_max_tokens"] == 1024
    assert report["model"]["embedding_size"] == 32 and report["parameters"] > 0
    train = report["train"]
    assert {"steps", "warmup_steps", "seconds", "step_ms", "tgt_tok_per_s", "src_tgt_tok_per_s", "sent_per_s",
            "padding_share", "process_cpu_util", "precision", "batch_max_tokens", "peak_mem_mib", "peak_mem_kind",
            "outside_kernels_share", "parameters"} <= set(train)
    assert train["steps"] == 2 and train["tgt_tok_per_s"] > 0
    assert train["src_tgt_tok_per_s"] > train["tgt_tok_per_s"]
    assert train["outside_kernels_share"] is None  # CPU: n/a
    decode = report["decode"]
    assert decode["weights"] == "fresh" and "note" in decode and decode["sentences"] == 6
    assert [r["search"] for r in decode["results"]] == ["greedy", "beam2"]
    for row in decode["results"]:
        assert DECODE_ROW <= set(row) and row["sentences"] == 6
    ttq = report["time_to_quality"]
    # Training stopped at the first validation whose BLEU reached the threshold, not before, not after
    # (mutation that makes it fail: BleuThresholdStop stopping at the first validation whatever its BLEU).
    history = [h["bleu"] for h in ttq["validations"]]
    assert ttq["reached"] and ttq["val_bleu"] >= THRESHOLD and history[-1] == ttq["val_bleu"]
    assert len(history) >= 2 and all(b < THRESHOLD for b in history[:-1]), history
    assert ttq["step"] == VAL_EVERY * len(history)
    assert 0 < ttq["seconds_since_train_call"] <= ttq["seconds_since_process_start"]
    assert "training (2 steps after 1 warm-up" in stdout and "decoding 6 test_2016_flickr" in stdout


def test_bench_translate_on_the_checkpoint(bench):
    tmp, _, _ = bench
    out = tmp / "translate.json"
    proc = run("bench/translate.py", f"paths.data_dir={tmp / 'data'}", "--checkpoint",
               str(tmp / "run/checkpoints/best.ckpt"), *COMMON, "--batch-tokens", "40,400",
               "--beams", "1,2", "--warmup-sentences", "2", "--json", str(out))
    report = json.loads(out.read_text())
    assert report["weights"].startswith("checkpoint:") and "note" not in report
    assert ENVIRONMENT <= set(report["environment"]) and report["parameters"] > 0
    assert [(r["search"], r["batch_tokens"]) for r in report["results"]] == [
        ("greedy", 40), ("greedy", 400), ("beam2", 40), ("beam2", 400)]
    for row in report["results"]:
        assert DECODE_ROW <= set(row)
    assert "peak memory" in proc.stdout
    # the README's decoding table is regenerated from this JSON
    table = run("bench/table.py", str(out), "--rows", "results", "--columns", "search,batch_tokens,bleu").stdout
    lines = table.splitlines()
    assert lines[0] == "| search | batch_tokens | bleu |" and len(lines) == 2 + 4
    assert lines[2] == f"| greedy | 40 | {report['results'][0]['bleu']:.2f} |"


def test_bench_data_reports_encoding_and_cache_loading(learnable_corpus, tmp_path):
    """scripts/bench/data.py: the data-side figures that used to be wall-clock limits in unit tests."""
    out = tmp_path / "data.json"
    proc = run("bench/data.py", *learn(learnable_corpus), f"paths.data_dir={tmp_path / 'data'}", "--repeat", "1",
               "--json", str(out))
    report = json.loads(out.read_text())
    assert report["corpus"]["train_sentences"] == 600
    assert report["encode_train_src"]["pieces"] > 600 and report["encode_train_src"]["seconds"] > 0
    assert report["load_prepared_cache"]["pairs"] == 600 + 40 + 30
    assert "sentencepiece encoding of the training sources" in proc.stdout


def test_kernel_busy_time_is_the_union_of_gpu_intervals():
    trace = {"traceEvents": [
        {"ph": "X", "cat": "kernel", "ts": 0, "dur": 10},
        {"ph": "X", "cat": "kernel", "ts": 5, "dur": 10},  # overlaps: counts once
        {"ph": "X", "cat": "gpu_memcpy", "ts": 20, "dur": 5},
        {"ph": "X", "cat": "cpu_op", "ts": 0, "dur": 100},  # host side: ignored
        {"ph": "i", "cat": "kernel", "ts": 50},  # not a complete event
    ]}
    assert common.kernel_busy_seconds(trace) == pytest.approx(20e-6)
