"""Decoding: searches over the decoder-step contract (search), "translate these sentences" (translator)
and the file input/output of seq2seq-translate.
"""
