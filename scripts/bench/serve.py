"""Load test of `seq2seq-serve` on 127.0.0.1: sentences/s and latency with and without dynamic batching.

    python scripts/bench/serve.py --checkpoint outputs/.../checkpoints/best.ckpt \
        [--clients 1,8,32] [--duration 20] [--threads 2] [--json serve.json]

For each mode (dynamic batching on, then off: `--no-batching`, one request per search call), a server
process is started on 127.0.0.1 and a free port, warmed up, and loaded by 1, 8 and 32 concurrent
clients in turn (`--duration` seconds each). Every client sends one source sentence per request
(greedy, `beam_size: 1`), waits for the answer and sends the next, cycling through the input file
(default: the Multi30k test split's German side). Reported per level: sentences/s, p50 and p99
latency, errors (non-200 answers or failed connections; must be 0), sentences per CPU-second the server
process used (its user + system time, all threads: a figure that other jobs on a shared machine disturb
less than wall-clock rates) and the server's resident set size (RSS) at the start and end of the level;
then the ratio of batched to one-at-a-time sentences/s (and per server CPU-second).

The test is bounded: at most 300 s per level, 256 clients, `--max-requests` requests per level, and
the server is stopped (SIGTERM) when the script ends, fails or is interrupted. The client runs in this
process (asyncio + httpx) and shares the CPU with the server: on a small machine it costs the server
some throughput, in both modes alike.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

import common

REPO = common.REPO
DEFAULT_INPUT = REPO.parent / "shared/data/multi30k/test_2016_flickr.de.gz"
MAX_DURATION, MAX_CLIENTS = 300.0, 256


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--input", default=str(DEFAULT_INPUT), help="source sentences, one per line (.gz ok)")
    p.add_argument("--clients", default="1,8,32", help="comma-separated concurrency levels")
    p.add_argument("--duration", type=float, default=20.0, help=f"seconds per level (at most {MAX_DURATION:.0f})")
    p.add_argument("--max-requests", type=int, default=200_000, help="stop a level after this many requests")
    p.add_argument("--modes", default="batched,single", help="batched (dynamic batching) and/or single")
    p.add_argument("--threads", type=int, default=2, help="the server's torch threads")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="the server's batching wait")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of untimed load before the levels")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    args.clients = [int(c) for c in args.clients.split(",")]
    args.modes = args.modes.split(",")
    if not 0 < args.duration <= MAX_DURATION:
        p.error(f"--duration must be in (0, {MAX_DURATION:.0f}], got {args.duration}")
    if not all(0 < c <= MAX_CLIENTS for c in args.clients):
        p.error(f"--clients must be in [1, {MAX_CLIENTS}], got {args.clients}")
    if set(args.modes) - {"batched", "single"}:
        p.error(f"--modes: choose from batched, single; got {args.modes}")
    if not Path(args.input).is_file():
        p.error(f"--input {args.input} does not exist")
    return args


def read_sentences(path: str) -> list[str]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    if not lines:
        raise SystemExit(f"error: {path} has no non-empty lines")
    return lines


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, args, batching: bool):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "seq2seq.cli.serve", "--checkpoint", args.checkpoint, "--host", "127.0.0.1",
               "--port", str(self.port), "--threads", str(args.threads), "--max-wait-ms", str(args.max_wait_ms),
               "--device", "cpu", "--log-level", "warning"] + ([] if batching else ["--no-batching"])
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"error: the server exited on start-up:\n{self.proc.stderr.read()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.25)
        self.stop()
        raise SystemExit("error: the server did not answer /health within 120 s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def load(url: str, sentences: list[str], clients: int, duration: float, max_requests: int) -> dict:
    """`clients` closed-loop clients for `duration` s -> sentences/s, latency percentiles, errors."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    next_sentence = 0
    stop_at = time.perf_counter() + duration

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal next_sentence
        while time.perf_counter() < stop_at and len(latencies) + sum(errors.values()) < max_requests:
            text = sentences[next_sentence % len(sentences)]
            next_sentence += 1
            start = time.perf_counter()
            try:
                r = await http.post(url + "/translate", json={"text": text, "beam_size": 1})
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors[f"HTTP {r.status_code}"] = errors.get(f"HTTP {r.status_code}", 0) + 1
            except httpx.HTTPError as e:
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=60) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        elapsed = time.perf_counter() - start
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")

    return {"clients": clients, "seconds": round(elapsed, 2), "sentences": len(latencies),
            "sentences_per_s": round(len(latencies) / elapsed, 2), "p50_ms": round(pct(0.50), 1),
            "p99_ms": round(pct(0.99), 1), "errors": sum(errors.values()), "error_kinds": errors}


