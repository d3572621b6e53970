"""`seq2seq-translate`: translate a file (or standard input) with a checkpoint.

Exactly one output line per input line, in input order. The whole input is checked (strict UTF-8,
line count) before anything is written, then read, length-sorted and translated --window lines at a
time (default 10000): memory depends on the window, not on the input's size; standard input is
copied to a temporary file first. Each window's output is written as soon as it is done, to a
hidden partial file beside --output (`.NAME.JOB.part`) that is renamed into place only when the job
is complete, so an interrupted job never leaves a file that looks done. A job that is killed or
fails after writing lines keeps its partial file: the same command with --resume keeps its complete
lines (cut back to whole windows) and translates only the rest; the final file is byte-identical
to that of an uninterrupted run. JOB fingerprints the input, the models and the flags, so --resume
refuses a partial file written with other ones.

--stream (on by itself when standard input is a terminal) translates each line the moment it
arrives and writes (flushes) its output before reading the next: for interactive use and for
pipes. Errors in a line are then found when it is reached, after the lines before it are written.

Input lines are cleaned as training text is (control characters dropped, whitespace runs collapsed);
a line longer than search.max_src_tokens pieces (or --max-src-tokens) is truncated, with a warning
naming it. An empty or whitespace-only line gives an empty translation with score 0 (rank 1 of the
n-best list, an empty alignment) without running the model. Every translation is a single line.

Output formats
  text (default)  one translation per line. With --alignment: `translation<TAB>alignment`.
  jsonl           one JSON object per line: {"line": 1-based input line number, "translation",
                  "score", "normalized_score" = score / length ** length_penalty (length = pieces,
                  plus 1 when it ended with EOS), "finished" (false: cut at the maximum output
                  length, max_len_a + max_len_b * source pieces), and, when asked,
                  "nbest": [{"translation", "score"}, ...] (--nbest K > 1: best first, K entries
                  unless the beam could not fill them; one for an empty line),
                  "alignment", "src_pieces", "tgt_pieces" (--alignment: of the best hypothesis)}.
  --nbest K       (text) K lines per input line: `line_number<TAB>rank<TAB>score<TAB>translation`,
                  line_number 1-based, rank 1..K, score = sum of token log-probabilities (EOS
                  included) with 6 decimals; ranks the beam could not fill have score `-inf` and an
                  empty translation. A beam narrower than K is widened to K. Not with --sample.
  --score-reference FILE  one line per input line (text: the score with 6 decimals; jsonl:
                  {"line", "score"}): log P(reference pieces + EOS | source), the model's score of
                  the reference (re-tokenized with the checkpoint's sentencepiece model), computed for
                  every line, empty ones included. It is the same quantity as "score" above: a finished
                  translation fed back as its reference gets its own score, when its text re-tokenizes
                  into the same pieces.
Alignments are `src-tgt` pairs of 0-based sentencepiece positions (fast_align style, space-separated),
src = position in "src_pieces", tgt = position in "tgt_pieces": for each target piece, the source piece
with the largest attention weight; a target piece that attends most to the source EOS gets no pair.
Empty when the model has no attention (model.attention=none).
--plot-attention DIR writes DIR/attention_<line number, 5 digits>.png (target pieces down, source
pieces across) for the non-empty lines among the first --plot-limit input lines.
Sampling (--sample) draws each token from softmax(log-probs / --temperature), optionally from the
--top-k best only; the same --seed, input and batching give the same samples. "score" stays the
model's own (untempered) log-probability. --ensemble averages the members' log-probabilities per step (renormalised).
Language models (seq2seq-train experiment=lm_quickstart data.tokenizer_from=<this checkpoint>): --lm CKPT
--lm-weight W adds W x the LM's log-probabilities to the model's at every search step (shallow fusion,
greedy, beam and sampling; "score" is then the fused sum); with --lm-rerank the beam's n-best list is
rescored instead by (score + W x LM log-probability) / length ** length_penalty (needs a beam >= 2). The
LM must share the model's target sentencepiece vocabulary; a mismatch is an error before any translation.
--backend onnxruntime --model DIR translates with an export folder (seq2seq-export) through
seq2seq.deploy.runtime (onnxruntime, no torch in the search; docs/deploy.md), in the same formats; --quantize
int8 (torch backend) quantizes the linear and LSTM/GRU layers to int8 for CPU decoding.
Progress and a throughput summary go to standard error (--quiet: neither). Exit status: 0 on
success; 2 on a usage, input or checkpoint error, reported as `error: ...` on standard error with no
output file left behind.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

# torch and the model code (and json, tempfile) are imported where they are used, not here: `--help`
# and usage errors (a bad flag, a missing file) are answered without paying for them
# (scripts/bench_startup.py measures it).
if TYPE_CHECKING:
    from seq2seq.decoding.translator import Translation, Translator

log = logging.getLogger("seq2seq.cli.translate")

PRECISIONS = ("fp32", "bf16", "fp16")  # fp32: no autocast


class UsageError(ValueError):
    """A command-line problem found without importing torch (a missing file, no matplotlib)."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="seq2seq-translate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a .ckpt written by seq2seq-train (or seq2seq-average)")
    src.add_argument("--ensemble", nargs="+", metavar="CKPT", help="several checkpoints: log-probs averaged")
    src.add_argument("--model", metavar="DIR", help="an export folder written by seq2seq-export (onnxruntime)")
    p.add_argument("--backend", choices=("torch", "onnxruntime"),
                   help="torch (with --checkpoint / --ensemble) or onnxruntime (with --model; no torch in the "
                        "search: seq2seq.deploy.runtime); default: the one that reads what was given")
    p.add_argument("--quantize", choices=("int8",),
                   help="torch backend: dynamic int8 quantization of the linear and LSTM/GRU layers (CPU)")
    p.add_argument("--input", default="-",
                   help="input file, plain or .gz by name (default: standard input, gzip detected)")
    p.add_argument("--output", default="-", help="output file (default: standard output)")
    p.add_argument("--format", choices=("text", "jsonl"), default="text")
    p.add_argument("--beam-size", type=int, help="beam width (1 = greedy; default: the checkpoint's search defaults, "
                                                 "tuned on validation if seq2seq-tune-search stored some)")
    p.add_argument("--nbest", type=int, default=1, help="write the K best hypotheses per line")
    p.add_argument("--length-penalty", type=float, help="rank by score / length ** this")
    p.add_argument("--max-len-a", type=int, help="maximum output length = a + b * source length")
    p.add_argument("--max-len-b", type=float, help="see --max-len-a")
    p.add_argument("--min-len", type=int, help="no EOS before this many output pieces (0 = no minimum)")
    p.add_argument("--batch-tokens", type=int, help="source tokens per batch")
    p.add_argument("--max-src-tokens", type=int, help="longer inputs are truncated (with a warning)")
    p.add_argument("--sample", action="store_true", help="sample instead of searching")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k most likely pieces (0 = all)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--score-reference", metavar="FILE", help="print log-likelihoods of these references")
    p.add_argument("--alignment", action="store_true", help="add src-tgt alignments from attention")
    p.add_argument("--plot-attention", metavar="DIR", help="write attention heatmaps (PNG) into DIR")
    p.add_argument("--plot-limit", type=int, default=10, help="sentences to plot with --plot-attention")
    p.add_argument("--lm", metavar="CKPT", help="a language model checkpoint to fuse into the search (or rerank with)")
    p.add_argument("--lm-weight", type=float, help="weight of the LM's log-probabilities (default 0.2)")
    p.add_argument("--lm-rerank", action="store_true", help="rescore the beam's n-best list with the LM instead of fusing")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="bf16/fp16 autocast on GPU")
    p.add_argument("--quiet", action="store_true", help="no progress bar or throughput report")
    p.add_argument("--window", type=int, default=10000,
                   help="input lines read, length-sorted and translated at a time (memory grows with it, not "
                        "with the input)")
    p.add_argument("--stream", action="store_true",
                   help="translate and write each line as soon as it arrives (interactive use, pipes); on by "
                        "itself when standard input is a terminal")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted job: keep the complete lines of its hidden partial output "
                        "(.OUTPUT.JOB.part) and translate the rest")
    args = p.parse_args(argv)
    for name in ("nbest", "beam_size", "batch_tokens", "max_src_tokens", "window"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.max_len_a is not None and args.max_len_a < 0 or args.max_len_b is not None and args.max_len_b < 0:
        p.error("--max-len-a and --max-len-b must be >= 0")
    if args.min_len is not None and args.min_len < 0:
        p.error(f"--min-len must be >= 0 (0 = no minimum), got {args.min_len}")
    if not args.temperature > 0:
        p.error(f"--temperature must be > 0, got {args.temperature}")
    if args.top_k < 0:
        p.error(f"--top-k must be >= 0 (0 = no restriction), got {args.top_k}")
    if args.plot_limit < 0:
        p.error(f"--plot-limit must be >= 0, got {args.plot_limit}")
    if args.sample and args.nbest > 1:
        p.error("--nbest lists come from beam search; it cannot be combined with --sample")
    if args.nbest > 1 and args.alignment and args.format == "text":
        p.error("--alignment with --nbest needs --format jsonl (the n-best TSV has no alignment column)")
    if args.resume and args.output == "-":
        p.error("--resume continues the hidden partial file of an --output FILE; standard output has none")
    if args.stream and (args.resume or args.score_reference):
        p.error("--stream translates lines as they arrive; --resume and --score-reference need a whole input file")
    if (args.lm_rerank or args.lm_weight is not None) and not args.lm:
        p.error("--lm-weight and --lm-rerank need a language model: --lm CKPT")
    args.lm_weight = 0.2 if args.lm_weight is None else args.lm_weight
    if args.lm and args.model:
        p.error("--lm works with the torch backend (--checkpoint or --ensemble), not with --model")
    if args.lm_rerank:
        clash = [flag for flag, on in (("--sample", args.sample), ("--score-reference", args.score_reference),
                                      ("--alignment", args.alignment), ("--plot-attention", args.plot_attention))
                 if on]
        if clash:
            p.error(f"--lm-rerank rescores the beam's n-best list; it cannot be combined with {', '.join(clash)}")
    args.backend = args.backend or ("onnxruntime" if args.model else "torch")
    if (args.backend == "onnxruntime") != bool(args.model):
        p.error("--backend onnxruntime reads an export folder (--model DIR, from seq2seq-export); "
                "--backend torch reads --checkpoint or --ensemble")
    if args.backend == "onnxruntime":
        clash = [flag for flag, on in (("--sample", args.sample), ("--device cuda", args.device == "cuda"),
                                      (f"--precision {args.precision}", args.precision != "fp32"),
                                      ("--quantize (export with seq2seq-export --quantize int8 instead)",
                                       args.quantize)) if on]
        if clash:
            p.error(f"--backend onnxruntime does not support {', '.join(clash)}")
    if args.quantize and args.device == "cuda":
        p.error("--quantize int8 runs on the CPU; use --device cpu")
    if args.score_reference:
        clash = [flag for flag, on in (("--nbest", args.nbest > 1), ("--sample", args.sample),
                                      ("--alignment", args.alignment), ("--plot-attention", args.plot_attention))
                 if on]
        if clash:
            p.error(f"--score-reference scores given references; it cannot be combined with {', '.join(clash)}")
    return args


class Input:
    """The input file, checked whole before any output is written (in constant memory: one line at a time).

    Standard input (outside --stream) is first copied to a temporary file, gzip detected, so that
    it is checked and read like a file; `close()` removes that copy.
    """

    def __init__(self, path: str):
        from seq2seq.data.corpus import scan_lines

        self.spooled = path == "-"
        self.name = "<stdin>" if self.spooled else path  # what errors call it
        self.path = spool_stdin() if self.spooled else Path(path)
        try:
            self.lines, self.sha256 = scan_lines(self.path, name=self.name)
        except BaseException:
            self.close()
            raise

    def read(self, skip: int = 0):
        """Its cleaned lines, one at a time (`corpus.iter_lines`), the first `skip` passed over."""
        from seq2seq.data import corpus

        return corpus.iter_lines(self.path, name=self.name, skip=skip)

    def close(self) -> None:
        if self.spooled:
            self.path.unlink(missing_ok=True)


def spool_stdin() -> Path:
    """Standard input copied (in blocks) to a temporary file named .gz when it is gzip data."""
    import shutil
    import tempfile

    stream = sys.stdin.buffer
    head = stream.read(2)
    fd, tmp = tempfile.mkstemp(prefix="seq2seq-translate-stdin.", suffix=".gz" if head == b"\x1f\x8b" else ".txt")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(head)
            shutil.copyfileobj(stream, f, 1 << 20)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def stdin_lines():
    """--stream from standard input: its cleaned lines as they arrive (gzip data decompressed)."""
    import gzip

    from seq2seq.data import corpus

    stream = sys.stdin.buffer
    if hasattr(stream, "peek") and stream.peek(2)[:2] == b"\x1f\x8b":  # peek waits for the first line only
        stream = gzip.GzipFile(fileobj=stream, mode="rb")
    return corpus.iter_lines(stream=stream, name="<stdin>")


def alignment(t: Translation) -> str:
    """`src-tgt` pairs: for each target piece (EOS excluded), the most attended source piece."""
    if t.attention is None:
        return ""
    att = t.attention[: len(t.tokens), : len(t.src_tokens) + 1]  # [T, S] (source EOS column kept)
    best = att.argmax(1).tolist() if att.shape[0] and att.shape[1] else []  # torch or numpy (onnxruntime)
    return " ".join(f"{s}-{j}" for j, s in enumerate(best) if s < len(t.src_tokens))


def format_line(i: int, t: Translation, args, translator: Translator) -> str:
    import json

    if args.format == "jsonl":
        obj = {"line": i + 1, "translation": t.text, "score": t.score,
               "normalized_score": t.score / max(t.length, 1) ** translator.cfg.length_penalty,
               "finished": t.finished}
        if args.nbest > 1:
            obj["nbest"] = [{"translation": text, "score": score} for text, score in t.nbest]
        if args.alignment:
            obj["alignment"] = alignment(t)
            obj["src_pieces"] = translator.tokenizer.src_pieces(t.src_tokens)
            obj["tgt_pieces"] = translator.tokenizer.tgt_pieces(t.tokens)
        return json.dumps(obj, ensure_ascii=False) + "\n"
    if args.nbest > 1:
        out = "".join(f"{i + 1}\t{r + 1}\t{score:.6f}\t{text}\n" for r, (text, score) in enumerate(t.nbest))
        return out + "".join(f"{i + 1}\t{r + 1}\t-inf\t\n" for r in range(len(t.nbest), args.nbest))
    return f"{t.text}\t{alignment(t)}\n" if args.alignment else t.text + "\n"


class PartialOutput:
    """The output file's hidden twin `.NAME.JOB.part` beside it, renamed over NAME when the job is done.

    JOB is a fingerprint of what decides the output (input and reference contents, models, flags), so
    `--resume` finds the partial output of the same job only, keeps its complete lines and appends
    the rest. A job that stops after writing lines (killed, interrupted, failed) leaves its partial
    output for `--resume`; one that wrote nothing removes it. A lock stops two runs of one job from
    writing the same file at once.
    """

    def __init__(self, path: str, job: str, resume: bool, unit: int):
        import glob

        from seq2seq.data.corpus import CorpusError

        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise CorpusError(f"output folder {self.path.parent} does not exist (for --output {path})")
        self.tmp = self.path.parent / f".{self.path.name}.{job}.part"
        self.unit = unit  # output lines per input line (--nbest K in text: K)
        others = sorted(p.name for p in self.path.parent.glob(f".{glob.escape(self.path.name)}.*.part")
                        if p != self.tmp and not p.name.endswith(".stream.part"))  # --stream's: never resumed
        existed = self.tmp.exists()
        if resume and not existed and others:
            raise CorpusError(f"--resume: no partial output of this job beside {self.path}; {', '.join(others)} "
                              "was written with another input, reference, model or setting. Run the same "
                              "command as before, or remove that file to start over")
        fd = os.open(self.tmp, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            import fcntl  # POSIX; elsewhere there is no lock
        except ImportError:
            fcntl = None
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the system when the process ends
        except BlockingIOError:
            os.close(fd)
            raise CorpusError(f"{self.tmp}: another seq2seq-translate is writing this output now") from None
        self.file = os.fdopen(fd, "r+b")
        self.kept = 0  # output lines taken over from an earlier run
        if existed and resume:
            self.kept = self._complete_lines()
        elif existed and self.file.seek(0, os.SEEK_END) > 0:
            log.warning("%s holds the output of an interrupted run of this job: starting over (--resume "
                        "would continue it)", self.tmp)
        self.file.truncate(self.file.seek(self._offset(self.kept)))
        self.written = 0  # output lines this run

    def resume_point(self, window: int) -> int:
        """Input lines to skip: the kept ones, cut back to whole windows (the rest is written again), so
        that the resumed job translates the same windows as an uninterrupted one and writes the same bytes."""
        done = self.kept // self.unit // window * window
        self.kept = done * self.unit
        self.file.truncate(self.file.seek(self._offset(self.kept)))
        return done

    def _complete_lines(self) -> int:
        self.file.seek(0)
        return sum(block.count(b"\n") for block in iter(lambda: self.file.read(1 << 20), b""))

    def _offset(self, lines: int) -> int:
        """Byte offset just after the first `lines` lines (all of them complete)."""
        self.file.seek(0)
        offset = 0
        while lines > 0:
            block = self.file.read(1 << 20)
            count = block.count(b"\n")
            if not block:
                raise ValueError(f"{self.tmp} holds fewer than {lines} more lines")
            if count < lines:
                offset, lines = offset + len(block), lines - count
                continue
            end = -1
            for _ in range(lines):
                end = block.index(b"\n", end + 1)
            return offset + end + 1
        return offset

    def write(self, text: str) -> None:
        self.file.write(text.encode("utf-8"))
        self.file.flush()  # whole lines reach the file as soon as they are done: a killed job keeps them
        self.written += text.count("\n")

    def commit(self) -> None:
        self.file.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Keep the lines done (for --resume), or leave nothing behind when there are none."""
        self.file.close()
        if self.kept + self.written == 0:
            self.tmp.unlink(missing_ok=True)
        else:
            print(f"{self.kept + self.written} output lines kept in {self.tmp}: run the same command with "
                  "--resume to continue", file=sys.stderr)


def job_fingerprint(args, source: Input, refs: Input | None) -> str:
    """What decides the output bytes: the input and reference contents, the models (path, size, time)
    and every flag except those that only say how or where to run."""
    import hashlib
    import json

    ignored = {"input", "output", "score_reference", "checkpoint", "ensemble", "model", "resume", "quiet",
               "device", "plot_attention", "plot_limit", "stream", "lm"}
    models = [Path(p) for p in checkpoint_paths(args) + ([args.lm] if args.lm else [])]
    if args.model:
        models = sorted(p for p in Path(args.model).iterdir() if p.is_file())
    job = {"input": source.sha256, "reference": refs.sha256 if refs else None,
           "models": [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in models],
           "flags": {k: v for k, v in sorted(vars(args).items()) if k not in ignored}}
    return hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()[:12]


def apply_search_overrides(args, search_cfg) -> None:
    overrides = {"beam_size": args.beam_size, "length_penalty": args.length_penalty,
                 "max_len_a": args.max_len_a, "max_len_b": args.max_len_b, "min_len": args.min_len,
                 "batch_tokens": args.batch_tokens, "max_src_tokens": args.max_src_tokens}
    for key, value in overrides.items():
        if value is not None:
            setattr(search_cfg, key, value)
    if args.nbest > search_cfg.beam_size and not args.sample:
        search_cfg.beam_size = args.nbest  # n-best needs at least that many beams


def checkpoint_paths(args) -> list[str]:
    return [args.checkpoint] if args.checkpoint else (args.ensemble or [])  # none: --backend onnxruntime


def build_translator(args) -> Translator:
    if args.backend == "onnxruntime":
        from seq2seq.deploy.runtime import OnnxTranslator  # numpy + onnxruntime + sentencepiece, no torch

        translator = OnnxTranslator(args.model)
        apply_search_overrides(args, translator.cfg)
        return translator

    import torch

    from seq2seq.checkpoint.format import CheckpointError, load_device, load_members
    from seq2seq.model.precision import bf16_supported, precision_dtype
    from seq2seq.decoding.search import Ensemble
    from seq2seq.decoding.translator import Sampling, Translator

    device = load_device(args.device)
    models, tokenizer, search_cfg, _ = load_members(checkpoint_paths(args), device)
    if args.quantize:
        from seq2seq.deploy.quantize import quantize_torch_int8

        models = [quantize_torch_int8(m) for m in models]
    model = Ensemble(models) if len(models) > 1 else models[0]
    apply_search_overrides(args, search_cfg)
    sampling = Sampling(args.temperature, args.top_k, args.seed) if args.sample else None
    dtype = precision_dtype(args.precision, device.type)
    if dtype is not None and device.type != "cuda":
        log.warning("--precision %s applies on a GPU; translating in fp32 on the %s", args.precision, device.type)
        dtype = None
    if dtype == torch.bfloat16 and not bf16_supported(device.type):
        raise CheckpointError("--precision bf16: this GPU does not support bfloat16; use fp16 or fp32")
    return Translator(model, tokenizer, search_cfg, device=device, dtype=dtype, sampling=sampling)


def attach_lm(args, translator: Translator):
    """Load --lm and check its vocabulary (before any translation); fusion wraps the translator's model,
    reranking returns the LM for `rerank` after the search."""
    from seq2seq.checkpoint.format import CheckpointError, load_language_model
    from seq2seq.lm.fusion import ShallowFusion, check_vocabularies

    lm, lm_tokenizer, _ = load_language_model(args.lm, translator.device)
    check_vocabularies(translator.tokenizer, lm_tokenizer, checkpoint_paths(args)[0], args.lm)
    if args.lm_rerank:
        if translator.cfg.beam_size < 2:
            raise CheckpointError(f"--lm-rerank rescores an n-best list, but the beam size is "
                                  f"{translator.cfg.beam_size}; give --beam-size K (K >= 2)")
        return lm
    translator.model = ShallowFusion(translator.model, lm, args.lm_weight)
    return None


class Progress:
    """A one-line progress report on stderr, for long files."""

    def __init__(self, total: int, enabled: bool, done: int = 0):
        self.total, self.done, self.enabled = total, done, enabled and total > done
        self.start, self.started_at = time.perf_counter(), done  # (a resumed job starts at `done`)
        self.shown = 0.0

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.enabled and (now - self.shown >= 0.2 or self.done >= self.total):  # a few updates a second
            self.shown = now
            rate = (self.done - self.started_at) / max(now - self.start, 1e-9)
            print(f"\rtranslated {self.done}/{self.total} lines ({rate:.1f} sent/s)", end="", file=sys.stderr)

    def close(self) -> None:
        if self.enabled:
            print(file=sys.stderr)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or a clear error naming the optional extra."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot-attention needs matplotlib: pip install 'seq2seq[plot]'") from None
    return plt


def _labels(pieces: list[str]) -> list[str]:
    return [p.replace("$", r"\$") for p in pieces]  # a '$' would start matplotlib's math mode


def plot_attention(translations: list[Translation], first: int, translator: Translator, folder: str,
                   limit: int) -> None:
    """Heatmaps of the translations of input lines first + 1, ... that are among the first `limit` lines."""
    import numpy as np

    plt = pyplot()
    mine = translations[: max(limit - first, 0)]
    if first == 0 and all(t.attention is None for t in mine if t.tokens):
        log.warning("--plot-attention: nothing to plot (the model has no attention, or the first %d lines "
                    "are empty)", limit)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for i, t in enumerate(mine, first):
        if t.attention is None or not t.tokens:
            continue
        src = _labels(translator.tokenizer.src_pieces(t.src_tokens)) + ["</s>"]
        tgt = _labels(translator.tokenizer.tgt_pieces(t.tokens)) + (["</s>"] if t.finished else [])
        att = np.asarray(t.attention[: len(tgt), : len(src)], dtype=np.float32)
        fig, ax = plt.subplots(figsize=(max(4, 0.35 * len(src)), max(3, 0.35 * len(tgt))))
        ax.imshow(att, cmap="Greys", aspect="auto", vmin=0.0, vmax=1.0)
        ax.set_xticks(range(len(src)), src, rotation=90, fontsize=8)
        ax.set_yticks(range(len(tgt)), tgt, fontsize=8)
        ax.set_xlabel("source")
        ax.set_ylabel("target")
        fig.tight_layout()
        fig.savefig(out / f"attention_{i + 1:05d}.png", dpi=100)
        plt.close(fig)


def check_files(args) -> None:
    """Missing files, reported with the messages the readers would give, before any slow import."""
    for path in (args.input, args.score_reference):
        if path not in (None, "-") and not Path(path).exists():
            raise UsageError(f"{path}: file not found")
    for path in checkpoint_paths(args) + ([args.lm] if args.lm else []):
        if not Path(path).is_file():
            raise UsageError(f"checkpoint {path} does not exist")


def run(args) -> None:
    check_files(args)
    if args.stream or (args.input == "-" and sys.stdin is not None and sys.stdin.isatty()):
        return run_stream(args)
    from seq2seq.data.corpus import CorpusError

    source = Input(args.input)  # checked whole (UTF-8, line count) before any output
    refs = None
    try:
        if args.score_reference:
            refs = Input(args.score_reference)
            if refs.lines != source.lines:
                raise CorpusError(f"--score-reference {args.score_reference} has {refs.lines} lines but "
                                  f"--input {source.name} has {source.lines}")
        if args.plot_attention:  # fail before any work: no matplotlib, or a folder that cannot be made
            pyplot()
            Path(args.plot_attention).mkdir(parents=True, exist_ok=True)
        out = None
        if args.output != "-":
            unit = args.nbest if args.format == "text" and args.nbest > 1 else 1
            out = PartialOutput(args.output, job_fingerprint(args, source, refs), args.resume, unit)
        try:
            translator = build_translator(args)
            reranker = attach_lm(args, translator) if args.lm else None
            skip = out.resume_point(args.window) if out is not None else 0
            if skip and not args.quiet:
                print(f"resuming: {skip} of {source.lines} lines were done", file=sys.stderr)
            translate_windows(args, translator, reranker, source, refs, skip,
                              out.write if out is not None else write_stdout)
            if out is not None:
                out.commit()
        except BaseException:
            if out is not None:
                out.abort()
            raise
    finally:
        source.close()
        if refs is not None:
            refs.close()


def write_stdout(text: str) -> None:
    sys.stdout.flush()
    sys.stdout.buffer.write(text.encode("utf-8"))  # UTF-8 whatever the locale says
    sys.stdout.buffer.flush()


def translate_lines(args, translator: Translator, reranker, lines: list[str], **kwargs: Any) -> list:
    """`translator.translate(lines)` with --nbest; with --lm-rerank (`reranker`, the LM) the beam's whole
    n-best list is rescored by the LM first, and the best --nbest of it kept."""
    if reranker is None:
        return translator.translate(lines, nbest=args.nbest, **kwargs)
    import dataclasses

    from seq2seq.lm.fusion import rerank

    results = translator.translate(lines, nbest=translator.cfg.beam_size, **kwargs)
    results = rerank(results, reranker, translator.tokenizer, args.lm_weight, translator.cfg.length_penalty,
                     translator.device)
    return [dataclasses.replace(r, nbest=r.nbest[:args.nbest]) for r in results]


def translate_windows(args, translator: Translator, reranker, source: Input, refs: Input | None, skip: int,
                      write) -> None:
    """Translate `source` after its first `skip` lines, --window lines at a time (each window length-sorted
    into batches by the translator), writing each window's output, in input order, as it is done."""
    import json
    from itertools import islice

    lines = source.read(skip)
    ref_lines = refs.read(skip) if refs is not None else None
    progress = Progress(source.lines, not args.quiet, done=skip)
    want_attention = args.alignment or bool(args.plot_attention)
    start, first, n_tokens = time.perf_counter(), skip, 0
    while True:
        window = list(islice(lines, args.window))  # the previous window is released: one in memory at a time
        if not window:
            break
        if ref_lines is not None:
            scores = translator.score_references(window, list(islice(ref_lines, len(window))), first_line=first + 1)
            progress(len(window))
            if args.format == "jsonl":
                text = "".join(json.dumps({"line": first + i + 1, "score": s}) + "\n" for i, s in enumerate(scores))
            else:
                text = "".join(f"{s:.6f}\n" for s in scores)
        else:
            results = translate_lines(args, translator, reranker, window, with_attention=want_attention,
                                           progress=progress, first_line=first + 1)
            text = "".join(format_line(first + i, t, args, translator) for i, t in enumerate(results))
            n_tokens += sum(t.length for t in results)
            if args.plot_attention and first < args.plot_limit:
                plot_attention(results, first, translator, args.plot_attention, args.plot_limit)
        write(text)
        first += len(window)
        window = results = scores = text = None  # noqa: F841 (released before the next window is read)
    progress.close()
    if not args.quiet and refs is None:
        report(first - skip, n_tokens, time.perf_counter() - start)


def report(n_lines: int, n_tokens: int, elapsed: float) -> None:
    elapsed = max(elapsed, 1e-9)
    print(f"{n_lines} lines in {elapsed:.2f} s: {n_lines / elapsed:.1f} sentences/s, "
          f"{n_tokens / elapsed:.0f} target tokens/s", file=sys.stderr)


def run_stream(args) -> None:
    """--stream: each line translated and written (flushed) as soon as it arrives; for a terminal or a pipe."""
    from seq2seq.data import corpus

    if args.resume or args.score_reference:
        flag = "--resume" if args.resume else "--score-reference"
        why = "--stream was given" if args.stream else "standard input is a terminal (which turns on --stream)"
        raise UsageError(f"{flag} needs a whole input file, but {why}")
    if args.plot_attention:
        pyplot()
        Path(args.plot_attention).mkdir(parents=True, exist_ok=True)
    out = None
    if args.output != "-":  # flushed line by line too; renamed into place at the end of the input
        out = PartialOutput(args.output, f"{os.getpid()}.stream", resume=False, unit=1)
    try:
        translator = build_translator(args)
        reranker = attach_lm(args, translator) if args.lm else None
        lines = stdin_lines() if args.input == "-" else corpus.iter_lines(args.input)
        if args.input == "-" and sys.stdin.isatty() and not args.quiet:
            print("seq2seq-translate: one sentence per line, Ctrl-D to end", file=sys.stderr)
        write = out.write if out is not None else write_stdout
        want_attention = args.alignment or bool(args.plot_attention)
        start, n_lines, n_tokens = time.perf_counter(), 0, 0
        for i, line in enumerate(lines):
            [t] = translate_lines(args, translator, reranker, [line], with_attention=want_attention, first_line=i + 1)
            write(format_line(i, t, args, translator))
            if args.plot_attention and i < args.plot_limit:
                plot_attention([t], i, translator, args.plot_attention, args.plot_limit)
            n_lines, n_tokens = n_lines + 1, n_tokens + t.length
        if out is not None:
            out.commit()
    except BaseException as e:
        if out is not None:
            out.written = 0  # nothing to resume: a stream is not read again
            out.abort()
        if isinstance(e, KeyboardInterrupt):  # Ctrl-C is how an interactive session may end: no traceback
            raise SystemExit(130) from None
        raise
    if not args.quiet:
        report(n_lines, n_tokens, time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = parse_args(argv)
    try:
        run(args)
    except (ValueError, OSError) as e:  # CorpusError, CheckpointError, UsageError are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
