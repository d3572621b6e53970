"""Deployment figures: torch fp32 / torch int8 / onnxruntime fp32 / onnxruntime int8 on the CPU.

    python scripts/bench/deploy.py --checkpoint best.ckpt --threads 2 --rounds 2 --json deploy.json

The checkpoint is exported twice (fp32 and `--quantize int8`) into a temporary folder; then every
(variant, search) cell runs in a fresh worker process, all cells one after another in each round and
the rounds repeated (`--rounds`), so that a machine whose speed drifts affects all variants alike.
A worker loads its model (timed apart: "load s"), translates the whole source file once (timed:
"seconds", sentences/s), scores the output with sacrebleu (BLEU, 13a, cased) and reports its peak
RSS (the process's high-water mark, model load included). onnxruntime workers import no torch, so
their RSS is what a torch-free deployment needs. Each variant's model files are sized: the
checkpoint's weights (fp32), the quantized model's state_dict (torch int8), the export folder.

`--profile` adds one profiled greedy run per variant: the torch operators (torch.profiler) or the
onnxruntime nodes (its own profiler) that take the time, by total share.

Default input: test_2016_flickr de->en from ../shared/data/multi30k (or data/multi30k).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

REPO = common.REPO
VARIANTS = ("torch-fp32", "torch-int8", "onnxruntime-fp32", "onnxruntime-int8")


def default_corpus() -> Path:
    for root in (REPO.parent / "shared/data/multi30k", REPO / "data/multi30k"):
        if (root / "test_2016_flickr.de.gz").is_file():
            return root
    return REPO / "data/multi30k"


# ---------------------------------------------------------------------------------------- worker
def worker(args) -> dict:
    """Load one variant, translate the file once, score it; runs in its own process (imports deferred:
    an onnxruntime worker must not import torch, its RSS is what a torch-free deployment needs)."""
    from sacrebleu.metrics import BLEU

    from seq2seq.data.corpus import read_lines  # torch-free

    sources, references = read_lines(args.src), read_lines(args.ref)
    start = time.perf_counter()
    if args.variant.startswith("onnxruntime"):
        from seq2seq.deploy.runtime import OnnxTranslator

        translator = OnnxTranslator(args.model, threads=args.threads)
        translator.cfg.beam_size = args.beam
    else:
        import torch

        from seq2seq.checkpoint.loading import load_for_translation
        from seq2seq.decoding.translator import Translator

        torch.set_num_threads(args.threads)
        model, tokenizer, cfg, _ = load_for_translation(args.model)
        if args.variant == "torch-int8":
            from seq2seq.deploy.quantize import quantize_torch_int8

            model = quantize_torch_int8(model)
        cfg.beam_size = args.beam
        translator = Translator(model, tokenizer, cfg)
    load = time.perf_counter() - start
    translator.translate(sources[:16])  # warm-up: first-call allocations and kernel selection
    if args.profile:
        return profile(args, translator, sources)
    start = time.perf_counter()
    results = translator.translate(sources)
    seconds = time.perf_counter() - start
    hyps = [t.text for t in results]
    return {"variant": args.variant, "beam": args.beam, "load_s": load, "seconds": seconds,
            "sentences_per_s": len(sources) / seconds, "sentences": len(sources),
            "bleu": BLEU().corpus_score(hyps, [references]).score,
            "peak_rss_mb": common.peak_rss_mib()}  # VmHWM: not the parent's peak (torch and both exports)


def profile(args, translator, sources) -> dict:
    """Where the time goes: the top operators of one run over the file."""
    rows: dict[str, float] = {}
    if args.variant.startswith("onnxruntime"):
        import onnxruntime as ort

        for name in ("encoder", "decoder"):
            session = getattr(translator.model, name)
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(tempfile.gettempdir()) / f"bench-deploy-{name}")
            setattr(translator.model, name, ort.InferenceSession(session._model_path, options,
                                                                 providers=["CPUExecutionProvider"]))
        start = time.perf_counter()
        translator.translate(sources)
        total = time.perf_counter() - start
        for name in ("encoder", "decoder"):
            trace = json.loads(Path(getattr(translator.model, name).end_profiling()).read_text())
            for event in trace:
                if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                    key = event["args"]["op_name"]
                    rows[key] = rows.get(key, 0.0) + event["dur"] / 1e6
    else:
        import torch

        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            translator.translate(sources)
            total = time.perf_counter() - start
        for event in prof.key_averages():
            if event.key.startswith(("aten::", "quantized::")) and event.key not in ("aten::empty",):
                rows[event.key] = event.self_cpu_time_total / 1e6
    top = sorted(rows.items(), key=lambda kv: -kv[1])[:12]
    return {"variant": args.variant, "beam": args.beam, "profiled_seconds": total,
            "top_ops_s": [[k, round(v, 3)] for k, v in top], "python_and_other_s": round(total - sum(rows.values()), 3)}


# ---------------------------------------------------------------------------------------- parent
def sizes(checkpoint: Path, folders: dict[str, Path], tmp: Path) -> dict[str, float]:
    """Megabytes of each variant's model files."""
    import torch

    from seq2seq.checkpoint.loading import load_for_translation
    from seq2seq.deploy.quantize import quantize_torch_int8

    model, *_ = load_for_translation(checkpoint)
    torch.save(model.state_dict(), tmp / "fp32.pt")
    torch.save(quantize_torch_int8(model).state_dict(), tmp / "int8.pt")
    folder_mb = {name: sum(p.stat().st_size for p in f.iterdir()) / 1e6 for name, f in folders.items()}
    return {"checkpoint file": checkpoint.stat().st_size / 1e6, "torch-fp32": (tmp / "fp32.pt").stat().st_size / 1e6,
            "torch-int8": (tmp / "int8.pt").stat().st_size / 1e6, **folder_mb}


