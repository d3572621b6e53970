"""The attentive encoder-decoder and its decoder-step contract (docs/design.md), on tiny sizes.

Sizes are chosen so that every size differs (E=8, He=5 so the bidirectional memory is 10, Hd=7, A=6)
and every adapter is exercised: luong_dot projects its memory, tied outputs need a bottleneck. Two
encoder and two decoder layers check the layer layouts of the bridge and of the Bahdanau query.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from seq2seq.config import ATTENTIONS, CELLS, ConfigError, ModelConfig, section
from seq2seq.model import DecoderState, Seq2Seq
from seq2seq.model.attention import DotAttention, build_attention

PAD, UNK, BOS, EOS = 0, 1, 2, 3
SRC_V, TGT_V = 11, 13

DESIGNS = [
    (cell, attention, bidirectional, input_feed)
    for cell, attention, bidirectional in itertools.product(CELLS, ATTENTIONS, (False, True))
    for input_feed in ((False,) if attention == "none" else (False, True))
]
DESIGN_IDS = [f"{c}-{a}-{'bi' if b else 'uni'}{'-feed' if f else ''}" for c, a, b, f in DESIGNS]
design = pytest.mark.parametrize("cell,attention,bidirectional,input_feed", DESIGNS, ids=DESIGN_IDS)



def make_model(cell="lstm", attention="luong_general", bidirectional=True, input_feed=False,
               seed=0, **overrides) -> Seq2Seq:
    values = dict(cell=cell, embedding_size=8, encoder_hidden_size=5, decoder_hidden_size=7,
                  encoder_layers=2, decoder_layers=2, bidirectional=bidirectional,
                  attention=attention, attention_size=6, input_feed=input_feed, bridge=True,
                  dropout=0.1, rnn_dropout=0.1, tie_embeddings=True)
    values.update(overrides)
    cfg = section(ModelConfig, values, "model")
    torch.manual_seed(seed)
    return Seq2Seq(cfg, src_vocab_size=SRC_V, tgt_vocab_size=TGT_V, pad_id=PAD, bos_id=BOS, eos_id=EOS)


def random_pairs(lengths: list[tuple[int, int]], seed: int = 1) -> list[tuple[list[int], list[int]]]:
    """Bare (source, target) piece ids of the given lengths (ids above the specials)."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(4, SRC_V, (s,), generator=g).tolist(),
             torch.randint(4, TGT_V, (t,), generator=g).tolist()) for s, t in lengths]


def batch(pairs, src_len: int | None = None, tgt_len: int | None = None):
    """Pad like data.collate: source pieces+EOS, target BOS+pieces / pieces+EOS; optional extra PAD."""
    srcs = [s + [EOS] for s, _ in pairs]
    tins = [[BOS] + t for _, t in pairs]
    touts = [t + [EOS] for _, t in pairs]
    S = src_len or max(map(len, srcs))
    T = tgt_len or max(map(len, tins))
    src = torch.tensor([s + [PAD] * (S - len(s)) for s in srcs])  # [B, S]
    src_lengths = torch.tensor([len(s) for s in srcs], dtype=torch.int64)  # [B] cpu
    tgt_in = torch.tensor([t + [PAD] * (T - len(t)) for t in tins])  # [B, T]
    tgt_out = torch.tensor([t + [PAD] * (T - len(t)) for t in touts])  # [B, T]
    return src, src_lengths, src != PAD, tgt_in, tgt_out


def step_loop(model: Seq2Seq, src, src_lengths, src_mask, tgt_in):
    """Teacher-forced log-probs [B, T, V] and attention [B, T, S] (or None) through `step`."""
    state = model.init_state(src, src_lengths, src_mask)
    log_probs, attention = [], []
    for t in range(tgt_in.size(1)):
        lp, state, att = model.step(tgt_in[:, t], state)
        log_probs.append(lp)
        attention.append(att)
    atts = None if attention[0] is None else torch.stack(attention, 1)
    return torch.stack(log_probs, 1), atts


