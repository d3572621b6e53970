"""Source encoder: embedding -> dropout -> (bi)directional stacked RNN over packed sequences.

Shapes: B batch, S source length, E embedding size, H hidden size per direction, D directions (1 or 2),
L layers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .embeddings import TokenEmbedding


def make_rnn(cell: str, input_size: int, hidden_size: int, num_layers: int, dropout: float,
             bidirectional: bool) -> nn.RNNBase:
    """The batch-first recurrent module for `cell` (one of `config.CELLS`).

    `dropout` applies between stacked layers only, so it is dropped for a single layer (where PyTorch
    would warn that it does nothing).
    """
    dropout = dropout if num_layers > 1 else 0.0
    common = dict(input_size=input_size, hidden_size=hidden_size, num_layers=num_layers,
                  dropout=dropout, bidirectional=bidirectional, batch_first=True)
    if cell == "rnn_tanh":
        return nn.RNN(nonlinearity="tanh", **common)
    if cell == "rnn_relu":
        return nn.RNN(nonlinearity="relu", **common)
    if cell == "gru":
        return nn.GRU(**common)
    if cell == "lstm":
        return nn.LSTM(**common)
    raise ValueError(f"unknown cell {cell!r}")  # config.check_section names the valid choices


def run_rnn(rnn: nn.RNNBase, inputs, hx=None):
    """`rnn(inputs, hx)` in the precision of the RNN's weights (float32), also under autocast.

    Autocast would run the recurrence in low precision, and not even in the one asked for: PyTorch's
    autocast wrapper for cuDNN RNNs (aten/src/ATen/cudnn/AutocastRNN.cpp, `_cudnn_rnn_cast_reflatten`)
    casts input, hx, cx and the weights to float16 whatever the autocast dtype, and re-casts and
    re-flattens the weights on every call (every decoder step); under bf16-mixed there is no
    GradScaler to catch fp16 underflow. On the CPU, autocast runs oneDNN's LSTM in bfloat16. So the
    recurrence runs with autocast off, in float32 (TF32 tensor cores on Ampere/Hopper when
    `torch.backends.cudnn.allow_tf32`); attention and the output layer stay under autocast. Outputs
    come back in float32; the next autocast op casts them down where it wants to.

    inputs: a Tensor or PackedSequence; hx: a Tensor, an (h, c) pair for an LSTM, or None.
    """
    data = inputs.data if isinstance(inputs, nn.utils.rnn.PackedSequence) else inputs
    if not torch.is_autocast_enabled(data.device.type):
        return rnn(inputs, hx)
    dtype = rnn.weight_hh_l0.dtype
    with torch.autocast(data.device.type, enabled=False):
        inputs = inputs.to(dtype)
        if isinstance(hx, tuple):
            hx = tuple(h.to(dtype) for h in hx)
        elif hx is not None:
            hx = hx.to(dtype)
        return rnn(inputs, hx)


class Encoder(nn.Module):
    """Embeds and encodes a padded source batch; padding never enters the recurrence.

    `forward` returns the outputs of the top layer for every position (zeros at padding) and the final
    states of the top layer with both directions concatenated (forward direction first), which is
    what the bridge consumes. For an LSTM the final cell state comes too; other cells return None.
    """

    def __init__(self, vocab_size: int, embedding_size: int, hidden_size: int, num_layers: int,
                 cell: str, bidirectional: bool, dropout: float, rnn_dropout: float, word_dropout: float,
                 pad_id: int) -> None:
        super().__init__()
        self.is_lstm = cell == "lstm"
        self.num_directions = 2 if bidirectional else 1
        self.output_size = hidden_size * self.num_directions  # D*H: memory width for attention
        self.embedding = TokenEmbedding(vocab_size, embedding_size, pad_id, word_dropout)
        self.dropout = nn.Dropout(dropout)
        self.rnn = make_rnn(cell, embedding_size, hidden_size, num_layers, rnn_dropout, bidirectional)

    def forward(self, src: Tensor, src_lengths: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """src [B, S] long, src_lengths [B] int64 on the CPU (all >= 1).

        Returns outputs [B, S, D*H], final_hidden [B, D*H], final_cell [B, D*H] or None.
        """
        embedded = self.dropout(self.embedding(src))  # [B, S, E]
        # Batches sorted by decreasing source length (`data.collate`, `Translator`) pack without a host
        # sync; packing an unsorted batch sorts it with an index copied to the device and back.
        ordered = src_lengths.numel() < 2 or bool((src_lengths[:-1] >= src_lengths[1:]).all())  # CPU op
        packed = pack_padded_sequence(embedded, src_lengths, batch_first=True, enforce_sorted=ordered)
        # No flatten_parameters() here: it re-allocates and copies every weight on each call. Weights are
        # flattened when the module moves (`RNNBase._apply`) and once at fit start (`Seq2Seq.flatten_parameters`).
        packed_outputs, final = run_rnn(self.rnn, packed)  # packed [sum(lengths), D*H]; [L*D, B, H]
        outputs, _ = pad_packed_sequence(packed_outputs, batch_first=True,
                                         total_length=src.size(1))  # [B, S, D*H], zeros at padding
        if self.is_lstm:
            final_hidden, final_cell = final  # each [L*D, B, H]
            return outputs, self._top_layer(final_hidden), self._top_layer(final_cell)
        return outputs, self._top_layer(final), None

    def _top_layer(self, final: Tensor) -> Tensor:
        """[L*D, B, H] (PyTorch's layer-major layout) -> the top layer's directions side by side."""
        top = final[-self.num_directions:]  # [D, B, H]
        return top.transpose(0, 1).reshape(top.size(1), self.output_size)  # [B, D*H]
