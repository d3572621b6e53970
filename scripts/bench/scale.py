"""Corpora of any size (issue 32): preparation and training start-up against corpus size.

    python scripts/bench/scale.py --work scale_work --sizes 100k,1M,10M --json scale_new.json
    python scripts/bench/scale.py --work scale_work --sizes 100k,1M --old ../old-checkout --json scale_old.json
    python scripts/bench/scale.py --work scale_work --sizes 20k --skip-train        # a quick check

For each size a synthetic de-en corpus is written under --work (`synthetic_corpus.py`: every line joins one
to three random Multi30k training pairs, seeded; reused by later calls) and then measured, each step a
subprocess of the code under test (this checkout, or --old's with PYTHONPATH pointing there):

prepare    `python -m seq2seq.cli.prepare experiment=quickstart data.root=<corpus> ...` (seq2seq-prepare) into
           a fresh cache folder --work/cache/<code>/<size>: wall time; peak RSS (the largest single process:
           its VmHWM and the ru_maxrss of wait4, and the sum over the process tree sampled every 0.5 s: a
           preparation with worker processes counts them all); the cache's size on disk.
train      `python -m seq2seq.cli.train` on that cache for --steps optimizer steps (the experiment's model;
           no validation, test, checkpoints or progress bar; --threads torch threads per process, 1 by
           default), once as one process and once as 2 ddp_cpu ranks (trainer=ddp_cpu: ddp_spawn, gloo).
           A callback added through Hydra (scale_probe.py, no change to the package) gives the time from
           process start to the end of the first optimizer step (and to the start of training, after the
           corpus is loaded), and each rank's memory after the last step: RSS, and PSS from /proc/<pid>/smaps_rollup.
           RSS counts memory-mapped pages shared by the ranks once in each of them; PSS divides them among
           the processes that map them, so summed PSS is what the ranks take together. With ddp_cpu the
           launcher process (which loads the corpus before spawning the ranks) is listed as well.

Each row also records the load of the machine while it ran: the 1-minute load average before, and the
CPU cores other processes used meanwhile (/proc/stat busy time minus the measured process tree's), since
on a shared machine the times are lower bounds of its speed. `--loader-batches N` adds a third figure:
the training DataLoader alone (no model) for N batches, batches per second (also how the GPU check's
scale stage asks whether the data side keeps up). `--measure-loader` is that measurement by itself, in
this process (used as a subprocess of the code under test).

The JSON holds every figure per size (sizes[]) and the printed tables as flat rows (table.prepare,
table.train, table.loader), so a markdown table of one or several runs (before and after) is e.g.

    python scripts/bench/table.py scale_old.json scale_new.json --rows table.train \
        --columns code,pairs,ranks,first_step_s,rss_mib,pss_mib,rss_tree_mib,pss_tree_mib
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import synthetic_corpus

BENCH = Path(__file__).resolve().parent
POLL_S = 0.5  # a /proc scan costs ~10 ms; smaps_rollup (PSS) 50+ ms per large process: read only at the step-N snapshot


# ----------------------------------------------------------------------------------- process trees
def memory_figures(pid: int | str = "self") -> dict[str, int]:
    """KiB figures of a process: VmRSS, VmHWM (/proc/<pid>/status), Rss, Pss, Pss_Anon, Pss_File,
    Shared_Clean, Private_Dirty (/proc/<pid>/smaps_rollup); the ones this kernel lacks are left out."""
    figures: dict[str, int] = {}
    for name, keys in (("status", ("VmRSS", "VmHWM")),
                       ("smaps_rollup", ("Rss", "Pss", "Pss_Anon", "Pss_File", "Shared_Clean", "Private_Dirty"))):
        try:
            text = Path(f"/proc/{pid}/{name}").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, rest = line.partition(":")
            if key in keys:
                figures[key] = int(rest.split()[0])
    return figures


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants (live ones)."""
    children, tree, todo = _children_map(), [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def _cpu_busy_seconds() -> float:
    """Machine-wide busy CPU seconds so far (all cores: /proc/stat, everything but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _kib_to_mib(value: int | None) -> float | None:
    return round(value / 1024, 1) if value is not None else None


def _status_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, KiB (cheap: /proc/<pid>/status); {} once it is gone."""
    return {k: v for k in ("VmRSS", "VmHWM") if (v := common.proc_status_kib(k, pid)) is not None}


class TreeWatch:
    """Samples a process tree while it runs: peak summed RSS, the largest VmHWM of any process."""

    def __init__(self, root: int):
        self.root = root
        self.peak_rss_kib = self.max_hwm_kib = 0
        self.max_processes = 0
        self.samples = 0

    def snapshot(self, pss: bool = False) -> list[dict[str, Any]]:
        """Every live process of the tree: pid, command line, VmRSS, VmHWM (and with `pss`, the
        smaps_rollup figures: Rss, Pss, Pss_Anon, Pss_File, ...), KiB."""
        rows = []
        for pid in process_tree(self.root):
            figures = memory_figures(pid) if pss else _status_kib(pid)
            if not figures:
                continue
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                cmd = ""
            rows.append({"pid": pid, "cmd": cmd[:160], **figures})
        return rows

    def sample(self, pss: bool = False) -> list[dict[str, Any]]:
        rows = self.snapshot(pss)
        self.samples += 1
        self.max_processes = max(self.max_processes, len(rows))
        self.peak_rss_kib = max(self.peak_rss_kib, sum(r.get("VmRSS", 0) for r in rows))
        self.max_hwm_kib = max([self.max_hwm_kib, *(r.get("VmHWM", 0) for r in rows)])
        return rows


def _wait_sampling(proc: subprocess.Popen, watch: TreeWatch, t0: float, timeout_s: float, on_poll,
                   started: float) -> tuple[Any, int | str]:
    """Sample `watch` every POLL_S s until `proc` exits (or is killed at `timeout_s`): (its rusage, exit code
    or 'timeout'). os.wait4 rather than Popen.wait: its rusage has the peak RSS of the command and of every
    descendant it waited for (ru_maxrss)."""
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return usage, proc.returncode
        watch.sample()
        if on_poll is not None:
            on_poll(watch, started)
        if time.perf_counter() - t0 > timeout_s:
            os.killpg(proc.pid, signal.SIGKILL)  # the session we started: the command and its workers
            _, _, usage = os.wait4(proc.pid, 0)
            proc.returncode = -signal.SIGKILL
            return usage, "timeout"
        time.sleep(POLL_S)


def run_measured(cmd: list[str], cwd: Path, env: dict[str, str], log_path: Path, timeout_s: float,
                 on_poll=None) -> dict[str, Any]:
    """Run `cmd` (its own session, output to `log_path`) while sampling its process tree every POLL_S s.
    `on_poll(watch, started)` is called at each sample (the training probe's hook). Returns exit code (or
    'timeout'), wall seconds, CPU seconds of the tree, peaks, the load around it and the log's tail."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    busy0 = _cpu_busy_seconds()
    with open(log_path, "wb") as log:
        started = time.time()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        watch = TreeWatch(proc.pid)
        try:
            usage, exit_code = _wait_sampling(proc, watch, t0, timeout_s, on_poll, started)
        finally:
            if proc.returncode is None:  # interrupted (Ctrl-C, SIGTERM): stop the session we started
                os.killpg(proc.pid, signal.SIGKILL)
                os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
    busy = _cpu_busy_seconds() - busy0
    tree_cpu = usage.ru_utime + usage.ru_stime  # the command and every descendant it waited for
    tail = log_path.read_bytes()[-3000:].decode("utf-8", "replace")
    return {"exit": exit_code, "seconds": round(seconds, 2), "started": started,
            "peak_rss_tree_mib": _kib_to_mib(watch.peak_rss_kib),
            "peak_rss_single_mib": _kib_to_mib(max(watch.max_hwm_kib, usage.ru_maxrss)),
            "max_processes": watch.max_processes,
            "cpu_seconds": round(tree_cpu, 1), "cpu_cores_used": round(tree_cpu / seconds, 2),
            "others_cpu_cores": round(max(busy - tree_cpu, 0.0) / seconds, 2),
            "load_avg_before": round(load_before, 2), "log": str(log_path), "tail": tail}


def disk_mib(folder: Path) -> float | None:
    """Space the files under `folder` take on disk (allocated blocks), MiB."""
    if not folder.exists():
        return None
    total = sum(os.lstat(p).st_blocks * 512 for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
    return round(total / 2**20, 1)


# --------------------------------------------------------------------------------------- the code
class Code:
    """The checkout under test: its root is put first on the children's path (python -m from it)."""

    def __init__(self, root: Path, label: str):
        self.root, self.label = root.resolve(), label
        path = [str(self.root), str(BENCH), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(path), "PYTHONUNBUFFERED": "1"}
        self.revision = self._revision()

    def _revision(self) -> str:
        try:
            rev = subprocess.run(["git", "-C", str(self.root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True, timeout=10).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(self.root), "status", "--porcelain", "--untracked-files=no",
                                    "--", "seq2seq", "conf"], capture_output=True, text=True, timeout=10).stdout.strip()
            return f"{rev}{'+uncommitted' if dirty else ''}" if rev else "unknown"
        except (OSError, subprocess.SubprocessError):
            return "unknown"

    def check(self) -> None:
        """The children must import seq2seq from this root (not the editable install's)."""
        out = subprocess.run([sys.executable, "-c", "import seq2seq; print(seq2seq.__file__)"], cwd=self.root,
                             env=self.env, capture_output=True, text=True, timeout=120)
        found = Path(out.stdout.strip()).resolve() if out.returncode == 0 else None
        if found is None or self.root not in found.parents:
            raise SystemExit(f"error: seq2seq imports from {found} (wanted under {self.root}): {out.stderr[-500:]}")

    def train_env(self, threads: int) -> dict[str, str]:
        """The environment of training and loader runs: `threads` torch threads per process (0: torch's own)."""
        return {**self.env, "OMP_NUM_THREADS": str(threads)} if threads else self.env

    def command(self, cli: str, overrides: list[str]) -> list[str]:
        return [sys.executable, "-m", f"seq2seq.cli.{cli}", *overrides]


def data_overrides(args, corpus_dir: Path, cache_dir: Path, label: str) -> list[str]:
    """The data section of every run on the synthetic corpus `label` (its cache folder of its own)."""
    overrides = [f"data.root={corpus_dir}", f"data.corpus=synth_{label}", f"data.cache_dir={cache_dir}",
                 "data.mirrors=[]", "data.download=false"]
    if args.pair != "preset":
        src, tgt = args.pair.split("-")
        overrides += [f"data.src_lang={src}", f"data.tgt_lang={tgt}"]
    return overrides


# ----------------------------------------------------------------------------------- measurements
def measure_prepare(code: Code, args, corpus_dir: Path, label: str) -> dict[str, Any]:
    cache_dir = Path(args.work) / "cache" / code.label / label
    shutil.rmtree(cache_dir, ignore_errors=True)  # always a fresh build
    run_dir = Path(args.work) / "runs" / code.label / label / "prepare"
    overrides = [f"experiment={args.experiment}", *data_overrides(args, corpus_dir, cache_dir, label),
                 *args.override, f"hydra.run.dir={run_dir}"]
    cmd = code.command("prepare", overrides)
    result = run_measured(cmd, code.root, code.env, run_dir / "prepare.log", args.timeout)
    row = {"phase": "prepare", "command": "seq2seq-prepare " + shlex.join(overrides), **result,
           "cache_mib": disk_mib(cache_dir)}
    lines = result["tail"].splitlines()
    summary = [x for x in lines if x.startswith("prepared train")] or [x for x in lines if x.startswith("prepared ")]
    if summary:
        row["prepared"] = summary[-1]  # seq2seq-prepare's last line: "prepared train N, valid M, test K pairs in DIR"
    return row


def _train_overrides(args, corpus_dir: Path, cache_dir: Path, label: str, ranks: int, run_dir: Path,
                     probe_dir: Path) -> list[str]:
    overrides = [f"experiment={args.experiment}", *data_overrides(args, corpus_dir, cache_dir, label),
                 f"trainer.max_steps={args.steps}", "trainer.max_epochs=1000", "trainer.limit_val_batches=0",
                 "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=10", "test_after_training=false",
                 "test_tune_search=false", "plot_curves=false", "average_last=0", "callbacks=none", "logger=csv",
                 "+callbacks.scale_probe._target_=scale_probe.StepProbe", f"+callbacks.scale_probe.out={probe_dir}",
                 f"+callbacks.scale_probe.steps={args.steps}", "+callbacks.scale_probe.ack_timeout_s=30"]
    if ranks > 1:
        overrides += ["trainer=ddp_cpu", f"trainer.devices={ranks}"]
    return [*overrides, *args.override, *args.train_override, f"hydra.run.dir={run_dir}"]


def measure_train(code: Code, args, corpus_dir: Path, label: str, ranks: int) -> dict[str, Any]:
    cache_dir = Path(args.work) / "cache" / code.label / label
    run_dir = Path(args.work) / "runs" / code.label / label / f"train_{ranks}rank"
    shutil.rmtree(run_dir, ignore_errors=True)
    probe_dir = run_dir / "probe"
    overrides = _train_overrides(args, corpus_dir, cache_dir, label, ranks, run_dir, probe_dir)
    at_step: dict[str, Any] = {}

    def on_poll(watch: TreeWatch, started: float) -> None:
        if at_step:
            return
        records = []
        for rank in range(ranks):
            try:
                records.append(json.loads((probe_dir / f"rank{rank}.json").read_text()))
            except (OSError, ValueError):
                return
        if all("memory_kib" in r for r in records):  # every rank waits for the ack: read the tree now
            at_step["tree"] = watch.sample(pss=True)
            (probe_dir / "ack").write_text("")

    cmd = code.command("train", overrides)
    result = run_measured(cmd, code.root, code.train_env(args.threads), run_dir / "train.log", args.timeout, on_poll)
    row: dict[str, Any] = {"phase": "train", "ranks": ranks,
                           "command": "seq2seq-train " + shlex.join(overrides[:-1]), **result}
    records = []
    for rank in range(ranks):
        try:
            records.append(json.loads((probe_dir / f"rank{rank}.json").read_text()))
        except (OSError, ValueError):
            records.append({})
    started = result["started"]
    if records[0].get("train_start_time"):
        row["train_start_s"] = round(records[0]["train_start_time"] - started, 2)
    if records[0].get("first_step_time"):
        row["first_step_s"] = round(records[0]["first_step_time"] - started, 2)
    if all("memory_kib" in r for r in records):
        mem = [r["memory_kib"] for r in records]
        row["rss_ranks_mib"] = _kib_to_mib(sum(m.get("VmRSS", 0) for m in mem))
        row["pss_ranks_mib"] = _kib_to_mib(sum(m.get("Pss", 0) for m in mem)) if all("Pss" in m for m in mem) else None
        row["per_rank"] = [{"rank": r["rank"], **{f"{name}_mib": _kib_to_mib(m.get(key)) for name, key in (
                                ("rss", "VmRSS"), ("pss", "Pss"), ("pss_anon", "Pss_Anon"), ("pss_file", "Pss_File"),
                                ("hwm", "VmHWM"))}} for r, m in zip(records, mem)]
        first = records[0].get("first_step_time")
        if first and records[0]["step"] > 1:
            row["step_s"] = round((records[0]["step_time"] - first) / (records[0]["step"] - 1), 3)
    tree = at_step.get("tree")
    if tree:
        rank_pids = {r.get("pid") for r in records}

        def roles(pid: int) -> str:
            return "rank" if pid in rank_pids else "launcher" if pid == tree[0]["pid"] else "other"
        row["rss_tree_mib"] = _kib_to_mib(sum(p.get("VmRSS", 0) for p in tree))
        row["pss_tree_mib"] = _kib_to_mib(sum(p.get("Pss", 0) for p in tree))
        row["tree"] = [{"pid": p["pid"], "role": roles(p["pid"]), "cmd": p["cmd"],
                        "rss_mib": _kib_to_mib(p.get("VmRSS")), "pss_mib": _kib_to_mib(p.get("Pss"))} for p in tree]
    return row


def measure_loader_child(code: Code, args, corpus_dir: Path, label: str) -> dict[str, Any]:
    cache_dir = Path(args.work) / "cache" / code.label / label
    out_json = Path(args.work) / "runs" / code.label / label / "loader.json"
    overrides = [f"experiment={args.experiment}", *data_overrides(args, corpus_dir, cache_dir, label),
                 *args.override, *args.train_override]
    cmd = [sys.executable, str(BENCH / "scale.py"), "--measure-loader", "--loader-batches", str(args.loader_batches),
           "--json", str(out_json), "--", *overrides]
    result = run_measured(cmd, code.root, code.train_env(args.threads), out_json.with_suffix(".log"), args.timeout)
    row = {"phase": "loader", **result}
    if result["exit"] == 0 and out_json.is_file():
        row.update(json.loads(out_json.read_text())["loader"])
    return row


def measure_loader(overrides: list[str], batches: int) -> dict[str, Any]:
    """The training DataLoader of the composed config alone: setup (the prepared cache must exist, or it
    is built here and the setup time includes it), then `batches` batches (the first one timed apart)."""
    from seq2seq.config import BatchingConfig, DataConfig, section
    from seq2seq.data.datamodule import TranslationDataModule

    with tempfile.TemporaryDirectory() as out:
        cfg = common.compose_config(overrides, out)
    data = section(DataConfig, cfg.data, "data")
    batching = section(BatchingConfig, cfg.batching, "batching")
    t0 = time.perf_counter()
    datamodule = TranslationDataModule(data, batching, seed=int(cfg.seed))
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    setup_s = time.perf_counter() - t0
    iterator = iter(loader)
    t1 = time.perf_counter()
    first = next(iterator)
    first_s = time.perf_counter() - t1
    count, sentences, tgt_tokens = 0, 0, 0
    t2 = time.perf_counter()
    for batch in iterator:
        count += 1
        sentences += len(batch)
        tgt_tokens += int(batch.tgt_mask.sum())
        if count >= batches:
            break
    seconds = time.perf_counter() - t2
    return {"setup_s": round(setup_s, 2), "first_batch_s": round(first_s, 3), "batches": count,
            "seconds": round(seconds, 3), "batches_per_s": round(count / seconds, 1) if seconds > 0 else None,
            "sentences_per_batch": round(sentences / max(count, 1), 1), "tgt_tokens_per_s": round(tgt_tokens / seconds)
            if seconds > 0 else None, "first_batch_sentences": len(first),
            "peak_rss_mib": round(common.peak_rss_mib(), 1), "batch_size_tokens": batching.max_tokens}


# -------------------------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100k,1M,10M", help="training pairs per corpus, comma-separated (k, M)")
    p.add_argument("--work", default="outputs/bench_scale", help="corpora, caches and run folders go here "
                   "(10M pairs: ~2.6 GB of text plus the caches)")
    p.add_argument("--old", metavar="PATH", help="measure the code of this checkout (e.g. a git worktree of the "
                   "code before issue 32) instead of this one")
    p.add_argument("--label", help="names the code under test in folders and the table (default: old or new)")
    p.add_argument("--experiment", default="quickstart", help="experiment preset of prepare and train")
    p.add_argument("--pair", default="de-en", choices=("de-en", "en-de", "preset"),
                   help="translation direction (preset: the experiment's own; the corpora have de and en)")
    p.add_argument("--multi30k", default=str(synthetic_corpus.DEFAULT_MULTI30K),
                   help="the Multi30k folder the corpora are drawn from")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="a Hydra override for prepare and train alike (repeatable)")
    p.add_argument("--train-override", action="append", default=[], metavar="KEY=VALUE",
                   help="a Hydra override for training only (repeatable), e.g. model.encoder_hidden_size=64")
    p.add_argument("--ranks", default="1,2", help="training runs: processes (1 = one process, 2 = ddp_cpu)")
    p.add_argument("--steps", type=int, default=50, help="optimizer steps; memory is read after the last")
    p.add_argument("--threads", type=int, default=1, help="torch threads per training process (OMP_NUM_THREADS; "
                   "0: torch's default, all cores per process). 1 keeps 2 ranks on 2 cores from competing, and a "
                   "shared machine from slowing every small op down (scripts/bench/common.py)")
    p.add_argument("--loader-batches", type=int, default=0, help="also time the training DataLoader alone for "
                   "this many batches (0: not measured)")
    p.add_argument("--seed", type=int, default=1, help="the synthetic corpora's draws")
    p.add_argument("--gzip", type=int, default=0, metavar="LEVEL", help="write the corpora as .gz (0: plain)")
    p.add_argument("--skip-train", action="store_true", help="preparation only")
    p.add_argument("--skip-prepare", action="store_true",
                   help="training and loader only, on the cache a previous call prepared (its row is left out)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per subprocess before it is killed")
    p.add_argument("--json", metavar="PATH", help="write all figures as JSON here")
    p.add_argument("--measure-loader", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)  # --measure-loader's Hydra overrides
    args = p.parse_args(argv)
    if args.steps < 2:
        p.error("--steps must be >= 2")
    try:
        args.size_list = [synthetic_corpus.parse_size(s) for s in args.sizes.split(",") if s.strip()]
        args.rank_list = [int(r) for r in args.ranks.split(",") if r.strip()]
    except ValueError as e:
        p.error(str(e))
    return args


