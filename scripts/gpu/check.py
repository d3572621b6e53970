"""The stages of `scripts/gpu/check.sh` (run that, not this): every GPU figure in one device call.

    (a) cuda_tests   pytest -m cuda (tests/test_cuda.py)
    (b) throughput   scripts/bench/train.py --skip-decode: the preset's own step (one-call decoder, 2k
                     target tokens, fp32/TF32), then bf16, the input-feeding decoder and 8k tokens:
                     target tokens/s, peak memory, share of step time outside GPU kernels (torch.profiler)
    prepare          seq2seq-prepare: the corpus cache, built once before any timed stage
    (c) quality      scripts/bench/train.py --bleu-threshold 100 (never reached): experiment=multi30k_gpu
                     de->en as the preset defines it (its own epochs and schedule; trainer.max_time caps
                     it), alone on the GPU: validation BLEU against wall time
    (d) decoding     scripts/bench/translate.py on best.ckpt of (c): greedy and beam 5 over the test set
    (e) presets      scripts/gpu/concurrent_runs.py --ensemble-s: multi30k_gpu en->de and en->fr, three seeds
                     each, side by side, each tested with its search tuned on validation, then each
                     direction's three seeds ensembled (search tuned on validation, tested): the GPU row
                     of the quality table (de->en met it with one model), in what time is left
    (f) distill      `--mode quality`, a device call of its own: stage (e)'s teachers, then
                     seq2seq-distill with their ensembles, students on those translations, and the
                     students' ensembles alone and with their teachers (QUALITY below)
    (g) scale        `--mode scale`, a device call of its own: a ~1M-pair synthetic corpus prepared, its
                     DataLoader alone, and the WMT preset's training step in fp32 and bf16 on that cache:
                     does the data side keep up (scripts/gpu/scale_stage.py)

Each stage runs as subprocesses with a time cap; a failing or timed-out stage is recorded in the
report and the next one runs. The device returns at most 8 files, so everything goes into two:
$OUT/gpu_report.json and $OUT/gpu_report.md (environment, each figure with the command behind it,
the tail of any failure's output). `--mode smoke` runs every stage tiny on the CPU (the test suite
does, so this script cannot rot without a GPU), on the first lines of Multi30k's splits (SMOKE_CORPUS).
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from scale_stage import SCALE, SCALE_SMOKE, scale_markdown, stage_scale  # (g): scripts/gpu/ is this script's path

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
MULTI30K = REPO.parent / "shared" / "data" / "multi30k"  # conf/data/multi30k.yaml's mirror, from the repository root

# Full mode: the whole must fit 580 s of the device's 600-s call on one H100 from a bare machine.
# check.sh's wheel install (~10 s) comes first; then caps of 60 (prepare) + 130 (a) + 55 (b) s;
# (c) trains the preset for what is left minus (d)'s 45 s, (e)'s 330 s and a 30 s margin, at most 2
# minutes, at least 40 s (40 s when (a) and (b) take what they took before: a partial curve); (e) gets
# the rest: six runs side by side (three took 143 s on an H200) and their two ensembles (45 s kept).
# Throughput rows go most important first (the preset's own batch and precision); one that no longer
# fits is recorded as skipped.
FULL = {
    "budget_s": 580,
    "data": [],  # filled in from --data-root / --data-dir
    "prepare": {"overrides": ["experiment=multi30k_gpu"], "cap": 60},
    "cuda_tests_cap": 130,  # 87-104 s on an H100 and an H200 (three leases), 62 of them the one-GPU DDP run
    # (design, precision, target tokens per batch); the first is the preset's own step.
    "throughput": {"overrides": ["experiment=multi30k_gpu", "test_after_training=false"],
                   "rows": [["one_call", "32-true", 2000], ["one_call", "bf16-mixed", 2000],
                            ["input_feed", "32-true", 2000], ["one_call", "32-true", 8192]],
                   "train_steps": 40, "warmup_steps": 8, "profile_steps": 5, "device": "cuda", "cap": 55,
                   "cap_each": 30},
    "quality": {"overrides": ["experiment=multi30k_gpu", "data.src_lang=de", "data.tgt_lang=en",
                              "test_after_training=false"],
                "max_time_s": 120, "min_time_s": 40, "margin_s": 30, "device": "cuda"},
    "decode": {"beams": "1,5", "batch_tokens": "16384", "cap": 45, "device": "cuda"},
    "presets": {"runs": [f"multi30k_gpu:{pair}{seed}" for pair in ("en-de", "en-fr") for seed in ("", ":2", ":3")],
                "overrides": [], "reserve_s": 330, "min_s": 60, "ensemble_s": 45},
}
# Smoke mode: the same stages, tiny, on the CPU (tests/test_gpu_check.py; under 4 minutes on 2 cores).
# The smoke modes read the first lines of each split (SMOKE_CORPUS): debug=tiny uses 500 training pairs and
# 50 validation pairs anyway, and every run and ensemble translates the whole test split.
SMOKE_CORPUS = {"train": 500, "val": 50, "test_2016_flickr": 100}
SMOKE = {
    "budget_s": 230,
    "data": [],
    "smoke_corpus": SMOKE_CORPUS,
    "prepare": {"overrides": ["debug=tiny"], "cap": 60},
    "cuda_tests_cap": 60,
    "throughput": {"overrides": ["debug=tiny", "test_after_training=false"],
                   "rows": [["one_call", "32-true", 512], ["input_feed", "32-true", 512]],
                   "train_steps": 2, "warmup_steps": 1, "profile_steps": 0,
                   "device": "cpu", "cap": 80, "cap_each": 40, "extra": ["--threads", "1"]},
    "quality": {"overrides": ["debug=tiny", "trainer.max_steps=-1", "trainer.max_epochs=2",
                              "trainer.val_check_interval=3", "data.max_valid_pairs=8", "search.max_len_a=2",
                              "search.max_len_b=0.5", "test_after_training=false"],
                "max_time_s": 15, "min_time_s": 5, "margin_s": 20, "device": "cpu",
                "extra": ["--threads", "1", "--max-sentences", "8"]},
    "decode": {"beams": "1,5", "batch_tokens": "2000", "cap": 40, "device": "cpu",
               "extra": ["--threads", "1", "--max-sentences", "8", "--warmup-sentences", "2"]},
    "presets": {"runs": ["quickstart:de-en", "quickstart:de-en:2"], "reserve_s": 80, "min_s": 30, "ensemble_s": 25,
                "overrides": ["debug=tiny", "search.tune_beam_sizes=[1,2]", "search.tune_length_penalties=[1.0]",
                              "plot_curves=false"]},
}
# Quality mode (`check.sh --quality`, its own device call): issue 13's GPU row by distillation.
# Teachers: the preset's three seeds per direction side by side, then each direction's ensemble (tuned and
# tested, as (e) does); the ensemble translates its training sources (seq2seq-distill, beam 5 with
# the ensemble's tuned length penalty); students: three seeds per direction on those translations with
# the teachers' vocabulary, side by side; last, at once, each direction's students' ensemble and its
# teachers' and students' together (they share the vocabulary), in the last `ensemble_s` seconds.
# On an H200 three runs side by side took 143 s; six were not timed yet (hence the split of the 580 s).
QUALITY = {
    "budget_s": 580,
    "data": [],
    "distill": {"preset": "multi30k_gpu", "pairs": ["en-de", "en-fr"], "teachers": ["1234", "2", "3"],
                "students": ["1234", "2", "3"], "overrides": [], "teachers_s": 270, "ensemble_s": 45,
                "distill_cap": 60, "beam_size": 5, "min_students_s": 160, "device": "cuda"},
}
# Its smoke mode: the same chain, tiny, on the CPU (tests/test_gpu_check.py).
QUALITY_SMOKE = {
    "budget_s": 300,
    "data": [],
    "smoke_corpus": SMOKE_CORPUS,
    "distill": {"preset": "quickstart", "pairs": ["de-en"], "teachers": ["1", "2"], "students": ["1", "2"],
                "overrides": ["debug=tiny", "search.tune_beam_sizes=[1,2]", "search.tune_length_penalties=[1.0]",
                              "data.max_valid_pairs=40", "plot_curves=false"],
                "teachers_s": 120, "ensemble_s": 35, "distill_cap": 40, "beam_size": 2, "min_students_s": 90,
                "device": "cpu"},
}
# Scale mode (`check.sh --scale`, its own device call) and its smoke form: stage (g), scripts/gpu/scale_stage.py.
MODES = {"full": FULL, "smoke": SMOKE, "quality": QUALITY, "quality_smoke": QUALITY_SMOKE, "scale": SCALE,
         "scale_smoke": SCALE_SMOKE}
DESIGNS = {"one_call": ["model.input_feed=false"], "input_feed": ["model.input_feed=true"]}


class Report:
    def __init__(self, out: Path, mode: str):
        self.out, self.started = out, time.monotonic()
        self.data: dict[str, Any] = {"mode": mode, "environment": environment(), "stages": {}}

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def stage(self, name: str, **fields) -> None:
        self.data["stages"].setdefault(name, {}).update(fields)
        self.write()

    def write(self) -> None:
        self.data["total_seconds"] = round(self.elapsed(), 1)
        (self.out / "gpu_report.json").write_text(json.dumps(self.data, indent=2, default=str))
        (self.out / "gpu_report.md").write_text(markdown(self.data))


def environment() -> dict[str, Any]:
    import torch

    env = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    # The device machine's copy of .git can be older than the carried tree (seen on the first GPU check):
    # `--stage` records the commit here, next to the carried corpus.
    staged = REPO / ".gpu" / "commit"
    if staged.is_file():
        env["git"] = staged.read_text().strip() + " (as staged)"
        return env
    try:
        env["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                    text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["git"] = None
    return env


def run(cmd: list[str], cap: float) -> tuple[int | str, float, str]:
    """-> (exit code or 'timeout', seconds, last 3,000 characters of stdout+stderr)."""
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=max(cap, 1))
        return proc.returncode, time.monotonic() - t0, (proc.stdout + proc.stderr)[-3000:]
    except subprocess.TimeoutExpired as e:
        out = ((e.stdout or b"") + (e.stderr or b"")).decode("utf-8", "replace") if isinstance(e.stdout, bytes) \
            else (e.stdout or "") + (e.stderr or "")
        return "timeout", time.monotonic() - t0, out[-3000:]


def slice_corpus(source: Path, dest: Path, lines: dict[str, int]) -> Path:
    """Write the first `lines[split]` lines of each `{split}.{lang}[.gz]` in `source` to `dest/{split}.{lang}`
    (plain text); -> dest."""
    dest.mkdir(parents=True, exist_ok=True)
    for split, n in lines.items():
        files = sorted(source.glob(f"{split}.*"))
        if not files:
            raise SystemExit(f"error: no {split}.<lang>[.gz] in {source} (SMOKE_MULTI30K names the Multi30k folder)")
        for path in files:
            lang = path.name[len(split) + 1:].removesuffix(".gz")
            with (gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz"
                  else path.open(encoding="utf-8")) as f:
                (dest / f"{split}.{lang}").write_text("".join(itertools.islice(f, n)), encoding="utf-8")
    return dest


def cap_for(report: Report, budget: float, wanted: float) -> float:
    return min(wanted, budget - report.elapsed())


def stage_prepare(report: Report, cfg: dict, workdir: Path) -> None:
    """Build the corpus cache once (sentencepiece + encoding), so no timed stage pays for it."""
    cmd = [PY, "-m", "seq2seq.cli.prepare", *cfg["prepare"]["overrides"], *cfg["data"],
           f"hydra.run.dir={workdir / 'prepare_run'}"]
    rc, seconds, out = run(cmd, cap_for(report, cfg["budget_s"], cfg["prepare"]["cap"]))
    report.stage("prepare", command=shlex.join(cmd[1:]), exit=rc, seconds=round(seconds, 1),
                 **({"error": out[-1500:]} if rc != 0 else {}))


def stage_cuda_tests(report: Report, cfg: dict) -> None:
    cmd = [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "-rs", "tests/test_cuda.py"]
    rc, seconds, out = run(cmd, cap_for(report, cfg["budget_s"], cfg["cuda_tests_cap"]))
    summary = next((line for line in reversed(out.splitlines()) if " in " in line and ("passed" in line or
                    "skipped" in line or "failed" in line or "error" in line)), "")
    report.stage("cuda_tests", command=shlex.join(cmd[1:]), exit=rc, seconds=round(seconds, 1), summary=summary,
                 output_tail=out[-2500:] if rc not in (0, 5) else out[-800:])


def stage_throughput(report: Report, cfg: dict, workdir: Path) -> None:
    t = cfg["throughput"]
    deadline = report.elapsed() + t["cap"]
    rows = []
    for design, precision, tokens in t["rows"]:
        name = f"{design}/{precision}/{tokens}"
        cap = min(cap_for(report, cfg["budget_s"], t["cap_each"]), deadline - report.elapsed())
        if cap < 10:
            rows.append({"run": name, "error": "skipped: out of time"})
            continue
        out_json = workdir / f"throughput_{design}_{precision}_{tokens}.json"
        cmd = [PY, "scripts/bench/train.py", *t["overrides"], *cfg["data"], *DESIGNS[design],
               f"trainer.precision={precision}", f"batching.max_tokens={tokens}", "--skip-decode",
               "--device", t["device"], "--train-steps", str(t["train_steps"]), "--warmup-steps",
               str(t["warmup_steps"]), "--profile-steps", str(t["profile_steps"]), *t.get("extra", []),
               "--json", str(out_json)]
        rc, seconds, out = run(cmd, cap)
        row: dict[str, Any] = {"run": name, "command": shlex.join(cmd[1:]), "exit": rc, "seconds": round(seconds, 1)}
        if rc == 0 and out_json.is_file():
            train = json.loads(out_json.read_text()).get("train", {})
            row.update({k: train.get(k) for k in ("tgt_tok_per_s", "step_ms", "peak_mem_mib",
                                                  "outside_kernels_share", "mean_batch_sentences")})
        else:
            row["error"] = out[-1500:]
        rows.append(row)
        report.stage("throughput", rows=rows)
    report.stage("throughput", rows=rows)


def stage_quality(report: Report, cfg: dict, workdir: Path) -> Path | None:
    q = cfg["quality"]
    out_json, run_dir = workdir / "quality.json", workdir / "quality_run"
    left = cfg["budget_s"] - report.elapsed() - cfg["decode"]["cap"] - cfg["presets"]["reserve_s"] - q["margin_s"]
    train_s = int(max(min(q["max_time_s"], left), q["min_time_s"]))
    max_time = f"00:00:{train_s // 60:02d}:{train_s % 60:02d}"
    cmd = [PY, "scripts/bench/train.py", *q["overrides"], f"trainer.max_time={max_time}", *cfg["data"],
           "--bleu-threshold", "100",
           "--skip-train", "--skip-decode", "--device", q["device"], "--output-dir", str(run_dir),
           *q.get("extra", []), "--json", str(out_json)]
    rc, seconds, out = run(cmd, train_s + q["margin_s"])
    fields: dict[str, Any] = {"command": shlex.join(cmd[1:]), "exit": rc, "seconds": round(seconds, 1),
                              "training_budget_s": train_s}
    ttq = json.loads(out_json.read_text()).get("time_to_quality", {}) if out_json.is_file() else {}
    before = ttq.get("process_seconds_before_train") or 0.0
    fields["validations"] = [{"step": v.get("step"), "epoch": v.get("epoch"), "val_bleu": v.get("bleu"),
                              "seconds_since_train_call": round(v["seconds_since_process_start"] - before, 1)
                              if v.get("seconds_since_process_start") is not None else None}
                             for v in ttq.get("validations", [])]
    fields["best_val_bleu"] = max((v["val_bleu"] for v in fields["validations"] if v["val_bleu"] is not None),
                                  default=None)
    fields["test_bleu"] = ttq.get("test_bleu")
    if rc != 0:
        fields["error"] = out[-1500:]
    report.stage("quality", **fields)
    best = sorted(run_dir.glob("**/checkpoints/best.ckpt"))
    return best[0] if best else None


def stage_decode(report: Report, cfg: dict, checkpoint: Path | None, workdir: Path) -> None:
    d = cfg["decode"]
    if checkpoint is None:
        report.stage("decode", error="no best.ckpt from the quality stage")
        return
    out_json = workdir / "decode.json"
    cmd = [PY, "scripts/bench/translate.py", *cfg["data"], "--checkpoint", str(checkpoint), "--beams", d["beams"],
           "--batch-tokens", d["batch_tokens"], "--device", d["device"], *d.get("extra", []), "--json", str(out_json)]
    rc, seconds, out = run(cmd, cap_for(report, cfg["budget_s"], d["cap"]))
    fields: dict[str, Any] = {"command": shlex.join(cmd[1:]), "exit": rc, "seconds": round(seconds, 1)}
    if out_json.is_file():
        result = json.loads(out_json.read_text())
        fields["autocast"] = result.get("autocast")
        fields["rows"] = [{k: r.get(k) for k in ("search", "sentences", "seconds", "sent_per_s", "bleu",
                                                   "peak_mem_mib")} for r in result.get("results", [])]
    if rc != 0:
        fields["error"] = out[-1500:]
    report.stage("decode", **fields)


def stage_presets(report: Report, cfg: dict, workdir: Path) -> None:
    """The preset's test BLEU, several seeds side by side until the budget ends, and their ensembles."""
    p = cfg["presets"]
    seconds_left = cfg["budget_s"] - report.elapsed()
    if seconds_left < p["min_s"]:
        report.stage("presets", error=f"skipped: {seconds_left:.0f} s left, under {p['min_s']} s")
        return
    out = workdir / "presets"
    # The stop at the deadline takes up to 10 s; concurrent_runs then collects its table.
    cmd = [PY, "scripts/gpu/concurrent_runs.py", "--out", str(out), "--deadline-s", str(int(seconds_left - 15)),
           "--ensemble-s", str(p["ensemble_s"]), *p["runs"], "--", *p["overrides"], *cfg["data"]]
    rc, seconds, output = run(cmd, seconds_left)
    fields: dict[str, Any] = {"command": shlex.join(cmd[1:]), "exit": rc, "seconds": round(seconds, 1)}
    if (out / "runs.json").is_file():
        result = json.loads((out / "runs.json").read_text())
        fields["runs"] = [{k: r.get(k) for k in ("run", "status", "tuned_search")} for r in result["runs"]]
        fields["collected"] = result.get("collected")
        fields["ensembles"] = [{"group": e["group"], "status": e["status"], "members": len(e["members"]),
                                "splits": (e["result"] or {}).get("splits"),
                                "search": ((e["result"] or {}).get("search_tuning") or {}).get("translate_flags")}
                               for e in result.get("ensembles", [])]
    if (out / "runs.md").is_file():
        fields["table"] = (out / "runs.md").read_text()
    if rc != 0:
        fields["error"] = output[-1500:]
    report.stage("presets", **fields)


