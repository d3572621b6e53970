"""Exact resume at scale (issue 32): a run SIGKILLed mid-epoch and resumed with `ckpt_path=last` ends with
the same parameters and optimizer state as a run that was never interrupted, on a corpus of any size.

    python scripts/bench/resume_at_scale.py --corpus scale_work/corpora/synth_1M --work resume_work \\
        --steps 60 --kill-after 35 --json resume_1M.json
    python scripts/bench/synthetic_corpus.py --pairs 20k --out resume_work/corpora/synth_20k   # a small corpus
    python scripts/bench/resume_at_scale.py --corpus resume_work/corpora/synth_20k --work resume_work \\
        --label seed2 --resume-override seed=2 --expect different      # the check itself: must see a change

--corpus is a corpus folder (`data.root=`: train.de/train.en and the val/test files, as synthetic_corpus.py
writes them). Every step is a subprocess of this checkout, as a user would run it (the tests' resume
checks, tests/test_resume.py, at the scale of a real corpus):

prepare    `seq2seq-prepare` into a cache folder of this script's own (--work/cache), timed; reused when it
           is already there (the cache's own key decides).
straight   `seq2seq-train` to --steps optimizer steps, uninterrupted.
killed     the same command in another run folder, SIGKILLed (its whole session) once its checkpoints/last.ckpt
           holds --kill-after steps or more and its logs/metrics.csv shows --kill-lag steps after that (work
           the kill loses, as a real crash does). `trainer.val_check_interval=--val-every` validates (on
           --valid-pairs pairs) and writes last.ckpt every that many steps, mid-epoch, as the tests'
           MID_EPOCH setting does; `trainer.log_every_n_steps=1` puts every step in metrics.csv.
resumed    the killed run's command again with `ckpt_path=last` (and --resume-override, for the negative
           check), to --steps.

The two final last.ckpt files are then compared: every parameter tensor (torch.equal; the largest absolute
difference), every tensor of the optimizer's state and its param groups, the learning-rate schedule, the
global step, and the data position (epoch, batches done of the epoch); and the logged training losses,
step by step (the first step where they differ says where the runs parted). Every training run has the same
settings: the experiment preset (quickstart) with a tiny model (--model-size), deterministic=true, no
progress bar, no test, --threads torch threads. With quickstart's 2,000-token batches a 1M-pair epoch of
synthetic_corpus.py's pairs is about 16,600 batches (20k pairs: 333), so the kill, the checkpoint it resumes
from and the end all fall mid-epoch (the table shows the batch of the epoch).

The learning-rate horizon: quickstart's cosine decay with scheduler.total_steps=0 takes it from
`trainer.estimated_stepping_batches` in configure_optimizers, which builds the training loader before
Lightning restores the checkpoint's loop state, and Lightning then never hands the loader its saved
position (Lightning issue #20550): the resumed run starts its epoch again from the first batch and the
check says "no" (loss_differs_at: the first resumed step). `--override scheduler.total_steps=<--steps>`
gives the same schedule without that call (the estimate is min(max_steps, epochs x batches) = --steps).

Exit code: 0 when the outcome is --expect's (identical by default), 1 when it is not, 2 when a run failed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import common

POLL_S = 0.1  # how often the killed run's last.ckpt is looked at (a stat; loaded only when it changed)


# ------------------------------------------------------------------------------------------ commands
def train_command() -> list[str]:
    """`seq2seq-train` of this interpreter's environment (its console script), else the module it runs."""
    script = Path(sys.executable).with_name("seq2seq-train")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "seq2seq.cli.train"]


def prepare_command() -> list[str]:
    script = Path(sys.executable).with_name("seq2seq-prepare")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "seq2seq.cli.prepare"]


def config_overrides(args) -> list[str]:
    """Data and model settings shared by preparation and every training run."""
    corpus = Path(args.corpus)
    size = args.model_size
    return [f"experiment={args.experiment}", f"data.root={corpus}", f"data.corpus={corpus.name}",
            f"data.cache_dir={Path(args.work) / 'cache'}", "data.mirrors=[]", "data.download=false",
            f"data.src_lang={args.src}", f"data.tgt_lang={args.tgt}", f"data.max_valid_pairs={args.valid_pairs}",
            f"model.embedding_size={size}", f"model.encoder_hidden_size={size}", f"model.decoder_hidden_size={size}",
            *args.override]