PREP_COLUMNS = ["code", "pairs", "prep_s", "peak_rss_mib", "peak_rss_tree_mib", "cache_mib", "cpu_cores",
                "others_cores", "load_before", "exit"]
TRAIN_COLUMNS = ["code", "pairs", "ranks", "first_step_s", "train_start_s", "step_s", "rss_mib", "pss_mib",
                 "rss_tree_mib", "pss_tree_mib", "others_cores", "load_before", "exit"]
LOADER_COLUMNS = ["code", "pairs", "setup_s", "batches_per_s", "sentences_per_batch", "peak_rss_mib", "exit"]


def table_rows(report: dict[str, Any]) -> tuple[list[dict], list[dict], list[dict]]:
    prep, train, loader = [], [], []
    for size in report["sizes"]:
        base = {"code": report["code"]["label"], "pairs": size["label"]}
        p = size.get("prepare")
        if p:
            prep.append({**base, "prep_s": p["seconds"], "peak_rss_mib": p["peak_rss_single_mib"],
                         "peak_rss_tree_mib": p["peak_rss_tree_mib"], "cache_mib": p["cache_mib"],
                         "cpu_cores": p["cpu_cores_used"], "others_cores": p["others_cpu_cores"],
                         "load_before": p["load_avg_before"], "exit": p["exit"]})
        for t in size.get("train", []):
            train.append({**base, "ranks": t["ranks"], "first_step_s": t.get("first_step_s"),
                          "train_start_s": t.get("train_start_s"), "step_s": t.get("step_s"),
                          "rss_mib": t.get("rss_ranks_mib"), "pss_mib": t.get("pss_ranks_mib"),
                          "rss_tree_mib": t.get("rss_tree_mib"), "pss_tree_mib": t.get("pss_tree_mib"),
                          "others_cores": t["others_cpu_cores"], "load_before": t["load_avg_before"],
                          "exit": t["exit"]})
        lo = size.get("loader")
        if lo:
            loader.append({**base, **{k: lo.get(k) for k in LOADER_COLUMNS if k in lo}, "exit": lo["exit"]})
    return prep, train, loader


