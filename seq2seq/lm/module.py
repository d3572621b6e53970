"""LightningModule of a recurrent language model: the translation module's training machinery (optimiser,
schedule, non-finite step guard, checkpoints with config and sentencepiece model, RNG states for resume)
with an LM's network, loss and validation (perplexity per piece and per word instead of BLEU)."""

from __future__ import annotations

import logging
import math

import torch

from seq2seq.config import LanguageModelConfig
from seq2seq.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer
from seq2seq.lm.data import LMBatch
from seq2seq.model.lm import RecurrentLM
from seq2seq.training.loss import label_smoothed_nll
from seq2seq.training.module import TranslationModule

log = logging.getLogger(__name__)

LM_METRICS = ("loss", "ppl")  # what validation logs that best.ckpt / early stopping may follow


class LanguageModelModule(TranslationModule):
    def build_model(self, model: LanguageModelConfig, tokenizer: Tokenizer) -> RecurrentLM:
        return RecurrentLM(model, vocab_size=tokenizer.tgt_vocab_size, pad_id=PAD_ID,
                                       bos_id=BOS_ID, eos_id=EOS_ID)

    def _losses(self, batch: LMBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (label-smoothed loss sum, NLL sum, token count) over real positions (EOS included)."""
        logits = self.model(batch.tokens_in)  # [B, T, V]
        return label_smoothed_nll(logits, batch.tokens_out, batch.mask, self.optim_cfg.label_smoothing,
                                  self.smoothing_excluded())

    def on_validation_epoch_start(self) -> None:
        self._val_sums = torch.zeros(4, device=self.device)  # nll, smoothed loss, tokens, words

    def validation_step(self, batch: LMBatch, batch_idx: int) -> None:
        smoothed, nll, tokens = self._losses(batch)
        self._val_sums += torch.stack([nll, smoothed.detach(), tokens.float(), batch.words.sum().float()])

    def on_validation_epoch_end(self) -> None:
        sums = self.trainer.strategy.reduce(self._val_sums, reduce_op="sum")
        nll, smoothed, tokens, words = (float(x) for x in sums)
        tokens, words = max(tokens, 1.0), max(words, 1.0)
        metrics = {"loss": smoothed / tokens, "ppl": math.exp(min(nll / tokens, 100.0)),
                   "word_ppl": math.exp(min(nll / words, 100.0))}
        for name, value in metrics.items():  # equal on every rank (sums reduced): max keeps them exact
            self.log(f"val/{name}", value, prog_bar=name in ("ppl", "word_ppl"), batch_size=1,
                     sync_dist=True, reduce_fx="max")
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            log.info("step %d: val perplexity %.2f per piece, %.2f per word (%d pieces, %d words)",
                     self.global_step, metrics["ppl"], metrics["word_ppl"], tokens, words)
        scheduler = self.lr_schedulers()  # None under trainer.validate()
        if self.trainer.sanity_checking or scheduler is None:
            return
        if scheduler.observe(metrics[self.val_cfg.metric]):
            log.info("validation %s has not improved: learning rate scaled by %.4g",
                     self.val_cfg.metric, scheduler.plateau["scale"])
