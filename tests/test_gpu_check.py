"""`scripts/gpu/check.sh --smoke`: every stage of the one-call GPU check runs tiny on the CPU and its
report holds every stage's figures, so the script cannot rot while no GPU is around."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from .helpers import REPO

# The smoke forms that the fixture below starts side by side, and the test that reads each one's report.
SIDE_BY_SIDE = {"--smoke": "test_gpu_check_smoke_writes_every_stage_of_the_report",
                "--quality-smoke": "test_gpu_check_quality_smoke_distills_teachers_into_students",
                "--scale-smoke": "test_gpu_check_scale_smoke_prepares_a_synthetic_corpus_and_times_its_loader_and_step"}


@pytest.fixture(scope="module")
def smoke_runs(request, tmp_path_factory, multi30k_dir):
    """The smoke forms of check.sh, all started at once (those whose tests are selected): each is a chain
    of mostly one-core processes, so on two cores they take about half as long side by side as in a row.
    -> {flag: (process, its folder: out/ for the reports, data/ for the cache and runs, output.log)}"""
    selected = {item.name for item in request.session.items}
    runs = {}
    for flag, test in SIDE_BY_SIDE.items():
        if test not in selected:
            continue
        folder = tmp_path_factory.mktemp(flag.strip("-"))
        env = {**os.environ, "OUT": str(folder / "out"), "SMOKE_DATA_DIR": str(folder / "data"),
               "SMOKE_MULTI30K": str(multi30k_dir)}
        with (folder / "output.log").open("w") as log:  # a file, not a pipe: nobody reads it while both run
            runs[flag] = (subprocess.Popen(["bash", str(REPO / "scripts" / "gpu" / "check.sh"), flag], cwd=REPO,
                                           env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True),
                          folder)
    yield runs
    for proc, _ in runs.values():
        if proc.poll() is None:  # its test failed before waiting for it
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def finished(runs: dict, flag: str, timeout: float) -> Path:
    """Wait for one of `smoke_runs`, check that it succeeded; -> its out/ folder."""
    proc, folder = runs[flag]
    proc.wait(timeout=timeout)
    assert proc.returncode == 0, (folder / "output.log").read_text()[-6000:]
    return folder / "out"


def test_gpu_check_smoke_writes_every_stage_of_the_report(smoke_runs):
    out = finished(smoke_runs, "--smoke", timeout=460)
    report = json.loads((out / "gpu_report.json").read_text())
    assert set(os.listdir(out)) == {"gpu_report.json", "gpu_report.md"}  # the device returns <= 8
    assert report["mode"] == "smoke" and report["environment"]["torch"]
    stages = report["stages"]
    assert stages["cuda_tests"]["exit"] in (0, 5) and "skipped" in stages["cuda_tests"]["summary"]
    rows = stages["throughput"]["rows"]
    assert {r["run"].split("/")[0] for r in rows} == {"one_call", "input_feed"}
    assert all(r["exit"] == 0 and r["tgt_tok_per_s"] > 0 and r["peak_mem_mib"] > 0 for r in rows), rows
    quality = stages["quality"]
    assert quality["exit"] == 0 and quality["validations"], quality
    assert all(v["val_bleu"] is not None and v["seconds_since_train_call"] > 0 for v in quality["validations"])
    decode = stages["decode"]
    assert decode["exit"] == 0 and [r["search"] for r in decode["rows"]] == ["greedy", "beam5"], decode
    assert all(r["seconds"] > 0 and r["bleu"] is not None for r in decode["rows"])
    presets = stages["presets"]
    assert presets["exit"] == 0 and [r["status"] for r in presets["runs"]] == ["exit 0", "exit 0"], presets
    assert "search defaults tuned on 'val'" in presets["runs"][0]["tuned_search"]
    assert presets["collected"]["runs"][0]["test/bleu"] != "", presets["collected"]
    [ensemble] = presets["ensembles"]
    assert (ensemble["status"], ensemble["members"]) == ("exit 0", 2) and ensemble["splits"][0]["bleu"] is not None
    md = (out / "gpu_report.md").read_text()
    assert "test/bleu" in md  # the preset runs' table
    assert "##### An ensemble of 2 (de-en)" in md and "| **ensemble** |" in md
    for heading in ("(a) CUDA tests", "(b) Training throughput", "(c) Time to quality", "(d) Decoding",
                    "(e) The preset's seeds"):
        assert heading in md


def test_gpu_check_quality_smoke_distills_teachers_into_students(smoke_runs):
    """`--quality-smoke`: two teachers side by side and their ensemble, its translations of the training
    sources, two students trained on them with the teachers' vocabulary, and the students' ensemble,
    all in the two report files."""
    out = finished(smoke_runs, "--quality-smoke", timeout=400)
    assert set(os.listdir(out)) == {"gpu_report.json", "gpu_report.md"}
    report = json.loads((out / "gpu_report.json").read_text())
    stage = report["stages"]["distill"]
    teachers, students = stage["teachers"], stage["students"]
    assert [r["status"] for r in teachers["runs"]] == ["exit 0", "exit 0"], teachers
    [ensemble] = teachers["ensembles"]
    assert ensemble["status"] == "exit 0" and len(ensemble["members"]) == 2
    [distilled] = stage["distill"]
    assert distilled["exit"] == 0 and distilled["result"]["sentences"] == 500, distilled
    assert distilled["result"]["teachers"] == [f"{m}/checkpoints/best.ckpt" for m in ensemble["members"]]
    assert distilled["result"]["search"]["length_penalty"] == ensemble["search"]["chosen"]["length_penalty"]
    assert [(r["run"], r["status"]) for r in students["runs"]] == [
        ("quickstart_de-en_s1_kd_de_en", "exit 0"), ("quickstart_de-en_s2_kd_de_en", "exit 0")], students
    students_only, together = stage["final"]
    assert students_only["ensemble"] == "students de-en" and students_only["exit"] == 0, students_only
    assert len(students_only["result"]["checkpoints"]) == 2 and students_only["result"]["splits"][0]["bleu"] is not None
    assert together["ensemble"] == "teachers and students de-en" and together["exit"] == 0, together
    assert len(together["result"]["checkpoints"]) == 4  # one vocabulary: the students joined their teachers
    md = (out / "gpu_report.md").read_text()
    for heading in ("(f) Distillation", "### Teachers", "### Distilled training targets", "### Students",
                    "#### An ensemble of 4 (de-en)"):
        assert heading in md


def test_gpu_check_scale_smoke_prepares_a_synthetic_corpus_and_times_its_loader_and_step(smoke_runs):
    """`--scale-smoke`: stage (g) tiny on the CPU: a 20k-pair synthetic corpus drawn from Multi30k, prepared
    (time, peak RSS, cache size), its training DataLoader alone, and one precision's training step, with
    the loader's batches per second set against the step's, all in the two report files."""
    out = finished(smoke_runs, "--scale-smoke", timeout=300)
    assert set(os.listdir(out)) == {"gpu_report.json", "gpu_report.md"}
    report = json.loads((out / "gpu_report.json").read_text())
    assert report["mode"] == "scale_smoke"
    stage = report["stages"]["scale"]
    prepare, loader = stage["prepare"], stage["loader"]
    assert prepare["exit"] == 0 and prepare["prepare_exit"] == 0, prepare
    assert prepare["prepare_seconds"] > 0 and prepare["peak_rss_mib"] > 0 and prepare["cache_mib"] > 0, prepare
    assert loader["exit"] == 0 and loader["batches"] == 50 and loader["batches_per_s"] > 0, loader
    [row] = stage["throughput"]
    assert row["precision"] == "32-true" and row["exit"] == 0 and row["tgt_tok_per_s"] > 0, row
    assert row["loader_over_gpu"] > 0 and isinstance(row["data_keeps_up"], bool), row
    md = (out / "gpu_report.md").read_text()
    assert "(g) Scale: a 20k-pair synthetic corpus" in md and "| 32-true |" in md
