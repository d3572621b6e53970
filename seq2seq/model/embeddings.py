"""Token embeddings with the initialisation the whole model uses.

Embeddings start as N(0, E^-0.5) with the padding row zero. Each vector then has an expected norm of
about 1 whatever E is, which is also the right scale when the matrix doubles as the (tied) output
projection: a tanh-bounded decoder output of width E then gives logits of order 1, not of order sqrt(E).
The padding row stays zero during training because `padding_idx` blocks its gradient.
"""

from __future__ import annotations

import torch
from torch import nn


class TokenEmbedding(nn.Embedding):
    """`nn.Embedding` with `padding_idx=pad_id` and N(0, E^-0.5) initialisation."""

    def __init__(self, vocab_size: int, embedding_size: int, pad_id: int) -> None:
        super().__init__(vocab_size, embedding_size, padding_idx=pad_id)

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, mean=0.0, std=self.embedding_dim**-0.5)
        with torch.no_grad():
            self.weight[self.padding_idx].zero_()
