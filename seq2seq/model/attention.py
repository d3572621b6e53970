"""Attention over the encoder outputs ("memory").

Shapes: B batch (or N search rows), T queries per row, S source length, Q query size (the decoder
hidden size), M memory size (encoder output size), K key size, C context size, A additive scorer size.

Every scorer splits its work in two:
  * `prepare(memory)` runs ONCE per source batch and returns `(keys, values)`: everything that depends
    on the memory alone (the U·m of the additive scorer, the W·m of the general scorer, the projection
    of the dot scorer) so that the per-step cost is one query projection and two batched matmuls.
  * `forward(query [B, T, Q], keys, values, pad_mask)` scores T queries at once with batched matmuls
    (the parallel teacher-forced decoder); `step(query [N, Q], ...)` is the same computation for one
    query per row (search). Both share one code path, so they agree to rounding.

Scores are cast to float32 before masking, so the -inf fill and the softmax are exact under bf16/fp16
autocast; padded positions get exactly zero weight. Sources are never empty (they end with EOS), so
no row is fully masked. Weights come back float32; the context is in the values' dtype.

luong_dot decision: a dot product needs Q == M. When the (bidirectional) encoder output has another
width, `DotAttention` projects the memory once (a bias-free linear M -> Q) and uses the projected
memory as both keys and values, so the context has the decoder's size. When the sizes agree it is
the textbook parameter-free dot attention and keys and values are the same tensor (no copy).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Attention(nn.Module):
    """Base class: `score` is the only part the variants change."""

    context_size: int

    def prepare(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """memory [B, S, M] -> keys [B, S, K], values [B, S, C]; once per source batch."""
        raise NotImplementedError

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        """query [B, T, Q], keys [B, S, K] -> unnormalised scores [B, T, S]."""
        raise NotImplementedError

    def forward(self, query: Tensor, keys: Tensor, values: Tensor,
                pad_mask: Tensor) -> tuple[Tensor, Tensor]:
        """query [B, T, Q], pad_mask [B, S] bool (True at padding).

        Returns context [B, T, C] and weights [B, T, S] float32.
        """
        scores = self.score(query, keys).float()  # [B, T, S] float32
        scores = scores.masked_fill(pad_mask.unsqueeze(1), float("-inf"))  # [B, T, S]
        weights = torch.softmax(scores, dim=-1)  # [B, T, S] float32
        context = torch.bmm(weights.to(values.dtype), values)  # [B, T, C]
        return context, weights

    def step(self, query: Tensor, keys: Tensor, values: Tensor,
             pad_mask: Tensor) -> tuple[Tensor, Tensor]:
        """One query per row: query [N, Q], keys [G, S, K] -> context [N, C], weights [N, S] float32.

        The N = G * R rows come in G groups of R consecutive rows with one source (the beams of a
        sentence; R = 1 outside beam search): a group's R queries are scored as the T queries of
        `forward`, so each source's keys are read once per step rather than once per beam.
        """
        rows = query.size(0)
        grouped = query.view(keys.size(0), -1, query.size(-1))  # [G, R, Q]
        context, weights = self(grouped, keys, values, pad_mask)  # [G, R, C], [G, R, S]
        return context.reshape(rows, -1), weights.reshape(rows, -1)  # [N, C], [N, S]


class AdditiveAttention(Attention):
    """Bahdanau et al. (2015): score(q, m) = v · tanh(W q + U m + b); U m + b precomputed as keys.

    The T-query form materialises [B, T, S, A]; the decoder only uses it one query at a time.
    """

    def __init__(self, query_size: int, memory_size: int, attention_size: int) -> None:
        super().__init__()
        self.context_size = memory_size
        self.query_proj = nn.Linear(query_size, attention_size, bias=False)
        self.key_proj = nn.Linear(memory_size, attention_size, bias=True)
        self.v = nn.Linear(attention_size, 1, bias=False)

    def prepare(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        return self.key_proj(memory), memory  # [B, S, A], [B, S, M]

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        projected = self.query_proj(query)  # [B, T, A]
        hidden = torch.tanh(projected.unsqueeze(2) + keys.unsqueeze(1))  # [B, T, S, A]
        return self.v(hidden).squeeze(-1)  # [B, T, S]


class DotAttention(Attention):
    """Luong et al. (2015) dot: score(q, m) = q · m (memory projected to Q once if M != Q)."""

    def __init__(self, query_size: int, memory_size: int) -> None:
        super().__init__()
        self.context_size = query_size
        self.memory_proj = (nn.Linear(memory_size, query_size, bias=False)
                            if memory_size != query_size else None)

    def prepare(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        if self.memory_proj is not None:
            memory = self.memory_proj(memory)  # [B, S, Q]
        return memory, memory  # keys and values: the same tensor

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        return torch.bmm(query, keys.transpose(1, 2))  # [B, T, S]


class GeneralAttention(Attention):
    """Luong et al. (2015) general: score(q, m) = q · W m; W m precomputed as keys."""

    def __init__(self, query_size: int, memory_size: int) -> None:
        super().__init__()
        self.context_size = memory_size
        self.key_proj = nn.Linear(memory_size, query_size, bias=False)

    def prepare(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        return self.key_proj(memory), memory  # [B, S, Q], [B, S, M]

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        return torch.bmm(query, keys.transpose(1, 2))  # [B, T, S]


def build_attention(kind: str, query_size: int, memory_size: int,
                    attention_size: int) -> Attention | None:
    """The scorer for `kind` (one of `config.ATTENTIONS`); None for "none"."""
    if kind == "bahdanau":
        return AdditiveAttention(query_size, memory_size, attention_size)
    if kind == "luong_dot":
        return DotAttention(query_size, memory_size)
    if kind == "luong_general":
        return GeneralAttention(query_size, memory_size)
    if kind == "none":
        return None
    raise ValueError(f"unknown attention {kind!r}")  # config.check_section names the valid choices
