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

Scores. `Hypothesis.score` is the sum, accumulated in float32, of the model's log-probabilities
of every emitted token including EOS (for sampling: the untempered, unfiltered model distribution).
Beam search ranks hypotheses by `score / n ** length_penalty` where n = len(tokens) + (1 if EOS).

Exactness. `beam_search(beam_size=1)` reproduces `greedy` bit for bit (tokens, scores, attention):
both pick tokens with the same arithmetic (top-2 of running score + log-probs, so ties break the
same way) and both shrink the batch at the same steps (batch composition can change the last bit of
a CPU/GPU matrix product). `sample(top_k=1)` likewise reproduces `greedy`.

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


# ---------------------------------------------------------------------------------------- helpers
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


def _top2(candidates: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """topk over the last dim, padded with -inf / index 0 when there are fewer than k candidates."""
    c = min(k, candidates.size(-1))
    values, indices = candidates.topk(c, dim=-1)
    if c < k:
        pad = k - c
        values = torch.cat([values, values.new_full((*values.shape[:-1], pad), NEG_INF)], dim=-1)
        indices = torch.cat([indices, indices.new_zeros((*indices.shape[:-1], pad))], dim=-1)
    return values, indices


def _greedy_choice(log_probs: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
    """argmax token and new running score, computed exactly as beam search with one beam does it."""
    values, indices = _top2(scores.unsqueeze(1) + log_probs, 2)
    return indices[:, 0], values[:, 0]


def _hypothesis(tokens: Tensor, positional: Tensor, attention: Tensor | None, length: int, finished: bool,
                score: float, src_length: int) -> Hypothesis:
    """A `Hypothesis` from host buffers: tokens/positional [>= length], attention [>= length, >= S_i]."""
    ids = tokens[:length].tolist()
    return Hypothesis(tokens=ids[:-1] if finished else ids, score=score,
                      attention=attention[:length, :src_length].clone() if attention is not None else None,
                      positional_scores=positional[:length].clone(), finished=finished)


# ------------------------------------------------------------------- greedy and sampling (rowwise)
def _prepare(model: Any, src: Tensor, src_lengths: Tensor, src_mask: Tensor, max_len_a: float,
             max_len_b: float, sync_every: int | None) -> tuple[Tensor, int, Tensor, int]:
    """Shared preamble of the searches (non-empty batch) -> (source lengths, sync interval, max output
    lengths, their maximum: the number of steps at most); all on the CPU."""
    lengths = _check_inputs(src, src_lengths, src_mask)
    _warn_if_training(model)
    every = _sync_every(src.device, sync_every)
    limits = max_lengths(lengths, max_len_a, max_len_b)
    return lengths, every, limits, int(limits.max())


def _decode_rows(model: Any, src: Tensor, src_lengths: Tensor, src_mask: Tensor,
                 max_len_a: float, max_len_b: float,
                 choose: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
                 return_attention: bool, sync_every: int | None) -> list[Hypothesis]:
    """One row per sentence; `choose(log_probs [n,V] f32, scores [n]) -> (tokens [n], new scores [n])`."""
    batch = src.size(0)
    if batch == 0:
        return []
    lengths, every, limits_cpu, horizon = _prepare(model, src, src_lengths, src_mask, max_len_a, max_len_b,
                                                   sync_every)
    device = src.device
    pad, bos, eos = model.pad_id, model.bos_id, model.eos_id

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
        log_probs = log_probs.float()
        tokens, new_scores = choose(log_probs, scores)
        live = ~done
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
        if (t + 1) % every == 0 and t + 1 < horizon:
            done_cpu = done.cpu()  # the one host-device sync
            if bool(done_cpu.all()):
                break
            if bool(done_cpu.any()):
                flush()
                keep = (~done_cpu).nonzero().squeeze(1).to(device)
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
           max_len_b: float, *, return_attention: bool = True,
           sync_every: int | None = None) -> list[Hypothesis]:
    """Greedy decoding: one hypothesis per input row, in input order."""
    return _decode_rows(model, src, src_lengths, src_mask, max_len_a, max_len_b, _greedy_choice,
                        return_attention, sync_every)


@torch.inference_mode()
def sample(model: Any, src: Tensor, src_lengths: Tensor, src_mask: Tensor, max_len_a: float,
           max_len_b: float, temperature: float = 1.0, top_k: int = 0,
           generator: torch.Generator | None = None, *, return_attention: bool = True,
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
                        return_attention, sync_every)


# ------------------------------------------------------------------------------------ beam search
@torch.inference_mode()
def beam_search(model: Any, src: Tensor, src_lengths: Tensor, src_mask: Tensor, beam_size: int,
                length_penalty: float, max_len_a: float, max_len_b: float, nbest: int = 1, *,
                return_attention: bool = True,
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
    k = beam_size
    two_k = 2 * k
    rank = torch.arange(two_k, device=device)

    # Backpointers, one slice per step, rows by original sentence: the step's 2K candidates (token,
    # its log-prob, parent beam) and which candidates became the K live beams. A hypothesis is
    # rebuilt from them once, at the end, so a step costs O(K) per sentence however long the
    # hypotheses are (copying each beam's history every step would cost O(t)).
    bp_tok = torch.full((horizon, batch, two_k), pad, dtype=torch.long, device=device)
    bp_lp = torch.zeros((horizon, batch, two_k), dtype=torch.float32, device=device)
    bp_parent = torch.zeros((horizon, batch, two_k), dtype=torch.long, device=device)
    bp_live = torch.zeros((horizon, batch, k), dtype=torch.long, device=device)
    bp_attn: Tensor | None = None  # [horizon, batch, K, S]: attention of each step's K input rows

    # Finalized hypotheses, by where they end (step, candidate rank): K slots per sentence plus a
    # bin (slot K) for dropped entries, so that writes need no data-dependent shapes (and no sync).
    slots = k + 1
    pool_step = torch.zeros((batch, slots), dtype=torch.long, device=device)
    pool_cand = torch.zeros((batch, slots), dtype=torch.long, device=device)
    pool_score = torch.full((batch, slots), NEG_INF, dtype=torch.float32, device=device)
    pool_eos = torch.zeros((batch, slots), dtype=torch.bool, device=device)
    pool_valid = torch.zeros((batch, slots), dtype=torch.bool, device=device)

    # Live beams of the active sentences (shrinks as sentences finish).
    state = model.init_state(src, src_lengths, src_mask)
    # K rows per sentence, copies of its one row; the per-source state stays once per sentence.
    state = model.reorder_state(state, torch.arange(batch, device=device).repeat_interleave(k), sources=None)
    n = batch
    sent = torch.arange(batch, device=device)  # original sentence of each active sentence
    limit = limits_cpu.to(device)
    scores = torch.full((batch, k), NEG_INF, dtype=torch.float32, device=device)
    scores[:, 0] = 0.0
    count = torch.zeros(batch, dtype=torch.long, device=device)  # finalized so far (<= K)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    prev = torch.full((batch * k,), bos, dtype=torch.long, device=device)

    for t in range(horizon):
        log_probs, state, attn = model.step(prev, state)
        vocab = log_probs.size(-1)
        log_probs = log_probs.float().view(n, k, vocab)
        cand = (scores.unsqueeze(2) + log_probs).view(n, k * vocab)
        top_s, top_i = _top2(cand, two_k)  # [n, 2K], best first
        beam = torch.div(top_i, vocab, rounding_mode="floor")
        tok = top_i - beam * vocab
        valid = top_s > NEG_INF
        is_eos = tok == eos
        # The first K non-EOS candidates continue (keys are distinct; ascending = rank order).
        act = (rank + two_k * is_eos.long()).topk(k, dim=1, largest=False).indices  # [n, K]
        is_act = torch.zeros_like(is_eos).scatter_(1, act, True)
        last = t + 1 >= limit  # [n]
        fin = valid & ~done.unsqueeze(1) & ((is_eos & (rank < k)) | (is_act & last.unsqueeze(1)))

        bp_tok[t, sent] = tok
        bp_lp[t, sent] = log_probs.view(n, k * vocab).gather(1, top_i)
        bp_parent[t, sent] = beam
        bp_live[t, sent] = act
        if return_attention and attn is not None:
            if bp_attn is None:
                bp_attn = torch.zeros((horizon, batch, k, attn.size(-1)), dtype=torch.float32,
                                      device=device)
            bp_attn[t, sent] = attn.float().view(n, k, -1)

        # Finalize: append to each sentence's pool in rank order; overflow goes to the bin.
        slot = count.unsqueeze(1) + fin.long().cumsum(1) - 1
        kept = fin & (slot < k)
        slot = torch.where(kept, slot, k)
        srow = sent.unsqueeze(1).expand(n, two_k)
        pool_step[srow, slot] = t
        pool_cand[srow, slot] = rank.expand(n, two_k)
        pool_score[srow, slot] = top_s
        pool_eos[srow, slot] = is_eos
        pool_valid[srow, slot] = True  # the bin's flag is never read
        count = count + kept.long().sum(1)
        done = done | (count >= k) | last

        # Advance the live beams. Beams move only among the beams of their own sentence, so the
        # state's per-source tensors stay in place unless finished sentences are dropped too.
        scores = top_s.gather(1, act)
        parent = beam.gather(1, act)  # [n, K]
        prev = tok.gather(1, act).view(-1)
        reorder = (torch.arange(n, device=device).unsqueeze(1) * k + parent).view(-1)
        sources = None  # the same sentences: their per-source state stays
        if (t + 1) % every == 0 and t + 1 < horizon:
            done_cpu = done.cpu()  # the one host-device sync
            if bool(done_cpu.all()):
                break
            if bool(done_cpu.any()):
                keep = (~done_cpu).nonzero().squeeze(1).to(device)
                reorder = reorder.view(n, k).index_select(0, keep).view(-1)  # [n'*K]: sentences stay grouped
                prev = prev.view(n, k).index_select(0, keep).view(-1)
                sent, limit, scores, count, done = (
                    x.index_select(0, keep) for x in (sent, limit, scores, count, done))
                n = keep.numel()
                sources = keep
        state = model.reorder_state(state, reorder, sources=sources)

    # Rank the finalized hypotheses of every sentence at once.
    valid = pool_valid[:, :k]
    norm = pool_score[:, :k] / (pool_step[:, :k] + 1).float().pow(length_penalty)
    norm = norm.masked_fill(~valid, NEG_INF)
    order = norm.argsort(dim=1, descending=True, stable=True)[:, :nbest]  # [B, m] (m = nbest)
    end = pool_step.gather(1, order)  # [B, m] step of the last token
    cand = pool_cand.gather(1, order)  # [B, m] its candidate rank at that step

    # Follow the backpointers from each chosen hypothesis's last step to step 0, all at once.
    span = int(end.max()) + 1
    out_tok = torch.full((batch, nbest, span), pad, dtype=torch.long, device=device)
    out_lp = torch.zeros((batch, nbest, span), dtype=torch.float32, device=device)
    out_attn = (torch.zeros((batch, nbest, span, bp_attn.size(-1)), dtype=torch.float32, device=device)
                if bp_attn is not None else None)
    for t in range(span - 1, -1, -1):
        out_tok[:, :, t] = bp_tok[t].gather(1, cand)  # beyond a hypothesis's end: never read
        out_lp[:, :, t] = bp_lp[t].gather(1, cand)
        parent = bp_parent[t].gather(1, cand)  # [B, m] live beam the candidate extends
        if out_attn is not None:
            out_attn[:, :, t] = bp_attn[t].gather(1, parent.unsqueeze(2).expand(-1, -1, out_attn.size(-1)))
        if t:
            cand = torch.where(t <= end, bp_live[t - 1].gather(1, parent), cand)

    tok_c, pos_c, end_c = out_tok.cpu(), out_lp.cpu(), end.cpu()
    score_c, eos_c, valid_c = (x.gather(1, order).cpu() for x in (pool_score, pool_eos, valid))
    attn_c = out_attn.cpu() if out_attn is not None else None
    results: list[list[Hypothesis]] = []
    for b in range(batch):
        results.append([_hypothesis(tok_c[b, j], pos_c[b, j], attn_c[b, j] if attn_c is not None else None,
                                    int(end_c[b, j]) + 1, bool(eos_c[b, j]), float(score_c[b, j]),
                                    int(lengths[b]))
                        for j in range(nbest) if bool(valid_c[b, j])])
    return results


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
