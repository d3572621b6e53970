"""The measurement helper every benchmark in scripts/bench/ shares (`import common`: a script run as
`python scripts/bench/x.py` has this folder on its path).

Everything measured goes through the project's own code: configs are composed with Hydra's compose
API from `seq2seq.config.CONF_DIR`, data comes from `prepare_corpus`, models are `Seq2Seq` built from
the config (or `load_for_translation` for a checkpoint), and decoding is `Translator.translate`.
This module only adds what a benchmark needs on top: device choice, timers that synchronise CUDA,
peak-memory readings (RSS of this or another process), the environment record, JSON output, and
plain and markdown tables (`table.py` prints the latter from the JSON the benchmarks write).

Peak memory. On CUDA: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats` at the start
of the measured phase (tensors only, not the caching allocator's reserve). On the CPU: the resident
set size high-water mark. Linux lets a process reset it (`echo 5 > /proc/self/clear_refs`), so each
phase reports its own peak (`VmHWM`, kind "rss_hwm_phase"); where that is impossible the process-
lifetime `ru_maxrss` is reported instead (kind "ru_maxrss_process", which includes earlier phases).

torch, Lightning, Hydra and seq2seq are imported inside the functions that use them: deploy.py's
onnxruntime workers measure the memory of a torch-free process, and table.py and serve.py's client
need the standard library only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------- process clock
def _process_start_epoch() -> float:
    """Wall-clock time (time.time() scale) at which this process started (Linux /proc), else now."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        stat = Path("/proc/self/stat").read_text()
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: starttime since boot
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - (uptime - start_ticks / ticks)
    except (OSError, ValueError, IndexError):
        return time.time()


PROCESS_START = _process_start_epoch()


def since_process_start() -> float:
    """Seconds of wall time since this process started (includes interpreter and library imports)."""
    return time.time() - PROCESS_START


# ------------------------------------------------------------------------------------------ devices
def pick_device(choice: str) -> torch.device:
    """`checkpoint.loading.load_device`, with its error as the benchmark's exit message."""
    from seq2seq.checkpoint.format import CheckpointError
    from seq2seq.checkpoint.loading import load_device

    try:
        return load_device(choice)
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from None


def device_overrides(device: torch.device) -> list[str]:
    """Hydra overrides that put the Trainer on exactly one `device` (benchmarks are single-device)."""
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    return [f"trainer.accelerator={accelerator}", "trainer.devices=1", "trainer.strategy=auto"]


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The decode autocast dtype for a Trainer precision string, as validation decoding uses it
    (`TranslationModule.translator`, `precision.precision_dtype`), on CUDA only."""
    from seq2seq.model.precision import precision_dtype

    return precision_dtype(precision, device.type) if device.type == "cuda" else None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def apply_threads(threads: int) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


class Timer:
    """Wall-clock timer that synchronises CUDA at `start` and `stop` (also a context manager).

    It also takes this process's CPU time (all threads): `cpu_util` = CPU seconds / wall seconds shows
    how much CPU the measured code actually got. Far below the thread count on a CPU run means other
    processes were competing for the cores, and the figure is a lower bound of the machine's speed.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = float("nan")
        self.cpu_seconds = float("nan")

    def start(self) -> Timer:
        synchronize(self.device)
        self._start, self._cpu = time.perf_counter(), time.process_time()
        return self

    def stop(self) -> float:
        synchronize(self.device)
        self.seconds = time.perf_counter() - self._start
        self.cpu_seconds = time.process_time() - self._cpu
        return self.seconds

    @property
    def cpu_util(self) -> float:
        return self.cpu_seconds / self.seconds

    def __enter__(self) -> Timer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


GPU_EVENT_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")


def kernel_busy_seconds(trace: dict[str, Any]) -> float:
    """GPU busy time in a torch.profiler chrome trace: the union of kernel, memcpy and memset intervals
    (overlapping work on several streams counts once)."""
    spans = sorted((float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0)))
                   for e in trace.get("traceEvents", [])
                   if e.get("ph") == "X" and str(e.get("cat", "")).lower() in GPU_EVENT_CATEGORIES)
    busy, end = 0.0, float("-inf")
    for start, stop in spans:
        if stop <= end:
            continue
        busy += stop - max(start, end)
        end = stop
    return busy / 1e6  # trace times are in microseconds