def concurrent_summary(out: Path) -> dict[str, Any]:
    """The report's view of a scripts/gpu/concurrent_runs.py folder: runs, collected table, ensembles, runs.md."""
    fields: dict[str, Any] = {}
    if (out / "runs.json").is_file():
        result = json.loads((out / "runs.json").read_text())
        fields["runs"] = [{k: r.get(k) for k in ("run", "status", "tuned_search")} for r in result["runs"]]
        fields["collected"] = result.get("collected")
        fields["ensembles"] = [{"group": e["group"], "status": e["status"], "members": e["members"],
                                "splits": (e["result"] or {}).get("splits"),
                                "search": (e["result"] or {}).get("search_tuning")}
                               for e in result.get("ensembles", [])]
    if (out / "runs.md").is_file():
        fields["table"] = (out / "runs.md").read_text()
    return fields


def run_parallel(cmds: dict[str, list[str]], cap: float) -> dict[str, tuple[int | str, float, str]]:
    """`run` for several commands at once: name -> (exit code or 'timeout', seconds, output tail)."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(len(cmds), 1)) as pool:
        futures = {name: pool.submit(run, cmd, cap) for name, cmd in cmds.items()}
        return {name: f.result() for name, f in futures.items()}


def stage_distill(report: Report, cfg: dict, workdir: Path) -> None:
    """Teachers side by side and their ensembles; the ensembles' translations of the training sources;
    students on those side by side, their ensembles, and each direction's teachers and students together."""
    d = cfg["distill"]
    fields: dict[str, Any] = {}
    teachers = workdir / "teachers"
    runs = [f"{d['preset']}:{pair}:{seed}" for pair in d["pairs"] for seed in d["teachers"]]
    cmd = [PY, "scripts/gpu/concurrent_runs.py", "--out", str(teachers), "--deadline-s", str(d["teachers_s"]),
           "--ensemble-s", str(d["ensemble_s"]), *runs, "--", *d["overrides"], *cfg["data"]]
    rc, seconds, output = run(cmd, d["teachers_s"] + 30)
    fields["teachers"] = {"command": shlex.join(cmd[1:]), "exit": rc, "seconds": round(seconds, 1),
                          **concurrent_summary(teachers), **({"error": output[-1500:]} if rc != 0 else {})}
    report.stage("distill", **fields)

    ensembles = [e for e in fields["teachers"].get("ensembles", []) if e["status"] == "exit 0"]
    cmds = {}
    for e in ensembles:
        pair = e["group"].rsplit("_", 1)[-1]
        lp = e["search"]["chosen"]["length_penalty"]
        cmds[pair] = [PY, "-m", "seq2seq.cli.distill", *e["members"], "--out", str(workdir / "kd" / pair),
                      "--beam-size", str(d["beam_size"]), "--length-penalty", str(lp), "--device", d["device"]]
    fields["distill"] = []
    for pair, (rc, seconds, output) in run_parallel(cmds, cap_for(report, cfg["budget_s"], d["distill_cap"])).items():
        info = workdir / "kd" / pair / "distill.json"
        fields["distill"].append({"pair": pair, "command": shlex.join(cmds[pair][1:]), "exit": rc,
                                  "seconds": round(seconds, 1),
                                  **({"result": json.loads(info.read_text())} if rc == 0 and info.is_file()
                                     else {"error": output[-1500:]})})
    report.stage("distill", **fields)

    distilled = [x for x in fields["distill"] if "result" in x]
    seconds_left = cfg["budget_s"] - report.elapsed()
    if not distilled or seconds_left < d["min_students_s"]:
        fields["students"] = {"error": f"skipped: {len(distilled)} distilled corpora, {seconds_left:.0f} s left "
                                       f"(at least {d['min_students_s']} s wanted)"}
        report.stage("distill", **fields)
        return
    students = workdir / "students"
    variants = [f"kd_{x['pair'].replace('-', '_')}=" + " ".join(x["result"]["student_overrides"]) for x in distilled]
    runs = [f"{d['preset']}:{x['pair']}:{seed}+kd_{x['pair'].replace('-', '_')}" for x in distilled
            for seed in d["students"]]
    # The student's data.root is its variant's (the distilled corpus): the common data.root is left out.
    common = [o for o in [*d["overrides"], *cfg["data"]] if not o.startswith("data.root=")]
    # The students' ensembles run beside the teachers-and-students ones below, not in concurrent_runs:
    # one wait, not two.
    deadline = int(seconds_left - 15 - d["ensemble_s"])
    cmd = [PY, "scripts/gpu/concurrent_runs.py", "--out", str(students), "--deadline-s", str(deadline),
           *[f"--variant={v}" for v in variants], *runs, "--", *common]
    rc, seconds, output = run(cmd, deadline + 30)
    fields["students"] = {"command": shlex.join(cmd[1:]), "exit": rc, "seconds": round(seconds, 1),
                          **concurrent_summary(students), **({"error": output[-1500:]} if rc != 0 else {})}
    report.stage("distill", **fields)

    # Per direction: the students' ensemble, and the teachers' and students' together (one vocabulary:
    # data.tokenizer_from), both at once.
    finished = [students / "runs" / r["run"] for r in fields["students"].get("runs", [])
                if r["status"] in ("exit 0", "stopped at the deadline, after its test")]
    cmds = {}
    for e in ensembles:
        pair = e["group"].rsplit("_", 1)[-1]
        mine = [str(f) for f in finished if f.name.startswith(f"{d['preset']}_{pair}_")
                and (f / "checkpoints" / "best.ckpt").is_file()]
        if len(mine) >= 2:
            cmds[f"students {pair}"] = [PY, "-m", "seq2seq.cli.ensemble", *mine, "--out",
                                        str(workdir / "final" / f"students_{pair}"), "--device", d["device"]]
        if mine:
            cmds[f"teachers and students {pair}"] = [PY, "-m", "seq2seq.cli.ensemble", *e["members"], *mine, "--out",
                                                     str(workdir / "final" / f"all_{pair}"), "--device", d["device"]]
    fields["final"] = []
    for name, (rc, seconds, output) in run_parallel(cmds, cfg["budget_s"] - report.elapsed()).items():
        result = Path(cmds[name][cmds[name].index("--out") + 1]) / "test_scores.json"
        fields["final"].append({"ensemble": name, "command": shlex.join(cmds[name][1:]), "exit": rc,
                                "seconds": round(seconds, 1),
                                **({"result": json.loads(result.read_text()),
                                    "table": (result.parent / "ensemble.md").read_text()}
                                   if rc == 0 and result.is_file() else {"error": output[-1500:]})})
    report.stage("distill", **fields)


