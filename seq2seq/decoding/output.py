"""What a translated line is written as: seq2seq-translate's text, n-best and JSON lines, the alignment
of a translation (also in seq2seq-serve's answers), and attention heatmaps.

    text (default)  one translation per line; with alignment: `translation<TAB>alignment`.
    jsonl           one JSON object per line: "line" (1-based), "translation", "score",
                    "normalized_score" (score / length ** length_penalty), "finished", and when asked
                    "nbest" [{"translation", "score", "normalized_score"}, ...] best first, "alignment",
                    "src_pieces", "tgt_pieces".
    n-best text     K lines per input line: `line_number<TAB>rank<TAB>score<TAB>translation`, the score
                    being the one the list is ranked by (score / length ** length_penalty); ranks the
                    beam could not fill have score `-inf` and an empty translation.

An alignment is `src-tgt` pairs of 0-based sentencepiece positions (fast_align style): for each target
piece, the source piece with the largest attention weight; a target piece that attends most to the
source EOS gets no pair. Heatmaps need matplotlib (the `plot` extra).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:  # the torch side; this module itself needs no torch (seq2seq-translate --backend onnxruntime)
    from seq2seq.decoding.translator import Translation, Translator

log = logging.getLogger(__name__)


class Candidate(NamedTuple):
    """One entry of an n-best list."""

    text: str  # detokenized hypothesis
    score: float  # sum of its token log-probabilities (EOS included)
    normalized_score: float  # score / length ** length_penalty: what beam search ranks by


def normalized(score: float, length: int, length_penalty: float) -> float:
    """`score / length ** length_penalty`, length counting EOS when the hypothesis finished (as
    `search.beam_search` ranks); an empty hypothesis counts as length 1."""
    return score / max(length, 1) ** length_penalty


class PlotError(ValueError):
    """Attention heatmaps were asked for, but matplotlib is missing."""


@dataclass(frozen=True)
class OutputFormat:
    """What is written for each input line (seq2seq-translate's --format, --nbest, --alignment,
    --plot-attention DIR and --plot-limit)."""

    format: str = "text"  # text | jsonl
    nbest: int = 1  # hypotheses per line
    alignment: bool = False
    plot_dir: str | None = None  # heatmaps of the first `plot_limit` lines go here
    plot_limit: int = 10

    @property
    def with_attention(self) -> bool:
        return self.alignment or bool(self.plot_dir)


def alignment(t: Translation) -> str:
    """`src-tgt` pairs: for each target piece (EOS excluded), the most attended source piece."""
    if t.attention is None:
        return ""
    att = t.attention[: len(t.tokens), : len(t.src_tokens) + 1]  # [T, S] (source EOS column kept)
    best = att.argmax(1).tolist() if att.shape[0] and att.shape[1] else []  # torch or numpy (onnxruntime)
    return " ".join(f"{s}-{j}" for j, s in enumerate(best) if s < len(t.src_tokens))


def format_line(i: int, t: Translation, fmt: OutputFormat, translator: Translator) -> str:
    """The output of input line i (0-based), newline included (K lines for an n-best list in text)."""
    if fmt.format == "jsonl":
        obj = {"line": i + 1, "translation": t.text, "score": t.score,
               "normalized_score": normalized(t.score, t.length, translator.cfg.length_penalty),
               "finished": t.finished}
        if fmt.nbest > 1:
            obj["nbest"] = [{"translation": c.text, "score": c.score, "normalized_score": c.normalized_score}
                            for c in t.nbest]
        if fmt.alignment:
            obj["alignment"] = alignment(t)
            obj["src_pieces"] = translator.tokenizer.src_pieces(t.src_tokens)
            obj["tgt_pieces"] = translator.tokenizer.tgt_pieces(t.tokens)
        return json.dumps(obj, ensure_ascii=False) + "\n"
    if fmt.nbest > 1:
        # The score column is the one the list is ranked by (jsonl has the raw sum beside it).
        out = "".join(f"{i + 1}\t{r + 1}\t{c.normalized_score:.6f}\t{c.text}\n" for r, c in enumerate(t.nbest))
        return out + "".join(f"{i + 1}\t{r + 1}\t-inf\t\n" for r in range(len(t.nbest), fmt.nbest))
    return f"{t.text}\t{alignment(t)}\n" if fmt.alignment else t.text + "\n"


def format_scores(first: int, scores: list[float], fmt: OutputFormat) -> str:
    """The lines of reference scores of input lines first, first + 1, ... (0-based): the score with 6
    decimals, or {"line", "score"} in jsonl."""
    if fmt.format == "jsonl":
        return "".join(json.dumps({"line": first + i + 1, "score": s}) + "\n" for i, s in enumerate(scores))
    return "".join(f"{s:.6f}\n" for s in scores)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or a PlotError naming the optional extra."""
    try:  # the optional `plot` extra, imported only when heatmaps are asked for
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotError("--plot-attention needs matplotlib: pip install 'seq2seq[plot]'") from None
    return plt


def prepare_plots(folder: str) -> None:
    """Fail before any work when heatmaps cannot be drawn (no matplotlib) or `folder` cannot be made."""
    pyplot()
    Path(folder).mkdir(parents=True, exist_ok=True)


def _labels(pieces: list[str]) -> list[str]:
    return [p.replace("$", r"\$") for p in pieces]  # a '$' would start matplotlib's math mode


def plot_attention(translations: list[Translation], first: int, translator: Translator, folder: str,
                   limit: int) -> None:
    """Heatmaps (target pieces down, source pieces across) of the translations of input lines first + 1, ...
    that are among the first `limit` lines: `folder`/attention_<line number, 5 digits>.png."""
    import numpy as np  # with matplotlib, when plotting only: seq2seq-serve --help imports this module

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
