"""Attentive RNN decoder: the search state, the bridge, the output layer and the decoder itself.

Shapes: B batch, N search rows (B times beams, after `DecoderState.reorder`), G sources (N / beams),
T target length, S source length,
E embedding size, H decoder hidden size, L decoder layers, M memory (encoder output) size, K key size,
C context size, O attentional-output size (= H), V target vocabulary.

One recurrent module serves both the teacher-forced `forward` and the per-token `step`, so their
weights are shared by construction. Per design (attention / input feeding):

  luong_dot, luong_general  h_t = RNN([y_{t-1} ; o_{t-1} if input_feed], h_{t-1})
                            c_t = attn(h_t);  o_t = tanh(W_c [h_t ; c_t])
  bahdanau                  c_t = attn(s_{t-1})  where s_{t-1} is the top layer's previous hidden state
                            h_t = RNN([y_{t-1} ; c_t ; o_{t-1} if input_feed], h_{t-1})
                            o_t = tanh(W_c [h_t ; c_t])
  none                      h_t = RNN(y_{t-1}, h_{t-1});  o_t = h_t

and then logits_t = Output(dropout(o_t)). o_{-1} (input feeding) is zero; the fed value is o_t before
dropout. Without input feeding, Luong and no-attention decoders depend on the past only through the RNN,
so `forward` runs the RNN over the whole target in one call and attends all steps with one batched
matmul ("parallel path"); Bahdanau and input feeding need the previous step's attention, so `forward`
loops over time through `_advance`, the same function `step` calls.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .attention import build_attention
from .embeddings import TokenEmbedding
from .encoder import make_rnn, run_rnn


@dataclass
class DecoderState:
    """Everything `step` needs, in two parts: what each search row carries and what its source carries.

    Per row (the incremental state of each hypothesis; rows on dim 1 for hidden states, which keep
    PyTorch's RNN layout so they go into the RNN without a copy, on dim 0 otherwise): hidden, cell, feed.
    Per source (computed once by `Decoder.init_state`, never recomputed): keys, values, pad_mask.
    The N rows come in G groups of R = N / G consecutive rows, group g being hypotheses of source g
    (R = 1 for training and greedy search, the beam size in beam search): each group attends over its
    source's keys in one product, so keys are read once per sentence per step, not once per beam.
    """

    hidden: Tensor  # [L, N, H] decoder RNN hidden state
    cell: Tensor | None  # [L, N, H] LSTM memory cell; None for other cells
    feed: Tensor | None  # [N, O] previous attentional output (input feeding); else None
    keys: Tensor | None  # [G, S, K] precomputed attention keys; None without attention
    values: Tensor | None  # [G, S, C] attention values (may be the same tensor as keys)
    pad_mask: Tensor | None  # [G, S] bool, True at source padding; None without attention

    def reorder(self, rows: Tensor, sources: Tensor | None) -> DecoderState:
        """Select, repeat or drop rows and sources (the contract in docs/design.md).

        rows [N']: new row i is old row rows[i] (per-row tensors).
        sources [G'] or None: new source g is old source sources[g] (per-source tensors); None keeps
            the sources as they are, without a copy (beams reordered among their own sentence's beams,
            or repeated into beams).
        The caller promises the layout above for the result: old row rows[i] is a hypothesis of the
        source that becomes source i // (N' / G'). Only the shapes are checked (the rows' sources would
        need the index on the host: a device sync per step).
        """
        if rows.dim() != 1 or (sources is not None and sources.dim() != 1):
            raise ValueError(f"a reorder index is [N'] rows and [G'] sources (or None), got shapes "
                             f"{tuple(rows.shape)} and {None if sources is None else tuple(sources.shape)}")
        keys, values, pad_mask = self.keys, self.values, self.pad_mask
        if pad_mask is not None:
            groups = pad_mask.size(0) if sources is None else sources.numel()
            if (rows.numel() % groups) if groups else rows.numel():
                raise ValueError(f"{rows.numel()} rows cannot be laid out in groups over {groups} sources: "
                                 "each source needs the same number of consecutive rows")
            if sources is not None:
                values = values.index_select(0, sources)  # [G', S, C]
                keys = values if self.keys is self.values else keys.index_select(0, sources)  # [G', S, K]
                pad_mask = pad_mask.index_select(0, sources)  # [G', S]

        def per_row(t: Tensor | None, dim: int = 0) -> Tensor | None:
            return None if t is None else t.index_select(dim, rows)

        return DecoderState(hidden=per_row(self.hidden, 1), cell=per_row(self.cell, 1),
                            feed=per_row(self.feed), keys=keys, values=values, pad_mask=pad_mask)


class Bridge(nn.Module):
    """Initial decoder state from the encoder's final state: tanh(Linear(top layer, both directions)).

    One linear produces the states of all L decoder layers at once; an LSTM has a second, separate
    linear for the memory cell.
    """

    def __init__(self, encoder_size: int, hidden_size: int, num_layers: int, is_lstm: bool) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.hidden = nn.Linear(encoder_size, num_layers * hidden_size)
        self.cell = nn.Linear(encoder_size, num_layers * hidden_size) if is_lstm else None

    def forward(self, final_hidden: Tensor,
                final_cell: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """final_hidden, final_cell [B, D*He] -> hidden [L, B, H], cell [L, B, H] or None."""
        hidden = self._map(self.hidden, final_hidden)  # [L, B, H]
        cell = self._map(self.cell, final_cell) if self.cell is not None else None  # [L, B, H]
        return hidden, cell

    def _map(self, linear: nn.Linear, final: Tensor) -> Tensor:
        state = torch.tanh(linear(final))  # [B, L*H]
        state = state.view(final.size(0), self.num_layers, self.hidden_size)  # [B, L, H]
        return state.transpose(0, 1).contiguous()  # [L, B, H] (cuDNN wants contiguous states)


class OutputLayer(nn.Module):
    """o [..., O] -> logits [..., V]; optionally tied to the target embedding matrix.

    A tied projection multiplies by the embedding matrix [V, E]; when O != E a bias-free bottleneck
    O -> E comes first. The bias is not shared and starts at zero.
    """

    def __init__(self, input_size: int, vocab_size: int, tied_embedding: nn.Embedding | None) -> None:
        super().__init__()
        if tied_embedding is None:
            self.bottleneck = None
            self.proj = nn.Linear(input_size, vocab_size)
        else:
            embedding_size = tied_embedding.embedding_dim
            self.bottleneck = (nn.Linear(input_size, embedding_size, bias=False)
                               if input_size != embedding_size else None)
            self.proj = nn.Linear(embedding_size, vocab_size)
            self.proj.weight = tied_embedding.weight  # one Parameter, two users

    def forward(self, x: Tensor) -> Tensor:
        if self.bottleneck is not None:
            x = self.bottleneck(x)  # [..., E]
        return self.proj(x)  # [..., V]


class Decoder(nn.Module):
    """Target embedding, attention, one RNN, combination layer and output layer (see module doc)."""

    def __init__(self, vocab_size: int, embedding_size: int, hidden_size: int, num_layers: int,
                 cell: str, attention: str, memory_size: int, attention_size: int,
                 input_feed: bool, dropout: float, rnn_dropout: float, word_dropout: float,
                 tie_embeddings: bool, pad_id: int) -> None:
        super().__init__()
        self.is_lstm = cell == "lstm"
        self.is_bahdanau = attention == "bahdanau"
        self.input_feed = input_feed
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.output_size = hidden_size  # O
        # The whole target goes through the RNN in one call unless step t needs step t-1's attention.
        self.parallel = not self.is_bahdanau and not input_feed

        self.embedding = TokenEmbedding(vocab_size, embedding_size, pad_id, word_dropout)
        self.dropout = nn.Dropout(dropout)
        self.attention = build_attention(attention, hidden_size, memory_size, attention_size)
        context_size = self.attention.context_size if self.attention is not None else 0
        rnn_input_size = (embedding_size + (context_size if self.is_bahdanau else 0)
                          + (self.output_size if input_feed else 0))
        self.rnn = make_rnn(cell, rnn_input_size, hidden_size, num_layers, rnn_dropout,
                            bidirectional=False)
        self.combine = (nn.Linear(hidden_size + context_size, self.output_size, bias=False)
                        if self.attention is not None else None)
        self.output = OutputLayer(self.output_size, vocab_size,
                                  self.embedding if tie_embeddings else None)

    # ---------------------------------------------------------------- state
    def init_state(self, memory: Tensor, src_mask: Tensor, hidden: Tensor,
                   cell: Tensor | None) -> DecoderState:
        """memory [B, S, M], src_mask [B, S] bool (True at real tokens), hidden/cell [L, B, H]."""
        keys = values = pad_mask = None
        if self.attention is not None:
            keys, values = self.attention.prepare(memory)  # [B, S, K], [B, S, C]
            pad_mask = ~src_mask  # [B, S] True at padding
        feed = hidden.new_zeros(hidden.size(1), self.output_size) if self.input_feed else None  # [B, O]
        return DecoderState(hidden=hidden, cell=cell, feed=feed, keys=keys, values=values,
                            pad_mask=pad_mask)

    # ---------------------------------------------------------------- teacher forcing
    def forward(self, tgt_in: Tensor, state: DecoderState) -> Tensor:
        """tgt_in [B, T] -> logits [B, T, V], starting from `state` (from `init_state`)."""
        if self.parallel:
            return self.forward_parallel(tgt_in, state)
        return self.forward_loop(tgt_in, state)

    def forward_parallel(self, tgt_in: Tensor, state: DecoderState) -> Tensor:
        """One RNN call over all T steps, then attention for all steps at once (Luong/none, no feed)."""
        if not self.parallel:
            raise RuntimeError("this decoder design needs the step loop (bahdanau or input feeding)")
        embedded = self.dropout(self.embedding(tgt_in))  # [B, T, E]
        hx = (state.hidden, state.cell) if self.is_lstm else state.hidden
        outputs, _ = run_rnn(self.rnn, embedded, hx)  # [B, T, H] float32
        if self.attention is not None:
            context, _ = self.attention(outputs, state.keys, state.values, state.pad_mask)  # [B, T, C]
            outputs = self.attentional_output(outputs, context)  # [B, T, O]
        return self.output(self.dropout(outputs))  # [B, T, V]

    def forward_loop(self, tgt_in: Tensor, state: DecoderState) -> Tensor:
        """T calls of `_advance` (what `step` does), one output projection for all steps."""
        embedded = self.dropout(self.embedding(tgt_in))  # [B, T, E]
        outputs = []
        for t in range(tgt_in.size(1)):
            output, state, _ = self._advance(embedded[:, t], state)  # [B, O]
            outputs.append(output)
        stacked = torch.stack(outputs, dim=1)  # [B, T, O]
        return self.output(self.dropout(stacked))  # [B, T, V]

    # ---------------------------------------------------------------- search
    def step(self, prev_tokens: Tensor,
             state: DecoderState) -> tuple[Tensor, DecoderState, Tensor | None]:
        """prev_tokens [N] -> log_probs [N, V] float32, new state, attention [N, S] float32 or None."""
        embedded = self.dropout(self.embedding(prev_tokens))  # [N, E]
        output, state, weights = self._advance(embedded, state)  # [N, O], _, [N, S]
        logits = self.output(self.dropout(output))  # [N, V]
        return torch.log_softmax(logits.float(), dim=-1), state, weights  # [N, V] float32

    def _advance(self, embedded: Tensor,
                 state: DecoderState) -> tuple[Tensor, DecoderState, Tensor | None]:
        """One decoder step from the embedded previous token [N, E] -> o_t [N, O], state, weights."""
        weights = None
        if self.is_bahdanau:
            query = state.hidden[-1]  # [N, H] s_{t-1}: top layer's previous hidden state
            context, weights = self.attention.step(query, state.keys, state.values,
                                                   state.pad_mask)  # [N, C], [N, S]
            parts = [embedded, context, state.feed] if self.input_feed else [embedded, context]
            inputs = torch.cat(parts, dim=-1)  # [N, E + C (+ O)]
            top, hidden, cell = self._recur(inputs, state)  # [N, H], [L, N, H], [L, N, H]
            output = self.attentional_output(top, context)  # [N, O]
        else:
            inputs = (torch.cat([embedded, state.feed], dim=-1)
                      if self.input_feed else embedded)  # [N, E (+ O)]
            top, hidden, cell = self._recur(inputs, state)  # [N, H], [L, N, H], [L, N, H]
            if self.attention is not None:
                context, weights = self.attention.step(top, state.keys, state.values,
                                                       state.pad_mask)  # [N, C], [N, S]
                output = self.attentional_output(top, context)  # [N, O]
            else:
                output = top  # [N, O = H]
        new_state = dataclasses.replace(state, hidden=hidden, cell=cell,
                                        feed=output if self.input_feed else None)  # memory unchanged
        return output, new_state, weights

    def attentional_output(self, hidden: Tensor, context: Tensor) -> Tensor:
        """o = tanh(W_c [h ; c]): hidden [..., H], context [..., C] -> [..., O]."""
        return torch.tanh(self.combine(torch.cat([hidden, context], dim=-1)))

    def _recur(self, inputs: Tensor,
               state: DecoderState) -> tuple[Tensor, Tensor, Tensor | None]:
        """One RNN step: inputs [N, I] -> top-layer output [N, H], hidden [L, N, H], cell or None."""
        if self.is_lstm:
            outputs, (hidden, cell) = run_rnn(self.rnn, inputs.unsqueeze(1),
                                              (state.hidden, state.cell))  # [N, 1, H], [L, N, H] x2
        else:
            outputs, hidden = run_rnn(self.rnn, inputs.unsqueeze(1), state.hidden)  # [N, 1, H], [L, N, H]
            cell = None
        return outputs.squeeze(1), hidden, cell
