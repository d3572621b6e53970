"""Peak memory and speed of `seq2seq-translate` as the input grows: does memory stay flat?

    python scripts/bench/stream.py                       # trains a tiny checkpoint first (~30 s)
    python scripts/bench/stream.py --checkpoint best.ckpt --sizes 10000,1000000 --json docs/figures/stream.json

Each size is the Multi30k test source (test_2016_flickr.<src>, 1,000 lines) repeated to that many
lines, translated greedily by a fresh `python -m seq2seq.cli.translate` process with the default --window.
Per run: the process's peak resident set size (ru_maxrss of the child, from wait4), sentences/s of
the translation phase (the script's own summary line: model loading excluded) and wall time. Because
the windows of the repeated input are identical, every window of a longer run must equal the shortest
run's output: the script checks it, so a figure never comes from a broken run.

Without --checkpoint a tiny model (conf debug=tiny, 400 steps on 5,000 pairs) is trained first, so
that a million lines take minutes on a CPU; its translations are poor but end by themselves, which is
all the measurement needs. Speeds on a shared machine are noisy: the shortest size runs --repeats
times (before and after the longer ones) and the median is reported; compare the ratios.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

REPO = common.REPO
DATA = REPO.parent / "shared" / "data" / "multi30k"
SUMMARY = re.compile(r"(\d+) lines in ([\d.]+) s: ([\d.]+) sentences/s")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a .ckpt to translate with (default: train a tiny one first)")
    p.add_argument("--data", default=str(DATA), help="folder holding test_2016_flickr.<src>.gz (Multi30k)")
    p.add_argument("--src-lang", default="de")
    p.add_argument("--sizes", default="10000,1000000", help="comma-separated input sizes in lines")
    p.add_argument("--window", type=int, help="seq2seq-translate --window (default: its own default)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the translating process")
    p.add_argument("--repeats", type=int, default=3, help="runs of the smallest size (median reported)")
    p.add_argument("--json", help="write the figures here (e.g. docs/figures/stream.json)")
    return p.parse_args(argv)


def train_tiny(folder: Path, data: Path, threads: int) -> Path:
    run = folder / "tiny"
    cmd = [sys.executable, "-m", "seq2seq.cli.train", "debug=tiny", "trainer.max_steps=400", "trainer.max_epochs=100",
           "trainer.val_check_interval=200", "trainer.check_val_every_n_epoch=null", "data.max_train_pairs=5000",
           "data.max_valid_pairs=100", "test_after_training=false", "optim.lr=0.005", f"data.root={data}",
           f"paths.output_dir={run}", f"paths.data_dir={folder / 'data'}"]
    print("training a tiny checkpoint:", " ".join(cmd[3:]), file=sys.stderr)
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(threads), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"training the tiny checkpoint failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return run / "checkpoints" / "best.ckpt"


def child_env(threads: int) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}


def make_input(source: list[bytes], n: int, path: Path) -> Path:
    with open(path, "wb") as f:
        for i in range(n):
            f.write(source[i % len(source)])
    return path


def translate(ckpt: Path, src: Path, out: Path, window: int | None, threads: int) -> dict:
    cmd = [sys.executable, "-m", "seq2seq.cli.translate", "--checkpoint", str(ckpt), "--input", str(src),
           "--output", str(out), "--beam-size", "1", *(["--window", str(window)] if window else [])]
    start = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(threads), stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own rusage: its peak RSS alone
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        err.seek(0)
        text = err.read().decode("utf-8", "replace")
    if proc.returncode != 0:
        raise SystemExit(f"seq2seq-translate failed ({proc.returncode}):\n{text[-3000:]}")
    found = SUMMARY.findall(text)
    if not found:
        raise SystemExit(f"no throughput summary in seq2seq-translate's output:\n{text[-3000:]}")
    lines, seconds, rate = found[-1]
    return {"lines": int(lines), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "sentences_per_s": float(rate), "translate_s": float(seconds), "wall_s": round(wall, 2)}


def chunk_hashes(path: Path, every: int) -> list[str]:
    """SHA-256 of each run of `every` output lines."""
    hashes, h, n = [], hashlib.sha256(), 0
    with open(path, "rb") as f:
        for line in f:
            h.update(line)
            n += 1
            if n == every:
                hashes.append(h.hexdigest())
                h, n = hashlib.sha256(), 0
    if n:
        hashes.append(h.hexdigest())
    return hashes


def main(argv=None) -> int:
    args = parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    path = Path(args.data) / f"test_2016_flickr.{args.src_lang}.gz"
    if not path.is_file():
        raise SystemExit(f"error: {path} not found (--data names the Multi30k folder)")
    source = [line if line.endswith(b"\n") else line + b"\n" for line in gzip.open(path, "rb")]
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
        tmp = Path(tmp)
        ckpt = Path(args.checkpoint) if args.checkpoint else train_tiny(tmp, Path(args.data), args.threads)
        smallest = sizes[0]
        order = [smallest] + sizes[1:] + [smallest] * (args.repeats - 1)  # small runs before and after
        runs: dict[int, list[dict]] = {n: [] for n in sizes}
        reference = None
        for n in order:
            src = make_input(source, n, tmp / f"in{n}.{args.src_lang}")
            out = tmp / f"out{n}.txt"
            result = translate(ckpt, src, out, args.window, args.threads)
            print(f"{n:>9} lines: peak RSS {result['peak_rss_mib']:7.1f} MiB, {result['sentences_per_s']:8.1f} "
                  f"sentences/s ({result['wall_s']:.1f} s wall)", flush=True)
            runs[n].append(result)
            hashes = chunk_hashes(out, smallest)
            if reference is None:
                reference = hashes[0]
            full = hashes if n % smallest == 0 else hashes[:-1]
            if any(h != reference for h in full):  # every full chunk alike
                raise SystemExit(f"error: the {n}-line output differs from the {smallest}-line output")
            src.unlink()
            out.unlink()
    rows = []
    for n in sizes:
        rss = round(statistics.median(r["peak_rss_mib"] for r in runs[n]), 1)
        rate = round(statistics.median(r["sentences_per_s"] for r in runs[n]), 1)
        rows.append({"lines": n, "runs": len(runs[n]), "peak_rss_mib": rss, "sentences_per_s": rate,
                     "all_runs": runs[n]})
    base = rows[0]
    for row in rows:
        row["rss_ratio_to_smallest"] = round(row["peak_rss_mib"] / base["peak_rss_mib"], 3)
        row["speed_ratio_to_smallest"] = round(row["sentences_per_s"] / base["sentences_per_s"], 3)
    print(f"\n{'lines':>9} {'peak RSS MiB':>13} {'x smallest':>10} {'sent/s':>9} {'x smallest':>10}")
    for row in rows:
        print(f"{row['lines']:>9} {row['peak_rss_mib']:>13.1f} {row['rss_ratio_to_smallest']:>10.3f} "
              f"{row['sentences_per_s']:>9.1f} {row['speed_ratio_to_smallest']:>10.3f}")
    if args.json:
        record = {"what": "seq2seq-translate peak RSS and speed vs input size (Multi30k test source repeated)",
                  "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
                  "checkpoint": args.checkpoint or "tiny model trained by the script (debug=tiny, 400 steps)",
                  "search": "greedy", "window": args.window or "default", "threads": args.threads,
                  "machine": {**common.environment(), "load_average_at_end": os.getloadavg(),
                              "note": "2-core CPU shared with other jobs: compare ratios, not absolute speeds"},
                  "rows": rows}
        common.write_json(args.json, record, quiet=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
