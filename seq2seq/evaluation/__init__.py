"""Evaluation: sacrebleu metrics, scoring text files (scoring), the table of several evaluation sets
(tables), search tuning on validation (search_tuning), and ensembles of trained runs (ensembles).
"""
