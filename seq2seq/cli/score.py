"""seq2seq-score: corpus BLEU / chrF / TER of detokenized text files, with sacrebleu signatures.

    seq2seq-score --hyp out.txt --ref test.en [--ref test2.en ...] [--json] [--lowercase]
                  [--tokenize 13a | --tokenize moses --lang en] [--metrics bleu,chrf,ter]
                  [--compare other.txt --bootstrap-samples 1000 --seed 12345]
    seq2seq-score --set NAME HYP REF [--set NAME HYP REF ...] [--json] [--tokenize 13a]

`--set` scores several evaluation sets into one table (BLEU, chrF, TER, lowercased BLEU, signatures),
the table `seq2seq-train` prints for `data.test_splits`; `--json` prints its test_scores.json format.

`--tokenize moses` reports, beside the standard 13a BLEU, the figure the Multi30k papers report:
lowercased BLEU on Moses-tokenized text (sacremoses, the `moses` extra; see metrics.moses_tokenize).

Files are plain or gzip-compressed (detected from the content), strict UTF-8 (a leading BOM is
dropped), one segment per line; CRLF line ends count as LF. `-` reads the hypotheses from stdin.
Exit status: 0 on success, 2 on a usage or input error (missing file, bad encoding, line counts that
differ), with the reason on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from seq2seq.evaluation.scoring import InputError, bootstrap_lines, check_counts, read_lines, score_record

# seq2seq.evaluation.metrics and tables (and with them sacrebleu and numpy) are imported once the files are
# read: `--help` and usage errors are answered without them.

PROG = "seq2seq-score"


def _metric_list(value: str) -> list[str]:
    from seq2seq.evaluation.metrics import METRICS

    names = [v.strip().lower() for v in value.split(",") if v.strip()]
    bad = [n for n in names if n not in METRICS]
    if not names or bad:
        raise argparse.ArgumentTypeError(
            f"invalid metric list {value!r}; choose from {','.join(METRICS)} (comma-separated)")
    return list(dict.fromkeys(names))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Corpus BLEU, chrF and TER (sacrebleu) of detokenized hypotheses "
        "against one or more reference files, with signatures; optionally a paired bootstrap test.")
    p.add_argument("--hyp", metavar="FILE",
                   help="hypotheses, one per line (plain or .gz; '-' = stdin)")
    p.add_argument("--ref", action="append", metavar="FILE",
                   help="references, one per line; repeat for multiple reference sets")
    p.add_argument("--set", nargs=3, action="append", dest="sets", metavar=("NAME", "HYP", "REF"),
                   help="an evaluation set: its name, hypotheses and references; repeat it to score several "
                   "sets into one table (BLEU, chrF, TER, lowercased BLEU, signatures), instead of --hyp/--ref")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--lowercase", action="store_true",
                   help="case-insensitive BLEU, chrF and TER (Multi30k papers report lowercased BLEU)")
    p.add_argument("--tokenize", default="13a", metavar="TOK",
                   help="BLEU tokenizer (default: 13a): one of sacrebleu's offline tokenizers (13a, intl, "
                   "char, zh, none, ...; a wrong name lists them all). The flores101/flores200/spm/"
                   "spBLEU-1K tokenizers are not offered: they download a sentencepiece model at run "
                   "time. ja-mecab/ko-mecab need sacrebleu's [ja]/[ko] extras. 'moses': the 13a BLEU and, "
                   "beside it, lowercased BLEU on Moses-tokenized text (the Multi30k papers' figure; needs "
                   "--lang and pip install 'seq2seq[moses]')")
    p.add_argument("--lang", metavar="LANG",
                   help="language of the hypotheses and references, for --tokenize moses (en, de, fr, cs, ...)")
    p.add_argument("--metrics", type=_metric_list, metavar="LIST",
                   help="comma-separated subset of bleu,chrf,ter (default: all)")
    p.add_argument("--compare", metavar="HYP2",
                   help="second system: paired bootstrap resampling of --hyp (baseline) vs HYP2")
    p.add_argument("--bootstrap-samples", type=int, default=1000, metavar="N",
                   help="resamples for --compare (default: 1000)")
    p.add_argument("--seed", type=int, default=12345,
                   help="random seed for --compare, a positive integer (default: 12345, sacrebleu's)")
    return p


def score_sets(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """`--set NAME HYP REF ...`: one table row per set (seq2seq.evaluation.tables), or its JSON."""
    for flag, given in (("--hyp", args.hyp is not None), ("--ref", bool(args.ref)), ("--compare", args.compare),
                        ("--lowercase", args.lowercase), ("--metrics", args.metrics)):
        if given:
            parser.error(f"argument {flag}: not allowed with --set (each set names its hypotheses and references; "
                         "the table holds every metric, cased and lowercased)")
    names = [name for name, _, _ in args.sets]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        parser.error(f"argument --set: the name {repeated[0]!r} is given twice")
    try:
        texts = []
        for name, hyp, ref in args.sets:
            hyps, refs = read_lines(hyp), read_lines(ref)
            check_counts((hyp, hyps), [(ref, refs)])
            if not hyps:
                raise InputError(f"{hyp} is empty: nothing to score (set {name!r})")
            texts.append((name, hyps, refs))
        from seq2seq.evaluation.metrics import OFFLINE_TOKENIZERS

        # moses: the standard 13a figures plus a column of the lowercased Moses-tokenized BLEU.
        tokenize, moses_lang = ("13a", args.lang) if args.tokenize == "moses" else (args.tokenize, None)
        if tokenize not in OFFLINE_TOKENIZERS:
            parser.error(f"argument --tokenize: invalid choice: {args.tokenize!r} "
                         f"(choose from {', '.join(OFFLINE_TOKENIZERS)})")
        from seq2seq.evaluation.tables import score_set, table_lines

        try:
            rows = [{**score_set(name, hyps, [refs], tokenize=tokenize, moses_lang=moses_lang), "hypotheses": hyp, "references": ref}
                    for (name, hyps, refs), (_, hyp, ref) in zip(texts, args.sets)]
        except RuntimeError as e:  # e.g. a MeCab tokenizer whose extra is not installed
            raise InputError(str(e).strip()) from None
    except InputError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"tokenize": args.tokenize, "splits": rows}, ensure_ascii=False, indent=1))
    else:
        print("\n".join(table_lines(rows)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    moses = args.tokenize == "moses"
    if moses and args.lang is None:
        parser.error("--tokenize moses needs --lang, the language of the hypotheses and references (e.g. --lang fr)")
    if args.lang is not None and not moses:
        parser.error("--lang applies to --tokenize moses only")
    if moses and args.compare is not None:
        parser.error("--tokenize moses does not combine with --compare; compare systems with the 13a tokenizer")
    if moses and args.metrics is not None and "bleu" not in args.metrics:
        parser.error("--tokenize moses is a BLEU tokenizer, but --metrics leaves out bleu")
    if args.sets:
        return score_sets(args, parser)
    if args.hyp is None or not args.ref:
        parser.error("the following arguments are required: --hyp and --ref (or --set NAME HYP REF)")
    try:
        if args.bootstrap_samples < 1:
            raise InputError(f"--bootstrap-samples must be >= 1, got {args.bootstrap_samples}")
        if args.seed < 1:
            raise InputError(f"--seed must be a positive integer, got {args.seed}")
        hyps = read_lines(args.hyp)
        refs = [(path, read_lines(path)) for path in args.ref]
        check_counts((args.hyp, hyps), refs)
        other = None
        if args.compare is not None:
            other = read_lines(args.compare)
            check_counts((args.hyp, hyps), [(args.compare, other)])
        if not hyps:
            raise InputError(f"{args.hyp} is empty: nothing to score")
        from seq2seq.evaluation.metrics import (METRICS, OFFLINE_TOKENIZERS, format_score, moses_languages,
                                                paired_bootstrap, score_corpus, score_moses_bleu)

        if args.tokenize not in (*OFFLINE_TOKENIZERS, "moses"):
            parser.error(f"argument --tokenize: invalid choice: {args.tokenize!r} "
                         f"(choose from {', '.join(OFFLINE_TOKENIZERS)}, moses)")
        args.metrics = args.metrics or list(METRICS)
        streams = [lines for _, lines in refs]
        try:
            if moses and args.lang not in moses_languages():
                parser.error(f"argument --lang: no Moses rules for {args.lang!r} "
                             f"(choose from {', '.join(moses_languages())})")
            # With moses, the standard figure beside the Moses one is sacreBLEU's default, 13a.
            scores = score_corpus(hyps, streams, lowercase=args.lowercase,
                                  tokenize="13a" if moses else args.tokenize, metrics=args.metrics)
            moses_scores = score_moses_bleu(hyps, streams, args.lang) if moses else None
            test = (paired_bootstrap(hyps, other, streams, n_samples=args.bootstrap_samples,
                                     seed=args.seed, lowercase=args.lowercase, tokenize=args.tokenize,
                                     metrics=args.metrics)
                    if other is not None else None)
        except RuntimeError as e:  # e.g. a MeCab tokenizer or sacremoses whose extra is not installed
            raise InputError(str(e).strip()) from None
    except InputError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2

    if args.json:
        out = score_record(args.hyp, args.ref, len(hyps), args.lowercase, args.tokenize, args.metrics, scores,
                           moses_scores, args.lang, args.compare, test)
        print(json.dumps(out, ensure_ascii=False, indent=1))
        return 0

    if test is None:
        for m in args.metrics:
            print(format_score(scores["name"][m], scores[m], scores["signature"][m]))
            if m == "bleu" and moses_scores is not None:
                print(format_score(moses_scores["name"]["bleu"], moses_scores["bleu"],
                                   moses_scores["signature"]["bleu"]))
        return 0
    print("\n".join(bootstrap_lines(test, args.hyp, args.compare, args.metrics)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
