"""Serving: the HTTP app of seq2seq-serve, its request schema, dynamic batching and the static page.
"""