def markdown(data: dict[str, Any]) -> str:
    env = data["environment"]
    lines = [f"# GPU check ({data['mode']} mode)", "",
             f"GPU: {env.get('gpu')}; torch {env.get('torch')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, "
             f"Python {env.get('python')}; commit {env.get('git')}; {data.get('total_seconds')} s in all.", ""]
    stages = data["stages"]
    if "prepare" in stages:
        s = stages["prepare"]
        lines += [f"Corpus cache: `{s['command']}` -> exit {s['exit']}, {s['seconds']} s.", ""]
        if s.get("error"):
            lines += ["```", s["error"], "```", ""]
    if "cuda_tests" in stages:
        s = stages["cuda_tests"]
        lines += ["## (a) CUDA tests", "", f"`{s['command']}` -> exit {s['exit']}, {s['seconds']} s: {s['summary']}", ""]
        if s.get("exit") not in (0, 5):
            lines += ["```", s.get("output_tail", ""), "```", ""]
    if "throughput" in stages:
        lines += ["## (b) Training throughput", "",
                  "| run (design/precision/batch tokens) | target tok/s | step ms | peak MiB | outside kernels | note |",
                  "|---|---|---|---|---|---|"]
        for r in stages["throughput"]["rows"]:
            lines.append(f"| {r['run']} | {fmt(r.get('tgt_tok_per_s'))} | {fmt(r.get('step_ms'))} | "
                         f"{fmt(r.get('peak_mem_mib'))} | {fmt(r.get('outside_kernels_share'))} | {row_note(r)} |")
        cmds = [r["command"] for r in stages["throughput"]["rows"] if "command" in r]
        if cmds:
            lines += ["", "Commands (`python ...`):", "", *[f"- `{c}`" for c in cmds]]
        lines.append("")
    if "quality" in stages:
        s = stages["quality"]
        lines += ["## (c) Time to quality", "", f"`{s.get('command')}` -> exit {s.get('exit')}, {s.get('seconds')} s "
                  f"(training budget {s.get('training_budget_s')} s); best val BLEU {fmt(s.get('best_val_bleu'), 2)}, test BLEU {fmt(s.get('test_bleu'), 2)}", "",
                  "| seconds since train() | step | val BLEU |", "|---|---|---|"]
        lines += [f"| {v['seconds_since_train_call']} | {v['step']} | {fmt(v['val_bleu'], 2)} |" for v in s.get("validations", [])]
        if s.get("error"):
            lines += ["", "```", s["error"], "```"]
        lines.append("")
    if "decode" in stages:
        s = stages["decode"]
        lines += ["## (d) Decoding the test set with best.ckpt of (c)", "",
                  f"`{s.get('command')}` -> exit {s.get('exit')}, {s.get('seconds')} s, autocast {s.get('autocast')}", "",
                  "| search | sentences | seconds | sent/s | BLEU | peak MiB |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['search']} | {r['sentences']} | {fmt(r['seconds'])} | {fmt(r['sent_per_s'])} | "
                  f"{fmt(r['bleu'], 2)} | {fmt(r['peak_mem_mib'])} |" for r in s.get("rows", [])]
        if s.get("error"):
            lines += ["", "```", s["error"], "```"]
        lines.append("")
    if "presets" in stages:
        s = stages["presets"]
        lines += ["## (e) The preset's seeds side by side, and their ensembles", "",
                  f"`{s.get('command')}` -> exit {s.get('exit')}, {s.get('seconds')} s", ""]
        if s.get("table"):
            # concurrent_runs' runs.md, two levels down
            lines += ["##" + line if line.startswith("#") else line for line in s["table"].splitlines()]
        if s.get("error"):
            lines += ["", "```", s["error"], "```"]
        lines.append("")
    if "distill" in stages:
        s = stages["distill"]
        lines += ["## (f) Distillation: teachers, their ensembles, students on the ensembles' translations", ""]
        if s.get("error"):
            lines += ["```", s["error"], "```", ""]
        for part, title in (("teachers", "Teachers"), ("students", "Students")):
            if part not in s:
                continue
            p = s[part]
            lines += [f"### {title}", "", f"`{p.get('command', '-')}` -> exit {p.get('exit', '-')}, "
                      f"{p.get('seconds', '-')} s", ""]
            if p.get("table"):
                lines += ["##" + line if line.startswith("#") else line for line in p["table"].splitlines()]
            if p.get("error"):
                lines += ["", "```", p["error"], "```"]
            lines.append("")
            if part == "students" and s.get("final"):
                lines += ["### The students' ensembles, and teachers and students together", ""]
                for x in s["final"]:
                    lines += [f"{x['ensemble']}: `{x['command']}` -> exit {x['exit']}, {x['seconds']} s", ""]
                    lines += ["###" + line if line.startswith("#") else line for line in x.get("table", "").splitlines()]
                    if x.get("error"):
                        lines += ["```", x["error"], "```"]
                    lines.append("")
            if part == "teachers" and "distill" in s:
                lines += ["### Distilled training targets", "", "| pair | exit | seconds | sentences | search | "
                          "translate s | device |", "|---|---|---|---|---|---|---|"]
                for x in s["distill"]:
                    r = x.get("result", {})
                    search = r.get("search", {})
                    lines.append(f"| {x['pair']} | {x['exit']} | {x['seconds']} | {r.get('sentences', '-')} | "
                                 f"beam {search.get('beam_size', '-')}, lp {search.get('length_penalty', '-')} | "
                                 f"{r.get('translate_seconds', '-')} | {r.get('device', '-')} |")
                lines += [""] + [f"`{x['command']}`" for x in s["distill"]]
                for x in s["distill"]:
                    if x.get("error"):
                        lines += ["", f"{x['pair']}:", "```", x["error"], "```"]
                lines.append("")
    if "scale" in stages:
        lines += scale_markdown(stages["scale"], fmt)
    return "\n".join(lines)