def run_worker(variant: str, beam: int, model: Path, args, profile: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--worker", variant, "--beam", str(beam), "--model", str(model),
           "--src", str(args.src), "--ref", str(args.ref), "--threads", str(args.threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd + (["--profile"] if profile else []), env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"worker {variant} beam {beam} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, help="a .ckpt written by seq2seq-train (the quickstart's best)")
    corpus = default_corpus()
    p.add_argument("--src", type=Path, default=corpus / "test_2016_flickr.de.gz")
    p.add_argument("--ref", type=Path, default=corpus / "test_2016_flickr.en.gz")
    p.add_argument("--beams", default="1,5", help="comma-separated beam sizes")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds over all cells")
    p.add_argument("--profile", action="store_true", help="also profile one greedy run per variant")
    p.add_argument("--json", type=Path, help="write every measurement here")
    p.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--beam", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        args.variant = args.worker
        print(json.dumps(worker(args)))
        return 0
    if args.checkpoint is None:
        p.error("--checkpoint is required")
    from seq2seq.deploy.export import export  # imports torch: not in the onnxruntime workers above

    variants = args.variants.split(",")
    beams = [int(b) for b in args.beams.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp_name:
        tmp = Path(tmp_name)
        start = time.perf_counter()
        folders = {"onnxruntime-fp32": export(args.checkpoint, tmp / "fp32")}
        fp32_export = time.perf_counter() - start
        start = time.perf_counter()
        folders["onnxruntime-int8"] = export(args.checkpoint, tmp / "int8", quantize="int8")
        int8_export = time.perf_counter() - start
        model_mb = sizes(args.checkpoint, folders, tmp)
        model_of = {v: folders.get(v, args.checkpoint) for v in variants}
        runs = []
        for r in range(args.rounds):
            for beam in beams:
                for variant in variants:
                    result = run_worker(variant, beam, model_of[variant], args)
                    result["round"] = r + 1
                    runs.append(result)
                    print(f"round {r + 1} beam {beam} {variant}: {result['seconds']:.2f} s, "
                          f"BLEU {result['bleu']:.2f}", file=sys.stderr)
        profiles = [run_worker(v, 1, model_of[v], args, profile=True) for v in variants] if args.profile else []

    print(f"\n{runs[0]['sentences']} sentences, {args.threads} threads, {args.rounds} alternating rounds "
          f"(seconds: best of the rounds; every round in --json). Export: fp32 {fp32_export:.1f} s, "
          f"int8 {int8_export:.1f} s.\n")
    summary, cells = [], []
    for beam in beams:
        best = {v: min((x for x in runs if x["variant"] == v and x["beam"] == beam), key=lambda x: x["seconds"])
                for v in variants}
        for v in variants:
            cell = [x for x in runs if x["variant"] == v and x["beam"] == beam]
            b = best[v]
            speedup = best["torch-fp32"]["seconds"] / b["seconds"] if "torch-fp32" in best else float("nan")
            row = {"search": "greedy" if beam == 1 else f"beam {beam}", "variant": v, "seconds": b["seconds"],
                   "rounds_s": [x["seconds"] for x in cell], "sentences_per_s": b["sentences_per_s"],
                   "speedup_vs_torch_fp32": speedup, "bleu": b["bleu"], "load_s": b["load_s"],
                   "peak_rss_mb": max(x["peak_rss_mb"] for x in cell), "model_mb": model_mb.get(v)}
            summary.append(row)
            cells.append([row["search"], v, f"{row['seconds']:.2f} ({', '.join(f'{s:.2f}' for s in row['rounds_s'])})",
                          f"{row['sentences_per_s']:.0f}", f"{speedup:.2f}x", f"{row['bleu']:.2f}",
                          f"{row['load_s']:.2f}", f"{row['peak_rss_mb']:.0f}", f"{row['model_mb']:.1f}"])
    print("\n".join(common.markdown_table(["search", "variant", "seconds (rounds)", "sentences/s", "vs torch fp32",
                                          "BLEU", "load s", "peak RSS MB", "model MB"], cells)))
    print("\nmodel files (MB): " + ", ".join(f"{k} {v:.1f}" for k, v in model_mb.items()))
    for prof in profiles:
        print(f"\nprofile, greedy, {prof['variant']} ({prof['profiled_seconds']:.2f} s; "
              f"Python and other: {prof['python_and_other_s']:.2f} s):")
        for name, seconds in prof["top_ops_s"]:
            print(f"    {name:40s} {seconds:7.3f} s")
    if args.json:
        common.write_json(args.json, {"environment": common.environment(), "summary": summary, "runs": runs,
                                      "model_mb": model_mb, "profiles": profiles, "threads": args.threads,
                                      "export_s": {"fp32": fp32_export, "int8": int8_export}}, quiet=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
