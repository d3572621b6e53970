"""Checkpoints: what one carries besides the weights (format), loading one for translation,
averaging several, and starting a run from one (init_from).
"""