def row_note(row: dict[str, Any]) -> str:
    """A throughput row's note: empty when it ran, else why it did not."""
    if "error" not in row:
        return ""
    if row.get("exit") == "timeout":
        return f"timed out after {row.get('seconds')} s (the stage's cap)"
    error = row["error"].strip()
    return f"exit {row.get('exit')}: " + error.splitlines()[-1][:120] if error else "error"


def fmt(value, digits: int | None = None) -> str:
    if value is None:
        return "-"
    if digits is not None and isinstance(value, (int, float)):
        return f"{value:.{digits}f}"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.0f}"
    return str(value)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=tuple(MODES), default="full")
    p.add_argument("--out", required=True, help="folder for gpu_report.json and gpu_report.md")
    p.add_argument("--data-root", help="folder with the Multi30k files (data.root=...; the smoke modes read "
                                        "their slice of it from there)")
    p.add_argument("--data-dir", help="where the prepared-data cache goes (paths.data_dir=...)")
    args = p.parse_args()
    cfg = json.loads(json.dumps(MODES[args.mode]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(args.data_dir or out).resolve() / "gpu_check_work"
    workdir.mkdir(parents=True, exist_ok=True)
    data_root = args.data_root
    if "smoke_corpus" in cfg:
        data_root = str(slice_corpus(Path(data_root or MULTI30K), workdir / "multi30k", cfg["smoke_corpus"]))
    if data_root:
        cfg["data"].append(f"data.root={data_root}")
    if args.data_dir:
        cfg["data"].append(f"paths.data_dir={args.data_dir}")
    report = Report(out, args.mode)
    report.write()
    if "scale" in cfg:
        try:
            stage_scale(report, cfg, workdir, args.data_root, run)
        except Exception as e:  # noqa: BLE001 -- recorded in the report
            report.stage("scale", error=f"{type(e).__name__}: {e}")
        report.write()
        print((out / "gpu_report.md").read_text())
        return 0
    if "distill" in cfg:
        try:
            stage_distill(report, cfg, workdir)
        except Exception as e:  # noqa: BLE001 -- recorded in the report
            report.stage("distill", error=f"{type(e).__name__}: {e}")
        report.write()
        print((out / "gpu_report.md").read_text())
        return 0
    for name, call in (("prepare", lambda: stage_prepare(report, cfg, workdir)),
                       ("cuda_tests", lambda: stage_cuda_tests(report, cfg)),
                       ("throughput", lambda: stage_throughput(report, cfg, workdir))):
        try:
            call()
        except Exception as e:  # noqa: BLE001 -- recorded; the next stage still runs
            report.stage(name, error=f"{type(e).__name__}: {e}")
    checkpoint = None
    try:
        checkpoint = stage_quality(report, cfg, workdir)
    except Exception as e:  # noqa: BLE001
        report.stage("quality", error=f"{type(e).__name__}: {e}")
    try:
        stage_decode(report, cfg, checkpoint, workdir)
    except Exception as e:  # noqa: BLE001
        report.stage("decode", error=f"{type(e).__name__}: {e}")
    try:
        stage_presets(report, cfg, workdir)
    except Exception as e:  # noqa: BLE001
        report.stage("presets", error=f"{type(e).__name__}: {e}")
    report.write()
    print((out / "gpu_report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