# ------------------------------------------------------------------------------------------- memory
def proc_status_kib(key: str, pid: int | str = "self") -> int | None:
    """A `/proc/<pid>/status` figure in KiB (VmRSS, VmHWM, ...), None where there is no such file or key."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def proc_status_mib(key: str, pid: int | str = "self") -> float:
    """`proc_status_kib` in MiB, nan where unknown."""
    kib = proc_status_kib(key, pid)
    return kib / 1024 if kib is not None else float("nan")


def rss_mib(pid: int | str = "self") -> float:
    """The current resident set size of a process (this one by default), MiB; nan where unknown."""
    return proc_status_mib("VmRSS", pid)


def reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark (VmHWM) to its current RSS (Linux >= 4.0); False where
    that is impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """This process's RSS high-water mark, MiB. VmHWM first: ru_maxrss survives exec, so a worker process
    would report its parent's peak when that is higher; ru_maxrss where there is no /proc."""
    kib = proc_status_kib("VmHWM")
    if kib is not None:
        return kib / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU time of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


class PeakMemory:
    """Peak memory of one phase: `reset()` at its start, `read()` at its end -> {peak_mem_mib, peak_mem_kind}."""

    def __init__(self, device: torch.device):
        self.device = device
        self._phase_rss = False

    def reset(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._phase_rss = reset_peak_rss()

    def read(self) -> dict[str, Any]:
        if self.device.type == "cuda":
            import torch

            return {"peak_mem_mib": torch.cuda.max_memory_allocated(self.device) / 2**20,
                    "peak_mem_kind": "cuda_max_memory_allocated"}
        hwm = proc_status_kib("VmHWM") if self._phase_rss else None
        if hwm is not None:
            return {"peak_mem_mib": hwm / 1024, "peak_mem_kind": "rss_hwm_phase"}
        return {"peak_mem_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "peak_mem_kind": "ru_maxrss_process"}


# -------------------------------------------------------------------------------------- environment
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{rev}{'+dirty' if dirty else ''}" if rev else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device: torch.device | None = None) -> dict[str, Any]:
    """What the figures were measured on: machine, Python, load, git revision, command line; with the
    torch `device` the figures were taken on, also that device, torch's threads and the torch, CUDA
    and Lightning versions (without one, torch is not imported)."""
    if device is None:
        env: dict[str, Any] = {"cpu_model": _cpu_model()}
    else:
        import torch

        env = {"device": str(device),
               "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model(),
               "torch": torch.__version__,
               "cuda": torch.version.cuda,
               "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    env.update({"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count()})
    if device is not None:
        env["torch_threads"] = torch.get_num_threads()
    env.update({"load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
                "git": _git_revision(),
                "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])})
    if device is not None:
        try:
            import lightning

            env["lightning"] = lightning.__version__
        except ImportError:
            pass
    return env


# ------------------------------------------------------------------------------------------- config
def compose_config(overrides: Sequence[str], output_dir: str | Path):
    """The training config as `seq2seq-train` would compose it (Hydra compose API, CONF_DIR),
    writing into `output_dir`. HydraConfig is set so `${hydra:...}` interpolations resolve, and the
    `hydra` node is removed from the returned config, as `@hydra.main` does before calling `main(cfg)`
    (its hydra.sweep.* keys cannot be resolved outside a multirun)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from seq2seq.config import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("train", overrides=[*overrides, f"paths.output_dir={output_dir}"],
                      return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):  # what @hydra.main hands to train(): the hydra node lives in HydraConfig only
        del cfg["hydra"]
    return cfg


def model_summary(model_cfg) -> dict[str, Any]:
    """The ModelConfig as a plain dict (all fields)."""
    return dataclasses.asdict(model_cfg)


def count_parameters(module: torch.nn.Module) -> int:
    """Distinct parameters (a tied output projection is counted once)."""
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------------- decode setup
@dataclasses.dataclass
class DecodeSetup:
    model: Any  # Seq2Seq in eval mode on the device
    tokenizer: Any
    search_cfg: Any  # SearchConfig of the run (beam size and budget are overridden per measurement)
    model_cfg: Any  # ModelConfig
    sources: list[str]  # test-split source lines
    references: list[str]  # test-split reference lines
    weights: str  # "checkpoint:<path>" or "fresh"
    precision: str  # the run's trainer precision (decides the autocast dtype on CUDA)
    data: dict[str, Any]  # language pair and test split

    @property
    def trained(self) -> bool:
        return self.weights != "fresh"


def decode_setup(cfg, device: torch.device, checkpoint: str | None, max_sentences: int = 0,
                 corpus=None) -> DecodeSetup:
    """Model, tokenizer and test sentences for decoding benchmarks.

    With `checkpoint`: `load_for_translation` (model, tokenizer and search settings of that run); the
    test split and language pair come from the checkpoint's config, the files are looked up with the
    composed config's data folders. Without: a freshly initialised `Seq2Seq` (seeded with cfg.seed)
    over the tokenizer of `prepare_corpus(cfg.data)`.
    """
    import torch

    from seq2seq.checkpoint.loading import load_for_translation
    from seq2seq.config import DataConfig, ModelConfig, SearchConfig, section
    from seq2seq.data.cache import prepare_corpus
    from seq2seq.data.corpus import find_corpus_files, read_parallel
    from seq2seq.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
    from seq2seq.model import Seq2Seq

    data_cfg = section(DataConfig, cfg.data, "data")
    if checkpoint:
        model, tokenizer, search_cfg, config = load_for_translation(checkpoint, device)
        ck_data = config.get("data", {})
        data_cfg = dataclasses.replace(data_cfg, **{k: ck_data[k] for k in ("src_lang", "tgt_lang", "test_split")
                                                    if k in ck_data})
        sources, references = read_parallel(*find_corpus_files(data_cfg, data_cfg.test_split))
        model_cfg = section(ModelConfig, config["model"], "model")
        precision = str(config.get("trainer", {}).get("precision", "32-true"))
        weights = f"checkpoint:{checkpoint}"
    else:
        corpus = corpus or prepare_corpus(data_cfg)
        tokenizer = corpus.tokenizer
        test = corpus.splits["test"]
        sources, references = list(test.src_text), list(test.tgt_text)
        model_cfg = section(ModelConfig, cfg.model, "model")
        torch.manual_seed(int(cfg.seed))
        model = Seq2Seq(model_cfg, src_vocab_size=tokenizer.src_vocab_size,
                        tgt_vocab_size=tokenizer.tgt_vocab_size, pad_id=PAD_ID,
                        bos_id=BOS_ID, eos_id=EOS_ID).to(device).eval()
        search_cfg = section(SearchConfig, cfg.search, "search")
        precision = str(cfg.trainer.precision)
        weights = "fresh"
    if max_sentences:
        sources, references = sources[:max_sentences], references[:max_sentences]
    return DecodeSetup(model=model, tokenizer=tokenizer, search_cfg=search_cfg, model_cfg=model_cfg,
                       sources=sources, references=references, weights=weights, precision=precision,
                       data={"src_lang": data_cfg.src_lang, "tgt_lang": data_cfg.tgt_lang,
                             "test_split": data_cfg.test_split, "sentences": len(sources)})


FRESH_NOTE = ("weights are freshly initialised (no --checkpoint): output lengths, and so decode speed, "
              "differ from a trained model's; see hyp/ref length ratio")


def time_decode(setup: DecodeSetup, device: torch.device, dtype: torch.dtype | None, beam_size: int,
                batch_tokens: int, warmup_sentences: int = 64, score: bool = True) -> dict[str, Any]:
    """Translate the test sources once through `Translator.translate` and time it.

    A warm-up call on the first `warmup_sentences` lines comes first (CUDA context, cuDNN plans,
    allocator); the timed call covers tokenisation, batching, search and detokenisation of all lines.
    Target tokens are the emitted pieces without EOS.
    """
    from seq2seq.decoding.translator import Translator
    from seq2seq.evaluation.metrics import score_corpus

    search_cfg = dataclasses.replace(setup.search_cfg, beam_size=beam_size, batch_tokens=batch_tokens)
    translator = Translator(setup.model, setup.tokenizer, search_cfg, device=device, dtype=dtype)
    if warmup_sentences:
        translator.translate(setup.sources[:warmup_sentences])
    memory = PeakMemory(device)
    memory.reset()
    with Timer(device) as timer:
        results = translator.translate(setup.sources)
    out_tokens = sum(len(r.tokens) for r in results)
    ref_tokens = sum(len(ids) for ids in setup.tokenizer.encode_tgt(setup.references))
    row: dict[str, Any] = {
        "search": "greedy" if beam_size == 1 else f"beam{beam_size}",
        "beam_size": beam_size,
        "batch_tokens": batch_tokens,
        "sentences": len(results),
        "seconds": timer.seconds,
        "sent_per_s": len(results) / timer.seconds,
        "tgt_tok_per_s": out_tokens / timer.seconds,
        "out_tokens": out_tokens,
        "hyp_ref_len_ratio": out_tokens / max(ref_tokens, 1),
        "process_cpu_util": timer.cpu_util,
        **memory.read(),
    }
    if score and setup.references:
        row["bleu"] = score_corpus([r.text for r in results], [setup.references], metrics=("bleu",))["bleu"]
    return row


# ------------------------------------------------------------------------------------------- output
def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if value != value:  # nan
            return "n/a"
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def print_table(title: str, rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> None:
    """A plain fixed-width table of `columns` of each row (missing values: n/a)."""
    rows = list(rows)
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    print(f"\n{title}")
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


def print_mapping(title: str, values: dict[str, Any]) -> None:
    print(f"\n{title}")
    width = max(len(k) for k in values) if values else 0
    for key, value in values.items():
        print(f"  {key.ljust(width)}  {_fmt(value) if not isinstance(value, (dict, list)) else value}")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]], right: bool = False) -> list[str]:
    """The lines of a markdown table of already formatted cells (`right`: right-aligned columns)."""
    lines = ["| " + " | ".join(header) + " |", "|" + ("---:|" if right else "---|") * len(header)]
    return lines + ["| " + " | ".join(cells) + " |" for cells in rows]


def lookup(obj: Any, path: str) -> Any:
    """obj['a']['b'] for path 'a.b'; a key that itself contains dots (e.g. 'test/bleu') is tried whole first."""
    if isinstance(obj, dict) and path in obj:
        return obj[path]
    for part in path.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


def markdown_cell(value: Any) -> str:
    """A JSON value as a markdown cell: thousands separated, other floats with 2 decimals, None empty."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def write_json(path: str | Path | None, obj: dict[str, Any], quiet: bool = False) -> None:
    """Write `obj` to `path` atomically (temporary file + rename); nothing when path is None."""
    if not path:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    if not quiet:
        print(f"\nwrote {path}")


# ------------------------------------------------------------------------------------- command line
def add_common_args(p) -> None:
    """Options of the decoding benchmarks (train.py, translate.py): device, CPU threads, test-set size, JSON."""
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads (0 = torch's default). On a shared CPU, 1 avoids OpenMP "
                        "spin-waiting behind other processes, which slows small per-step ops by up to 100x")
    p.add_argument("--max-sentences", type=int, default=0, help="decode only the first N test sentences")
    p.add_argument("--json", metavar="PATH", help="write all figures as JSON here")


def int_list(text: str) -> list[int]:
    """argparse type: '1000,4000,16000' -> [1000, 4000, 16000] (all > 0)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"expected positive integers, got {text!r}")
    return values


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run a script's main() with the project's user errors (bad config, missing corpus or checkpoint)
    reported as one `error:` line and exit code 2, like the console scripts."""
    from seq2seq.training.run import user_errors

    try:
        return main(argv)
    except user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
