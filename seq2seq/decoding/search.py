"""Decoding over the decoder-step contract: greedy, beam search, sampling, reference scoring, ensembles.

Everything here talks to the model only through the contract in docs/design.md::

    model.pad_id, model.bos_id, model.eos_id
    state = model.init_state(src [B,S], src_lengths [B] cpu int64, src_mask [B,S] bool)
    log_probs [N,V], state, attention [N,S] | None = model.step(prev_tokens [N], state)
    state = model.reorder_state(state, rows [N'], sources=[G'] | None)
        # per-row state: new row i is old row rows[i]; per-source state: new source g is old source
        # sources[g] (None: unchanged, no copy). The N rows come in G groups of R = N / G consecutive
        # rows, group g being hypotheses of source g: R = 1 in greedy search, the beam size in beam search.

so it works unchanged for a `Seq2Seq`, an `Ensemble` of them, or a test double.

Batching. All sentences (and, for beam search, all sentences x beams) are decoded as one batch of
rows on the device; there is no Python loop over sentences or beams while decoding, only over time
steps. Finished sentences are removed from the batch with `reorder_state`, so the batch shrinks as
sentences end.

Host-device synchronisation. The step loop queues device work without waiting for it, except for
one small copy of the per-sentence "finished" flags (B bools) every `sync_every` steps; that copy
decides whether to stop and which rows to drop. By default `sync_every` is 1 on the CPU (where the
copy is free and dropping rows early saves work) and 4 on accelerators (where waiting every step
would stall the kernel queue of a launch-bound recurrent decoder). Between two checks a finished
sentence keeps riding along in the batch; its results are frozen by masks, so the schedule changes
only the amount of work, never the output. The step at which a sentence reaches its maximum length
is known on the host from `src_lengths` (always a CPU tensor), so no sync is needed for that.

Lengths. Sentence i may emit at most `max_len_i = floor(max_len_a + max_len_b * src_lengths[i])`
tokens (at least 1; the source length counts the EOS the data layer appends). EOS counts as an
emitted token. A sentence that emits `max_len_i` tokens without EOS ends there, unfinished
(`Hypothesis.finished` is False).

Forbidden tokens. PAD and BOS are never emitted: their log-probabilities are set to -inf at every
step of every search (greedy, sampling, beam; with an `Ensemble` or LM fusion alike, since those are
models behind the same contract), whatever the model gives them. UNK stays allowed. With `min_len`
> 0, EOS is forbidden too at the first `min_len` steps, so a finished hypothesis has at least
`min_len` tokens before its EOS (a sentence whose maximum length is <= min_len ends unfinished there).
The masked values are not renormalised: scores stay the model's own log-probabilities.

Scores. `Hypothesis.score` is the sum, accumulated in float32, of the model's log-probabilities
of every emitted token including EOS (for sampling: the untempered, unfiltered model distribution).
Beam search ranks hypotheses by `score / n ** length_penalty` where n = len(tokens) + (1 if EOS).

Exactness. `beam_search(beam_size=1)` reproduces `greedy` bit for bit (tokens, scores, attention):
both pick tokens with the same arithmetic (top-2 of running score + log-probs, so ties break the
same way) and both shrink the batch at the same steps (batch composition can change the last bit of
a CPU/GPU matrix product). `sample(top_k=1)` likewise reproduces `greedy`. Greedy and sampling keep
their own loop all the same (one row per sentence, tokens written straight to the output): run
through beam search's candidates, pool and backpointers, a greedy step would issue three times as many
small device operations besides the model's own (which a launch-bound GPU decoder pays for), and
sampling fits none of beam search's ranking rules. The two loops share everything else: the preamble,
the sync-and-drop rule (`_unfinished`), the top-2 arithmetic (`_topk`) and the output assembly.

Precision. Log-probabilities and attention are cast to float32 as they come out of `step`, so the
model may run in bf16/fp16 (e.g. under autocast); every accumulated score is float32.

Everything runs under `torch.inference_mode()`. Put the model in eval mode first (a warning is
issued otherwise: dropout would randomise the search).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

__all__ = [
    "Ensemble",
    "Hypothesis",
    "beam_search",
    "greedy",
    "max_lengths",
    "sample",
    "score_reference",
]

NEG_INF = float("-inf")


@dataclass
class Hypothesis:
    """One output sequence.

    tokens: emitted target ids without BOS/EOS.
    score: sum of the log-probabilities of every emitted token including EOS (float32 sum).
    attention: [T, S_i] float32 on the CPU, one row per emitted token (EOS included) and one column
        per real source token (the source's EOS included), or None when the model gives none.
    positional_scores: [T] float32 on the CPU, the log-probability of each emitted token.
    finished: True when the hypothesis ended with EOS; False when it was cut at the maximum length.
    """

    tokens: list[int]
    score: float
    attention: Tensor | None = None
    positional_scores: Tensor | None = None
    finished: bool = True

    @property
    def length(self) -> int:
        """Number of scored tokens: len(tokens), plus one for EOS when finished."""
        return len(self.tokens) + int(self.finished)

    def normalized_score(self, length_penalty: float) -> float:
        """The beam-search ranking key: score / length ** length_penalty."""
        return self.score / max(self.length, 1) ** length_penalty


# ------------------------------------------------------------------------- shared by the searches
def max_lengths(src_lengths: Tensor, max_len_a: float, max_len_b: float) -> Tensor:
    """Per-sentence output budget on the CPU: floor(a + b * source length), at least 1 [B] int64."""
    lengths = src_lengths.detach().to("cpu", torch.float64)
    return torch.floor(max_len_a + max_len_b * lengths).to(torch.int64).clamp_(min=1)


def _check_inputs(src: Tensor, src_lengths: Tensor, src_mask: Tensor) -> Tensor:
    if src.dim() != 2:
        raise ValueError(f"src must be [B, S], got shape {tuple(src.shape)}")
    lengths = src_lengths.detach().to("cpu", torch.int64)
    if lengths.shape != (src.size(0),):
        raise ValueError(f"src_lengths must be [B]={src.size(0)}, got shape {tuple(src_lengths.shape)}")
    if src_mask.shape != src.shape:
        raise ValueError(f"src_mask must have the shape of src {tuple(src.shape)}, "
                         f"got {tuple(src_mask.shape)}")
    if src.size(0) and (int(lengths.min()) < 1 or int(lengths.max()) > src.size(1)):
        raise ValueError("src_lengths must lie in [1, S]")
    return lengths


def _warn_if_training(model: Any) -> None:
    if getattr(model, "training", False):
        warnings.warn("decoding with a model in training mode (dropout active); call model.eval() first",
                      stacklevel=3)


def _sync_every(device: torch.device, sync_every: int | None) -> int:
    if sync_every is None:
        return 1 if device.type == "cpu" else 4
    if sync_every < 1:
        raise ValueError(f"sync_every must be >= 1, got {sync_every}")
    return sync_every


def _prepare(model: Any, src: Tensor, src_lengths: Tensor, src_mask: Tensor, max_len_a: float,
             max_len_b: float, sync_every: int | None) -> tuple[Tensor, int, Tensor, int]:
    """Shared preamble of the searches (non-empty batch) -> (source lengths, sync interval, max output
    lengths, their maximum: the number of steps at most); all on the CPU."""
    lengths = _check_inputs(src, src_lengths, src_mask)
    _warn_if_training(model)
    every = _sync_every(src.device, sync_every)
    limits = max_lengths(lengths, max_len_a, max_len_b)
    return lengths, every, limits, int(limits.max())


class _Forbidden:
    """Masks the tokens a search must not emit: PAD and BOS always, EOS before `min_len` tokens."""

    def __init__(self, model: Any, device: torch.device, min_len: int):
        if min_len < 0:
            raise ValueError(f"min_len must be >= 0 (0 = no minimum), got {min_len}")
        self.min_len = min_len
        self.always = torch.tensor([model.pad_id, model.bos_id], dtype=torch.long, device=device)
        self.early = torch.tensor([model.pad_id, model.bos_id, model.eos_id], dtype=torch.long, device=device)

    def __call__(self, log_probs: Tensor, t: int) -> Tensor:
        """log_probs [N, V] float32 at step t -> a copy with the forbidden columns at -inf (never in
        place: the tensor may be the model's own)."""
        return log_probs.index_fill(1, self.early if t < self.min_len else self.always, NEG_INF)


def _unfinished(done: Tensor, t: int, every: int, horizon: int) -> Tensor | None:
    """After step t: which sentences go on, read on the host every `every` steps (the loop's one
    host-device sync). done [n] bool -> positions [n'] of the unfinished ones on done's device (empty:
    all have finished), or None: not a sync step, or none finished (the batch stays as it is)."""
    if (t + 1) % every or t + 1 >= horizon:
        return None
    done_cpu = done.cpu()
    if not bool(done_cpu.any()):
        return None
    return (~done_cpu).nonzero().squeeze(1).to(done.device)


def _topk(candidates: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """topk over the last dim, padded with -inf / index 0 when there are fewer than k candidates."""
    c = min(k, candidates.size(-1))
    values, indices = candidates.topk(c, dim=-1)
    if c < k:
        pad = k - c
        values = torch.cat([values, values.new_full((*values.shape[:-1], pad), NEG_INF)], dim=-1)
        indices = torch.cat([indices, indices.new_zeros((*indices.shape[:-1], pad))], dim=-1)
    return values, indices


def _hypothesis(tokens: Tensor, positional: Tensor, attention: Tensor | None, length: int, finished: bool,
                score: float, src_length: int) -> Hypothesis:
    """A `Hypothesis` from host buffers: tokens/positional [>= length], attention [>= length, >= S_i]."""
    ids = tokens[:length].tolist()
    return Hypothesis(tokens=ids[:-1] if finished else ids, score=score,
                      attention=attention[:length, :src_length].clone() if attention is not None else None,
                      positional_scores=positional[:length].clone(), finished=finished)


# ------------------------------------------------------ greedy and sampling: one row per sentence
def _greedy_choice(log_probs: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
    """argmax token and new running score, computed exactly as beam search with one beam does it
    (`_select` with K = 1: the top 2 of score + log-probs, so ties break alike)."""
    values, indices = _topk(scores.unsqueeze(1) + log_probs, 2)
    return indices[:, 0], values[:, 0]


def _decode_rows(model: Any, src: Tensor, src_lengths: Tensor, src_mask: Tensor,
                 max_len_a: float, max_len_b: float,
                 choose: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
                 return_attention: bool, sync_every: int | None, min_len: int) -> list[Hypothesis]:
    """One row per sentence; `choose(log_probs [n,V] f32, scores [n]) -> (tokens [n], new scores [n])`."""
    batch = src.size(0)
    if batch == 0:
        return []
    lengths, every, limits_cpu, horizon = _prepare(model, src, src_lengths, src_mask, max_len_a, max_len_b,
                                                   sync_every)
    device = src.device
    pad, bos, eos = model.pad_id, model.bos_id, model.eos_id
    forbid = _Forbidden(model, device, min_len)

    # Output buffers for every sentence, indexed by original row.
    out_tok = torch.full((batch, horizon), pad, dtype=torch.long, device=device)
    out_pos = torch.zeros((batch, horizon), dtype=torch.float32, device=device)
    out_attn: Tensor | None = None
    out_len = torch.zeros(batch, dtype=torch.long, device=device)
    out_eos = torch.zeros(batch, dtype=torch.bool, device=device)
    out_score = torch.zeros(batch, dtype=torch.float32, device=device)

    # Active-row state (shrinks as sentences finish).
    state = model.init_state(src, src_lengths, src_mask)
    rows = torch.arange(batch, device=device)  # original row of each active row
    limit = limits_cpu.to(device)
    scores = torch.zeros(batch, dtype=torch.float32, device=device)
    cur_len = torch.zeros(batch, dtype=torch.long, device=device)
    cur_eos = torch.zeros(batch, dtype=torch.bool, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    prev = torch.full((batch,), bos, dtype=torch.long, device=device)

    def flush() -> None:
        out_len[rows] = cur_len
        out_eos[rows] = cur_eos
        out_score[rows] = scores

    for t in range(horizon):
        log_probs, state, attn = model.step(prev, state)
        log_probs = forbid(log_probs.float(), t)
        tokens, new_scores = choose(log_probs, scores)
        live = ~done  # rows already done ride along until the next sync; nothing of theirs changes
        scores = torch.where(live, new_scores, scores)
        out_tok[rows, t] = tokens  # rows already done write beyond their length: ignored
        out_pos[rows, t] = log_probs.gather(1, tokens.unsqueeze(1)).squeeze(1)
        if return_attention and attn is not None:
            if out_attn is None:
                out_attn = torch.zeros((batch, horizon, attn.size(-1)), dtype=torch.float32,
                                       device=device)
            out_attn[rows, t] = attn.float()
        is_eos = tokens == eos
        cur_eos = cur_eos | (live & is_eos)
        cur_len = cur_len + live.long()
        done = done | is_eos | (t + 1 >= limit)
        prev = tokens
        keep = _unfinished(done, t, every, horizon)
        if keep is not None:
            if not keep.numel():
                break
            flush()  # finished rows leave the batch: their source with them (one row per source)
            state = model.reorder_state(state, keep, sources=keep)
            rows, limit, scores, cur_len, cur_eos, done, prev = (
                x.index_select(0, keep) for x in (rows, limit, scores, cur_len, cur_eos, done, prev))
    flush()

    tok_c, pos_c, len_c, eos_c, score_c = (x.cpu() for x in (out_tok, out_pos, out_len, out_eos, out_score))
    attn_c = out_attn.cpu() if out_attn is not None else None
    return [_hypothesis(tok_c[b], pos_c[b], attn_c[b] if attn_c is not None else None, int(len_c[b]),
                        bool(eos_c[b]), float(score_c[b]), int(lengths[b])) for b in range(batch)]


@torch.inference_mode()
def greedy(model: Any, src: Tensor, src_lengths: Tensor, src_mask: Tensor, max_len_a: float,
           max_len_b: float, *, min_len: int = 0, return_attention: bool = True,
           sync_every: int | None = None) -> list[Hypothesis]:
    """Greedy decoding: one hypothesis per input row, in input order."""
    return _decode_rows(model, src, src_lengths, src_mask, max_len_a, max_len_b, _greedy_choice,
                        return_attention, sync_every, min_len)


@torch.inference_mode()
def sample(model: Any, src: Tensor, src_lengths: Tensor, src_mask: Tensor, max_len_a: float,
           max_len_b: float, temperature: float = 1.0, top_k: int = 0,
           generator: torch.Generator | None = None, *, min_len: int = 0, return_attention: bool = True,
           sync_every: int | None = None) -> list[Hypothesis]:
    """Ancestral sampling from softmax(log_probs / temperature), restricted to the top_k tokens if top_k > 0.

    `generator` must live on the device of `src` (torch.multinomial's rule); with a fixed generator
    state the samples are reproducible. Tokens tied with the k-th best are kept too. Scores are the model's own (untempered) log-probabilities.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = no restriction), got {top_k}")
    if generator is not None and generator.device.type != src.device.type:
        raise ValueError(f"generator is on {generator.device} but decoding runs on {src.device}")

    def choose(log_probs: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
        logits = log_probs / temperature if temperature != 1.0 else log_probs
        if 0 < top_k < logits.size(-1):
            kth = logits.topk(top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, NEG_INF)
        probs = torch.softmax(logits, dim=-1)
        tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        return tokens, scores + log_probs.gather(1, tokens.unsqueeze(1)).squeeze(1)

    return _decode_rows(model, src, src_lengths, src_mask, max_len_a, max_len_b, choose,
                        return_attention, sync_every, min_len)


# ------------------------------------------------------------------------------------ beam search
# Rows are sentence-major: row b*K + j is beam j of the b-th active sentence (K = beam size). One step:
# expand every beam by every token, select each sentence's 2K best continuations, finish the
# hypotheses that end there, prune to the K live beams (and drop finished sentences). Beams carry no
# token history: each step leaves backpointers, and `backtrack` rebuilds the chosen hypotheses once.
@dataclass
class _Beams:
    """The live beams of the n active sentences (n shrinks as sentences finish)."""

    sent: Tensor  # [n] position of each active sentence in the input batch
    limit: Tensor  # [n] its maximum output length
    scores: Tensor  # [n, K] float32 running score of each beam (-inf: no beam; at step 0 all but beam 0)
    prev: Tensor  # [n*K] last token of each beam: the next step's input
    count: Tensor  # [n] finished hypotheses filed so far (<= K)
    done: Tensor  # [n] bool: nothing left to do (K finished, or the maximum length reached)


@dataclass
class _Candidates:
    """One step's 2K best continuations of each sentence, best first (2K, so that K non-EOS ones
    remain even when every beam's best continuation is EOS)."""

    score: Tensor  # [n, 2K] float32 running score including the continuation (-inf: fewer exist)
    index: Tensor  # [n, 2K] position among the sentence's K*V continuations: beam * V + token
    beam: Tensor  # [n, 2K] the beam it continues
    token: Tensor  # [n, 2K]
    is_eos: Tensor  # [n, 2K] bool
    live: Tensor  # [n, K] ranks of the first K non-EOS candidates: the next beams, best first


@dataclass
class _Backpointers:
    """Per step and input sentence: the 2K candidates, and which of them became the K beams.

    Recording them costs O(K) per sentence and step whatever the length (copying each beam's history
    every step would cost O(t)); `_backtrack` follows them once, at the end."""

    token: Tensor  # [T, B, 2K]
    log_prob: Tensor  # [T, B, 2K] float32 the token's own log-probability
    beam: Tensor  # [T, B, 2K] the beam it continues
    live: Tensor  # [T, B, K] candidate rank of each beam of the next step
    attention: Tensor | None  # [T, B, K, S] float32 attention of the step's K input rows; None: not kept


@dataclass
class _Finished:
    """The finished hypotheses, as where they end (step, candidate rank): K slots per input sentence,
    plus a bin (slot K) for those filed beyond K in one step, so that writes need no data-dependent
    shapes (and so no sync)."""

    step: Tensor  # [B, K+1] step of the last token
    rank: Tensor  # [B, K+1] its candidate rank at that step
    score: Tensor  # [B, K+1] float32 (-inf: empty)
    eos: Tensor  # [B, K+1] bool: ended with EOS (else cut at the maximum length)
    valid: Tensor  # [B, K+1] bool: slot filled (the bin's flag is never read)


def _expand(scores: Tensor, log_probs: Tensor) -> Tensor:
    """Every continuation of every beam: scores [n, K] + log_probs [n, K, V] -> running scores [n, K*V]."""
    return (scores.unsqueeze(2) + log_probs).view(scores.size(0), -1)


def _select(expanded: Tensor, k: int, vocab: int, eos: int, rank: Tensor) -> _Candidates:
    """The 2K best of each sentence's continuations [n, K*V], and the K that live on: the first K that
    are not EOS (there always are K: each beam has one EOS continuation)."""
    score, index = _topk(expanded, 2 * k)  # [n, 2K], best first
    beam = torch.div(index, vocab, rounding_mode="floor")
    token = index - beam * vocab
    is_eos = token == eos
    # Sort key: the rank, plus 2K for EOS candidates so that they come after all others (no ties).
    live = (rank + 2 * k * is_eos.long()).topk(k, dim=1, largest=False).indices  # [n, K]
    return _Candidates(score=score, index=index, beam=beam, token=token, is_eos=is_eos, live=live)


def _record(back: _Backpointers, t: int, sent: Tensor, cands: _Candidates, log_probs: Tensor,
            attn: Tensor | None) -> None:
    """Store step t's backpointers: cands [n, 2K], log_probs [n, K, V] f32, attn [n*K, S] or None."""
    n, k = cands.live.shape
    back.token[t, sent] = cands.token
    back.log_prob[t, sent] = log_probs.view(n, -1).gather(1, cands.index)
    back.beam[t, sent] = cands.beam
    back.live[t, sent] = cands.live
    if attn is not None:
        if back.attention is None:
            horizon, batch = back.token.shape[:2]
            back.attention = attn.new_zeros((horizon, batch, k, attn.size(-1)), dtype=torch.float32)
        back.attention[t, sent] = attn.float().view(n, k, -1)


def _finish(pool: _Finished, beams: _Beams, cands: _Candidates, t: int, rank: Tensor) -> None:
    """File the hypotheses that end at step t into the pool, and mark the sentences that are done.

    A hypothesis ends with an EOS candidate ranked within the first K, or, at the sentence's maximum
    length, with a live candidate (unfinished). A sentence files them in rank order until it holds K
    (the extra ones of that step go to the bin); then, or at its maximum length, it is done."""
    n, k = cands.live.shape
    is_live = torch.zeros_like(cands.is_eos).scatter_(1, cands.live, True)  # [n, 2K]
    last = t + 1 >= beams.limit  # [n]
    ends = ((cands.score > NEG_INF) & ~beams.done.unsqueeze(1)
            & ((cands.is_eos & (rank < k)) | (is_live & last.unsqueeze(1))))  # [n, 2K]
    slot = beams.count.unsqueeze(1) + ends.long().cumsum(1) - 1  # [n, 2K] in rank order
    kept = ends & (slot < k)
    slot = torch.where(kept, slot, k)  # everything else to the bin
    sent = beams.sent.unsqueeze(1).expand(n, 2 * k)
    pool.step[sent, slot] = t
    pool.rank[sent, slot] = rank.expand(n, 2 * k)
    pool.score[sent, slot] = cands.score
    pool.eos[sent, slot] = cands.is_eos
    pool.valid[sent, slot] = True
    beams.count = beams.count + kept.long().sum(1)
    beams.done = beams.done | (beams.count >= k) | last


def _prune(beams: _Beams, cands: _Candidates, keep: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """The K live candidates become the beams (the other K are dropped), and when `keep` [n'] is given
    only those sentences stay. Updates `beams`; returns the state's reorder: rows [n'*K], each new
    beam's parent row, and sources [n'] (None: the same sentences, whose keys need no copy)."""
    n, k = cands.live.shape
    beams.scores = cands.score.gather(1, cands.live)  # [n, K]
    beams.prev = cands.token.gather(1, cands.live).view(-1)  # [n*K]
    parent = cands.beam.gather(1, cands.live)  # [n, K]
    rows = torch.arange(n, device=parent.device).unsqueeze(1) * k + parent  # [n, K], within each sentence
    if keep is None:
        return rows.view(-1), None
    beams.prev = beams.prev.view(n, k).index_select(0, keep).view(-1)
    beams.sent, beams.limit, beams.scores, beams.count, beams.done = (
        x.index_select(0, keep) for x in (beams.sent, beams.limit, beams.scores, beams.count, beams.done))
    return rows.index_select(0, keep).view(-1), keep


def _best(pool: _Finished, nbest: int, length_penalty: float) -> Tensor:
    """Each sentence's `nbest` best slots by score / length ** length_penalty, best first [B, nbest]
    (empty slots last; equal keys in filing order). A hypothesis ending at step t has t + 1 tokens."""
    k = pool.step.size(1) - 1
    norm = pool.score[:, :k] / (pool.step[:, :k] + 1).float().pow(length_penalty)
    norm = norm.masked_fill(~pool.valid[:, :k], NEG_INF)
    return norm.argsort(dim=1, descending=True, stable=True)[:, :nbest]


def _backtrack(back: _Backpointers, end: Tensor, rank: Tensor,
               pad: int) -> tuple[Tensor, Tensor, Tensor | None]:
    """Follow the backpointers of hypotheses that end at step end [B, m] with candidate rank [B, m]
    back to step 0, all at once -> tokens [B, m, T'], their log-probabilities [B, m, T'] and attention
    [B, m, T', S] or None, where T' = end.max() + 1 (beyond a hypothesis's end: never read)."""
    batch, m = end.shape
    span = int(end.max()) + 1
    tokens = torch.full((batch, m, span), pad, dtype=torch.long, device=end.device)
    log_probs = torch.zeros((batch, m, span), dtype=torch.float32, device=end.device)
    attention = None
    if back.attention is not None:
        width = back.attention.size(-1)
        attention = torch.zeros((batch, m, span, width), dtype=torch.float32, device=end.device)
    cand = rank
    for t in range(span - 1, -1, -1):
        tokens[:, :, t] = back.token[t].gather(1, cand)
        log_probs[:, :, t] = back.log_prob[t].gather(1, cand)
        parent = back.beam[t].gather(1, cand)  # [B, m] the beam the candidate continues
        if attention is not None:
            attention[:, :, t] = back.attention[t].gather(1, parent.unsqueeze(2).expand(-1, -1, width))
        if t:  # that beam was candidate back.live[t - 1][parent] of step t - 1
            cand = torch.where(t <= end, back.live[t - 1].gather(1, parent), cand)
    return tokens, log_probs, attention


@torch.inference_mode()
def beam_search(model: Any, src: Tensor, src_lengths: Tensor, src_mask: Tensor, beam_size: int,
                length_penalty: float, max_len_a: float, max_len_b: float, nbest: int = 1, *,
                min_len: int = 0, return_attention: bool = True,
                sync_every: int | None = None) -> list[list[Hypothesis]]:
    """Batched beam search; returns, per input row, up to `nbest` hypotheses, best first.

    Rows are sentence-major: row b*K + k is beam k of sentence b (K = beam_size). Each step, over
    the K*V continuations of a sentence, the top 2K by running score are taken (fairseq style):
    EOS candidates among the first K ranks are finalized, and the first K non-EOS candidates become
    the next beams (there are always K of them: each beam contributes at most one EOS). At step 0
    only beam 0 is live. A sentence is done once it holds K finalized hypotheses (early stop; extra
    ones from the same step are dropped lowest rank first) or at its maximum length, where its live
    beams are finalized unfinished. Done sentences are dropped from the batch via `reorder_state`.
    Hypotheses are ranked by score / n ** length_penalty, n = number of scored tokens incl. EOS.
    Fewer than `nbest` are returned only when fewer than that many live (finite-score) ones exist.

    Early stopping has a known cost with length normalisation: once K short hypotheses have ended,
    a longer one with a better per-token score is never reached, so the best beam can rank below
    greedy's output by the same key (rare; see tests/test_search.py).
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    if not 1 <= nbest <= beam_size:
        raise ValueError(f"nbest must be in [1, beam_size={beam_size}], got {nbest}")
    batch = src.size(0)
    if batch == 0:
        return []
    lengths, every, limits_cpu, horizon = _prepare(model, src, src_lengths, src_mask, max_len_a, max_len_b,
                                                   sync_every)
    device = src.device
    pad, bos, eos = model.pad_id, model.bos_id, model.eos_id
    forbid = _Forbidden(model, device, min_len)
    k = beam_size
    rank = torch.arange(2 * k, device=device)  # candidate ranks, best first

    def zeros(*shape: int, dtype: torch.dtype = torch.long) -> Tensor:
        return torch.zeros(shape, dtype=dtype, device=device)

    back = _Backpointers(token=torch.full((horizon, batch, 2 * k), pad, dtype=torch.long, device=device),
                         log_prob=zeros(horizon, batch, 2 * k, dtype=torch.float32),
                         beam=zeros(horizon, batch, 2 * k), live=zeros(horizon, batch, k), attention=None)
    pool = _Finished(step=zeros(batch, k + 1), rank=zeros(batch, k + 1),
                     score=torch.full((batch, k + 1), NEG_INF, dtype=torch.float32, device=device),
                     eos=zeros(batch, k + 1, dtype=torch.bool), valid=zeros(batch, k + 1, dtype=torch.bool))
    scores = torch.full((batch, k), NEG_INF, dtype=torch.float32, device=device)
    scores[:, 0] = 0.0  # one live beam per sentence at the first step
    beams = _Beams(sent=torch.arange(batch, device=device), limit=limits_cpu.to(device), scores=scores,
                   prev=torch.full((batch * k,), bos, dtype=torch.long, device=device),
                   count=zeros(batch), done=zeros(batch, dtype=torch.bool))

    state = model.init_state(src, src_lengths, src_mask)
    # K rows per sentence, copies of its one row; the per-source state stays once per sentence.
    expand = torch.arange(batch, device=device).unsqueeze(1).expand(batch, k).reshape(-1)  # [B*K], no sync
    state = model.reorder_state(state, expand, sources=None)
    for t in range(horizon):
        log_probs, state, attn = model.step(beams.prev, state)  # [n*K, V], _, [n*K, S]
        log_probs = forbid(log_probs.float(), t).view(beams.sent.numel(), k, -1)  # [n, K, V]
        cands = _select(_expand(beams.scores, log_probs), k, log_probs.size(-1), eos, rank)  # [n, 2K]
        _record(back, t, beams.sent, cands, log_probs, attn if return_attention else None)
        _finish(pool, beams, cands, t, rank)
        keep = _unfinished(beams.done, t, every, horizon)
        if keep is not None and not keep.numel():
            break
        rows, sources = _prune(beams, cands, keep)
        state = model.reorder_state(state, rows, sources=sources)

    slots = _best(pool, nbest, length_penalty)  # [B, m], m = nbest
    end = pool.step.gather(1, slots)  # [B, m]
    tokens, log_probs, attention = _backtrack(back, end, pool.rank.gather(1, slots), pad)

    tok_c, pos_c, end_c = tokens.cpu(), log_probs.cpu(), end.cpu()
    score_c, eos_c, valid_c = (x.gather(1, slots).cpu() for x in (pool.score, pool.eos, pool.valid))
    attn_c = attention.cpu() if attention is not None else None
    return [[_hypothesis(tok_c[b, j], pos_c[b, j], attn_c[b, j] if attn_c is not None else None,
                         int(end_c[b, j]) + 1, bool(eos_c[b, j]), float(score_c[b, j]), int(lengths[b]))
             for j in range(nbest) if bool(valid_c[b, j])]
            for b in range(batch)]


# ------------------------------------------------------------------------------ reference scoring
@torch.inference_mode()
def score_reference(model: Any, src: Tensor, src_lengths: Tensor, src_mask: Tensor,
                    tgt_ids: Sequence[Sequence[int]]) -> list[float]:
    """log P(pieces + EOS | source) for each row by teacher forcing (float32 sums).

    `tgt_ids[i]` are bare piece ids (no BOS/EOS). One `step` call per time step over all rows;
    rows whose reference has ended ride along and are masked out.
    """
    _check_inputs(src, src_lengths, src_mask)
    batch = src.size(0)
    if len(tgt_ids) != batch:
        raise ValueError(f"{len(tgt_ids)} references for {batch} source rows")
    if batch == 0:
        return []
    _warn_if_training(model)
    device = src.device
    pad, bos, eos = model.pad_id, model.bos_id, model.eos_id
    lens = [len(ids) for ids in tgt_ids]
    horizon = max(lens) + 1
    target = torch.full((batch, horizon), pad, dtype=torch.long)
    for b, ids in enumerate(tgt_ids):
        if lens[b]:
            target[b, : lens[b]] = torch.as_tensor(list(ids), dtype=torch.long)
        target[b, lens[b]] = eos
    if int(target.min()) < 0:
        raise ValueError("reference ids must be >= 0")
    target_max = int(target.max())
    mask = (torch.arange(horizon).unsqueeze(0) <= torch.tensor(lens).unsqueeze(1)).to(device)
    target = target.to(device)
    state = model.init_state(src, src_lengths, src_mask)
    prev = torch.full((batch,), bos, dtype=torch.long, device=device)
    total = torch.zeros(batch, dtype=torch.float32, device=device)
    for t in range(horizon):
        log_probs, state, _ = model.step(prev, state)
        if t == 0 and target_max >= log_probs.size(-1):
            raise ValueError(f"reference ids must be < the target vocabulary size {log_probs.size(-1)}")
        tok_lp = log_probs.float().gather(1, target[:, t : t + 1]).squeeze(1)
        total = total + torch.where(mask[:, t], tok_lp, torch.zeros_like(tok_lp))
        prev = target[:, t]
    return total.cpu().tolist()


# --------------------------------------------------------------------------------------- ensemble
class Ensemble:
    """Several models behind the single-model decoder-step contract.

    At each step the models' log-probabilities are averaged and renormalised:
    `log_softmax(mean_m log p_m)`, i.e. the normalised geometric mean of the distributions (the
    usual "log-linear" ensemble; it rewards tokens all models agree on). With one model the step
    output is returned unchanged (exactly that model). Attention is the mean of the models'
    attentions (those that return one); None if none does. The state is the list of the models'
    states. All models must share pad/bos/eos ids and the target vocabulary size (checked here
    when a model exposes `tgt_vocab_size`, otherwise at the first step).
    """

    def __init__(self, models: Sequence[Any]):
        models = list(models)
        if not models:
            raise ValueError("an Ensemble needs at least one model")
        ids = [(m.pad_id, m.bos_id, m.eos_id) for m in models]
        if len(set(ids)) != 1:
            raise ValueError("ensemble members disagree on special ids (pad, bos, eos): "
                             + ", ".join(map(str, ids)))
        sizes = {getattr(m, "tgt_vocab_size", None) for m in models} - {None}
        if len(sizes) > 1:
            raise ValueError(f"ensemble members have different target vocabulary sizes: {sorted(sizes)}")
        self.models = models
        self.pad_id, self.bos_id, self.eos_id = ids[0]

    @property
    def training(self) -> bool:
        return any(getattr(m, "training", False) for m in self.models)

    def eval(self) -> Ensemble:
        for m in self.models:
            m.eval()
        return self

    def init_state(self, src: Tensor, src_lengths: Tensor, src_mask: Tensor) -> list[Any]:
        return [m.init_state(src, src_lengths, src_mask) for m in self.models]

    def step(self, prev_tokens: Tensor, state: list[Any]) -> tuple[Tensor, list[Any], Tensor | None]:
        outputs = [m.step(prev_tokens, s) for m, s in zip(self.models, state)]
        new_state = [o[1] for o in outputs]
        if len(outputs) == 1:
            log_probs, _, attn = outputs[0]
            return log_probs, new_state, attn
        log_probs = [o[0].float() for o in outputs]
        sizes = [lp.size(-1) for lp in log_probs]
        if len(set(sizes)) != 1:
            raise ValueError(f"ensemble members have different target vocabulary sizes: {sizes}")
        mean = torch.stack(log_probs).mean(0)
        attns = [o[2].float() for o in outputs if o[2] is not None]
        attn = torch.stack(attns).mean(0) if attns else None
        return torch.log_softmax(mean, dim=-1), new_state, attn

    def reorder_state(self, state: list[Any], rows: Tensor, *, sources: Tensor | None) -> list[Any]:
        return [m.reorder_state(s, rows, sources=sources) for m, s in zip(self.models, state)]
