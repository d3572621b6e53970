"""Corpus BLEU / chrF / TER with sacrebleu's metric objects, and sacrebleu's paired bootstrap test.

Conventions (see docs/conventions.md):
  * `refs` is always a list of reference *streams*: `refs[j][i]` is reference j of sentence i. One
    reference per sentence is `[refs]`, never `[[r] for r in refs]` (which scores only the first
    sentence). Every stream must have exactly one line per hypothesis; anything else raises ValueError.
  * Score detokenized text. Every score comes with sacrebleu's signature.
  * `lowercase` applies to all three metrics (BLEU/chrF `lowercase`, TER `case_sensitive=False`);
    `tokenize` is BLEU's tokenizer (chrF works on characters, TER has its own tokenizer).
  * Tokenizers that fetch a sentencepiece model at run time (`flores101`, `flores200`, `spm`,
    `spBLEU-1K`) are not offered: they need the network. `ja-mecab`/`ko-mecab` work offline but need
    the `sacrebleu[ja]` / `sacrebleu[ko]` extras (a clear error says so when missing).
  * `score_moses_bleu` is the figure the Multi30k papers report: lowercased BLEU on Moses-tokenized
    text (sacremoses, the `moses` extra), scored with sacrebleu's `tokenize="none"`. Its signature
    says `tok:moses-<lang>` and the sacremoses version, so it is never mistaken for a 13a figure.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Sequence

from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.metrics.base import Metric
from sacrebleu.significance import PairedTest

__all__ = [
    "METRICS",
    "OFFLINE_TOKENIZERS",
    "MOSES_EXTRA",
    "format_score",
    "report_lines",
    "make_metric",
    "moses_languages",
    "moses_tokenize",
    "paired_bootstrap",
    "score_corpus",
    "score_moses_bleu",
]

METRICS = ("bleu", "chrf", "ter")
_NEEDS_NETWORK = {"spm", "flores101", "flores200", "spBLEU-1K"}
OFFLINE_TOKENIZERS = tuple(
    t for t in BLEU.TOKENIZERS
    if t not in _NEEDS_NETWORK and not t.lower().startswith(("flores", "spm", "spbleu")))


def make_metric(name: str, lowercase: bool = False, tokenize: str = "13a") -> Metric:
    """A fresh sacrebleu metric object (no reference cache shared between calls)."""
    if name == "bleu":
        if tokenize not in OFFLINE_TOKENIZERS:
            raise ValueError(f"unknown or network-only BLEU tokenizer {tokenize!r}; "
                             f"choose one of: {', '.join(OFFLINE_TOKENIZERS)}")
        return BLEU(lowercase=lowercase, tokenize=tokenize)
    if name == "chrf":
        return CHRF(lowercase=lowercase)
    if name == "ter":
        return TER(case_sensitive=not lowercase)
    raise ValueError(f"unknown metric {name!r}; valid: {', '.join(METRICS)}")


def _check_metrics(metrics: Sequence[str]) -> list[str]:
    names = list(dict.fromkeys(metrics))
    if not names:
        raise ValueError("no metric selected")
    for m in names:
        if m not in METRICS:
            raise ValueError(f"unknown metric {m!r}; valid: {', '.join(METRICS)}")
    return names


def _check_streams(hyps: Sequence[str], refs: Sequence[Sequence[str]], what: str = "hypotheses") -> None:
    if isinstance(hyps, str):
        raise TypeError(f"{what} must be a list of strings, not a single string")
    if isinstance(refs, str) or not isinstance(refs, Sequence) or not refs:
        raise TypeError("refs must be a non-empty list of reference streams (one list of lines per "
                        "reference set); for a single reference use [refs]")
    if isinstance(refs[0], str):
        raise TypeError("refs must be a list of reference *streams*, got a list of strings; "
                        "for a single reference use [refs]")
    if len(hyps) == 0:
        raise ValueError(f"no {what} to score")
    for j, stream in enumerate(refs):
        if isinstance(stream, str):
            raise TypeError(f"reference stream {j} is a string, not a list of lines")
        if len(stream) != len(hyps):
            raise ValueError(f"line count mismatch: {len(hyps)} {what} but reference stream {j} "
                             f"has {len(stream)} lines")


def score_corpus(hyps: Sequence[str], refs: Sequence[Sequence[str]], lowercase: bool = False,
                 tokenize: str = "13a", metrics: Sequence[str] = METRICS) -> dict:
    """Corpus-level scores on sacrebleu's 0-100 scale.

    Returns, for the selected metrics (keys "bleu", "chrf", "ter")::

        {"bleu": 35.12, "chrf": 60.3, "ter": 50.1,                       # floats
         "name": {"bleu": "BLEU", "chrf": "chrF2", "ter": "TER"},
         "signature": {"bleu": "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0", ...},
         "details": {"bleu": "BLEU = 35.12 66.7/41.2/... (BP = ... hyp_len = ... ref_len = ...)", ...}}
    """
    names = _check_metrics(metrics)
    _check_streams(hyps, refs)
    hyps = list(hyps)
    refs = [list(r) for r in refs]
    out: dict = {"name": {}, "signature": {}, "details": {}}
    for name in names:
        metric = make_metric(name, lowercase, tokenize)
        score = metric.corpus_score(hyps, refs)
        out[name] = float(score.score)
        out["name"][name] = score.name
        out["signature"][name] = metric.get_signature().format()
        out["details"][name] = str(score)
    return out


@contextlib.contextmanager
def _sacrebleu_seed(seed: int | None) -> Iterator[None]:
    """PairedTest reads its seed from $SACREBLEU_SEED (for the baseline's resamples too)."""
    old = os.environ.get("SACREBLEU_SEED")
    os.environ["SACREBLEU_SEED"] = "None" if seed is None else str(seed)
    try:
        yield
    finally:
        if old is None:
            del os.environ["SACREBLEU_SEED"]
        else:
            os.environ["SACREBLEU_SEED"] = old


def paired_bootstrap(hyps_a: Sequence[str], hyps_b: Sequence[str], refs: Sequence[Sequence[str]],
                     n_samples: int = 1000, seed: int | None = 12345, lowercase: bool = False,
                     tokenize: str = "13a", metrics: Sequence[str] = METRICS) -> dict:
    """Paired bootstrap resampling (sacrebleu's `PairedTest(test_type="bs")`, Koehn 2004) of system
    B against baseline A.

    Both systems are scored on the same `n_samples` resamples of the test set (with replacement).
    The p-value, per metric, is sacrebleu's: the probability, under the null hypothesis that the
    systems are equally good, of a difference at least as large as the observed one. `seed` must be
    a positive integer (sacrebleu treats 0 as "unseeded") or None for an unseeded run.

    One correction to sacrebleu: its p-value counts resampled differences strictly greater than the
    observed one, plus one, over n_samples + 1, so two *identical* outputs (every difference 0) get
    p = 1 / (n_samples + 1), i.e. "significant". For identical hypothesis lists we report p = 1.0
    and `"identical": True`; otherwise the numbers are sacrebleu's unchanged.

    Returns::

        {"n_samples": 1000, "seed": 12345, "identical": False,
         "name": {"bleu": "BLEU", ...},
         "signature": {"bleu": "nrefs:1|bs:1000|seed:12345|case:mixed|...", ...},
         "baseline": {"bleu": {"score": 35.1, "mean": 35.0, "ci": 1.2}, ...},   # system A
         "system":   {"bleu": {"score": 36.0, "mean": 36.1, "ci": 1.1, "p_value": 0.02}, ...}}  # B
    """
    names = _check_metrics(metrics)
    _check_streams(hyps_a, refs, "baseline hypotheses")
    _check_streams(hyps_b, refs, "system hypotheses")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if seed is not None and seed < 1:
        raise ValueError(f"seed must be a positive integer or None, got {seed} "
                         "(sacrebleu silently treats 0 as 'no seed')")
    refs = [list(r) for r in refs]
    metric_objs = {name: make_metric(name, lowercase, tokenize) for name in names}
    with _sacrebleu_seed(seed):
        test = PairedTest([("baseline", list(hyps_a)), ("system", list(hyps_b))], metric_objs, refs,
                          test_type="bs", n_samples=n_samples)
        signatures, results = test()
    # PairedTest keys its results by the score's display name ("BLEU", "chrF2", "TER"), in the
    # order of `metric_objs`.
    display = [k for k in results if k != "System"]
    identical = list(hyps_a) == list(hyps_b)
    out: dict = {"n_samples": n_samples, "seed": seed, "identical": identical, "name": {},
                 "signature": {}, "baseline": {}, "system": {}}
    for name, shown in zip(names, display):
        base, system = results[shown]
        out["name"][name] = shown
        out["signature"][name] = signatures[shown].format()
        out["baseline"][name] = {"score": float(base.score), "mean": float(base.mean),
                                 "ci": float(base.ci)}
        out["system"][name] = {"score": float(system.score), "mean": float(system.mean),
                               "ci": float(system.ci),
                               "p_value": 1.0 if identical else float(system.p_value)}
    return out


MOSES_EXTRA = "pip install 'seq2seq[moses]'"


def _sacremoses():
    """The sacremoses module, or RuntimeError saying how to install it (it is an optional extra)."""
    try:
        import sacremoses
    except ImportError:
        raise RuntimeError(f"Moses tokenization needs sacremoses: {MOSES_EXTRA}") from None
    return sacremoses


def moses_languages() -> list[str]:
    """Language codes that sacremoses has Moses rules (non-breaking prefixes) for."""
    _sacremoses()
    from sacremoses.corpus import NonbreakingPrefixes

    return sorted(set(NonbreakingPrefixes().available_langs.values()))


def moses_tokenize(lines: Sequence[str], lang: str) -> list[str]:
    """Lowercase, normalise punctuation and Moses-tokenize each line, as the Multi30k release made its
    `tok/*.lc.norm.tok.*` files (`lowercase.perl | normalize-punctuation.perl -l L | tokenizer.perl -l L`):
    no aggressive hyphen splitting (`-a`), so `t-shirt` stays one token; apostrophes split by the
    language's rule (French `l'homme` -> `l' homme`, English `man's` -> `man 's`). Not escaped
    (`&apos;`): escaping maps tokens one to one and cannot change BLEU."""
    sacremoses = _sacremoses()
    if lang not in moses_languages():
        raise ValueError(f"no Moses tokenization rules for language {lang!r}; "
                         f"valid: {', '.join(moses_languages())}")
    normalizer = sacremoses.MosesPunctNormalizer(lang=lang)
    tokenizer = sacremoses.MosesTokenizer(lang=lang)
    return [tokenizer.tokenize(normalizer.normalize(line.lower()), escape=False, return_str=True)
            for line in lines]


def score_moses_bleu(hyps: Sequence[str], refs: Sequence[Sequence[str]], lang: str) -> dict:
    """Lowercased BLEU of Moses-tokenized (`lang`) hypotheses and references, in `score_corpus`'s
    shape with the one metric "bleu"; the signature reads
    `nrefs:1|case:lc|eff:no|tok:moses-fr|smooth:exp|version:2.6.0|sacremoses:0.2.0`."""
    _check_streams(hyps, refs)
    version = _sacremoses().__version__
    tokenized = moses_tokenize(hyps, lang)
    streams = [moses_tokenize(stream, lang) for stream in refs]
    metric = BLEU(lowercase=True, tokenize="none", force=True)  # tokenized on purpose: no "forgot to detokenize"
    score = metric.corpus_score(tokenized, streams)
    signature = metric.get_signature().format().replace("|tok:none|", f"|tok:moses-{lang}|")
    return {"bleu": float(score.score), "name": {"bleu": score.name},
            "signature": {"bleu": f"{signature}|sacremoses:{version}"}, "details": {"bleu": str(score)}}


def format_score(name: str, score: float, signature: str, width: int = 2) -> str:
    """`BLEU = 35.12 (signature: nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0)`."""
    return f"{name} = {score:.{width}f} (signature: {signature})"


def report_lines(result: dict) -> list[str]:
    """One `format_score` line per metric of a `score_corpus` result, in metric order."""
    return [format_score(result["name"][m], result[m], result["signature"][m])
            for m in METRICS if m in result]
