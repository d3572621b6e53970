"""Evaluation: sacrebleu metrics, the table of several evaluation sets, and search tuning on validation.
"""