def train_overrides(args) -> list[str]:
    """The training settings of all three runs (the resumed one adds ckpt_path=last)."""
    return [*config_overrides(args), "deterministic=true", f"seed={args.seed}", f"trainer.max_steps={args.steps}",
            f"trainer.val_check_interval={args.val_every}",  # validation + last.ckpt every N steps, mid-epoch
            "trainer.log_every_n_steps=1",  # metrics.csv gets every step: the killed run's last finished one
            "trainer.enable_progress_bar=false", "test_after_training=false", "test_tune_search=false",
            "plot_curves=false", "average_last=0",
            "callbacks.early_stopping.patience=1000000"]  # an untrained model's BLEU never improves: no early stop


def run_env(args) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}


def start(cmd: list[str], args, log_path: Path) -> subprocess.Popen:
    """`cmd` in its own session (so a kill reaches all of it), output to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:  # the child has its own copy of the descriptor
        return subprocess.Popen(cmd, cwd=common.REPO, env=run_env(args), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    """SIGKILL the session `proc` leads (the command and any worker it started) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run(cmd: list[str], args, log_path: Path) -> dict[str, Any]:
    """Run `cmd` to its end (killed at --timeout): exit code, wall seconds, the log's tail."""
    proc = start(cmd, args, log_path)
    t0 = time.perf_counter()
    try:
        exit_code: int | str = proc.wait(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        stop(proc)
        exit_code = "timeout"
    finally:
        if proc.returncode is None:  # interrupted (Ctrl-C): stop the session we started
            stop(proc)
    return {"exit": exit_code, "seconds": round(time.perf_counter() - t0, 2), "log": str(log_path),
            "tail": log_path.read_bytes()[-3000:].decode("utf-8", "replace")}


# --------------------------------------------------------------------------------------- checkpoints
def load(path: Path) -> dict[str, Any]:
    import torch  # deferred: --help and the subprocess steps do not need it

    return torch.load(path, map_location="cpu", weights_only=True)


def data_position(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The batch sampler's saved state (TokenBucketBatchSampler.state_dict: epoch, batches_done,
    num_batches, ...), found wherever Lightning's loop state holds it; {} if there is none."""
    todo = [ckpt.get("loops", {})]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            if {"epoch", "batches_done", "num_batches"} <= node.keys():
                return {k: node[k] for k in ("epoch", "batches_done", "num_batches")}
            todo.extend(node.values())
        elif isinstance(node, (list, tuple)):
            todo.extend(node)
    return {}


def ckpt_summary(ckpt: dict[str, Any]) -> dict[str, Any]:
    position = data_position(ckpt)
    return {"global_step": ckpt.get("global_step"), "epoch": ckpt.get("epoch"),
            "batch_of_epoch": position.get("batches_done"), "batches_per_epoch": position.get("num_batches")}


def _max_abs_diff(a, b) -> float:
    """The largest |a - b| of two tensors (inf for different shapes; 1.0/0.0 for integer ones)."""
    if a.shape != b.shape:
        return float("inf")
    if not a.is_floating_point():
        return float((a != b).any())
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Parameters, optimizer state, schedule and counters of two checkpoints."""
    import torch

    params_a, params_b = a["state_dict"], b["state_dict"]
    keys = sorted(set(params_a) | set(params_b))
    differing, max_diff = [], 0.0
    for key in keys:
        if key not in params_a or key not in params_b:
            differing.append(key)
            max_diff = float("inf")
            continue
        if not torch.equal(params_a[key], params_b[key]):
            differing.append(key)
            max_diff = max(max_diff, _max_abs_diff(params_a[key], params_b[key]))
    optim_a, optim_b = a["optimizer_states"], b["optimizer_states"]
    optim_differing, optim_max_diff, optim_tensors = [], 0.0, 0
    if len(optim_a) != len(optim_b):
        optim_differing.append("number of optimizers")
    for n, (oa, ob) in enumerate(zip(optim_a, optim_b)):
        if oa["state"].keys() != ob["state"].keys():
            optim_differing.append(f"{n}: parameters with state")
        for i in oa["state"].keys() & ob["state"].keys():
            for name in oa["state"][i].keys() | ob["state"][i].keys():
                x, y = oa["state"][i].get(name), ob["state"][i].get(name)
                optim_tensors += 1
                if x is None or y is None:
                    optim_differing.append(f"{n}.{i}.{name}")
                    continue
                x, y = torch.as_tensor(x), torch.as_tensor(y)
                if not torch.equal(x, y):
                    optim_differing.append(f"{n}.{i}.{name}")
                    optim_max_diff = max(optim_max_diff, _max_abs_diff(x, y))
        if oa["param_groups"] != ob["param_groups"]:
            optim_differing.append(f"{n}.param_groups")
    same = {"global_step": a.get("global_step") == b.get("global_step"),
            "data_position": data_position(a) == data_position(b),
            "lr_schedulers": a.get("lr_schedulers") == b.get("lr_schedulers")}
    identical = not differing and not optim_differing and all(same.values())
    return {"identical": identical, "parameters": len(keys), "parameters_differing": len(differing),
            "differing_names": differing[:20], "max_abs_diff": max_diff,
            "optimizer_tensors": optim_tensors, "optimizer_differing": len(optim_differing),
            "optimizer_differing_names": optim_differing[:20], "optimizer_max_abs_diff": optim_max_diff, **same}


# ------------------------------------------------------------------------------------------ the kill
def train_losses(run_dir: Path) -> dict[int, str]:
    """{optimizer steps done: train/loss as logged} of the run's logs/metrics.csv (a training row's `step`
    is the steps done before it, so row s is step s + 1; a step logged twice keeps its last row)."""
    path = run_dir / "logs" / "metrics.csv"
    try:
        with open(path, newline="") as f:
            return {int(float(r["step"])) + 1: r["train/loss"] for r in csv.DictReader(f)
                    if r.get("step") and r.get("train/loss")}
    except (OSError, ValueError, KeyError):
        return {}


def last_logged_step(run_dir: Path) -> int | None:
    """The last optimizer step with a training row in the run's logs/metrics.csv."""
    return max(train_losses(run_dir), default=None)