# ---------------------------------------------------------------------------- every design

@design
def test_forward_backward(cell, attention, bidirectional, input_feed):
    model = make_model(cell, attention, bidirectional, input_feed).train()
    src, src_lengths, src_mask, tgt_in, tgt_out = batch(random_pairs([(4, 5), (2, 3), (6, 1)]))
    logits = model(src, src_lengths, src_mask, tgt_in)
    assert logits.shape == (3, tgt_in.size(1), TGT_V)
    loss = F.cross_entropy(logits.float().transpose(1, 2), tgt_out, ignore_index=PAD)
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    # Bidirectional memory is 2*He wide; the decoder sees it through the attention only.
    memory, final_hidden, final_cell = model.encoder(src, src_lengths)
    D = 2 if bidirectional else 1
    assert memory.shape == (3, src.size(1), 5 * D)
    assert final_hidden.shape == (3, 5 * D)
    assert (final_cell is not None) == (cell == "lstm")


@design
def test_padding_invariance(cell, attention, bidirectional, input_feed):
    """Extra PAD columns and longer batch-mates change nothing at real positions."""
    model = make_model(cell, attention, bidirectional, input_feed).eval()
    pairs = random_pairs([(2, 3), (6, 7), (4, 2)])

    def sentence_losses(src, src_lengths, src_mask, tgt_in, tgt_out):
        logits = model(src, src_lengths, src_mask, tgt_in)  # [B, T, V]
        nll = F.cross_entropy(logits.float().transpose(1, 2), tgt_out, ignore_index=PAD,
                              reduction="none")  # [B, T]
        return nll.sum(1), model.encoder(src, src_lengths)[0]

    with torch.no_grad():
        together = batch(pairs, src_len=10, tgt_len=11)  # unsorted lengths, 3 extra PAD columns
        losses, memory = sentence_losses(*together)
        for i, pair in enumerate(pairs):
            alone = batch([pair])
            loss, alone_memory = sentence_losses(*alone)
            n = alone[0].size(1)
            torch.testing.assert_close(losses[i], loss[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(memory[i, :n], alone_memory[0], atol=1e-5, rtol=1e-5)
            assert (memory[i, n:] == 0).all()


@design
def test_forward_matches_step(cell, attention, bidirectional, input_feed):
    """forward (parallel or looped) == the step contract; parallel path == loop path."""
    model = make_model(cell, attention, bidirectional, input_feed).eval()
    src, src_lengths, src_mask, tgt_in, _ = batch(random_pairs([(3, 4), (5, 2), (1, 6)]))
    with torch.no_grad():
        logits = model(src, src_lengths, src_mask, tgt_in)
        log_probs, _ = step_loop(model, src, src_lengths, src_mask, tgt_in)
        assert log_probs.dtype == torch.float32
        torch.testing.assert_close(logits.float().log_softmax(-1), log_probs, atol=1e-5, rtol=0)
        decoder = model.decoder
        assert decoder.parallel == (attention != "bahdanau" and not input_feed)
        if decoder.parallel:
            state = model.init_state(src, src_lengths, src_mask)
            torch.testing.assert_close(decoder.forward_parallel(tgt_in, state),
                                       decoder.forward_loop(tgt_in, state), atol=1e-5, rtol=0)


@design
def test_reorder_state(cell, attention, bidirectional, input_feed):
    """reorder then step == step then reorder, for select, repeat and drop."""
    model = make_model(cell, attention, bidirectional, input_feed).eval()
    src, src_lengths, src_mask, tgt_in, _ = batch(random_pairs([(3, 4), (5, 2), (1, 6)]))
    index = torch.tensor([2, 0, 0])  # row 1 dropped, row 0 repeated, order changed
    with torch.no_grad():
        state = model.init_state(src, src_lengths, src_mask)
        _, state, _ = model.step(tgt_in[:, 0], state)  # a state with history
        tokens = tgt_in[:, 1]
        lp_a, state_a, att_a = model.step(tokens[index], model.reorder_state(state, index, sources=index))
        lp_b, state_b, att_b = model.step(tokens, state)
        state_b = model.reorder_state(state_b, index, sources=index)
        torch.testing.assert_close(lp_a, lp_b[index], atol=1e-6, rtol=0)
        if att_a is not None:
            torch.testing.assert_close(att_a, att_b[index], atol=1e-6, rtol=0)
        for field in ("hidden", "cell", "feed", "keys", "values", "pad_mask"):
            a, b = getattr(state_a, field), getattr(state_b, field)
            assert (a is None) == (b is None), field
            if a is not None:
                torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
        assert state_a.hidden.shape[1] == 3
        lp_a2, _, _ = model.step(tgt_in[index, 2], state_a)
        lp_b2, _, _ = model.step(tgt_in[index, 2], state_b)
        torch.testing.assert_close(lp_a2, lp_b2, atol=1e-6, rtol=0)


@pytest.mark.parametrize("attention", ("bahdanau", "luong_general"))
def test_step_follows_the_equations(attention):
    """One step written out by hand (2 layers, input feeding): Bahdanau attends from the previous
    top-layer state before the RNN, Luong from the new top-layer state after it."""
    model = make_model("lstm", attention, True, input_feed=True).eval()
    src, src_lengths, src_mask, tgt_in, _ = batch(random_pairs([(3, 2), (5, 2)]))
    dec = model.decoder
    with torch.no_grad():
        state = model.init_state(src, src_lengths, src_mask)
        _, state, _ = model.step(tgt_in[:, 0], state)  # non-zero feed from here on
        log_probs, _, weights = model.step(tgt_in[:, 1], state)

        memory, _, _ = model.encoder(src, src_lengths)  # [B, S, M]
        att = dec.attention

        def attend(query):  # [B, H] -> context [B, M], weights [B, S]
            if attention == "bahdanau":
                scores = torch.einsum("bsa,a->bs", torch.tanh(
                    att.query_proj(query)[:, None] + att.key_proj(memory)), att.v.weight[0])
            else:
                scores = torch.einsum("bh,hm,bsm->bs", query, att.key_proj.weight, memory)
            w = scores.masked_fill(~src_mask, float("-inf")).softmax(-1)
            return torch.einsum("bs,bsm->bm", w, memory), w

        emb = dec.embedding(tgt_in[:, 1])  # [B, E]
        hx = (state.hidden, state.cell)
        if attention == "bahdanau":
            context, w = attend(state.hidden[-1])  # previous state of the TOP layer
            out, _ = dec.rnn(torch.cat([emb, context, state.feed], -1)[:, None], hx)
            top = out[:, 0]
        else:
            out, _ = dec.rnn(torch.cat([emb, state.feed], -1)[:, None], hx)
            top = out[:, 0]
            context, w = attend(top)
        o = torch.tanh(dec.combine(torch.cat([top, context], -1)))  # [B, O]
        logits = dec.embedding.weight @ dec.output.bottleneck(o).T  # [V, B] tied projection
        expected = (logits.T + dec.output.proj.bias).log_softmax(-1)
    torch.testing.assert_close(weights, w, atol=1e-6, rtol=0)
    torch.testing.assert_close(log_probs, expected, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------- attention

@pytest.mark.parametrize("attention,input_feed",
                         [(a, f) for a in ATTENTIONS for f in (False, True) if a != "none" or not f])
def test_attention_ignores_source_padding(attention, input_feed):
    model = make_model("gru", attention, True, input_feed).eval()
    src, src_lengths, src_mask, tgt_in, _ = batch(random_pairs([(1, 3), (6, 3), (3, 3)]), src_len=9)
    with torch.no_grad():
        _, att = step_loop(model, src, src_lengths, src_mask, tgt_in)
    if attention == "none":
        assert att is None
        return
    assert att.dtype == torch.float32 and att.shape == (3, tgt_in.size(1), 9)
    assert (att.masked_select(~src_mask.unsqueeze(1).expand_as(att)) == 0).all()
    torch.testing.assert_close(att.sum(-1), torch.ones(3, tgt_in.size(1)))


@pytest.mark.parametrize("kind", [a for a in ATTENTIONS if a != "none"])
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
def test_attention_half_precision_masking(kind, dtype):
    """-inf masking happens on float32 scores: finite weights, exact zeros at padding."""
    torch.manual_seed(0)
    attention = build_attention(kind, query_size=7, memory_size=10, attention_size=6).to(dtype)
    memory = torch.randn(2, 5, 10, dtype=dtype) * 100  # [B, S, M] large scores
    pad_mask = torch.tensor([[False, False, True, True, True], [False] * 5])  # [B, S]
    keys, values = attention.prepare(memory)
    context, weights = attention(torch.randn(2, 4, 7, dtype=dtype), keys, values, pad_mask)
    assert weights.dtype == torch.float32 and context.dtype == dtype
    assert torch.isfinite(weights).all() and torch.isfinite(context).all()
    assert (weights[0, :, 2:] == 0).all()
    step_context, step_weights = attention.step(torch.randn(2, 7, dtype=dtype), keys, values, pad_mask)
    assert step_context.shape == (2, attention.context_size) and step_weights.shape == (2, 5)


def test_luong_dot_projects_memory_only_when_sizes_differ():
    projected = make_model("lstm", "luong_dot", True).decoder.attention  # memory 10, decoder 7
    assert isinstance(projected, DotAttention) and projected.memory_proj is not None
    model = make_model("lstm", "luong_dot", True, encoder_hidden_size=4, decoder_hidden_size=8).eval()
    assert model.decoder.attention.memory_proj is None
    src, src_lengths, src_mask, _, _ = batch(random_pairs([(3, 1), (2, 1)]))
    state = model.init_state(src, src_lengths, src_mask)
    assert state.keys is state.values  # no copy of the memory
    assert isinstance(state, DecoderState)
    reordered = model.reorder_state(state, torch.tensor([1, 1, 0]), sources=torch.tensor([1, 1, 0]))
    assert reordered.keys is reordered.values


# ---------------------------------------------------------------------------- encoder, bridge, tying

@pytest.mark.parametrize("cell", CELLS)
def test_encoder_final_state_is_top_layer_both_directions(cell):
    model = make_model(cell, "luong_general", True).eval()
    src, src_lengths, _, _, _ = batch(random_pairs([(2, 1), (5, 1), (3, 1)]), src_len=8)
    with torch.no_grad():
        memory, final_hidden, _ = model.encoder(src, src_lengths)  # [B, S, 10], [B, 10]
    last = src_lengths - 1
    # Forward direction ends at the last real token, backward direction at the first.
    torch.testing.assert_close(final_hidden[:, :5], memory[torch.arange(3), last, :5])
    torch.testing.assert_close(final_hidden[:, 5:], memory[:, 0, 5:])


@pytest.mark.parametrize("cell", CELLS)
def test_bridge(cell):
    src, src_lengths, src_mask, _, _ = batch(random_pairs([(3, 1), (2, 1)]))
    with torch.no_grad():
        off = make_model(cell, "bahdanau", True, bridge=False).eval()
        state = off.init_state(src, src_lengths, src_mask)
        assert off.bridge is None and state.hidden.shape == (2, 2, 7)
        assert (state.hidden == 0).all()
        if cell == "lstm":
            assert state.cell.shape == (2, 2, 7) and (state.cell == 0).all()
        else:
            assert state.cell is None
        on = make_model(cell, "bahdanau", True, bridge=True).eval()
        state = on.init_state(src, src_lengths, src_mask)
        assert state.hidden.shape == (2, 2, 7) and (state.hidden != 0).any()
        assert state.hidden.is_contiguous()
        if cell == "lstm":
            assert (state.cell != 0).any()


@pytest.mark.parametrize("hidden", (7, 8))
def test_tied_embeddings_share_one_parameter(hidden):
    model = make_model("lstm", "luong_general", True, decoder_hidden_size=hidden)
    decoder = model.decoder
    assert decoder.output.proj.weight is decoder.embedding.weight
    assert (decoder.output.bottleneck is None) == (hidden == 8)  # E = 8
    assert (decoder.embedding.weight[PAD] == 0).all() and (model.encoder.embedding.weight[PAD] == 0).all()
    src, src_lengths, src_mask, tgt_in, tgt_out = batch(random_pairs([(3, 4), (2, 2)]))
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    before = decoder.embedding.weight.detach().clone()
    logits = model(src, src_lengths, src_mask, tgt_in)
    F.cross_entropy(logits.transpose(1, 2), tgt_out, ignore_index=PAD).backward()
    optimizer.step()
    assert decoder.output.proj.weight is decoder.embedding.weight
    assert not torch.equal(before, decoder.embedding.weight)
    assert decoder.output.proj.weight.data_ptr() == decoder.embedding.weight.data_ptr()
    untied = make_model("lstm", "luong_general", True, tie_embeddings=False).decoder
    assert untied.output.proj.weight is not untied.embedding.weight
    assert untied.output.proj.weight.shape == (TGT_V, 7) and untied.output.bottleneck is None


def test_special_ids_and_config_errors():
    model = make_model()
    assert (model.pad_id, model.bos_id, model.eos_id) == (PAD, BOS, EOS)
    with pytest.raises(ConfigError, match="input_feed"):
        section(ModelConfig, {"attention": "none", "input_feed": True}, "model")
    with pytest.raises(ConfigError, match="input_feed"):  # the same check, reached from the model
        Seq2Seq(ModelConfig(attention="none", input_feed=True), SRC_V, TGT_V, PAD, BOS, EOS)


@pytest.mark.parametrize("attention", ["luong_general", "luong_dot", "bahdanau"])
def test_reorder_within_source_keeps_the_memory_with_identical_results(attention):
    """Beam-style reorders: rows repeated into beams with `sources=None` keep the keys once per
    sentence, beams reordered within their sentences (`sources=None`) reuse keys/values/mask without a
    copy, and the steps agree with the plain per-row form (one copy of the keys for every row)."""
    model = make_model("gru", attention, True).eval()
    src, src_lengths, src_mask, tgt_in, _ = batch(random_pairs([(3, 4), (5, 4), (2, 3)]))
    rows = [0, 0, 0, 1, 1, 1, 2, 2, 2]  # 3 sentences x 3 beams
    with torch.no_grad():
        init = model.init_state(src, src_lengths, src_mask)
        grouped = model.reorder_state(init, torch.tensor(rows), sources=None)
        plain = model.reorder_state(init, torch.tensor(rows), sources=torch.tensor(rows))
        assert grouped.keys.size(0) == 3 and plain.keys.size(0) == 9
        assert grouped.keys is init.keys  # repeating rows into beams copies no keys (mutation: copy them)
        _, grouped, _ = model.step(tgt_in[rows, 0], grouped)
        _, plain, _ = model.step(tgt_in[rows, 0], plain)
        within = torch.tensor([2, 0, 0, 4, 3, 5, 8, 8, 6])  # beams reordered inside each sentence
        reused = model.reorder_state(grouped, within, sources=None)
        assert reused.keys is grouped.keys and reused.values is grouped.values
        assert reused.pad_mask is grouped.pad_mask
        plain = model.reorder_state(plain, within, sources=within)
        lp_a, reused, att_a = model.step(tgt_in[rows, 1], reused)
        lp_b, plain, att_b = model.step(tgt_in[rows, 1], plain)
        torch.testing.assert_close(lp_a, lp_b)
        torch.testing.assert_close(att_a, att_b)
        # Drop sentence 1, keep the others grouped: the keys follow their sentences.
        dropped = model.reorder_state(reused, torch.tensor([0, 1, 2, 6, 7, 8]), sources=torch.tensor([0, 2]))
        assert dropped.keys.size(0) == 2
        torch.testing.assert_close(dropped.keys[1], grouped.keys[2], atol=0, rtol=0)
        lp_a, _, att_a = model.step(tgt_in[[0, 0, 0, 2, 2, 2], 2], dropped)
        lp_b, _, att_b = model.step(tgt_in[[0, 0, 0, 2, 2, 2], 2],
                                    model.reorder_state(plain, torch.tensor([0, 1, 2, 6, 7, 8]),
                                                        sources=torch.tensor([0, 1, 2, 6, 7, 8])))
        torch.testing.assert_close(lp_a, lp_b)
        torch.testing.assert_close(att_a, att_b)
        with pytest.raises(ValueError, match="4 rows cannot be laid out in groups over 3 sources"):
            model.reorder_state(grouped, within[:4], sources=None)
        with pytest.raises(ValueError, match="reorder index"):
            model.reorder_state(grouped, within.view(1, 3, 3), sources=None)


# ------------------------------------------------------------------ quality levers (issue 13)
def joint_model(share: bool) -> Seq2Seq:
    """A model over one vocabulary on both sides (a joint sentencepiece model's)."""
    cfg = section(ModelConfig, dict(embedding_size=8, encoder_hidden_size=5, decoder_hidden_size=8,
                                    encoder_layers=1, share_embeddings=share), "model")
    return Seq2Seq(cfg, src_vocab_size=TGT_V, tgt_vocab_size=TGT_V, pad_id=PAD, bos_id=BOS, eos_id=EOS)


def test_shared_embeddings_are_one_parameter_for_source_target_and_output():
    """model.share_embeddings: the encoder's embedding IS the decoder's (and, tied, the output
    projection's): one Parameter, V*E fewer weights, one gradient from all three uses, and a state dict
    that loads back into a fresh model. Mutation: dropping the `self.encoder.embedding = ...` line."""
    shared, apart = joint_model(True), joint_model(False)
    assert shared.encoder.embedding.weight is shared.decoder.embedding.weight is shared.decoder.output.proj.weight
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(apart) - count(shared) == TGT_V * 8
    src, tgt_in = torch.tensor([[4, 5, 6]]), torch.tensor([[BOS, 7]])
    shared(src, torch.tensor([3]), src != PAD, tgt_in).sum().backward()
    grad = shared.encoder.embedding.weight.grad
    assert grad[4].abs().sum() > 0 and grad[7].abs().sum() > 0  # a source row and a target row both learn
    again = joint_model(True)
    again.load_state_dict(shared.state_dict())
    assert again.encoder.embedding.weight is again.decoder.embedding.weight
    assert torch.equal(again.encoder.embedding.weight, shared.encoder.embedding.weight)


def test_shared_embeddings_need_a_joint_vocabulary():
    with pytest.raises(ConfigError, match=r"'model\.share_embeddings'.*joint vocabulary.*data\.tokenizer\.joint"):
        make_model(share_embeddings=True)  # SRC_V != TGT_V


def test_word_dropout_drops_whole_tokens_in_training_only():
    """model.word_dropout: in training each position's vector is either all zeros or the embedding
    scaled by 1/(1-p), about p of them zero; in eval the embedding is untouched. Mutation: applying
    ordinary per-unit dropout (F.dropout on the vectors) instead: rows mix zeros and kept units."""
    from seq2seq.model.embeddings import TokenEmbedding

    torch.manual_seed(0)
    emb = TokenEmbedding(50, 16, pad_id=PAD, word_dropout=0.25)
    tokens = torch.randint(4, 50, (64, 30))
    plain = torch.nn.functional.embedding(tokens, emb.weight)  # [64, 30, 16]
    emb.train()
    out = emb(tokens)
    dropped = (out == 0).all(-1)  # [64, 30]
    assert torch.allclose(out[~dropped], plain[~dropped] / 0.75)
    assert 0.2 < dropped.float().mean() < 0.3
    emb.eval()
    assert torch.equal(emb(tokens), plain)
