"""Search over the decoder-step contract, tested against a small fake model (and a tiny real Seq2Seq)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from seq2seq.decoding.search import (Ensemble, Hypothesis, beam_search, greedy, max_lengths, sample,
                            score_reference)

PAD, UNK, BOS, EOS = 0, 1, 2, 3


class FakeModel(nn.Module):
    """A tiny random attentive GRU decoder over a position-aware embedding "encoder".

    Implements exactly the decoder-step contract. The EOS logit grows with the step count and
    depends on a per-row source feature, so outputs end at mixed lengths; pad and BOS are never
    predicted (-inf), as in a real model that masks them.
    """

    def __init__(self, src_vocab: int = 15, tgt_vocab: int = 12, hidden: int = 16, seed: int = 0,
                 eos_bias: float = 0.0, eos_slope: float = 0.7, out_dtype: torch.dtype = torch.float32):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.pad_id, self.bos_id, self.eos_id = PAD, BOS, EOS
        self.tgt_vocab_size = tgt_vocab
        self.src_emb = nn.Parameter(torch.randn(src_vocab, hidden, generator=g))
        self.pos = nn.Parameter(0.3 * torch.randn(64, hidden, generator=g))
        self.tgt_emb = nn.Parameter(torch.randn(tgt_vocab, hidden, generator=g))
        self.w_init = nn.Parameter(torch.randn(hidden, hidden, generator=g) / hidden ** 0.5)
        self.cell = nn.GRUCell(hidden, hidden)
        with torch.no_grad():
            for p in self.cell.parameters():
                p.copy_(torch.randn(p.shape, generator=g) / hidden ** 0.5)
        self.w_att = nn.Parameter(torch.randn(hidden, hidden, generator=g) / hidden ** 0.5)
        self.w_out = nn.Parameter(2.0 * torch.randn(2 * hidden, tgt_vocab, generator=g) / hidden ** 0.5)
        self.w_eos = nn.Parameter(torch.randn(hidden, generator=g) / hidden ** 0.5)
        self.eos_bias, self.eos_slope, self.out_dtype = eos_bias, eos_slope, out_dtype
        self.step_batch_sizes: list[int] = []
        self.eval()
        self.requires_grad_(False)

    def init_state(self, src, src_lengths, src_mask):
        assert src_lengths.device.type == "cpu" and src_lengths.dtype == torch.int64
        enc = torch.tanh(self.src_emb[src] + self.pos[: src.size(1)])  # [B, S, H]
        m = src_mask.unsqueeze(-1).float()
        feat = (enc * m).sum(1) / m.sum(1)  # [B, H]
        self.step_batch_sizes = []
        self.within_source_reorders = self.grouped_reorders = 0
        return {"h": torch.tanh(feat @ self.w_init), "enc": enc, "mask": src_mask, "feat": feat,
                "t": torch.zeros(src.size(0), device=src.device),
                "src_row": torch.arange(src.size(0), device=src.device),  # source of each row
                "sources": torch.arange(src.size(0), device=src.device)}  # per source: which it is

    def step(self, prev_tokens, state):
        self.step_batch_sizes.append(prev_tokens.numel())
        h = self.cell(self.tgt_emb[prev_tokens], state["h"])
        scores = torch.einsum("nsh,nh->ns", state["enc"], h @ self.w_att)
        scores = scores.masked_fill(~state["mask"], float("-inf"))
        attn = torch.softmax(scores, dim=-1)
        ctx = torch.einsum("ns,nsh->nh", attn, state["enc"])
        logits = torch.cat([h, ctx], dim=-1) @ self.w_out
        eos_shift = self.eos_bias + self.eos_slope * (state["t"] - 4.0) + 2.0 * (state["feat"] @ self.w_eos)
        logits[:, EOS] = logits[:, EOS] + eos_shift
        logits[:, PAD] = float("-inf")
        logits[:, BOS] = float("-inf")
        log_probs = torch.log_softmax(logits.float(), dim=-1).to(self.out_dtype)
        new = dict(state, h=h, t=state["t"] + 1)
        return log_probs, new, attn.to(self.out_dtype)

    def reorder_state(self, state, rows, *, sources):
        """The contract, holding search to its layout promise (checked on the host): after the
        reorder, the N / G consecutive rows of each group are hypotheses of that group's source."""
        groups = state["sources"] if sources is None else state["sources"].index_select(0, sources)
        src_row = state["src_row"].index_select(0, rows)
        assert rows.numel() % groups.numel() == 0
        per_group = rows.numel() // groups.numel()
        assert torch.equal(src_row, groups.repeat_interleave(per_group))
        if sources is None:  # the sources stay where they are: nothing of theirs is copied
            self.within_source_reorders += 1
        if sources is not None or rows.numel() != state["src_row"].numel():
            self.grouped_reorders += 1  # beams expanded or sentences dropped: groups rebuilt, checked above
        per_row = {k: v.index_select(0, rows) for k, v in state.items() if k != "sources"}
        return dict(per_row, sources=groups)