def print_tables(report: dict[str, Any]) -> None:
    prep, train, loader = table_rows(report)
    code = report["code"]
    print(f"\ncode under test: {code['label']} = {code['root']} ({code['revision']}); "
          f"experiment={report['experiment']}; torch threads per training process: {report['threads'] or 'default'}")
    if prep:
        common.print_table("preparation (seq2seq-prepare; peak RSS: largest process / sum over its process tree, MiB)",
                           prep, PREP_COLUMNS)
    if train:
        common.print_table(f"training to step {report['steps']} (seconds since the process started; memory after "
                           f"the last step, MiB, summed over ranks; tree = ranks + launcher)", train, TRAIN_COLUMNS)
    if loader:
        common.print_table("the training DataLoader alone", loader, LOADER_COLUMNS)
    print("\nothers_cores: CPU cores used by other processes meanwhile (of "
          f"{os.cpu_count()}); times are lower bounds of this machine's speed when it is above 0.")


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed benchmark stops its subprocess (finally)
    if args.measure_loader:
        result = {"loader": measure_loader(args.overrides, args.loader_batches or 200)}
        common.write_json(args.json, result, quiet=True)
        print(json.dumps(result))
        return 0
    work = Path(args.work).resolve()
    args.work = str(work)
    code = Code(Path(args.old) if args.old else common.REPO, args.label or ("old" if args.old else "new"))
    code.check()
    report: dict[str, Any] = {"environment": common.environment(),
                              "code": {"label": code.label, "root": str(code.root), "revision": code.revision},
                              "experiment": args.experiment, "steps": args.steps, "threads": args.threads,
                              "work": str(work), "sizes": []}
    for pairs in args.size_list:
        label = synthetic_corpus.size_label(pairs)
        corpus_dir = work / "corpora" / f"synth_{label}"
        print(f"\n== {label} pairs: corpus {corpus_dir}", flush=True)
        corpus = synthetic_corpus.make_corpus(corpus_dir, pairs, seed=args.seed, multi30k=args.multi30k,
                                              gzip_level=args.gzip)
        cache_dir = work / "cache" / code.label / label
        size: dict[str, Any] = {"label": label, "pairs": pairs, "corpus": corpus,
                                "data_overrides": data_overrides(args, corpus_dir, cache_dir, label)}
        report["sizes"].append(size)
        if args.skip_prepare:
            prep = {"exit": 0, "skipped": True}
        else:
            size["prepare"] = prep = measure_prepare(code, args, corpus_dir, label)
            print(f"   prepare: exit {prep['exit']}, {prep['seconds']} s, peak RSS {prep['peak_rss_single_mib']} MiB "
                  f"(tree {prep['peak_rss_tree_mib']}), cache {prep['cache_mib']} MiB", flush=True)
            common.write_json(args.json, report, quiet=True)
        if prep["exit"] != 0:
            print(f"   prepare failed; its log ends:\n{prep['tail'][-1500:]}", file=sys.stderr)
            continue
        if not args.skip_train:
            size["train"] = []
            for ranks in args.rank_list:
                row = measure_train(code, args, corpus_dir, label, ranks)
                size["train"].append(row)
                print(f"   train {ranks} rank(s): exit {row['exit']}, first step at {row.get('first_step_s')} s, "
                      f"RSS {row.get('rss_ranks_mib')} MiB, PSS {row.get('pss_ranks_mib')} MiB", flush=True)
                if row["exit"] != 0 or "rss_ranks_mib" not in row:
                    print(f"   training run failed or wrote no figures; its log ends:\n{row['tail'][-1500:]}",
                          file=sys.stderr)
                common.write_json(args.json, report, quiet=True)
        if args.loader_batches:
            size["loader"] = row = measure_loader_child(code, args, corpus_dir, label)
            print(f"   loader: exit {row['exit']}, {row.get('batches_per_s')} batches/s", flush=True)
            common.write_json(args.json, report, quiet=True)
    own = resource.getrusage(resource.RUSAGE_SELF)
    report["bench_cpu_seconds"] = round(own.ru_utime + own.ru_stime, 1)  # this script's own polling and writing
    prep, train, loader = table_rows(report)
    report["table"] = {"prepare": prep, "train": train, "loader": loader}  # flat rows for table.py
    print_tables(report)
    common.write_json(args.json, report)
    failed = [s["label"] for s in report["sizes"]
              if s.get("prepare", {}).get("exit", 0) != 0 or any(t["exit"] != 0 for t in s.get("train", []))
              or s.get("loader", {}).get("exit", 0) != 0]
    if failed:
        print(f"\nerror: measurements failed at {', '.join(failed)} (see the logs under {work / 'runs'})",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
