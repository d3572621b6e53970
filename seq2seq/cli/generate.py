"""`seq2seq-generate`: sample text from a language model checkpoint, or measure the perplexity of a text.

  seq2seq-generate --checkpoint lm.ckpt --prompt "A man" --num 5 --temperature 0.8 --top-k 50 --top-p 0.9 \\
      --max-len 60 --seed 1
  seq2seq-generate --checkpoint lm.ckpt --input prompts.txt      (one prompt per line; '-' = standard input)
  seq2seq-generate --checkpoint lm.ckpt --score file.txt         (perplexity per piece and per word)

Prompts come from --prompt (repeatable), or --input FILE (plain or .gz, strict UTF-8, one per line;
an empty line asks for unconditional text); with neither, one empty prompt. All prompts x --num samples
are decoded in batches of --batch-size rows. --temperature 0 is greedy decoding (the same text for every
sample); otherwise each piece is drawn from softmax(log-probs / temperature), cut to the --top-k most
likely pieces (0 = all) and then to the smallest set of most likely pieces whose probability reaches
--top-p (1 = no cut). The same --seed, prompts, --num and --batch-size give the same samples.
A sample ends at the end-of-sentence piece or after --max-len pieces.

Output (standard output or --output FILE, written only when complete):
  text   one line per sample: the prompt followed by its continuation, prompts in order, --num each.
  jsonl  one object per sample: {"prompt_line", "sample", "prompt", "text" (prompt + continuation),
         "continuation", "log_prob" (the model's own log-probability of the continuation's pieces, end of
         sentence included, untempered and unfiltered), "token_log_probs", "pieces", "finished" (false:
         cut at --max-len)}.
--score FILE prints the perplexity of FILE's lines (each line a sentence, end of sentence counted):
per sentencepiece piece and per word (whitespace words + 1, comparable across vocabularies); with
--format jsonl, one {"line", "log_prob", "pieces", "words"} object per line and the summary on stderr.
Exit status 0, or 2 with one `error: ...` line for a usage, input or checkpoint error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

# The library (and with it torch) is imported in the functions that use it, not here: `--help` and usage
# errors are answered without it (tests/test_startup.py).

log = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="seq2seq-generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a language model .ckpt (seq2seq-train experiment=lm_quickstart)")
    p.add_argument("--prompt", action="append", help="a prompt to continue (repeat for several)")
    p.add_argument("--input", help="prompts, one per line (plain or .gz; '-' = standard input)")
    p.add_argument("--score", metavar="FILE", help="print the perplexity of this text instead of generating")
    p.add_argument("--num", type=int, default=1, help="samples per prompt")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely pieces (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus: the smallest set reaching this probability")
    p.add_argument("--max-len", type=int, default=60, help="at most this many generated pieces (end of sentence counted)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--batch-size", type=int, default=64, help="rows (prompt x sample) decoded at once")
    p.add_argument("--format", choices=("text", "jsonl"), default="text")
    p.add_argument("--output", default="-", help="output file (default: standard output)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    args = p.parse_args(argv)
    for name in ("num", "max_len", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.temperature < 0:
        p.error(f"--temperature must be >= 0 (0 = greedy), got {args.temperature}")
    if args.top_k < 0:
        p.error(f"--top-k must be >= 0 (0 = all pieces), got {args.top_k}")
    if not 0.0 < args.top_p <= 1.0:
        p.error(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.prompt and args.input:
        p.error("give prompts with --prompt or --input, not both")
    if args.score and (args.prompt or args.input):
        p.error("--score measures a text; it takes no prompts")
    return args


def read_prompts(args) -> list[str]:
    if args.prompt:
        from seq2seq.data.corpus import clean_text

        return [clean_text(p.replace("\n", " ")) for p in args.prompt]
    if args.input:  # a file or stdin, checked whole (UTF-8, the line at fault named)
        from seq2seq.decoding.files import Input

        source = Input(args.input)
        try:
            return list(source.read())
        finally:
            source.close()
    return [""]


def write_output(text: str, path: str) -> None:
    from seq2seq.decoding.files import write_stdout
    from seq2seq.temporaries import atomic_write_text

    if path == "-":
        write_stdout(text)
    else:
        atomic_write_text(path, text)


def run(args) -> None:
    for path in (args.checkpoint, args.score, args.input):
        if path not in (None, "-") and not Path(path).is_file():
            raise ValueError(f"{path}: file not found")
    import torch

    from seq2seq.checkpoint.loading import load_device, load_language_model
    from seq2seq.data.corpus import read_lines
    from seq2seq.decoding.translator import one_line
    from seq2seq.lm.generation import generate
    from seq2seq.lm.perplexity import score_text

    device = load_device(args.device)
    if args.score:
        lines = read_lines(args.score)
        lm, tokenizer, _ = load_language_model(args.checkpoint, device)
        score = score_text(lm, tokenizer, lines, device)
        summary = (f"{args.score}: {len(lines)} lines, perplexity {score.ppl:.2f} per piece "
                   f"({sum(score.tokens)} pieces), {score.word_ppl:.2f} per word ({sum(score.words)} words, "
                   f"end of sentence counted)")
        if args.format == "jsonl":
            write_output("".join(json.dumps({"line": i + 1, "log_prob": lp, "pieces": n, "words": w}) + "\n"
                                 for i, (lp, n, w) in enumerate(zip(score.log_probs, score.tokens, score.words))),
                         args.output)
            print(summary, file=sys.stderr)
        else:
            write_output(summary + "\n", args.output)
        return

    prompts = read_prompts(args)
    lm, tokenizer, _ = load_language_model(args.checkpoint, device)
    prompt_ids = tokenizer.encode_tgt(prompts)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    results = generate(lm, prompt_ids, num=args.num, max_len=args.max_len, temperature=args.temperature,
                       top_k=args.top_k, top_p=args.top_p, generator=generator, batch_size=args.batch_size)
    out = []
    for i, samples in enumerate(results):
        texts = tokenizer.decode_tgt([prompt_ids[i] + s.tokens for s in samples])
        continuations = tokenizer.decode_tgt([s.tokens for s in samples])
        for j, (s, text, cont) in enumerate(zip(samples, texts, continuations)):
            text, cont = one_line(text), one_line(cont)
            if args.format == "jsonl":
                out.append(json.dumps({"prompt_line": i + 1, "sample": j + 1, "prompt": prompts[i], "text": text,
                                       "continuation": cont, "log_prob": s.log_prob,
                                       "token_log_probs": s.token_log_probs,
                                       "pieces": tokenizer.tgt_pieces(s.tokens), "finished": s.finished},
                                      ensure_ascii=False) + "\n")
            else:
                out.append(text + "\n")
    write_output("".join(out), args.output)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = parse_args(argv)
    try:
        run(args)
    except (ValueError, OSError) as e:  # CorpusError, CheckpointError, TokenizerError are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