def make_batch(seqs, device="cpu"):
    """Source rows: bare ids + EOS, right-padded (like data.collate_source)."""
    rows = [list(s) + [EOS] for s in seqs]
    width = max(map(len, rows))
    src = torch.full((len(rows), width), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        src[i, : len(r)] = torch.tensor(r)
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.int64)
    return src.to(device), lengths, (src != PAD).to(device)


def random_sources(n, seed=0, lo=1, hi=12, vocab=15):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(lo, hi + 1, (1,), generator=g))
        out.append(torch.randint(4, vocab, (length,), generator=g).tolist())
    return out


SOURCES = random_sources(16, seed=1)


def assert_same(a: Hypothesis, b: Hypothesis, exact: bool = True):
    assert a.tokens == b.tokens
    assert a.finished == b.finished
    if exact:
        assert a.score == b.score
        assert torch.equal(a.positional_scores, b.positional_scores)
        assert (a.attention is None) == (b.attention is None)
        if a.attention is not None:
            assert torch.equal(a.attention, b.attention)
    else:
        assert a.score == pytest.approx(b.score, abs=1e-4)
        torch.testing.assert_close(a.positional_scores, b.positional_scores, atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------ greedy
def test_greedy_shapes_and_lengths():
    model = FakeModel()
    src, lengths, mask = make_batch(SOURCES)
    hyps = greedy(model, src, lengths, mask, 3, 1.0)
    limits = max_lengths(lengths, 3, 1.0)
    assert len(hyps) == len(SOURCES)
    assert {h.finished for h in hyps} == {True, False}, "fixture should give both EOS and cut endings"
    for h, n_src, limit in zip(hyps, lengths.tolist(), limits.tolist()):
        assert h.length <= limit
        if not h.finished:
            assert len(h.tokens) == limit
        assert EOS not in h.tokens and BOS not in h.tokens and PAD not in h.tokens
        assert h.attention.shape == (h.length, n_src) and h.attention.dtype == torch.float32
        torch.testing.assert_close(h.attention.sum(-1), torch.ones(h.length))
        assert h.positional_scores.shape == (h.length,)
        assert h.score == pytest.approx(float(h.positional_scores.sum()), abs=1e-5)


def test_max_length_respected_without_eos():
    model = FakeModel(eos_bias=-1e4)
    src, lengths, mask = make_batch(SOURCES)
    for a, b in [(0, 0.5), (2, 1.5), (0, 0.0)]:
        limits = max_lengths(lengths, a, b)
        assert limits.tolist() == [max(1, math.floor(a + b * n)) for n in lengths.tolist()]
        for h, limit in zip(greedy(model, src, lengths, mask, a, b), limits.tolist()):
            assert not h.finished and len(h.tokens) == limit
        for hs, limit in zip(beam_search(model, src, lengths, mask, 3, 1.0, a, b, nbest=3),
                             limits.tolist()):
            assert len(hs) == 3
            assert all(not h.finished and len(h.tokens) == limit for h in hs)


def test_finished_sentences_leave_the_batch():
    model = FakeModel()
    src, lengths, mask = make_batch(SOURCES)
    greedy(model, src, lengths, mask, 3, 1.0)
    sizes = model.step_batch_sizes
    assert sizes[0] == len(SOURCES)
    assert all(a >= b for a, b in zip(sizes, sizes[1:])) and sizes[-1] < sizes[0]
    beam_search(model, src, lengths, mask, 4, 1.0, 3, 1.0)
    sizes = model.step_batch_sizes
    assert sizes[0] == 4 * len(SOURCES) and all(s % 4 == 0 for s in sizes)
    assert all(a >= b for a, b in zip(sizes, sizes[1:])) and sizes[-1] < sizes[0]


# ------------------------------------------------------------------------------------- beam search
@pytest.mark.parametrize("sync_every", [1, 3])
@pytest.mark.parametrize("a,b", [(3, 1.0), (10, 1.5)])
def test_beam_one_is_greedy_exactly(a, b, sync_every):
    model = FakeModel()
    src, lengths, mask = make_batch(SOURCES)
    g = greedy(model, src, lengths, mask, a, b, sync_every=sync_every)
    bs = beam_search(model, src, lengths, mask, 1, 1.0, a, b, sync_every=sync_every)
    assert [len(x) for x in bs] == [1] * len(SOURCES)
    for h, (hb,) in zip(g, bs):
        assert_same(h, hb, exact=True)


def reference_beam_search(model, source, beam_size, length_penalty, a, b, min_len=0):
    """The beam-search rules written out plainly for one sentence (Python lists, one row per beam).
    PAD and BOS are never continuations, nor EOS before `min_len` tokens."""
    k = beam_size
    src, lengths, mask = make_batch([source])
    limit = int(max_lengths(lengths, a, b)[0])
    with torch.inference_mode():
        beams = [([], 0.0, model.init_state(src, lengths, mask))]
    final = []
    for t in range(limit):
        cands = []
        for i, (toks, score, state) in enumerate(beams):
            with torch.inference_mode():
                lp, new_state, _ = model.step(torch.tensor([toks[-1] if toks else BOS]), state)
            forbidden = {PAD, BOS} | ({EOS} if t < min_len else set())
            cands += [(score + (-math.inf if v in forbidden else x), i, v, new_state)
                      for v, x in enumerate(lp[0].tolist())]
        if t == 0:  # only beam 0 is live at the first step
            cands += [(-math.inf, 1, 0, None)] * (2 * k)
        top = sorted(cands, key=lambda c: -c[0])[: 2 * k]
        active = [r for r, c in enumerate(top) if c[2] != EOS][:k]
        last = t + 1 >= limit
        for r, (score, i, v, _) in enumerate(top):
            if score > -math.inf and len(final) < k and ((v == EOS and r < k) or (r in active and last)):
                final.append((beams[i][0] + ([] if v == EOS else [v]), score, v == EOS))
        if len(final) >= k or last:
            break
        beams = [(beams[top[r][1]][0] + [top[r][2]], top[r][0], top[r][3]) for r in active]
    final.sort(key=lambda h: -h[1] / (len(h[0]) + h[2]) ** length_penalty)
    return final


@pytest.mark.parametrize("beam_size,length_penalty,a,b", [
    (1, 1.0, 10, 1.5), (2, 0.0, 3, 1.0), (3, 1.0, 2, 0.5), (5, 1.0, 10, 1.5), (5, 2.0, 4, 1.0),
    (8, 0.5, 10, 1.5)])
def test_beam_matches_plain_reference(beam_size, length_penalty, a, b):
    """The batched search (one batch, shrinking) == the rules applied one sentence at a time."""
    sources = random_sources(10, seed=beam_size)
    model = FakeModel(seed=beam_size)
    out = beam_search(model, *make_batch(sources), beam_size, length_penalty, a, b, nbest=beam_size)
    assert model.within_source_reorders > 0  # beams moved without copying the source tensors
    assert model.grouped_reorders > 0  # expansion and dropping keep sentences grouped
    for source, hyps in zip(sources, out):
        ref = reference_beam_search(model, source, beam_size, length_penalty, a, b)
        assert [(h.tokens, h.finished) for h in hyps] == [(r[0], r[2]) for r in ref]
        assert [h.score for h in hyps] == pytest.approx([r[1] for r in ref], abs=1e-4)
        for h in hyps:  # per-token scores and attention rows belong to the hypothesis's own path
            positional, attention = replay(model, source, h.tokens + [EOS] * h.finished)
            torch.testing.assert_close(h.positional_scores, positional, atol=1e-5, rtol=0)
            torch.testing.assert_close(h.attention, attention, atol=1e-5, rtol=0)
            assert float(h.positional_scores.sum()) == pytest.approx(h.score, abs=1e-4)


def replay(model, source, tokens):
    """Teacher-force `tokens` for one sentence -> (log-prob of each token [T], attention [T, S])."""
    src, lengths, mask = make_batch([source])
    state = model.init_state(src, lengths, mask)
    prev, positional, attention = BOS, [], []
    for token in tokens:
        log_probs, state, attn = model.step(torch.tensor([prev]), state)
        positional.append(log_probs[0, token].float())
        attention.append(attn[0].float())
        prev = token
    return torch.stack(positional), torch.stack(attention)


@pytest.mark.parametrize("length_penalty", [
    0.0,
    pytest.param(1.0, marks=pytest.mark.xfail(strict=True, reason=(
        "early stopping: beam 5 stops once 5 hypotheses have ended (here all of length <= 6), "
        "while greedy's longer output has the better per-token score (FakeModel seed 0, sentence "
        "10: greedy -7.380/7 = -1.054 vs beam best -6.881/6 = -1.147). The batched search matches "
        "the plain reference above, so this is the fairseq stopping rule, not a bug."))),
])
def test_beam_five_not_worse_than_greedy(length_penalty):
    src, lengths, mask = make_batch(random_sources(24, seed=5))
    for seed in range(3):
        model = FakeModel(seed=seed)
        g = greedy(model, src, lengths, mask, 10, 1.5)
        bs = beam_search(model, src, lengths, mask, 5, length_penalty, 10, 1.5)
        for hg, (hb,) in zip(g, bs):
            assert hb.normalized_score(length_penalty) >= hg.normalized_score(length_penalty) - 1e-5


def test_nbest_sorted_and_distinct():
    model = FakeModel()
    src, lengths, mask = make_batch(SOURCES)
    for lp in (0.0, 1.0, 2.0):
        results = beam_search(model, src, lengths, mask, 5, lp, 10, 1.5, nbest=5)
        for hyps in results:
            assert len(hyps) == 5
            keys = [h.normalized_score(lp) for h in hyps]
            assert keys == sorted(keys, reverse=True)
            assert len({(tuple(h.tokens), h.finished) for h in hyps}) == 5
            for h in hyps:
                assert h.score == pytest.approx(float(h.positional_scores.sum()), abs=1e-5)
                assert math.isfinite(h.score)
        best = beam_search(model, src, lengths, mask, 5, lp, 10, 1.5, nbest=1)
        for hyps, (top,) in zip(results, best):
            assert_same(hyps[0], top, exact=True)


def test_nbest_limits():
    model = FakeModel()
    src, lengths, mask = make_batch(SOURCES[:2])
    with pytest.raises(ValueError, match="nbest"):
        beam_search(model, src, lengths, mask, 2, 1.0, 10, 1.5, nbest=3)
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(model, src, lengths, mask, 0, 1.0, 10, 1.5)


def test_beam_wider_than_vocabulary():
    """2K > V: the padded candidates are dead beams, never returned."""
    model = FakeModel(tgt_vocab=6)
    src, lengths, mask = make_batch(SOURCES[:4])
    for hyps in beam_search(model, src, lengths, mask, 6, 1.0, 3, 0.5, nbest=6):
        assert 1 <= len(hyps) <= 6
        assert all(math.isfinite(h.score) for h in hyps)
        assert len({(tuple(h.tokens), h.finished) for h in hyps}) == len(hyps)


# ------------------------------------------------------------------------------ batch consistency
def decode_all(model, sources, fn):
    src, lengths, mask = make_batch(sources)
    return fn(model, src, lengths, mask)


DECODERS = {
    "greedy": lambda m, s, l, k: greedy(m, s, l, k, 3, 1.0),
    "beam4": lambda m, s, l, k: beam_search(m, s, l, k, 4, 1.0, 3, 1.0, nbest=4),
    "sample": lambda m, s, l, k: sample(m, s, l, k, 3, 1.0, top_k=1),
}


@pytest.mark.parametrize("name", list(DECODERS))
def test_batch_equals_one_at_a_time(name):
    model = FakeModel()
    fn = DECODERS[name]
    batched = decode_all(model, SOURCES, fn)
    for i, s in enumerate(SOURCES):
        (single,) = decode_all(model, [s], fn)
        one = batched[i]
        if name == "beam4":
            assert len(one) == len(single)
            for a, b in zip(one, single):
                assert_same(a, b, exact=False)
        else:
            assert_same(one, single, exact=False)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n=st.integers(1, 7), beam=st.integers(1, 4),
       sync=st.integers(1, 4))
