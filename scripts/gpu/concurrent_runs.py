#!/usr/bin/env python
"""Train several presets/directions at once on one machine, test each, and collect one table.

    python scripts/gpu/concurrent_runs.py --out OUT --deadline-s 300 cpu_hour:en-de multi30k_gpu:en-fr:2 \\
        -- trainer=gpu trainer.precision=32-true

    python scripts/gpu/concurrent_runs.py --out OUT --deadline-s 300 \\
        --variant reg="model.dropout=0.3 model.word_dropout=0.1" \\
        cpu_hour:en-de cpu_hour:en-de+reg cpu_hour:en-de:2+reg -- trainer=gpu

    python scripts/gpu/concurrent_runs.py --out OUT --deadline-s 400 --ensemble-s 60 \\
        multi30k_gpu:en-de:1 multi30k_gpu:en-de:2 multi30k_gpu:en-de:3 -- data.root=...

A RUN is PRESET:SRC-TGT[:SEED][+VARIANT] (`experiment=PRESET data.src_lang=SRC data.tgt_lang=TGT
seed=SEED` and the overrides that `--variant VARIANT="..."` names); the overrides after `--` go to every
run. Variants make a sweep of one lease: the table gets a column per setting they vary. With
--ensemble-s S, the runs that differ only in seed (same preset, pair and variant) are ensembled once
they are done (seq2seq-ensemble: the ensemble's search tuned on validation, then its test
scores beside its members'); the last S seconds before the deadline are kept for that, so runs still
going S seconds before it are stopped.

Why at once: the recurrent models here leave an H100 mostly idle (two thirds of a step is launch
overhead, docs/gpu_report.md), so five runs side by side take far less than five runs in a row; that
is how a 15-minute device lease measures the presets' BLEU in all three directions. Wall times
measured so are *shared-GPU* times, not the preset's budget.

Steps: the corpus cache of each distinct (preset, pair, data.* overrides) is built first, all at
once; then every run starts (`seq2seq-train`, the preset's own `test_after_training`), each in its
own folder under `--work`; at the deadline the runs still going are stopped (their rows say so). Written to OUT:
  runs.md     seq2seq-runs' table (validation, test BLEU cased/lowercased/Moses) and, per
              run, its exit status and tuned search defaults
  runs.json   the same rows with every run's validation history (and each ensemble's test_scores.json)
  ensembles/  with --ensemble-s: one folder per ensemble (seq2seq-ensemble's files)
The device call that follows scripts/gpu/check.sh on a warm machine: docs/cluster.md. On a CPU it runs
the same way (tests/test_concurrent_runs.py runs it tiny).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
RUN_SPEC = re.compile(r"^(?P<preset>[\w-]+):(?P<src>[a-z]{2,3})-(?P<tgt>[a-z]{2,3})(?::(?P<seed>\d+))?"
                      r"(?:\+(?P<variant>\w+))?$")
VARIANT = re.compile(r"^(?P<name>\w+)=(?P<overrides>.*\S.*)$")


def parse_variants(specs: list[str]) -> dict[str, list[str]]:
    """['NAME=key=value key2=value2', ...] -> {NAME: ['key=value', 'key2=value2']}"""
    variants = {}
    for spec in specs:
        m = VARIANT.match(spec)
        if m is None:
            raise SystemExit(f"error: --variant {spec!r} is not NAME=\"key=value ...\" "
                             "(e.g. reg=\"model.dropout=0.3\")")
        overrides = m["overrides"].split()
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise SystemExit(f"error: --variant {m['name']}: {' '.join(bad)} is not a key=value override")
        if m["name"] in variants:
            raise SystemExit(f"error: --variant {m['name']} is defined twice")
        variants[m["name"]] = overrides
    return variants


def parse_run(spec: str, variants: dict[str, list[str]]) -> dict:
    m = RUN_SPEC.match(spec)
    if m is None:
        raise SystemExit(f"error: run {spec!r} is not PRESET:SRC-TGT[:SEED][+VARIANT] "
                         "(e.g. cpu_hour:en-de, quickstart:de-en:2 or cpu_hour:en-de+reg)")
    preset = m["preset"]
    if not (REPO / "conf" / "experiment" / f"{preset}.yaml").is_file():
        valid = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))
        raise SystemExit(f"error: run {spec!r}: no preset {preset!r}; valid presets: {', '.join(valid)}")
    if m["variant"] and m["variant"] not in variants:
        raise SystemExit(f"error: run {spec!r}: no --variant {m['variant']!r}; "
                         f"defined: {', '.join(variants) or 'none'}")
    variant = variants.get(m["variant"], [])
    name = (f"{preset}_{m['src']}-{m['tgt']}" + (f"_s{m['seed']}" if m["seed"] else "")
            + (f"_{m['variant']}" if m["variant"] else ""))
    # What the corpus cache depends on: a variant that changes data.* (the vocabulary, say) needs its own.
    data_variant = [o for o in variant if o.lstrip("+~").startswith("data.")]
    data = [f"experiment={preset}", f"data.src_lang={m['src']}", f"data.tgt_lang={m['tgt']}", *data_variant]
    seed = [f"seed={m['seed']}"] if m["seed"] else []
    prepare = f"prepare_{preset}_{m['src']}-{m['tgt']}" + (f"_{m['variant']}" if data_variant else "")
    group = f"{preset}_{m['src']}-{m['tgt']}" + (f"_{m['variant']}" if m["variant"] else "")  # its seeds' ensemble
    return {"name": name, "prepare": prepare, "data": data, "group": group,
            "overrides": data + [o for o in variant if o not in data_variant] + seed}


def assign_prepares(runs: list[dict]) -> dict[str, list[str]]:
    """One corpus cache per distinct (preset, pair, data.* overrides): runs that differ only in seed or
    model settings share it, and so do two variants with the same data.* settings (built twice at once,
    one cache folder would be written by two processes). Sets each run's 'prepare' -> {name: overrides}."""
    prepares, name_of = {}, {}
    for r in runs:
        r["prepare"] = name_of.setdefault(tuple(r["data"]), r["prepare"])
        prepares.setdefault(r["prepare"], r["data"])
    return prepares


