"""`scripts/gpu/concurrent_runs.py`: the presets in several directions at once (how a short GPU lease
measures the quality table), here tiny on the CPU so the script cannot rot without a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from .helpers import REPO, load_script

SCRIPT = str(REPO / "scripts" / "gpu" / "concurrent_runs.py")
TINY = ["debug=tiny", "search.tune_beam_sizes=[1,2]", "search.tune_length_penalties=[1.0]"]


def concurrent(tmp_path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, SCRIPT, "--out", str(tmp_path / "out"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_runs_side_by_side_share_a_cache_and_each_gets_its_test_row(tmp_path, multi30k_dir):
    """Three runs, two of them seeds of one variant: each gets its test row, and with --ensemble-s those
    two (only) are ensembled after their tests; the plain run has no seed to pair with."""
    proc = concurrent(tmp_path, "--deadline-s", "300", "--ensemble-s", "60", "--variant", "wd=model.word_dropout=0.1",
                      "quickstart:de-en", "quickstart:de-en:2+wd", "quickstart:de-en:3+wd", "--", *TINY,
                      f"paths.data_dir={tmp_path / 'data'}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "runs.json").read_text())
    assert [(r["run"], r["status"]) for r in result["runs"]] == [
        ("quickstart_de-en", "exit 0"), ("quickstart_de-en_s2_wd", "exit 0"), ("quickstart_de-en_s3_wd", "exit 0")]
    assert all("search defaults tuned on 'val'" in r["tuned_search"] for r in result["runs"])
    rows = result["collected"]["runs"]
    assert [row["seed"] for row in rows] == ["", "2", "3"]  # seed 1234 is the config's own: no override
    assert [row["model.word_dropout"] for row in rows] == ["", "0.1", "0.1"]  # the variant's setting reached its runs
    assert all(row["test/bleu"] != "" and row["test/bleu_lc"] != "" for row in rows), rows
    assert [p.name for p in (tmp_path / "out" / "runs").glob("prepare_*.log")] == ["prepare_quickstart_de-en.log"]
    assert len([p for p in (tmp_path / "data" / "cache").iterdir() if p.is_dir()]) == 1  # one cache, built once
    md = (tmp_path / "out" / "runs.md").read_text()
    assert "| quickstart_de-en_s2_wd |" in md and "test/bleu_lc" in md

    [ensemble] = result["ensembles"]
    runs = tmp_path / "out" / "runs"
    assert (ensemble["group"], ensemble["status"]) == ("quickstart_de-en_wd", "exit 0")
    assert ensemble["members"] == [str(runs / "quickstart_de-en_s2_wd"), str(runs / "quickstart_de-en_s3_wd")]
    scores = ensemble["result"]
    assert scores["checkpoints"] == [f"{m}/checkpoints/best.ckpt" for m in ensemble["members"]]
    assert scores["splits"][0]["split"] == "test_2016_flickr" and scores["splits"][0]["sentences"] > 0
    assert "## Ensembles of the seeds" in md and "### An ensemble of 2 (de-en)" in md and "| **ensemble** |" in md


def test_a_run_still_going_at_the_deadline_is_stopped_and_reported(tmp_path, multi30k_dir):
    started = time.monotonic()
    # Without a test after training: stopped by SIGTERM, a run would otherwise test its best checkpoint, and
    # whether that ends within the 10 s before SIGKILL ("..., after its test") is a matter of timing.
    proc = concurrent(tmp_path, "--deadline-s", "8", "quickstart:de-en", "--", "debug=tiny", "trainer.max_steps=100000",
                      "trainer.max_epochs=1000", "test_after_training=false", f"paths.data_dir={tmp_path / 'data'}")
    assert proc.returncode == 1
    assert time.monotonic() - started < 60  # stopped, not waited for
    alive = [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p).count(str(tmp_path))]
    assert not alive, [_cmdline(p) for p in alive]  # the training process itself is gone, not just reported
    result = json.loads((tmp_path / "out" / "runs.json").read_text())
    assert result["runs"][0]["status"] == "stopped at the deadline"
    assert "quickstart_de-en (stopped at the deadline)" in (tmp_path / "out" / "runs.md").read_text().replace("`", "")


def _cmdline(pid: str) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace").replace("\0", " ")
    except OSError:
        return ""


@pytest.mark.parametrize("args, message", [
    (["quickstart:de_en"], "'quickstart:de_en' is not PRESET:SRC-TGT[:SEED][+VARIANT]"),
    (["quickstrat:de-en"], "'quickstrat:de-en': no preset 'quickstrat'; valid presets: cpu_hour, "),
    (["--variant", "reg=model.dropout=0.3", "quickstart:de-en+rge"], "no --variant 'rge'; defined: reg"),
    (["--variant", "reg", "quickstart:de-en+reg"], "--variant 'reg' is not NAME="),
    (["--variant", "reg=model.dropout 0.3", "quickstart:de-en+reg"], "reg: model.dropout 0.3 is not a key=value"),
    (["--variant", "a=seed=1", "--variant", "a=seed=2", "quickstart:de-en"], "--variant a is defined twice"),
])
def test_a_bad_run_spec_is_refused_before_anything_starts(tmp_path, args, message):
    proc = concurrent(tmp_path, "--deadline-s", "10", *args, timeout=60)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def test_variants_share_a_corpus_cache_unless_their_data_settings_differ():
    module = load_script("gpu/concurrent_runs")
    variants = module.parse_variants(["reg=model.dropout=0.3 model.word_dropout=0.1",
                                      "v4=data.tokenizer.vocab_size=4000 model.dropout=0.3",
                                      "v4only=data.tokenizer.vocab_size=4000"])
    runs = [module.parse_run(spec, variants) for spec in
            ["cpu_hour:en-de", "cpu_hour:en-de:2+reg", "cpu_hour:en-de+v4", "cpu_hour:en-de:2+v4only",
             "cpu_hour:de-en+reg"]]
    base = ["experiment=cpu_hour", "data.src_lang=en", "data.tgt_lang=de"]
    assert module.assign_prepares(runs) == {
        "prepare_cpu_hour_en-de": base,
        "prepare_cpu_hour_en-de_v4": [*base, "data.tokenizer.vocab_size=4000"],  # built once for both variants
        "prepare_cpu_hour_de-en": ["experiment=cpu_hour", "data.src_lang=de", "data.tgt_lang=en"]}
    assert [(r["name"], r["prepare"]) for r in runs] == [
        ("cpu_hour_en-de", "prepare_cpu_hour_en-de"), ("cpu_hour_en-de_s2_reg", "prepare_cpu_hour_en-de"),
        ("cpu_hour_en-de_v4", "prepare_cpu_hour_en-de_v4"), ("cpu_hour_en-de_s2_v4only", "prepare_cpu_hour_en-de_v4"),
        ("cpu_hour_de-en_reg", "prepare_cpu_hour_de-en")]
    assert runs[1]["overrides"] == [*base, "model.dropout=0.3", "model.word_dropout=0.1", "seed=2"]
    assert runs[2]["overrides"] == [*base, "data.tokenizer.vocab_size=4000", "model.dropout=0.3"]
