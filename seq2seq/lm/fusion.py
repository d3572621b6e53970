"""Language models in translation: shallow fusion during search, and n-best reranking after it.

Shallow fusion (Gulcehre et al., 2015) scores each next piece by

    log p_TM(y_t | y_<t, x) + w * log p_LM(y_t | y_<t)

at every step of greedy, beam or sampling search. `ShallowFusion` wraps the translation model (or an
`Ensemble`) behind the decoder-step contract of `decoding/search.py`, carrying the LM's own state beside the
model's: `step` advances both with the same previous pieces, `reorder_state` reorders both with the
same rows (the LM has no source side, so it ignores `sources`). Search code is unchanged, so every search works with fusion, and beam size 1 with fusion
is greedy with fusion. Hypothesis scores are the fused sums (not renormalised: with w = 0 they are
exactly the plain model's scores).

Reranking (`rerank`) leaves search alone: the n-best list of beam search is rescored by
`(score_TM + w * log P_LM(pieces + EOS)) / length ** length_penalty` and re-sorted. The LM scores the
hypothesis as the text the user will see, re-tokenized with the shared sentencepiece model.

Both need the LM's vocabulary to be the translation model's target vocabulary, piece for piece
(`check_vocabularies`): train the LM with `data.tokenizer_from=<translation checkpoint>`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import torch
from torch import Tensor

from seq2seq.data.tokenizer import Tokenizer
from seq2seq.decoding.output import Candidate
from seq2seq.lm.perplexity import sequence_log_probs
from seq2seq.model.lm import RecurrentLM


class VocabularyMismatch(ValueError):
    """The LM and the translation model do not share a target vocabulary."""


def check_vocabularies(tm_tokenizer: Tokenizer, lm_tokenizer: Tokenizer, tm_name: str, lm_name: str) -> None:
    """Raise VocabularyMismatch unless piece i means the same in both target vocabularies, for every i."""
    if tm_tokenizer.state_dict()["tgt_model"] == lm_tokenizer.state_dict()["tgt_model"]:
        return
    tm_size, lm_size = tm_tokenizer.tgt_vocab_size, lm_tokenizer.tgt_vocab_size
    tm_pieces = tm_tokenizer.tgt_pieces(range(tm_size))
    lm_pieces = lm_tokenizer.tgt_pieces(range(lm_size))
    if tm_pieces == lm_pieces:
        return
    first = next((i for i, (a, b) in enumerate(zip(tm_pieces, lm_pieces)) if a != b), min(tm_size, lm_size))
    where = (f"piece {first} is {tm_pieces[first]!r} in the translation model but {lm_pieces[first]!r} in the LM"
             if first < min(tm_size, lm_size) else "one vocabulary extends the other")
    raise VocabularyMismatch(
        f"--lm {lm_name}: its vocabulary ({lm_size} pieces) is not the target vocabulary of {tm_name} "
        f"({tm_size} pieces; {where}); train the language model with "
        f"data.tokenizer_from={tm_name} so that both share one sentencepiece model")


class ShallowFusion:
    """A translation model plus `weight` x a language model, behind the decoder-step contract.

    state = (the model's state, the LM's `LMState`); the LM reads no source, so `reorder_state` gives
    it the rows only and the model both the rows and the sources.
    """

    def __init__(self, model: Any, lm: RecurrentLM, weight: float):
        ids = (model.pad_id, model.bos_id, model.eos_id)
        if ids != (lm.pad_id, lm.bos_id, lm.eos_id):
            raise VocabularyMismatch(f"the translation model's special ids {ids} differ from the LM's "
                                     f"{(lm.pad_id, lm.bos_id, lm.eos_id)}")
        size = getattr(model, "tgt_vocab_size", None) or getattr(model, "models", [None])[0].tgt_vocab_size
        if size != lm.tgt_vocab_size:
            raise VocabularyMismatch(f"target vocabulary sizes differ: translation model {size}, "
                                     f"language model {lm.tgt_vocab_size}")
        self.model, self.lm, self.weight = model, lm, float(weight)
        self.pad_id, self.bos_id, self.eos_id = ids
        self.tgt_vocab_size = size

    @property
    def training(self) -> bool:
        return bool(getattr(self.model, "training", False) or self.lm.training)

    def eval(self) -> ShallowFusion:
        self.model.eval()
        self.lm.eval()
        return self

    def init_state(self, src: Tensor, src_lengths: Tensor, src_mask: Tensor) -> tuple[Any, Any]:
        return self.model.init_state(src, src_lengths, src_mask), self.lm.init_state(src.size(0), src.device)

    def step(self, prev_tokens: Tensor, state: tuple[Any, Any]) -> tuple[Tensor, tuple[Any, Any], Tensor | None]:
        """-> (log p_TM + w * log p_LM [N, V] float32, both new states, the model's attention)."""
        log_probs, model_state, attention = self.model.step(prev_tokens, state[0])
        lm_log_probs, lm_state = self.lm.step(prev_tokens, state[1])
        # An underflowed -inf LM log-prob times w = 0 would be NaN; the clamp keeps w = 0 exact.
        lm_log_probs = lm_log_probs.float().clamp_min(torch.finfo(torch.float32).min)
        return log_probs.float() + self.weight * lm_log_probs, (model_state, lm_state), attention

    def reorder_state(self, state: tuple[Any, Any], rows: Tensor, *, sources: Tensor | None) -> tuple[Any, Any]:
        """rows [N'], sources [G'] | None: the contract of `Seq2Seq.reorder_state`."""
        return (self.model.reorder_state(state[0], rows, sources=sources),
                self.lm.reorder_state(state[1], rows))


def rerank(translations: Sequence[Any], lm: RecurrentLM, tokenizer: Tokenizer, weight: float,
           length_penalty: float, device: torch.device | str) -> list[Any]:
    """Rescore every translation's n-best list with the LM (see the module doc); best first again.

    `translations` are `translator.Translation`s with their `nbest` (text, score) lists. Each result's
    text, tokens and score are those of the new best (score: the combined sum), and its `nbest` holds the
    combined scores. An empty line stays as it is.
    """
    texts = [c.text for t in translations for c in t.nbest]
    ids = tokenizer.encode_tgt(texts)
    lm_scores = iter(sequence_log_probs(lm, ids, device))
    ids_iter = iter(ids)
    out = []
    for t in translations:
        ranked = []
        for candidate in t.nbest:
            pieces, lm_score = next(ids_iter), next(lm_scores)
            combined = candidate.score + weight * lm_score
            text = candidate.text
            ranked.append((combined / (len(pieces) + 1) ** length_penalty, combined, text, pieces))
        if not t.src_tokens:  # an empty input line: nothing was searched
            out.append(t)
            continue
        ranked.sort(key=lambda r: -r[0])  # stable: ties keep beam order
        _, score, text, pieces = ranked[0]
        out.append(replace(t, text=text, score=score, tokens=list(pieces), attention=None, finished=True,
                           nbest=[Candidate(r[2], r[1], r[0]) for r in ranked]))
    return out
