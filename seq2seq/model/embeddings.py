"""Token embeddings with the initialisation the whole model uses.

Embeddings start as N(0, E^-0.5) with the padding row zero. Each vector then has an expected norm of
about 1 whatever E is, which is also the right scale when the matrix doubles as the (tied) output
projection: a tanh-bounded decoder output of width E then gives logits of order 1, not of order sqrt(E).
The padding row stays zero during training because `padding_idx` blocks its gradient.

Word dropout (training only) drops whole tokens: each position's vector is zeroed with probability p
and the kept ones are scaled by 1 / (1 - p), so the model cannot lean on any single word and must use
the context (Gal & Ghahramani 2016; Sennrich et al. 2016 for NMT). It is applied per position, not
per word type, and before the ordinary (per unit) embedding dropout of the encoder and decoder.
"""

from __future__ import annotations

import torch
from torch import nn


class TokenEmbedding(nn.Embedding):
    """`nn.Embedding` with `padding_idx=pad_id`, N(0, E^-0.5) initialisation and word dropout."""

    def __init__(self, vocab_size: int, embedding_size: int, pad_id: int, word_dropout: float) -> None:
        super().__init__(vocab_size, embedding_size, padding_idx=pad_id)
        self.word_dropout = word_dropout

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [...] -> vectors [..., E]; in training, whole positions dropped with p = word_dropout."""
        vectors = super().forward(tokens)  # [..., E]
        if not self.training or self.word_dropout == 0.0:
            return vectors
        keep = torch.rand(tokens.shape, device=tokens.device) >= self.word_dropout  # [...] bool
        return vectors * (keep.unsqueeze(-1).to(vectors.dtype) / (1.0 - self.word_dropout))

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, mean=0.0, std=self.embedding_dim**-0.5)
        with torch.no_grad():
            self.weight[self.padding_idx].zero_()
