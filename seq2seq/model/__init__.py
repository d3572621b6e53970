"""Attentive RNN encoder-decoder behind the decoder-step contract (docs/design.md)."""

from .decoder import DecoderState
from .seq2seq import Seq2Seq

__all__ = ["DecoderState", "Seq2Seq"]