def test_property_batch_order_and_beam_one(seed, n, beam, sync):
    """Random batches: permuting the rows permutes the outputs; beam 1 is greedy."""
    model = FakeModel(seed=seed % 5)
    sources = random_sources(n, seed=seed, hi=9)
    src, lengths, mask = make_batch(sources)
    out = beam_search(model, src, lengths, mask, beam, 1.0, 2, 1.0, nbest=beam, sync_every=sync)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    src_p, lengths_p, mask_p = make_batch([sources[i] for i in perm])
    out_p = beam_search(model, src_p, lengths_p, mask_p, beam, 1.0, 2, 1.0, nbest=beam,
                        sync_every=sync)
    for j, i in enumerate(perm):
        assert [h.tokens for h in out_p[j]] == [h.tokens for h in out[i]]
    if beam == 1:
        for h, (hb,) in zip(greedy(model, src, lengths, mask, 2, 1.0, sync_every=sync), out):
            assert_same(h, hb, exact=True)


def test_sync_schedule_does_not_change_output():
    model = FakeModel()
    src, lengths, mask = make_batch(SOURCES)
    ref = beam_search(model, src, lengths, mask, 4, 1.0, 10, 1.5, nbest=4, sync_every=1)
    for every in (2, 5, 1000):
        out = beam_search(model, src, lengths, mask, 4, 1.0, 10, 1.5, nbest=4, sync_every=every)
        for xs, ys in zip(ref, out):
            for x, y in zip(xs, ys):
                assert_same(x, y, exact=False)


