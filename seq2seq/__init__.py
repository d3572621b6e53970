"""seq2seq: recurrent neural machine translation with attention."""

__version__ = "0.2.0"