def first_loss_difference(a: dict[int, str], b: dict[int, str]) -> int | None:
    """The first step whose logged training loss differs between two runs (None: none differs)."""
    return next((step for step in sorted(a.keys() & b.keys()) if a[step] != b[step]), None)


def train_until_killed(cmd: list[str], args, run_dir: Path) -> dict[str, Any]:
    """Start `cmd`; SIGKILL it as soon as run_dir/checkpoints/last.ckpt holds >= --kill-after steps."""
    last = run_dir / "checkpoints" / "last.ckpt"
    proc = start(cmd, args, run_dir / "train.log")
    t0 = time.perf_counter()
    seen, trigger_step, exit_code = None, None, None
    try:
        while True:
            if proc.poll() is not None:
                exit_code = proc.returncode  # it ended on its own: no kill happened
                break
            if time.perf_counter() - t0 > args.timeout:
                stop(proc)
                exit_code = "timeout"
                break
            try:
                st = last.stat()
                stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            except FileNotFoundError:
                stamp = None
            if stamp is not None and stamp != seen:
                seen = stamp
                # Written by rename (AtomicCheckpointIO): a name that exists is a complete file.
                step = load(last).get("global_step", 0)
                if trigger_step is None and step >= args.kill_after:
                    trigger_step = step
            # After the checkpoint, --kill-lag more steps: work the kill loses, as a real crash does.
            if trigger_step is not None and (last_logged_step(run_dir) or 0) >= trigger_step + args.kill_lag:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                exit_code = proc.returncode
                break
            time.sleep(POLL_S)
    finally:
        if proc.returncode is None:  # interrupted (Ctrl-C): stop the session we started
            stop(proc)
    seconds = round(time.perf_counter() - t0, 2)
    log_path = run_dir / "train.log"
    return {"exit": exit_code, "seconds": seconds, "killed": exit_code == -signal.SIGKILL,
            "trigger_step": trigger_step, "last_logged_step": last_logged_step(run_dir), "log": str(log_path),
            "tail": log_path.read_bytes()[-3000:].decode("utf-8", "replace")}