def stop(procs: dict[str, subprocess.Popen]) -> None:
    """SIGTERM each run's process group (the run and its loader workers), SIGKILL what outlives 10 s."""
    for proc in procs.values():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    end = time.monotonic() + 10
    for proc in procs.values():
        try:
            proc.wait(timeout=max(end - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def launch(cmd: list[str], log: Path) -> subprocess.Popen:
    with log.open("w") as f:
        return subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def wait_all(procs: dict[str, subprocess.Popen], deadline: float) -> dict[str, str]:
    """-> name: 'exit N' or 'stopped at the deadline'."""
    while any(p.poll() is None for p in procs.values()) and time.monotonic() < deadline:
        time.sleep(0.2)  # short: the smoke runs (tests/test_gpu_check.py) wait here three times per call
    status = {name: f"exit {p.returncode}" for name, p in procs.items() if p.poll() is not None}
    running = {name: p for name, p in procs.items() if p.poll() is None}
    stop(running)
    status.update({name: "stopped at the deadline" for name in running})
    return status


def tuned_line(log: Path) -> str:
    """The 'search defaults tuned on ...' line that test_tune_search logs, or ''."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if "search defaults tuned" in line]
    return lines[-1].split(": ", 1)[-1] if lines else ""


def finished(status: str) -> bool:
    return status in ("exit 0", "stopped at the deadline, after its test")


def ensemble_groups(runs: list[dict], status: dict[str, str], work: Path) -> dict[str, list[str]]:
    """group -> the run folders of its finished runs with a best.ckpt, for groups of two or more."""
    groups: dict[str, list[str]] = {}
    for r in runs:
        if finished(status[r["name"]]) and (work / r["name"] / "checkpoints" / "best.ckpt").is_file():
            groups.setdefault(r["group"], []).append(str(work / r["name"]))
    return {group: members for group, members in groups.items() if len(members) >= 2}


def run_ensembles(groups: dict[str, list[str]], out: Path, deadline: float) -> list[dict]:
    """seq2seq-ensemble for every group at once, stopped at the deadline -> one entry per group."""
    out.mkdir(parents=True, exist_ok=True)
    procs = {group: launch([PY, "-m", "seq2seq.cli.ensemble", *members, "--out", str(out / group)],
                           out / f"{group}.log") for group, members in groups.items()}
    status = wait_all(procs, deadline)
    entries = []
    for group, members in groups.items():
        scores = out / group / "test_scores.json"
        entries.append({"group": group, "members": members, "status": status[group],
                        "result": json.loads(scores.read_text()) if status[group] == "exit 0" else None,
                        "log_tail": "" if status[group] == "exit 0"
                        else (out / f"{group}.log").read_text(errors="replace")[-1500:]})
    return entries


def main() -> int:
    argv = sys.argv[1:]
    common = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="PRESET:SRC-TGT[:SEED][+VARIANT]")
    p.add_argument("--variant", action="append", default=[], metavar='NAME="key=value ..."',
                   help="overrides that runs named PRESET:SRC-TGT+NAME add to their own (repeatable)")
    p.add_argument("--out", required=True, type=Path, help="folder for runs.md and runs.json")
    p.add_argument("--work", type=Path, help="folder for the run folders (default: OUT/runs)")
    p.add_argument("--deadline-s", type=float, required=True, help="seconds from now after which runs still going are stopped")
    p.add_argument("--ensemble-s", type=float, default=0.0, metavar="S",
                   help="ensemble the runs that differ only in seed, keeping the last S seconds before the "
                        "deadline for it (default 0: no ensembles)")
    args = p.parse_args(argv)
    if not 0 <= args.ensemble_s < args.deadline_s:
        raise SystemExit(f"error: --ensemble-s must be >= 0 and below --deadline-s ({args.deadline_s:g}), "
                         f"got {args.ensemble_s:g}")
    started = time.monotonic()
    deadline = started + args.deadline_s
    runs_deadline = deadline - args.ensemble_s
    variants = parse_variants(args.variant)
    runs = [parse_run(spec, variants) for spec in args.runs]
    names = [r["name"] for r in runs]
    if len(set(names)) != len(names):
        raise SystemExit(f"error: the same run is named twice: {' '.join(args.runs)}")
    args.out.mkdir(parents=True, exist_ok=True)
    work = (args.work or args.out / "runs").resolve()
    work.mkdir(parents=True, exist_ok=True)

    prepares = {key: launch([PY, "-m", "seq2seq.cli.prepare", *data, *common, f"hydra.run.dir={work / key}"],
                            work / f"{key}.log")
                for key, data in assign_prepares(runs).items()}
    prepared = wait_all(prepares, runs_deadline)
    print(f"prepared in {time.monotonic() - started:.0f} s: {prepared}", flush=True)

    procs, status = {}, {}
    for r in runs:
        if prepared[r["prepare"]] != "exit 0":
            status[r["name"]] = f"not started: {r['prepare']} {prepared[r['prepare']]}"
            (work / f"{r['name']}.log").write_text((work / f"{r['prepare']}.log").read_text(errors="replace"))
            continue
        cmd = [PY, "-m", "seq2seq.cli.train", *r["overrides"], *common, f"hydra.run.dir={work / r['name']}",
               "trainer.enable_progress_bar=false"]
        r["command"] = " ".join(cmd[1:])
        procs[r["name"]] = launch(cmd, work / f"{r['name']}.log")
    status.update(wait_all(procs, runs_deadline))
    for name, state in status.items():  # stopped while writing its curves, say: its test is in the table
        if state == "stopped at the deadline" and (work / name / "checkpoints" / "test_scores.json").is_file():
            status[name] = "stopped at the deadline, after its test"

    rows = []
    for r in runs:
        log = work / f"{r['name']}.log"
        rows.append({"run": r["name"], "status": status[r["name"]], "command": r.get("command", ""),
                     "tuned_search": tuned_line(log),
                     "log_tail": log.read_text(errors="replace")[-1500:] if status[r["name"]] != "exit 0" else ""})
    collected_json = work / "collected.json"
    table = subprocess.run([PY, "-m", "seq2seq.cli.runs", *[str(work / n) for n in names],
                            "--json", str(collected_json)], capture_output=True, text=True)
    collected = json.loads(collected_json.read_text()) if collected_json.is_file() else None
    groups = ensemble_groups(runs, status, work) if args.ensemble_s > 0 else {}
    ensembles = run_ensembles(groups, args.out / "ensembles", deadline) if groups else []
    (args.out / "runs.json").write_text(json.dumps({"runs": rows, "collected": collected, "ensembles": ensembles,
                                                    "seconds": round(time.monotonic() - started, 1)}, indent=2))
    md = [f"# {len(runs)} runs at once ({time.monotonic() - started:.0f} s in all; common overrides: "
          f"`{' '.join(common) or '-'}`)", "", table.stdout or f"seq2seq-runs failed:\n```\n{table.stderr[-1500:]}\n```",
          "", "| run | status | tuned search defaults |", "|---|---|---|"]
    md += [f"| {row['run']} | {row['status']} | {row['tuned_search'] or '-'} |" for row in rows]
    for row in rows:
        if row["status"] != "exit 0":  # a run stopped before its first line of output still gets its section
            md += ["", f"`{row['run']}` ({row['status']}): `{row['command']}`", "```",
                   row["log_tail"] or "(no output)", "```"]
    if args.ensemble_s > 0:
        md += ["", "## Ensembles of the seeds", ""]
        md += [] if groups else ["No preset, pair and variant has two finished runs to ensemble.", ""]
        for e in ensembles:
            table = (args.out / "ensembles" / e["group"] / "ensemble.md")
            if e["status"] == "exit 0":
                md += ["##" + line if line.startswith("#") else line for line in table.read_text().splitlines()]
            else:
                md += [f"`{e['group']}` ({e['status']}): {' '.join(e['members'])}", "```", e["log_tail"], "```", ""]
    (args.out / "runs.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0 if all(s == "exit 0" for s in [*status.values(), *(e["status"] for e in ensembles)]) else 1


if __name__ == "__main__":
    sys.exit(main())
