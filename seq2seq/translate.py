"""`seq2seq-translate`: translate a file (or standard input) with a checkpoint.

Exactly one output line per input line, in input order. The whole input is read and checked
(strict UTF-8) before anything is written; output goes to a temporary file that is renamed into
place only when the job is complete, so an interrupted job never leaves a file that looks done.

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
seq2seq.runtime (onnxruntime, no torch in the search; docs/deploy.md), in the same formats; --quantize
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
from typing import TYPE_CHECKING, Sequence

# torch and the model code (and json, tempfile) are imported where they are used, not here: `--help`
# and usage errors (a bad flag, a missing file) are answered without paying for them
# (scripts/bench_startup.py measures it).
if TYPE_CHECKING:
    from seq2seq.translator import Translation, Translator

log = logging.getLogger("seq2seq.translate")

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
                        "search: seq2seq.runtime); default: the one that reads what was given")
    p.add_argument("--quantize", choices=("int8",),
                   help="torch backend: dynamic int8 quantization of the linear and LSTM/GRU layers (CPU)")
    p.add_argument("--input", default="-",
                   help="input file, plain or .gz by name (default: standard input, gzip detected)")
    p.add_argument("--output", default="-", help="output file (default: standard output)")
    p.add_argument("--format", choices=("text", "jsonl"), default="text")
    p.add_argument("--beam-size", type=int, help="beam width (1 = greedy; default: the run's search config)")
    p.add_argument("--nbest", type=int, default=1, help="write the K best hypotheses per line")
    p.add_argument("--length-penalty", type=float, help="rank by score / length ** this")
    p.add_argument("--max-len-a", type=int, help="maximum output length = a + b * source length")
    p.add_argument("--max-len-b", type=float, help="see --max-len-a")
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
    args = p.parse_args(argv)
    for name in ("nbest", "beam_size", "batch_tokens", "max_src_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.max_len_a is not None and args.max_len_a < 0 or args.max_len_b is not None and args.max_len_b < 0:
        p.error("--max-len-a and --max-len-b must be >= 0")
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


def read_input(path: str) -> list[str]:
    """All input lines, strictly UTF-8 (errors name the line) before any output is written."""
    import tempfile

    from seq2seq.corpus import CorpusError, read_lines

    if path != "-":
        return read_lines(path)
    data = sys.stdin.buffer.read()
    suffix = ".gz" if data[:2] == b"\x1f\x8b" else ".txt"  # read_lines decompresses by suffix
    with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:  # one reader for files and stdin
        tmp.write(data)
        tmp.flush()
        try:
            return read_lines(tmp.name)
        except CorpusError as e:
            raise CorpusError(str(e).replace(tmp.name, "<stdin>")) from None


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


class AtomicOutput:
    """Write to a temporary file beside `path`; rename over `path` only on success."""

    def __init__(self, path: str):
        import tempfile

        from seq2seq.corpus import CorpusError

        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise CorpusError(f"output folder {self.path.parent} does not exist (for --output {path})")
        fd, self.tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".part", dir=self.path.parent)
        self.file = os.fdopen(fd, "w", encoding="utf-8", newline="\n")

    def commit(self) -> None:
        self.file.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.file.close()
        Path(self.tmp).unlink(missing_ok=True)


def apply_search_overrides(args, search_cfg) -> None:
    overrides = {"beam_size": args.beam_size, "length_penalty": args.length_penalty,
                 "max_len_a": args.max_len_a, "max_len_b": args.max_len_b,
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
        from seq2seq.runtime import OnnxTranslator  # numpy + onnxruntime + sentencepiece, no torch

        translator = OnnxTranslator(args.model)
        apply_search_overrides(args, translator.cfg)
        return translator

    import torch

    from seq2seq.checkpoint import CheckpointError, load_for_translation
    from seq2seq.search import Ensemble
    from seq2seq.translator import Sampling, Translator

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError("--device cuda was asked for, but no CUDA GPU is visible")
    paths = checkpoint_paths(args)
    loaded = [load_for_translation(p, device) for p in paths]
    model, tokenizer, search_cfg, _ = loaded[0]
    for path, (_, tok, _, _) in zip(paths[1:], loaded[1:]):
        if tok.state_dict() != tokenizer.state_dict():
            raise CheckpointError(f"--ensemble: {path} uses another sentencepiece model than {paths[0]}")
    if args.quantize:
        from seq2seq.quantize import quantize_torch_int8

        loaded = [(quantize_torch_int8(m), *rest) for m, *rest in loaded]
        model = loaded[0][0]
    if len(loaded) > 1:
        model = Ensemble([m for m, *_ in loaded])
    apply_search_overrides(args, search_cfg)
    sampling = Sampling(args.temperature, args.top_k, args.seed) if args.sample else None
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    if dtype is not None and device.type != "cuda":
        log.warning("--precision %s applies on a GPU; translating in fp32 on the %s", args.precision, device.type)
        dtype = None
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise CheckpointError("--precision bf16: this GPU does not support bfloat16; use fp16 or fp32")
    return Translator(model, tokenizer, search_cfg, device=device, dtype=dtype, sampling=sampling)


def attach_lm(args, translator: Translator):
    """Load --lm and check its vocabulary (before any translation); fusion wraps the translator's model,
    reranking returns the LM for `rerank` after the search."""
    from seq2seq.checkpoint import CheckpointError, load_language_model
    from seq2seq.fusion import ShallowFusion, check_vocabularies

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

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.enabled = total, 0, enabled and total > 0
        self.start = time.perf_counter()

    def __call__(self, n: int) -> None:
        self.done += n
        if self.enabled:
            rate = self.done / max(time.perf_counter() - self.start, 1e-9)
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


def plot_attention(translations: list[Translation], translator: Translator, folder: str, limit: int) -> None:
    import numpy as np

    plt = pyplot()
    if all(t.attention is None for t in translations[:limit] if t.tokens):
        log.warning("--plot-attention: nothing to plot (the model has no attention, or the first %d lines "
                    "are empty)", limit)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for i, t in enumerate(translations[:limit]):
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
    import dataclasses
    import json

    from seq2seq.corpus import CorpusError, read_lines

    lines = read_input(args.input)
    refs = read_lines(args.score_reference) if args.score_reference else None
    if refs is not None and len(refs) != len(lines):
        raise CorpusError(f"--score-reference {args.score_reference} has {len(refs)} lines but "
                          f"--input {args.input} has {len(lines)}")
    if args.plot_attention:  # fail before any work: no matplotlib, or a folder that cannot be made
        pyplot()
        Path(args.plot_attention).mkdir(parents=True, exist_ok=True)
    out = AtomicOutput(args.output) if args.output != "-" else None
    try:
        translator = build_translator(args)
        reranker = attach_lm(args, translator) if args.lm else None
        start = time.perf_counter()
        if refs is not None:
            scores = translator.score_references(lines, refs)
            if args.format == "jsonl":
                text = "".join(json.dumps({"line": i + 1, "score": s}) + "\n" for i, s in enumerate(scores))
            else:
                text = "".join(f"{s:.6f}\n" for s in scores)
        else:
            progress = Progress(len(lines), not args.quiet)
            want_attention = args.alignment or bool(args.plot_attention)
            nbest = translator.cfg.beam_size if reranker is not None else args.nbest
            results = translator.translate(lines, nbest=nbest, with_attention=want_attention, progress=progress)
            if reranker is not None:
                from seq2seq.fusion import rerank

                results = rerank(results, reranker, translator.tokenizer, args.lm_weight,
                                 translator.cfg.length_penalty, translator.device)
                results = [dataclasses.replace(r, nbest=r.nbest[:args.nbest]) for r in results]
            progress.close()
            elapsed = max(time.perf_counter() - start, 1e-9)  # translation only: not plotting or writing
            text = "".join(format_line(i, t, args, translator) for i, t in enumerate(results))
            if args.plot_attention:
                plot_attention(results, translator, args.plot_attention, args.plot_limit)
        if out is None:
            sys.stdout.flush()
            sys.stdout.buffer.write(text.encode("utf-8"))  # UTF-8 whatever the locale says
            sys.stdout.buffer.flush()
        else:
            out.file.write(text)
            out.commit()
        if not args.quiet and refs is None:
            n_tokens = sum(t.length for t in results)
            print(f"{len(lines)} lines in {elapsed:.2f} s: {len(lines) / elapsed:.1f} sentences/s, "
                  f"{n_tokens / elapsed:.0f} target tokens/s", file=sys.stderr)
    except BaseException:
        if out is not None:
            out.abort()
        raise


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
