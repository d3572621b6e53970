"""`RecurrentLM`: a decoder-only recurrent language model over one sentencepiece vocabulary.

Shapes: B batch, N search rows, T positions, E embedding size, H hidden size, L layers, V vocabulary.

    h_t = RNN(dropout(embed(y_{t-1})), h_{t-1});  logits_t = Output(dropout(h_t))

with the project's cells (`encoder.make_rnn`), embedding (`TokenEmbedding`) and output layer (`OutputLayer`,
optionally tied to the embedding). A sentence is `[BOS] + pieces` in and `pieces + [EOS]` out; the state
starts at zero, so `step` from BOS scores the first piece exactly as `forward` does.

The search side is the decoder-step contract without a source: `init_state(batch_size, device)`,
`step(prev_tokens [N], state) -> (log_probs [N, V] float32, state)`, `reorder_state(state, rows)`.
Shallow fusion (`seq2seq.lm.fusion`) carries this state beside the translation model's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from ..config import LanguageModelConfig, check_section
from .decoder import OutputLayer
from .embeddings import TokenEmbedding
from .encoder import make_rnn, run_rnn


@dataclass
class LMState:
    """The recurrent state; rows on dim 1 (PyTorch's RNN layout, no copy going in)."""

    hidden: Tensor  # [L, N, H]
    cell: Tensor | None  # [L, N, H] LSTM memory cell; None for other cells

    def index_select(self, index: Tensor) -> LMState:
        """Rows `index` (any shape; flattened): select, repeat or drop rows."""
        flat = index.reshape(-1)
        return LMState(self.hidden.index_select(1, flat),
                       None if self.cell is None else self.cell.index_select(1, flat))


class RecurrentLM(nn.Module):
    """Embedding -> dropout -> stacked unidirectional RNN -> dropout -> output layer."""

    def __init__(self, cfg: LanguageModelConfig, vocab_size: int, pad_id: int, bos_id: int, eos_id: int) -> None:
        super().__init__()
        check_section(cfg, "model")  # a hand-built config gets the same errors as a composed one
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.tgt_vocab_size = vocab_size  # the name fusion and ensembles compare
        self.layers, self.hidden_size = cfg.layers, cfg.hidden_size
        self.is_lstm = cfg.cell == "lstm"
        self.embedding = TokenEmbedding(vocab_size, cfg.embedding_size, pad_id, word_dropout=0.0)
        self.dropout = nn.Dropout(cfg.dropout)
        self.rnn = make_rnn(cfg.cell, cfg.embedding_size, cfg.hidden_size, cfg.layers, cfg.rnn_dropout,
                            bidirectional=False)
        self.output = OutputLayer(cfg.hidden_size, vocab_size, self.embedding if cfg.tie_embeddings else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """As `Seq2Seq.reset_parameters`: PyTorch defaults, then the embedding (it may be the tied output
        weight), then a zero output bias."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.RNNBase)):
                module.reset_parameters()
        self.embedding.reset_parameters()
        nn.init.zeros_(self.output.proj.bias)

    def flatten_parameters(self) -> None:
        self.rnn.flatten_parameters()

    # ------------------------------------------------------------------ teacher forcing
    def forward(self, tokens: Tensor) -> Tensor:
        """tokens [B, T] (BOS + pieces, right-padded) -> logits [B, T, V] in the compute dtype.

        No packing: the RNN runs left to right, so padding after a row's end never reaches its real
        positions, and their logits are the ones the loss reads.
        """
        embedded = self.dropout(self.embedding(tokens))  # [B, T, E]
        outputs, _ = run_rnn(self.rnn, embedded)  # [B, T, H]
        return self.output(self.dropout(outputs))  # [B, T, V]

    def prime(self, tokens: Tensor, lengths: Tensor) -> tuple[Tensor, LMState]:
        """Read prompts: tokens [B, T] (BOS + pieces, right-padded), lengths [B] CPU int64 (>= 1).

        Returns the log-probabilities of the next token after each prompt [B, V] float32 and the state
        after its last real token (packing keeps padding out of the state).
        """
        embedded = self.dropout(self.embedding(tokens))  # [B, T, E]
        # As in the encoder: rows sorted by decreasing length (`generation.generate` sorts its prompts) pack
        # without the index copies to the device and back that packing an unsorted batch costs.
        ordered = lengths.numel() < 2 or bool((lengths[:-1] >= lengths[1:]).all())  # CPU op
        packed = pack_padded_sequence(embedded, lengths, batch_first=True, enforce_sorted=ordered)
        _, final = run_rnn(self.rnn, packed)  # [L, B, H] (x2 for an LSTM), rows in input order
        hidden, cell = final if self.is_lstm else (final, None)
        log_probs = torch.log_softmax(self.output(self.dropout(hidden[-1])).float(), dim=-1)  # [B, V]
        return log_probs, LMState(hidden, cell)

    # ------------------------------------------------------------------ search contract
    def init_state(self, batch_size: int, device: torch.device | str) -> LMState:
        """The state before BOS: zeros [L, N, H]."""
        hidden = torch.zeros(self.layers, batch_size, self.hidden_size, device=device,
                             dtype=self.rnn.weight_hh_l0.dtype)
        return LMState(hidden, torch.zeros_like(hidden) if self.is_lstm else None)

    def step(self, prev_tokens: Tensor, state: LMState) -> tuple[Tensor, LMState]:
        """prev_tokens [N] -> (log-probabilities of the next token [N, V] float32, new state)."""
        embedded = self.dropout(self.embedding(prev_tokens)).unsqueeze(1)  # [N, 1, E]
        if self.is_lstm:
            outputs, (hidden, cell) = run_rnn(self.rnn, embedded, (state.hidden, state.cell))
        else:
            outputs, hidden = run_rnn(self.rnn, embedded, state.hidden)
            cell = None
        logits = self.output(self.dropout(outputs.squeeze(1)))  # [N, V]
        return torch.log_softmax(logits.float(), dim=-1), LMState(hidden, cell)

    def reorder_state(self, state: LMState, rows: Tensor) -> LMState:
        """rows [N']: new row i is old row rows[i] (an LM has no source side, so no `sources`)."""
        return state.index_select(rows)
