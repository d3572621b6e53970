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
import functools
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

# The library (seq2seq.decoding, seq2seq.data, and with the checkpoint code torch) is imported in the
# functions that use it, not here: `--help` and usage errors (a bad flag, a missing file) are answered
# without paying for it (tests/test_startup.py; scripts/bench/startup.py measures it).
if TYPE_CHECKING:
    from seq2seq.decoding.files import Input, Rerank
    from seq2seq.decoding.output import OutputFormat
    from seq2seq.decoding.translator import Translator

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")  # fp32: no autocast


class UsageError(ValueError):
    """A command-line problem found without importing torch (a missing file, --stream with --resume)."""


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


def output_format(args) -> OutputFormat:
    from seq2seq.decoding.output import OutputFormat

    return OutputFormat(format=args.format, nbest=args.nbest, alignment=args.alignment,
                        plot_dir=args.plot_attention, plot_limit=args.plot_limit)


def checkpoint_paths(args) -> list[str]:
    return [args.checkpoint] if args.checkpoint else (args.ensemble or [])  # none: --backend onnxruntime


# Flags that only say how or where to run, not what the output holds: not part of a job's fingerprint.
HOW_AND_WHERE = {"input", "output", "score_reference", "checkpoint", "ensemble", "model", "resume", "quiet",
                 "device", "plot_attention", "plot_limit", "stream", "lm"}


def job_id(args, source: Input, refs: Input | None) -> str:
    """The partial output's JOB: the input and reference contents, the models and every other flag."""
    from seq2seq.decoding.files import job_fingerprint

    models = [Path(p) for p in checkpoint_paths(args) + ([args.lm] if args.lm else [])]
    if args.model:
        models = sorted(p for p in Path(args.model).iterdir() if p.is_file())
    flags = {k: v for k, v in sorted(vars(args).items()) if k not in HOW_AND_WHERE}
    return job_fingerprint(source, refs, models, flags)


def apply_search_overrides(args, search_cfg) -> None:
    overrides = {"beam_size": args.beam_size, "length_penalty": args.length_penalty,
                 "max_len_a": args.max_len_a, "max_len_b": args.max_len_b, "min_len": args.min_len,
                 "batch_tokens": args.batch_tokens, "max_src_tokens": args.max_src_tokens}
    for key, value in overrides.items():
        if value is not None:
            setattr(search_cfg, key, value)
    if args.nbest > search_cfg.beam_size and not args.sample:
        search_cfg.beam_size = args.nbest  # n-best needs at least that many beams


def build_translator(args) -> Translator:
    if args.backend == "onnxruntime":
        from seq2seq.deploy.runtime import OnnxTranslator  # numpy + onnxruntime + sentencepiece, no torch

        translator = OnnxTranslator(args.model)
        apply_search_overrides(args, translator.cfg)
        return translator

    import torch

    from seq2seq.checkpoint.format import CheckpointError
    from seq2seq.checkpoint.loading import load_device, load_members
    from seq2seq.decoding.search import Ensemble
    from seq2seq.decoding.translator import Sampling, Translator
    from seq2seq.deploy.quantize import quantize_torch_int8
    from seq2seq.model.precision import bf16_supported, precision_dtype

    device = load_device(args.device)
    models, tokenizer, search_cfg, _ = load_members(checkpoint_paths(args), device)
    if args.quantize:
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


def attach_lm(args, translator: Translator) -> Rerank | None:
    """Load --lm and check its vocabulary (before any translation); fusion wraps the translator's model,
    reranking returns the `rerank` to apply to the beam's n-best lists."""
    from seq2seq.checkpoint.format import CheckpointError
    from seq2seq.checkpoint.loading import load_language_model
    from seq2seq.lm.fusion import ShallowFusion, check_vocabularies, rerank

    lm, lm_tokenizer, _ = load_language_model(args.lm, translator.device)
    check_vocabularies(translator.tokenizer, lm_tokenizer, checkpoint_paths(args)[0], args.lm)
    if args.lm_rerank:
        if translator.cfg.beam_size < 2:
            raise CheckpointError(f"--lm-rerank rescores an n-best list, but the beam size is "
                                  f"{translator.cfg.beam_size}; give --beam-size K (K >= 2)")
        return functools.partial(rerank, lm=lm, tokenizer=translator.tokenizer, weight=args.lm_weight,
                                 length_penalty=translator.cfg.length_penalty, device=translator.device)
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


def report(n_lines: int, n_tokens: int, elapsed: float) -> None:
    elapsed = max(elapsed, 1e-9)
    print(f"{n_lines} lines in {elapsed:.2f} s: {n_lines / elapsed:.1f} sentences/s, "
          f"{n_tokens / elapsed:.0f} target tokens/s", file=sys.stderr)


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
    from seq2seq.decoding.files import Input, PartialOutput, translate_windows, write_stdout
    from seq2seq.decoding.output import prepare_plots

    source = Input(args.input)  # checked whole (UTF-8, line count) before any output
    refs = None
    try:
        if args.score_reference:
            refs = Input(args.score_reference)
            if refs.lines != source.lines:
                raise CorpusError(f"--score-reference {args.score_reference} has {refs.lines} lines but "
                                  f"--input {source.name} has {source.lines}")
        if args.plot_attention:  # fail before any work: no matplotlib, or a folder that cannot be made
            prepare_plots(args.plot_attention)
        out = None
        if args.output != "-":
            unit = args.nbest if args.format == "text" and args.nbest > 1 else 1
            out = PartialOutput(args.output, job_id(args, source, refs), args.resume, unit)
        try:
            translator = build_translator(args)
            rerank = attach_lm(args, translator) if args.lm else None
            skip = out.resume_point(args.window) if out is not None else 0
            if skip and not args.quiet:
                print(f"resuming: {skip} of {source.lines} lines were done", file=sys.stderr)
            progress = Progress(source.lines, not args.quiet, done=skip)
            start = time.perf_counter()
            n_tokens = translate_windows(translator, rerank, source, refs, skip, args.window, output_format(args),
                                         out.write if out is not None else write_stdout, progress)
            progress.close()
            if not args.quiet and refs is None:
                report(source.lines - skip, n_tokens, time.perf_counter() - start)
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


def run_stream(args) -> None:
    """--stream: each line translated and written (flushed) as soon as it arrives; for a terminal or a pipe."""
    from seq2seq.data.corpus import iter_lines
    from seq2seq.decoding.files import PartialOutput, stdin_lines, translate_stream, write_stdout
    from seq2seq.decoding.output import prepare_plots

    if args.resume or args.score_reference:
        flag = "--resume" if args.resume else "--score-reference"
        why = "--stream was given" if args.stream else "standard input is a terminal (which turns on --stream)"
        raise UsageError(f"{flag} needs a whole input file, but {why}")
    if args.plot_attention:
        prepare_plots(args.plot_attention)
    out = None
    if args.output != "-":  # flushed line by line too; renamed into place at the end of the input
        out = PartialOutput(args.output, f"{os.getpid()}.stream", resume=False, unit=1)
    try:
        translator = build_translator(args)
        rerank = attach_lm(args, translator) if args.lm else None
        lines = stdin_lines() if args.input == "-" else iter_lines(args.input)
        if args.input == "-" and sys.stdin.isatty() and not args.quiet:
            print("seq2seq-translate: one sentence per line, Ctrl-D to end", file=sys.stderr)
        start = time.perf_counter()
        n_lines, n_tokens = translate_stream(translator, rerank, lines, output_format(args),
                                             out.write if out is not None else write_stdout)
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
    except (ValueError, OSError) as e:  # CorpusError, CheckpointError, UsageError, PlotError are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