# -------------------------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True, help="corpus folder (data.root): train.<src>/train.<tgt>, val, test")
    p.add_argument("--work", required=True, help="this script's cache (work/cache) and run folders (work/runs)")
    p.add_argument("--label", help="names the run folders (default: the corpus folder's name)")
    p.add_argument("--steps", type=int, default=60, help="optimizer steps of the uninterrupted and resumed runs")
    p.add_argument("--kill-after", type=int, default=35,
                   help="SIGKILL the second run once its last.ckpt holds at least this many steps")
    p.add_argument("--kill-lag", type=int, default=2,
                   help="... and once its metrics.csv shows this many steps after that checkpoint (lost work)")
    p.add_argument("--val-every", type=int, default=5,
                   help="trainer.val_check_interval: validation and last.ckpt every this many steps")
    p.add_argument("--valid-pairs", type=int, default=8, help="data.max_valid_pairs (validation decodes them)")
    p.add_argument("--experiment", default="quickstart", help="experiment preset")
    p.add_argument("--model-size", type=int, default=32, help="embedding and hidden sizes of the tiny model")
    p.add_argument("--src", default="de")
    p.add_argument("--tgt", default="en")
    p.add_argument("--seed", type=int, default=1234, help="the runs' seed (the resumed one: see --resume-override)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per training process (OMP_NUM_THREADS)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="a Hydra override for preparation and every training run (repeatable)")
    p.add_argument("--resume-override", action="append", default=[], metavar="KEY=VALUE",
                   help="a Hydra override for the resumed run only, e.g. seed=2: the check must then see a "
                   "difference (with --expect different)")
    p.add_argument("--expect", choices=("identical", "different"), default="identical",
                   help="the outcome that exits 0")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per subprocess before it is killed")
    p.add_argument("--json", metavar="PATH", help="write all figures as JSON here")
    args = p.parse_args(argv)
    if not 1 <= args.kill_after < args.steps:
        p.error("--kill-after must be >= 1 and below --steps")
    if args.val_every < 1 or args.val_every > args.kill_after:
        p.error("--val-every must be between 1 and --kill-after (a checkpoint must come before the kill)")
    if -(-args.kill_after // args.val_every) * args.val_every + args.kill_lag >= args.steps:
        p.error("the first checkpoint at or after --kill-after, plus --kill-lag, must come before --steps")
    return args


COLUMNS = ["pairs", "steps", "val_every", "kill_ckpt", "killed_at", "resume_step", "resume_batch", "end_batch",
           "identical", "loss_differs_at", "params_diff", "max_abs_diff", "optim_diff", "prep_s", "straight_s",
           "killed_s", "resumed_s", "load_before", "load_after"]


def end_batch(result: dict[str, Any]) -> str:
    """'done/per epoch' of the final position; both runs' ('straight vs resumed') where they differ."""
    a, b = (f"{r['batch_of_epoch']}/{r['batches_per_epoch']}"
            for r in (result["straight_final"], result["resumed_final"]))
    return a if a == b else f"{a} vs {b}"


def fail(report: dict[str, Any], message: str, tail: str) -> int:
    report["error"] = message
    common.write_json(report["args"].get("json"), report, quiet=True)
    print(f"error: {message}; its log ends:\n{tail[-2000:]}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed benchmark stops its subprocess (finally)
    args.work = str(Path(args.work).resolve())
    args.corpus = str(Path(args.corpus).resolve())
    label = args.label or Path(args.corpus).name
    runs = Path(args.work) / "runs" / label
    report: dict[str, Any] = {"environment": common.environment(), "args": vars(args), "label": label}
    try:
        marker = Path(args.corpus) / "synthetic.json"
        report["corpus"] = json.loads(marker.read_text()) if marker.is_file() else None
    except (OSError, ValueError):
        report["corpus"] = None

    load_before = os.getloadavg()[0]
    prep_overrides = [*config_overrides(args), f"hydra.run.dir={runs / 'prepare'}"]
    print(f"prepare: seq2seq-prepare {shlex.join(prep_overrides)}", flush=True)
    report["prepare"] = prep = run([*prepare_command(), *prep_overrides], args, runs / "prepare" / "prepare.log")
    prepared = [x for x in prep["tail"].splitlines() if x.startswith("prepared ")]
    prep["prepared"] = prepared[-1] if prepared else None
    print(f"   exit {prep['exit']}, {prep['seconds']} s: {prep['prepared']}", flush=True)
    if prep["exit"] != 0:
        return fail(report, "preparation failed", prep["tail"])

    overrides = train_overrides(args)
    report["train_command"] = "seq2seq-train " + shlex.join(overrides)
    straight_dir, killed_dir = runs / "straight", runs / "killed"
    for folder in (straight_dir, killed_dir):
        shutil.rmtree(folder, ignore_errors=True)

    print(f"straight: {report['train_command']} hydra.run.dir={straight_dir}", flush=True)
    report["straight"] = straight = run([*train_command(), *overrides, f"hydra.run.dir={straight_dir}"], args,
                                        straight_dir / "train.log")
    print(f"   exit {straight['exit']}, {straight['seconds']} s", flush=True)
    if straight["exit"] != 0:
        return fail(report, "the uninterrupted run failed", straight["tail"])

    print(f"killed: the same, hydra.run.dir={killed_dir}, SIGKILL once last.ckpt holds >= {args.kill_after} steps",
          flush=True)
    report["killed"] = killed = train_until_killed([*train_command(), *overrides, f"hydra.run.dir={killed_dir}"],
                                                   args, killed_dir)
    if not killed["killed"]:
        return fail(report, f"the run to be killed ended with {killed['exit']} before a checkpoint at step "
                    f">= {args.kill_after}", killed["tail"])
    saved = ckpt_summary(load(killed_dir / "checkpoints" / "last.ckpt"))
    report["killed"]["saved"] = saved
    print(f"   killed after {killed['seconds']} s: last.ckpt at step {killed['trigger_step']} seen, last logged step "
          f"{killed['last_logged_step']}, resumes from step {saved['global_step']} (epoch {saved['epoch']}, batch "
          f"{saved['batch_of_epoch']} of {saved['batches_per_epoch']})", flush=True)

    resume_overrides = [*overrides, *args.resume_override, "ckpt_path=last", f"hydra.run.dir={killed_dir}"]
    print(f"resumed: seq2seq-train ... {shlex.join([*args.resume_override, 'ckpt_path=last'])}", flush=True)
    report["resumed"] = resumed = run([*train_command(), *resume_overrides], args, killed_dir / "resume.log")
    print(f"   exit {resumed['exit']}, {resumed['seconds']} s", flush=True)
    if resumed["exit"] != 0:
        return fail(report, "the resumed run failed", resumed["tail"])
    load_after = os.getloadavg()[0]

    final_a = load(straight_dir / "checkpoints" / "last.ckpt")
    final_b = load(killed_dir / "checkpoints" / "last.ckpt")
    result = compare(final_a, final_b)
    result["straight_final"], result["resumed_final"] = ckpt_summary(final_a), ckpt_summary(final_b)
    result["loss_differs_at"] = first_loss_difference(train_losses(straight_dir), train_losses(killed_dir))
    report["comparison"] = result
    if result["straight_final"]["global_step"] != args.steps:
        return fail(report, f"the uninterrupted run's last.ckpt is at step {result['straight_final']['global_step']}, "
                    f"not {args.steps}", straight["tail"])

    trained = prep["prepared"].split()[2].rstrip(",") if prep["prepared"] else None  # "prepared train N, ..."
    row = {"pairs": int(trained) if trained and trained.isdigit() else Path(args.corpus).name, "steps": args.steps,
           "val_every": args.val_every, "kill_ckpt": killed["trigger_step"], "killed_at": killed["last_logged_step"],
           "resume_step": saved["global_step"],
           "resume_batch": f"{saved['batch_of_epoch']}/{saved['batches_per_epoch']}",
           "end_batch": end_batch(result),
           "identical": "yes" if result["identical"] else "no", "loss_differs_at": result["loss_differs_at"],
           "params_diff": f"{result['parameters_differing']}/{result['parameters']}",
           "max_abs_diff": result["max_abs_diff"],
           "optim_diff": f"{result['optimizer_differing']}/{result['optimizer_tensors']}",
           "prep_s": prep["seconds"], "straight_s": straight["seconds"], "killed_s": killed["seconds"],
           "resumed_s": resumed["seconds"], "load_before": round(load_before, 2), "load_after": round(load_after, 2)}
    report["table"] = [row]
    common.print_table(f"exact resume: SIGKILL mid-epoch, ckpt_path=last, compared with an uninterrupted run "
                       f"({args.experiment}, model size {args.model_size}, {args.threads} torch thread(s)"
                       f"{', resumed with ' + ' '.join(args.resume_override) if args.resume_override else ''})",
                       [row], COLUMNS)
    print("\npairs: training pairs prepared (after filtering); kill_ckpt: the last.ckpt step that triggered the "
          "kill; killed_at: the last step in the killed run's metrics.csv; loss_differs_at: the first step whose "
          "logged train/loss differs (n/a: none); "
          "resume_batch/end_batch: batches done of the epoch / batches per epoch; params_diff and "
          "optim_diff: differing / all tensors; load: 1-minute load average of the machine "
          f"({os.cpu_count()} cores) before and after.")
    if not result["identical"]:
        print(f"differing parameters: {result['differing_names']}; optimizer: {result['optimizer_differing_names']}; "
              f"same global_step {result['global_step']}, data position {result['data_position']}, "
              f"schedule {result['lr_schedulers']}")
    common.write_json(args.json, report)
    outcome = "identical" if result["identical"] else "different"
    if outcome != args.expect:
        print(f"\nerror: the runs are {outcome}, expected {args.expect}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
