"""Perplexity of text under a language model (teacher forcing, batched by token budget)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from seq2seq.data.batching import _pad, lengths_to_mask, token_budget_batches
from seq2seq.data.tokenizer import Tokenizer
from seq2seq.lm.data import word_count
from seq2seq.model.lm import RecurrentLM


@dataclass
class TextScore:
    """Log-likelihood of each line (pieces + EOS) and the corpus totals."""

    log_probs: list[float]  # per line: sum of log P(piece) over its pieces and EOS
    tokens: list[int]  # per line: pieces + 1
    words: list[int]  # per line: whitespace words + 1

    @property
    def nll(self) -> float:
        return -math.fsum(self.log_probs)

    @property
    def ppl(self) -> float:
        """Perplexity per sentencepiece token (EOS counted)."""
        return math.exp(self.nll / max(sum(self.tokens), 1))

    @property
    def word_ppl(self) -> float:
        """Perplexity per word (the end of each sentence counted as a word): comparable across vocabularies."""
        return math.exp(self.nll / max(sum(self.words), 1))


@torch.inference_mode()
def sequence_log_probs(lm: RecurrentLM, seqs: Sequence[Sequence[int]], device: torch.device | str,
                       max_tokens: int = 8192) -> list[float]:
    """log P(pieces + EOS) of each bare id sequence, float32 sums, in input order."""
    out = [0.0] * len(seqs)
    lengths = np.array([len(s) + 1 for s in seqs], dtype=np.int64)
    for group in token_budget_batches(lengths, None, max_tokens):
        rows = [seqs[i] for i in group]
        tokens_in, n = _pad(rows, prefix=lm.bos_id, suffix=None)
        tokens_out, _ = _pad(rows, prefix=None, suffix=lm.eos_id)
        mask = lengths_to_mask(n, tokens_in.size(1)).to(device)
        log_probs = torch.log_softmax(lm(tokens_in.to(device)).float(), dim=-1)  # [B, T, V]
        picked = log_probs.gather(2, tokens_out.to(device).unsqueeze(2)).squeeze(2)  # [B, T]
        sums = torch.where(mask, picked, 0.0).sum(1).cpu().tolist()
        for i, s in zip(group, sums):
            out[i] = float(s)
    return out


def score_text(lm: RecurrentLM, tokenizer: Tokenizer, lines: Sequence[str], device: torch.device | str,
               max_tokens: int = 8192) -> TextScore:
    """Score `lines` (cleaned text) with `lm`; every line counts, empty ones as a lone EOS."""
    ids = tokenizer.encode_tgt(list(lines))
    return TextScore(sequence_log_probs(lm, ids, device, max_tokens), [len(s) + 1 for s in ids],
                     [word_count(line) for line in lines])