# ---------------------------------------------------------------------------------------- sampling
def test_sampling_reproducible_and_seed_dependent():
    model = FakeModel()
    src, lengths, mask = make_batch(SOURCES)

    def run(seed, **kw):
        return sample(model, src, lengths, mask, 10, 1.5,
                      generator=torch.Generator().manual_seed(seed), **kw)

    a, b, c = run(7), run(7), run(8)
    for x, y in zip(a, b):
        assert_same(x, y, exact=True)
    assert [h.tokens for h in a] != [h.tokens for h in c]
    for kw in ({"temperature": 0.5}, {"top_k": 3}, {"temperature": 2.0, "top_k": 5}):
        x, y = run(3, **kw), run(3, **kw)
        assert [h.tokens for h in x] == [h.tokens for h in y]
        for h in x:
            assert h.score == pytest.approx(float(h.positional_scores.sum()), abs=1e-5)


def test_top_k_sampling_restricts_support():
    """With top_k=2 every emitted token is one of the two most likely at its step."""
    model = FakeModel()
    src, lengths, mask = make_batch(SOURCES[:6])
    hyps = sample(model, src, lengths, mask, 10, 1.5, temperature=3.0, top_k=2,
                  generator=torch.Generator().manual_seed(0))
    for s, h in zip(SOURCES[:6], hyps):
        state = model.init_state(*make_batch([s]))
        prev = torch.tensor([BOS])
        for tok, pos in zip(h.tokens + [EOS] * h.finished, h.positional_scores.tolist()):
            lp, state, _ = model.step(prev, state)
            assert tok in lp[0].topk(2).indices.tolist()
            assert float(lp[0, tok]) == pytest.approx(pos, abs=1e-5)
            prev = torch.tensor([tok])


