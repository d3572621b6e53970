"""Decoding: searches over the decoder-step contract (search), "translate these sentences" (translator),
what a translated line is written as (output), translating a file window by window with a resumable
output (files), and a teacher's translations for a student (distillation).
"""
