"""Translate sentences: tokenizer -> length-sorted batches -> search -> detokenized text.

This is the one code path for "translate these sentences": validation BLEU during training, the
final test, and `seq2seq-translate` all call `Translator.translate`, so their figures never
disagree. Output order always equals input order; an empty or whitespace-only input line gives an
empty translation without touching the model. A translation is always one line of text: line
breaks and other control characters the model may spell out with byte-fallback pieces (<0x0A>, ...)
become spaces (or are dropped), so no output can shift the lines of a file.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from seq2seq.decoding import search
from seq2seq.decoding.output import Candidate, normalized
from seq2seq.data.corpus import clean_text
from seq2seq.config import SearchConfig
from seq2seq.data.batching import collate_source, token_budget_batches
from seq2seq.data.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def one_line(text: str) -> str:
    """`text` as a single line: newlines and whitespace-like controls -> one space, other controls
    dropped, whitespace runs collapsed (what `corpus.read_lines` does to input lines)."""
    return clean_text(text.replace("\n", " "))


@dataclass
class Translation:
    """The result for one input line."""

    text: str  # detokenized best hypothesis
    score: float  # sum of its token log-probabilities (EOS included)
    tokens: list[int]  # its target piece ids (no BOS/EOS)
    attention: torch.Tensor | None = None  # [T, S] attention per output token (EOS row included), CPU
    src_tokens: list[int] = field(default_factory=list)  # source piece ids as fed (after truncation)
    nbest: list[Candidate] = field(default_factory=list)  # best first
    finished: bool = True  # the best hypothesis ended with EOS (False: cut at the maximum length)

    @property
    def length(self) -> int:
        """Scored tokens of the best hypothesis: its pieces, plus EOS when finished."""
        return len(self.tokens) + int(self.finished)


@dataclass
class Sampling:
    """Options for random sampling instead of search."""

    temperature: float = 1.0
    top_k: int = 0  # 0 = the whole vocabulary
    seed: int = 0


class Translator:
    """Batched translation with one model (or an `search.Ensemble`) and its tokenizer."""

    def __init__(
        self,
        model,
        tokenizer: Tokenizer,
        search_cfg: SearchConfig,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        sampling: Sampling | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.cfg = search_cfg
        self.device = torch.device(device)
        self.dtype = dtype  # autocast dtype (bf16/fp16 on GPU); None = the model's own
        self.sampling = sampling

    # ------------------------------------------------------------------ encoding and batching
    def _encode(self, lines: Sequence[str], first_line: int = 1) -> tuple[list[list[int]], list[int]]:
        """Source ids per line, truncated to fit `max_src_tokens` (EOS included); truncated indices.
        Warnings number `lines[0]` as line `first_line` (a window of a longer file)."""
        limit = self.cfg.max_src_tokens - 1  # room for the EOS the data layer appends
        ids = self.tokenizer.encode_src(list(lines))
        truncated = [i for i, s in enumerate(ids) if len(s) > limit]
        if truncated:
            shown = ", ".join(str(i + first_line) for i in truncated[:10])
            log.warning("%d input line(s) longer than search.max_src_tokens=%d pieces were truncated "
                        "(line %s%s)", len(truncated), self.cfg.max_src_tokens, shown,
                        ", ..." if len(truncated) > 10 else "")
            for i in truncated:
                ids[i] = ids[i][:limit]
        return ids, truncated

    def _batches(self, ids: list[list[int]], todo: list[int]) -> list[list[int]]:
        lengths = np.array([len(ids[i]) + 1 for i in todo], dtype=np.int64)
        groups = token_budget_batches(lengths, None, self.cfg.batch_tokens)
        return [[todo[j] for j in group] for group in groups]  # each by decreasing length: packs sync-free

    def _autocast(self):
        if self.dtype is None or self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    # ------------------------------------------------------------------ search
    def _search(self, seqs: list[list[int]], nbest: int, generator, attention: bool) -> list[list[search.Hypothesis]]:
        src, src_lengths, src_mask = collate_source(seqs)  # [B, S], [B] CPU, [B, S]
        src, src_mask = src.to(self.device), src_mask.to(self.device)
        common = dict(max_len_a=self.cfg.max_len_a, max_len_b=self.cfg.max_len_b, min_len=self.cfg.min_len,
                      return_attention=attention)
        with torch.inference_mode(), self._autocast():
            if self.sampling is not None:
                hyps = search.sample(self.model, src, src_lengths, src_mask,
                                     temperature=self.sampling.temperature, top_k=self.sampling.top_k,
                                     generator=generator, **common)
                return [[h] for h in hyps]
            if self.cfg.beam_size == 1 and nbest == 1:
                return [[h] for h in search.greedy(self.model, src, src_lengths, src_mask, **common)]
            return search.beam_search(self.model, src, src_lengths, src_mask, beam_size=self.cfg.beam_size,
                                      length_penalty=self.cfg.length_penalty, nbest=nbest, **common)

    def _search_splitting(self, seqs: list[list[int]], nbest: int, generator,
                          attention: bool) -> list[list[search.Hypothesis]]:
        """Search a batch; on out-of-memory halve it and retry instead of dying.

        The retry happens after the `except` block is left (the PyTorch FAQ pattern): while the
        exception is being handled, its traceback keeps the failed attempt's frames, and with them its
        tensors, alive, so `empty_cache()` there could free nothing and the halves would run out too.
        """
        try:
            return self._search(seqs, nbest, generator, attention)
        except torch.OutOfMemoryError:
            if len(seqs) == 1:
                raise
        # Here the exception and its traceback are gone: the failed attempt's memory can be released.
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        half = len(seqs) // 2
        log.warning("out of memory on a batch of %d sentences: retrying in halves", len(seqs))
        return (self._search_splitting(seqs[:half], nbest, generator, attention)
                + self._search_splitting(seqs[half:], nbest, generator, attention))

    def translate(
        self,
        lines: Sequence[str],
        nbest: int = 1,
        with_attention: bool = False,
        progress: Callable[[int], None] | None = None,
        first_line: int = 1,
    ) -> list[Translation]:
        """Translate `lines`; result i belongs to line i. `progress(n)` is told of each finished batch;
        warnings number `lines[0]` as line `first_line`."""
        if nbest > max(self.cfg.beam_size, 1) and self.sampling is None:
            raise ValueError(f"nbest={nbest} needs a beam at least that wide (search.beam_size={self.cfg.beam_size})")
        ids, _ = self._encode(lines, first_line)
        results = [Translation(text="", score=0.0, tokens=[], nbest=[Candidate("", 0.0, 0.0)]) for _ in lines]
        todo = [i for i, line in enumerate(lines) if line.strip()]
        if progress is not None and len(todo) < len(lines):
            progress(len(lines) - len(todo))  # empty lines are done already
        generator = None
        if self.sampling is not None:
            generator = torch.Generator(device=self.device).manual_seed(self.sampling.seed)
        for group in self._batches(ids, todo):
            hyps = self._search_splitting([ids[i] for i in group], nbest, generator, with_attention)
            texts = [one_line(t) for t in self.tokenizer.decode_tgt([h.tokens for row in hyps for h in row])]
            k = 0
            for i, row in zip(group, hyps):
                row_texts = texts[k:k + len(row)]
                k += len(row)
                best = row[0]
                results[i] = Translation(
                    text=row_texts[0], score=float(best.score), tokens=list(best.tokens),
                    attention=best.attention if with_attention else None, src_tokens=ids[i],
                    nbest=[Candidate(t, float(h.score), normalized(float(h.score), len(h.tokens) + int(h.finished),
                                                                  self.cfg.length_penalty))
                           for t, h in zip(row_texts, row)],
                    finished=best.finished,
                )
            if progress is not None:
                progress(len(group))
        return results

    def score_references(self, src_lines: Sequence[str], ref_lines: Sequence[str],
                         first_line: int = 1) -> list[float]:
        """The model's log-likelihood of each reference given its source (EOS included)."""
        if len(src_lines) != len(ref_lines):
            raise ValueError(f"{len(src_lines)} source lines but {len(ref_lines)} references")
        ids, _ = self._encode(src_lines, first_line)
        refs = self.tokenizer.encode_tgt(list(ref_lines))
        scores = [0.0] * len(src_lines)
        for group in self._batches(ids, list(range(len(src_lines)))):
            src, src_lengths, src_mask = collate_source([ids[i] for i in group])
            with torch.inference_mode(), self._autocast():
                got = search.score_reference(self.model, src.to(self.device), src_lengths,
                                             src_mask.to(self.device), [refs[i] for i in group])
            for i, s in zip(group, got):
                scores[i] = float(s)
        return scores