def test_top1_sampling_is_greedy():
    model = FakeModel()
    src, lengths, mask = make_batch(SOURCES)
    g = greedy(model, src, lengths, mask, 10, 1.5)
    s = sample(model, src, lengths, mask, 10, 1.5, temperature=0.7, top_k=1,
               generator=torch.Generator().manual_seed(123))
    for x, y in zip(g, s):
        assert_same(x, y, exact=True)


def test_sampling_argument_checks():
    model = FakeModel()
    src, lengths, mask = make_batch(SOURCES[:2])
    with pytest.raises(ValueError, match="temperature"):
        sample(model, src, lengths, mask, 3, 1.0, temperature=0.0)
    with pytest.raises(ValueError, match="top_k"):
        sample(model, src, lengths, mask, 3, 1.0, top_k=-1)


# ------------------------------------------------------------------------------ reference scoring
def test_score_reference_matches_greedy():
    model = FakeModel()
    src, lengths, mask = make_batch(SOURCES)
    hyps = greedy(model, src, lengths, mask, 10, 1.5)
    refs = score_reference(model, src, lengths, mask, [h.tokens for h in hyps])
    n_steps = len(model.step_batch_sizes)
    assert n_steps == max(len(h.tokens) for h in hyps) + 1  # one step call per time step
    assert set(model.step_batch_sizes) == {len(SOURCES)}
    for h, r in zip(hyps, refs):
        if h.finished:
            assert r == pytest.approx(h.score, abs=1e-5)
        else:  # a cut hypothesis: the reference score adds the EOS the greedy output never emitted
            assert r < h.score + 1e-5


def test_score_reference_by_hand():
    model = FakeModel()
    sources, targets = SOURCES[:3], [[5, 6, 7], [], [9, 4]]
    scores = score_reference(model, *make_batch(sources), targets)
    for s, tgt, got in zip(sources, targets, scores):
        src, lengths, mask = make_batch([s])
        state = model.init_state(src, lengths, mask)
        prev, total = torch.tensor([BOS]), 0.0
        for tok in tgt + [EOS]:
            lp, state, _ = model.step(prev, state)
            total += float(lp[0, tok])
            prev = torch.tensor([tok])
        assert got == pytest.approx(total, abs=1e-5)
    with pytest.raises(ValueError, match="references"):
        score_reference(model, *make_batch(sources), targets[:2])
    with pytest.raises(ValueError, match="vocabulary"):
        score_reference(model, *make_batch(sources[:1]), [[99]])


