"""Checkpoints: what one carries besides the weights (format), building models from one (loading),
averaging several (averaging), and starting a run from one (init_from).
"""