def main(argv=None) -> int:
    args = parse_args(argv)
    sentences = read_sentences(args.input)
    results = []
    for mode in args.modes:
        server = Server(args, batching=mode == "batched")
        try:
            asyncio.run(load(server.url, sentences, max(args.clients), args.warmup, args.max_requests))
            for clients in args.clients:
                rss_start, cpu_start = common.rss_mib(server.proc.pid), common.cpu_seconds(server.proc.pid)
                row = asyncio.run(load(server.url, sentences, clients, args.duration, args.max_requests))
                cpu = common.cpu_seconds(server.proc.pid) - cpu_start
                row.update(mode=mode, rss_start_mib=round(rss_start, 1), rss_end_mib=round(common.rss_mib(server.proc.pid), 1),
                           server_cpu_s=round(cpu, 2), sentences_per_cpu_s=round(row["sentences"] / max(cpu, 1e-9), 2))
                results.append(row)
                print(f"{mode:8s} {clients:3d} clients: {row['sentences_per_s']:8.1f} sent/s  p50 {row['p50_ms']:7.1f} ms"
                      f"  p99 {row['p99_ms']:7.1f} ms  errors {row['errors']}  {row['sentences_per_cpu_s']:6.1f} sent/CPU-s"
                      f"  RSS {row['rss_start_mib']:.0f}"
                      f" -> {row['rss_end_mib']:.0f} MiB", flush=True)
        finally:
            server.stop()
    by = {(r["mode"], r["clients"]): r for r in results}
    print()
    table = []
    for c in args.clients:
        b, s = by.get(("batched", c)), by.get(("single", c))
        cells = []
        for r in (b, s):
            cells += [f"{r['sentences_per_s']:.1f}", f"{r['p50_ms']:.0f}", f"{r['p99_ms']:.0f}"] if r else ["-"] * 3
        ratio = f"{b['sentences_per_s'] / s['sentences_per_s']:.1f}x" if b and s and s["sentences_per_s"] else "-"
        cpu_ratio = (f"{b['sentences_per_cpu_s'] / s['sentences_per_cpu_s']:.1f}x"
                     if b and s and s["sentences_per_cpu_s"] else "-")
        table.append([str(c), *cells, ratio, cpu_ratio, str(sum(r["errors"] for r in (b, s) if r))])
    print("\n".join(common.markdown_table(["clients", "batched sent/s", "p50 ms", "p99 ms", "one-at-a-time sent/s",
                                          "p50 ms", "p99 ms", "ratio", "ratio per server CPU-s", "errors"],
                                         table, right=True)))
    rss = [(r["mode"], r["rss_start_mib"], r["rss_end_mib"]) for r in results]
    print("server RSS (MiB, start -> end of each level): "
          + ", ".join(f"{m} {a:.0f}->{b:.0f}" for m, a, b in rss))
    if args.json:
        env = {**common.environment(), "server_threads": args.threads, "max_wait_ms": args.max_wait_ms,
               "checkpoint": args.checkpoint, "input": args.input, "duration_s": args.duration}
        common.write_json(args.json, {"environment": env, "results": results}, quiet=True)
    return 1 if any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