# ---------------------------------------------------------------------------------------- ensemble
def test_ensemble_of_two_averages_and_renormalises():
    """Two different members against the hand-computed mix of their log-probs. Mutation that makes it
    fail: Ensemble.step returning the first member's log-probs (or the mean without log_softmax)."""
    m1, m2 = FakeModel(seed=1), FakeModel(seed=2)
    ens = Ensemble([m1, m2])
    src, lengths, mask = make_batch(SOURCES[:4])
    s1, s2, se = (m.init_state(src, lengths, mask) for m in (m1, m2, ens))
    prev = torch.full((4,), BOS)
    lp1, _, a1 = m1.step(prev, s1)
    lp2, _, a2 = m2.step(prev, s2)
    lpe, se, ae = ens.step(prev, se)
    torch.testing.assert_close(lpe, torch.log_softmax((lp1 + lp2) / 2, dim=-1))
    torch.testing.assert_close(torch.logsumexp(lpe, -1), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(ae, (a1 + a2) / 2)
    se = ens.reorder_state(se, torch.tensor([3, 3, 0]), sources=torch.tensor([3, 3, 0]))
    assert [s["h"].shape[0] for s in se] == [3, 3]
    out = beam_search(ens, src, lengths, mask, 3, 1.0, 10, 1.5)
    assert all(len(h) == 1 and math.isfinite(h[0].score) for h in out)


def test_ensemble_rejects_mismatched_models():
    a = FakeModel()
    b = FakeModel()
    b.eos_id = 4
    with pytest.raises(ValueError, match="special ids"):
        Ensemble([a, b])
    with pytest.raises(ValueError, match="vocabulary"):
        Ensemble([a, FakeModel(tgt_vocab=20)])
    c = FakeModel(tgt_vocab=20)
    del c.tgt_vocab_size  # unknown up front: caught at the first step
    ens = Ensemble([a, c])
    src, lengths, mask = make_batch(SOURCES[:2])
    with pytest.raises(ValueError, match="vocabulary"):
        greedy(ens, src, lengths, mask, 3, 1.0)
    with pytest.raises(ValueError, match="at least one"):
        Ensemble([])


# ------------------------------------------------------------------------------------ misc contract
def test_low_precision_model_outputs():
    """A model whose step returns bf16 (e.g. under autocast): scores still accumulate in float32."""
    model = FakeModel(out_dtype=torch.bfloat16)
    src, lengths, mask = make_batch(SOURCES)
    g = greedy(model, src, lengths, mask, 10, 1.5)
    (b,) = zip(*beam_search(model, src, lengths, mask, 1, 1.0, 10, 1.5))
    for x, y in zip(g, b):
        assert_same(x, y, exact=True)
        assert x.attention.dtype == torch.float32 and x.positional_scores.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = beam_search(FakeModel(), src, lengths, mask, 3, 1.0, 10, 1.5)
    assert all(math.isfinite(h[0].score) for h in out)


def test_training_mode_warns_and_empty_batch():
    model = FakeModel().train()
    src, lengths, mask = make_batch(SOURCES[:2])
    with pytest.warns(UserWarning, match="training mode"):
        greedy(model, src, lengths, mask, 3, 1.0)
    model.eval()
    empty = torch.zeros((0, 3), dtype=torch.long)
    assert greedy(model, empty, torch.zeros(0, dtype=torch.int64), empty.bool(), 3, 1.0) == []
    assert beam_search(model, empty, torch.zeros(0, dtype=torch.int64), empty.bool(), 2, 1.0, 3, 1.0) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_tokens():
    model = FakeModel()
    src, lengths, mask = make_batch(SOURCES)
    cpu = beam_search(model, src, lengths, mask, 4, 1.0, 10, 1.5)
    gpu_model = FakeModel().cuda()
    src_c, lengths_c, mask_c = make_batch(SOURCES, device="cuda")
    gpu = beam_search(gpu_model, src_c, lengths_c, mask_c, 4, 1.0, 10, 1.5)
    for (x,), (y,) in zip(cpu, gpu):
        assert x.tokens == y.tokens and x.score == pytest.approx(y.score, abs=1e-3)
    g = greedy(gpu_model, src_c, lengths_c, mask_c, 10, 1.5)
    (b,) = zip(*beam_search(gpu_model, src_c, lengths_c, mask_c, 1, 1.0, 10, 1.5))
    for x, y in zip(g, b):
        assert_same(x, y, exact=True)
    s = sample(gpu_model, src_c, lengths_c, mask_c, 10, 1.5,
               generator=torch.Generator("cuda").manual_seed(0))
    assert len(s) == len(SOURCES)


# ----------------------------------------------------------------------------- a tiny real Seq2Seq
def tiny_seq2seq(cell: str, attention: str, input_feed: bool, seed: int = 0):
    model_mod = pytest.importorskip("seq2seq.model")
    torch.manual_seed(seed)
    from seq2seq.config import ModelConfig

    model = model_mod.Seq2Seq(
        ModelConfig(cell=cell, embedding_size=8, encoder_hidden_size=8, decoder_hidden_size=12, encoder_layers=1,
                    decoder_layers=2, bidirectional=True, attention=attention, attention_size=8,
                    input_feed=input_feed, bridge=True, dropout=0.1, rnn_dropout=0.1, tie_embeddings=False),
        src_vocab_size=15, tgt_vocab_size=14, pad_id=PAD, bos_id=BOS, eos_id=EOS)
    with torch.no_grad():  # a random model rarely says EOS: make lengths vary
        model.decoder.output.proj.bias[EOS] += 2.0
    return model.eval()


@pytest.mark.parametrize("cell,attention,input_feed", [
    ("lstm", "luong_general", False), ("gru", "bahdanau", True), ("rnn_tanh", "none", False)])
def test_real_seq2seq(cell, attention, input_feed):
    model = tiny_seq2seq(cell, attention, input_feed)
    sources = SOURCES[:10]
    src, lengths, mask = make_batch(sources)
    g = greedy(model, src, lengths, mask, 3, 1.0)
    (b1,) = zip(*beam_search(model, src, lengths, mask, 1, 1.0, 3, 1.0))
    for x, y in zip(g, b1):
        assert_same(x, y, exact=True)
        assert (x.attention is None) == (attention == "none")
    beams = beam_search(model, src, lengths, mask, 4, 1.0, 3, 1.0, nbest=4)
    for i, s in enumerate(sources):
        (single_g,) = greedy(model, *make_batch([s]), 3, 1.0)
        assert_same(g[i], single_g, exact=False)
        (single_b,) = beam_search(model, *make_batch([s]), 4, 1.0, 3, 1.0, nbest=4)
        assert [h.tokens for h in single_b] == [h.tokens for h in beams[i]]
        ref = reference_beam_search(model, s, 4, 1.0, 3, 1.0)
        assert [h.tokens for h in beams[i]] == [r[0] for r in ref]
    refs = score_reference(model, src, lengths, mask, [h.tokens for h in g])
    for h, r in zip(g, refs):
        if h.finished:
            assert r == pytest.approx(h.score, abs=1e-4)
    ens = Ensemble([model, tiny_seq2seq(cell, attention, input_feed, seed=1)])
    out = beam_search(ens, src, lengths, mask, 3, 1.0, 3, 1.0)
    assert all(math.isfinite(h[0].score) for h in out)


# ------------------------------------------------------------------- forbidden tokens and min_len
class FavoursForbidden:
    """A stub decoder whose every step puts nearly all mass on PAD and BOS, then UNK, and after step 3
    prefers EOS to UNK: a search that let PAD or BOS through would emit nothing else."""

    pad_id, bos_id, eos_id = PAD, BOS, EOS
    training = False
    tgt_vocab_size = 8

    def init_state(self, src, src_lengths, src_mask):
        return {"t": torch.zeros(src.size(0), dtype=torch.long)}

    def step(self, prev_tokens, state):
        n = prev_tokens.numel()
        logits = torch.full((n, self.tgt_vocab_size), -10.0)
        logits[:, PAD] = logits[:, BOS] = 10.0
        logits[:, UNK] = 2.0
        logits[:, EOS] = torch.where(state["t"] >= 3, 3.0, -5.0)
        return torch.log_softmax(logits, dim=-1), {"t": state["t"] + 1}, None

    def reorder_state(self, state, rows, *, sources):
        return {"t": state["t"].index_select(0, rows)}


FORBIDDEN_DECODERS = {
    "greedy": lambda m, s, l, k: [[h] for h in greedy(m, s, l, k, 10, 1.0)],
    "beam1": lambda m, s, l, k: beam_search(m, s, l, k, 1, 1.0, 10, 1.0),
    "beam4": lambda m, s, l, k: beam_search(m, s, l, k, 4, 1.0, 10, 1.0, nbest=4),
    "sample": lambda m, s, l, k: [[h] for h in sample(m, s, l, k, 10, 1.0, generator=torch.Generator().manual_seed(0))],
}


@pytest.mark.parametrize("ensemble", [False, True])
@pytest.mark.parametrize("name", list(FORBIDDEN_DECODERS))
def test_pad_and_bos_are_never_emitted(name, ensemble):
    """Even when the model puts almost all its mass on them, no search emits PAD or BOS; UNK stays
    allowed. Mutations: dropping BOS from `_Forbidden.always` fails every case; skipping the mask in
    `_decode_rows` fails greedy and sample, in `beam_search` the beams."""
    model = Ensemble([FavoursForbidden(), FavoursForbidden()]) if ensemble else FavoursForbidden()
    out = decode_all(model, SOURCES[:6], FORBIDDEN_DECODERS[name])
    tokens = [t for hyps in out for h in hyps for t in h.tokens]
    assert tokens and PAD not in tokens and BOS not in tokens
    assert UNK in tokens
    assert all(h.finished and math.isfinite(h.score) for hyps in out for h in hyps)


def finished_lengths(out):
    return [len(h.tokens) for hyps in out for h in hyps if h.finished]


MIN_LEN_DECODERS = {
    "greedy": lambda min_len: lambda m, s, l, k: [[h] for h in greedy(m, s, l, k, 10, 1.5, min_len=min_len)],
    "beam3": lambda min_len: lambda m, s, l, k: beam_search(m, s, l, k, 3, 1.0, 10, 1.5, nbest=3, min_len=min_len),
    "sample": lambda min_len: lambda m, s, l, k: [[h] for h in sample(
        m, s, l, k, 10, 1.5, generator=torch.Generator().manual_seed(0), min_len=min_len)],
}


@pytest.mark.parametrize("name", list(MIN_LEN_DECODERS))
def test_min_len_holds_back_eos(name):
    """With an EOS-happy model (most outputs end after a token or two), min_len=4 makes every finished
    hypothesis at least 4 tokens long, batched as one sentence at a time. Mutation: masking EOS only
    while t < min_len - 1 lets 3-token hypotheses through."""
    model = FakeModel(eos_bias=4.0)
    free = decode_all(model, SOURCES, MIN_LEN_DECODERS[name](0))
    assert min(finished_lengths(free)) < 4  # not vacuous: without min_len they are shorter
    held = decode_all(model, SOURCES, MIN_LEN_DECODERS[name](4))
    assert finished_lengths(held) and min(finished_lengths(held)) >= 4
    for i, s in enumerate(SOURCES[:5] if name != "sample" else []):  # sampling draws per batch
        (single,) = decode_all(model, [s], MIN_LEN_DECODERS[name](4))
        assert [h.tokens for h in single] == [h.tokens for h in held[i]]


def test_min_len_beam_matches_reference_and_beam_one_is_greedy():
    model = FakeModel(eos_bias=4.0, seed=3)
    src, lengths, mask = make_batch(SOURCES)
    out = beam_search(model, src, lengths, mask, 3, 1.0, 10, 1.5, nbest=3, min_len=5)
    for source, hyps in zip(SOURCES, out):
        ref = reference_beam_search(model, source, 3, 1.0, 10, 1.5, min_len=5)
        assert [(h.tokens, h.finished) for h in hyps] == [(r[0], r[2]) for r in ref]
    g = greedy(model, src, lengths, mask, 10, 1.5, min_len=5)
    (b1,) = zip(*beam_search(model, src, lengths, mask, 1, 1.0, 10, 1.5, min_len=5))
    for x, y in zip(g, b1):
        assert_same(x, y, exact=True)


def test_min_len_beyond_the_maximum_length_ends_unfinished():
    """A sentence allowed fewer tokens than min_len cannot end with EOS: it is cut at its maximum."""
    model = FakeModel(eos_bias=4.0)
    src, lengths, mask = make_batch(SOURCES[:4])
    for hyps in (greedy(model, src, lengths, mask, 3, 0.0, min_len=5),
                 [h[0] for h in beam_search(model, src, lengths, mask, 2, 1.0, 3, 0.0, min_len=5)]):
        assert [(len(h.tokens), h.finished) for h in hyps] == [(3, False)] * 4
    with pytest.raises(ValueError, match="min_len must be >= 0"):
        greedy(model, src, lengths, mask, 3, 0.0, min_len=-1)
