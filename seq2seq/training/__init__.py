"""Training: the LightningModule, its loss and schedule, callbacks, logging, checkpoint averaging at the
end of a run, and `train(cfg)` for one translation run.
"""
