"""Start-up figures: `--help` of every console script, usage errors, one-line translation, checkpoint loading.

    python scripts/bench/startup.py --checkpoint outputs/quickstart/.../checkpoints/best.ckpt \
        [--shape multi30k_gpu] [--repeats 5] [--json startup.json]

Every figure is a fresh Python process (the console scripts' own entry, `from seq2seq.cli.X import main`,
with the package compiled to bytecode first, as pip installs it), timed from outside by wall clock; the median of `--repeats` runs, taken round-robin so that a busy
machine slows every command alike. What is compared:

  help          `--help` of seq2seq-translate/-score/-average against `python -c "import argparse"`, and of
                seq2seq-prepare/-train against `python -c "import hydra"` (ratio = script / baseline).
                `hydra full help` is Hydra's own --help (reached by giving an override with it), for reference.
  usage errors  a bad flag and a missing file, against the same baselines.
  one line      `echo LINE | seq2seq-translate --checkpoint CKPT` against `python -c "import torch"`
                (excess = the difference), and where that time goes, measured inside one process
                (imports, checkpoint load, translation of the line).
  load          the checkpoint load alone in a process that has already imported everything: wall time
                and peak RSS (VmHWM reset after the imports), for `load_for_translation` ("current") and for
                the eager loader it replaced ("eager": the whole file into memory, optimiser state
                included, and a randomly initialised model that the weights then overwrite).
                `--shape multi30k_gpu` adds a checkpoint of that experiment's model shape (random weights,
                the given checkpoint's sentencepiece model, Adam state as Lightning writes it).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common

REPO = common.REPO
BENCH = Path(__file__).resolve().parent  # for the load probe's `import common`
LINE = "Ein Mann mit einem orangefarbenen Hut, der etwas anstarrt."

PLAIN = ("translate", "score", "average")  # argparse scripts: baseline `import argparse`
HYDRA = ("prepare", "train")  # Hydra apps: baseline `import hydra`


def entry(module: str, *args: str) -> list[str]:
    """The command a console script runs (pip's wrapper: import main, exit with its result)."""
    return [sys.executable, "-c", f"import sys; from seq2seq.cli.{module} import main; sys.exit(main())", *args]


def child_env(*paths: Path) -> dict[str, str]:
    """The environment of a measured process: this checkout (and `paths`) first on PYTHONPATH."""
    pythonpath = [str(REPO), *map(str, paths), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(pythonpath).rstrip(os.pathsep)}


def wall(cmd: list[str], stdin: str | None = None, expect: int | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=child_env(), cwd=REPO)
    seconds = time.perf_counter() - start
    if expect is not None and proc.returncode != expect:
        raise RuntimeError(f"{' '.join(cmd[3:] if cmd[1] == '-c' else cmd)} exited with {proc.returncode}, "
                           f"expected {expect}:\n{proc.stderr[-2000:]}")
    return seconds


def round_robin(commands: dict[str, tuple[list[str], str | None, int]], repeats: int) -> dict[str, float]:
    """name -> median wall seconds, the commands interleaved (one warm-up round, untimed)."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for round_ in range(repeats + 1):
        for name, (cmd, stdin, expect) in commands.items():
            seconds = wall(cmd, stdin, expect)
            if round_:
                times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}


# ------------------------------------------------------------------------------- in-process probes
PROBE = r'''
import json, sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
from seq2seq.checkpoint.loading import load_for_translation
from seq2seq.decoding.translator import Translator
t2 = time.perf_counter()
model, tokenizer, search_cfg, _ = load_for_translation(sys.argv[1])
t3 = time.perf_counter()
out = Translator(model, tokenizer, search_cfg).translate([sys.argv[2]])
t4 = time.perf_counter()
heavy = [m for m in ("lightning", "pytorch_lightning", "hydra", "omegaconf") if m in sys.modules]
print(json.dumps({"import_torch_s": t1 - t0, "import_seq2seq_s": t2 - t1, "load_s": t3 - t2,
                  "translate_s": t4 - t3, "also_imported": heavy}))
'''

LOAD = r'''
import json, sys, time
import torch
from common import proc_status_mib, reset_peak_rss
from seq2seq.checkpoint.format import read_checkpoint, PAYLOAD_KEY, model_state_dict
from seq2seq.checkpoint.loading import load_for_translation
from seq2seq.config import ModelConfig, section
from seq2seq.model import Seq2Seq
from seq2seq.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer


def eager(path):
    """The loader before start-up work: everything read into memory, a random init overwritten."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    payload = ckpt[PAYLOAD_KEY]
    tokenizer = Tokenizer.from_state_dict(payload["tokenizer"])
    model = Seq2Seq(section(ModelConfig, payload["config"]["model"], "model"),
                    src_vocab_size=tokenizer.src_vocab_size, tgt_vocab_size=tokenizer.tgt_vocab_size,
                    pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID)
    model.load_state_dict(model_state_dict(ckpt))
    return model.eval()


rss_before = proc_status_mib("VmRSS")
reset_peak_rss()  # VmHWM := VmRSS, so the peak is the load's
start = time.perf_counter()
model = eager(sys.argv[1]) if sys.argv[2] == "eager" else load_for_translation(sys.argv[1])[0]
seconds = time.perf_counter() - start
print(json.dumps({"load_s": seconds, "rss_before_mib": rss_before, "peak_rss_mib": proc_status_mib("VmHWM"),
                  "rss_after_mib": proc_status_mib("VmRSS"),
                  "parameters": sum(p.numel() for p in model.parameters())}))
'''


def probe(script: str, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                          env=env or child_env(), cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"probe failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def load_figures(ckpt: Path, repeats: int) -> dict[str, Any]:
    """mode -> median load time, median peak RSS and the rest, modes interleaved."""
    runs: dict[str, list[dict[str, Any]]] = {"eager": [], "current": []}
    for _ in range(repeats):
        for mode in runs:
            runs[mode].append(probe(LOAD, str(ckpt), mode, env=child_env(BENCH)))
    out = {"file_mib": ckpt.stat().st_size / 2**20}
    for mode, results in runs.items():
        out[mode] = {key: statistics.median(r[key] for r in results)
                     for key in ("load_s", "rss_before_mib", "peak_rss_mib", "rss_after_mib", "parameters")}
        out[mode]["load_peak_mib"] = out[mode]["peak_rss_mib"] - out[mode]["rss_before_mib"]
    return out


def shaped_checkpoint(source: Path, out: Path, experiment: str) -> Path:
    """A Lightning-format checkpoint of `experiment`'s model shape: random weights, Adam moments, the
    sentencepiece model and search config of `source` (its vocabulary sizes, then, not the recipe's)."""
    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from seq2seq.checkpoint.format import MODEL_PREFIX, PAYLOAD_KEY, read_checkpoint
    from seq2seq.config import CONF_DIR, ModelConfig, section
    from seq2seq.model import Seq2Seq
    from seq2seq.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("train", overrides=[f"experiment={experiment}"])
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    payload = dict(read_checkpoint(source)[PAYLOAD_KEY])
    tokenizer = Tokenizer.from_state_dict(payload["tokenizer"])
    model = Seq2Seq(section(ModelConfig, model_cfg, "model"), src_vocab_size=tokenizer.src_vocab_size,
                    tgt_vocab_size=tokenizer.tgt_vocab_size, pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID)
    params = list(model.parameters())
    optimizer_state = {"state": {i: {"step": torch.tensor(1000.0), "exp_avg": torch.randn_like(p),
                                     "exp_avg_sq": torch.rand_like(p)} for i, p in enumerate(params)},
                       "param_groups": [{"lr": 0.002, "betas": (0.9, 0.98), "eps": 1e-9, "weight_decay": 0.0,
                                         "amsgrad": False, "params": list(range(len(params)))}]}
    payload["config"] = {**payload["config"], "model": model_cfg}
    torch.save({"epoch": 10, "global_step": 1000, "pytorch-lightning_version": "2.6.6",
                "state_dict": {MODEL_PREFIX + k: v for k, v in model.state_dict().items()},
                "optimizer_states": [optimizer_state], "lr_schedulers": [], "loops": {}, "callbacks": {},
                PAYLOAD_KEY: payload}, out)
    return out


# ----------------------------------------------------------------------------------------- report
def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def measure(args) -> dict[str, Any]:
    # Bytecode first, as an installed package has it (pip compiles on install): with
    # PYTHONDONTWRITEBYTECODE set, every run would otherwise compile the package from source.
    compileall.compile_dir(str(REPO / "seq2seq"), quiet=1)
    ckpt = Path(args.checkpoint)
    missing = str(REPO / "no-such-file.txt")
    baselines = {"import argparse": ([sys.executable, "-c", "import argparse"], None, 0),
                 "import hydra": ([sys.executable, "-c", "import hydra"], None, 0)}
    helps = {f"seq2seq-{m} --help": (entry(m, "--help"), None, 0) for m in (*PLAIN, *HYDRA)}
    helps["seq2seq-train seed=1 --help (Hydra's)"] = (entry("train", "seed=1", "--help"), None, 0)
    errors = {"seq2seq-translate --bogus": (entry("translate", "--bogus"), None, 2),
              "seq2seq-translate missing --input": (entry("translate", "--checkpoint", str(ckpt), "--input", missing), None, 2),
              "seq2seq-translate missing --checkpoint": (entry("translate", "--checkpoint", missing), LINE + "\n", 2),
              "seq2seq-score missing --hyp": (entry("score", "--hyp", missing, "--ref", missing), None, 2),
              "seq2seq-average missing CKPT": (entry("average", "-o", str(REPO / "avg.ckpt"), missing), None, 2),
              "seq2seq-train bad override": (entry("train", "no_such_key=1"), None, 2)}
    medians = round_robin({**baselines, **helps, **errors}, args.repeats)

    def row(name: str) -> dict[str, Any]:
        base = "import hydra" if any(f"seq2seq-{m} " in name for m in HYDRA) else "import argparse"
        return {"command": name, "seconds": medians[name], "baseline": base,
                "ratio": ratio(medians[name], medians[base])}

    result: dict[str, Any] = {
        "machine": common.environment(),
        "checkpoint": str(ckpt),
        "baselines_s": {k: medians[k] for k in baselines},
        "help": [row(name) for name in helps],
        "usage_errors": [row(name) for name in errors],
    }

    one_line = round_robin({"import torch": ([sys.executable, "-c", "import torch"], None, 0),
                            "translate one line": (entry("translate", "--checkpoint", str(ckpt), "--quiet"),
                                                   LINE + "\n", 0)}, args.repeats)
    phases = [probe(PROBE, str(ckpt), LINE) for _ in range(args.repeats)]
    result["one_line"] = {
        "import_torch_s": one_line["import torch"], "translate_s": one_line["translate one line"],
        "ratio": ratio(one_line["translate one line"], one_line["import torch"]),
        "excess_s": one_line["translate one line"] - one_line["import torch"],
        "phases_s": {k: statistics.median(p[k] for p in phases)
                     for k in ("import_torch_s", "import_seq2seq_s", "load_s", "translate_s")},
        "training_stack_imported": sorted({m for p in phases for m in p["also_imported"]}),
    }
    result["load"] = {"checkpoint": load_figures(ckpt, args.repeats)}
    for experiment in args.shape:
        with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
            shaped = shaped_checkpoint(ckpt, Path(tmp) / f"{experiment}.ckpt", experiment)
            result["load"][f"{experiment} shape"] = load_figures(shaped, args.repeats)
    return result


def print_report(r: dict[str, Any]) -> None:
    m = r["machine"]
    print(f"{m['cpu_count']} CPUs, load average {m['load_avg_1min']:.1f}, Python {m['python']}; "
          f"medians of round-robin runs; checkpoint {r['checkpoint']}")
    print("\nbaselines: " + ", ".join(f"{k} {v:.3f} s" for k, v in r["baselines_s"].items()))
    for title in ("help", "usage_errors"):
        print(f"\n{title.replace('_', ' ')}:")
        width = max(len(x["command"]) for x in r[title])
        for x in r[title]:
            print(f"  {x['command']:<{width}}  {x['seconds']:.3f} s  {x['ratio']:.2f}x {x['baseline']}")
    o = r["one_line"]
    print(f"\none line: {o['translate_s']:.3f} s vs import torch {o['import_torch_s']:.3f} s: "
          f"{o['ratio']:.2f}x, excess {o['excess_s']:+.3f} s")
    print("  inside one process: " + ", ".join(f"{k[:-2]} {v:.3f} s" for k, v in o["phases_s"].items()))
    print(f"  training stack imported: {', '.join(o['training_stack_imported']) or 'none'}")
    print("\ncheckpoint load (load alone; peak = VmHWM from after the imports):")
    for name, f in r["load"].items():
        print(f"  {name} ({f['file_mib']:.1f} MiB file, {f['current']['parameters'] / 1e6:.2f}M parameters):")
        for mode in ("eager", "current"):
            x = f[mode]
            print(f"    {mode:<8} {x['load_s']:.3f} s, peak RSS {x['peak_rss_mib']:.0f} MiB "
                  f"(+{x['load_peak_mib']:.0f} MiB over {x['rss_before_mib']:.0f}), after {x['rss_after_mib']:.0f} MiB")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a .ckpt written by seq2seq-train (e.g. the quickstart's)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per command (median reported)")
    p.add_argument("--shape", action="append", default=[], metavar="EXPERIMENT",
                   help="also measure loading a checkpoint of this experiment's model shape (e.g. multi30k_gpu; "
                   "repeatable)")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON here")
    args = p.parse_args(argv)
    if not Path(args.checkpoint).is_file():
        p.error(f"--checkpoint {args.checkpoint} does not exist")
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    result = measure(args)
    print_report(result)
    common.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
