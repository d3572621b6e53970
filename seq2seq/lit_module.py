"""LightningModule: the training objective, optimiser and schedule, and validation with BLEU.

Validation decodes the validation sources with `Translator` (the same code path as
`seq2seq-translate` and the final test) and scores them with sacrebleu against the raw references.
Under DDP each rank decodes a disjoint shard; the hypotheses are gathered and corpus BLEU is
computed once over the whole set, so it equals the single-process figure.
"""

from __future__ import annotations

import logging
import math
import random
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar

from seq2seq.checkpoint import PAYLOAD_KEY, make_payload
from seq2seq.config import (METRIC_MODES, ModelConfig, OptimConfig, SchedulerConfig, SearchConfig,
                            ValidationConfig)
from seq2seq.data import Batch
from seq2seq.metrics import score_corpus
from seq2seq.model import Seq2Seq
from seq2seq.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer
from seq2seq.translator import Translator

log = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
    """Too many consecutive optimiser steps had a non-finite loss or gradients."""


def _rng_state() -> dict[str, Any]:
    """Global RNG states as plain containers (checkpoints load with weights_only=True)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            "python": [py_state[0], list(py_state[1]), py_state[2]]}


def _set_rng_state(states: list[dict[str, Any]] | dict[str, Any], rank: int) -> None:
    """Restore this rank's `_rng_state()` from a checkpoint's list of every rank's states. A rank the
    checkpoint has no state for (resumed on more processes than saved it; or a checkpoint from before
    states were kept per rank, which held rank 0's alone) derives a distinct one from rank 0's."""
    if isinstance(states, dict):
        states = [states]
    state = states[rank] if rank < len(states) else states[0]
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state((state["numpy"][0], np.array(state["numpy"][1], dtype=np.uint32), *state["numpy"][2:]))
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    if rank >= len(states):
        torch.manual_seed(int(torch.randint(0, 2**62, (1,))) + rank)

# The val/* metrics are logged after reducing (loss sums) and gathering (hypotheses) over all ranks, so
# they are already identical everywhere; Lightning's advice to add sync_dist=True does not apply, and
# averaging N equal float32 values is not exact for every N.
warnings.filterwarnings("ignore", message=r"It is recommended to use `self\.log\('val/")


def lr_factor(step: int, cfg: SchedulerConfig, total_steps: int, base_lr: float) -> float:
    """Multiplier of the peak learning rate at optimiser step `step` (0-based)."""
    step = step + 1
    warmup = max(cfg.warmup_steps, 0)
    if warmup and step <= warmup:
        return step / warmup
    if cfg.name == "constant":
        return 1.0
    floor = cfg.min_lr / base_lr
    if cfg.decay == "inverse_sqrt":
        return max(math.sqrt(max(warmup, 1) / step), floor)
    if cfg.decay in ("linear", "cosine"):
        if total_steps <= warmup:
            return 1.0
        progress = min((step - warmup) / (total_steps - warmup), 1.0)
        shape = 1.0 - progress if cfg.decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
        return floor + (1.0 - floor) * shape
    return 1.0


def precision_dtype(precision: str | int | None, device_type: str) -> torch.dtype | None:
    """Autocast dtype for decoding under a Trainer precision ('bf16-mixed' -> bfloat16, '32-true' -> None).
    Lightning runs '16-mixed' as bfloat16 on the CPU, so decoding there does too."""
    precision = str(precision)
    if precision.startswith("bf16") or (precision.startswith("16") and device_type == "cpu"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return None


def use_tensor_cores(device: torch.device) -> None:
    """On CUDA, let float32 matmuls and cuDNN (the RNNs, which run in float32 even under autocast, see
    `model.encoder.run_rnn`) use TF32 tensor cores: 10-bit mantissa products, float32 accumulation,
    the precision PyTorch picks for cuDNN convolutions by default. A no-op elsewhere."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True


class TranslationModule(pl.LightningModule):
    def __init__(
        self,
        model: ModelConfig,
        optim: OptimConfig,
        scheduler: SchedulerConfig,
        search: SearchConfig,
        validation: ValidationConfig,
        tokenizer: Tokenizer,
        run_config: dict[str, Any],
        max_bad_steps: int = 10,
    ):
        super().__init__()
        self.model = self.build_model(model, tokenizer)
        self.optim_cfg = optim
        self.sched_cfg = scheduler
        self.search_cfg = search
        self.val_cfg = validation
        self.tokenizer = tokenizer
        self.run_config = run_config  # stored in every checkpoint: translation needs nothing else
        # Reduce-on-plateau state (scheduler.name == plateau); saved in checkpoints.
        self.plateau = {"scale": 1.0, "best": None, "bad": 0}
        # Steps skipped for a non-finite loss or gradients: in total, and in a row (stop at max_bad_steps).
        self.max_bad_steps = max_bad_steps  # 0 = never stop
        self.skipped = {"total": 0, "consecutive": 0}
        self._skip_counts: torch.Tensor | None = None  # device-side skip counters (on_before_optimizer_step)
        self._grad_norm: torch.Tensor | None = None  # total gradient norm of this step, computed once
        self._val_sums = torch.zeros(3)  # nll sum, smoothed-loss sum, target tokens
        self._last_step_time: float | None = None

    def build_model(self, model: ModelConfig, tokenizer: Tokenizer) -> torch.nn.Module:
        """The trained network (a language model's module overrides this, `lm_module.py`)."""
        return Seq2Seq.from_config(model, src_vocab_size=tokenizer.src_vocab_size,
                                   tgt_vocab_size=tokenizer.tgt_vocab_size,
                                   pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID)

    # ------------------------------------------------------------------ loss
    def _losses(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (label-smoothed loss sum, NLL sum, target token count), padding ignored."""
        logits = self.model(batch.src, batch.src_lengths, batch.src_mask, batch.tgt_in)  # [B, T, V]
        log_probs = torch.log_softmax(logits.float(), dim=-1)  # [B, T, V], one pass for both losses
        nll_t = -log_probs.gather(2, batch.tgt_out.unsqueeze(2)).squeeze(2)  # [B, T]
        uniform_t = -log_probs.mean(dim=-1)  # [B, T]: cross-entropy against the uniform distribution
        eps = self.optim_cfg.label_smoothing  # the same smoothing as F.cross_entropy(label_smoothing=eps)
        mask = batch.tgt_mask  # [B, T], padding ignored
        smoothed = torch.where(mask, (1.0 - eps) * nll_t + eps * uniform_t, 0.0).sum()
        nll = torch.where(mask, nll_t, 0.0).sum().detach()
        return smoothed, nll, mask.sum()

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        smoothed, nll, tokens = self._losses(batch)
        # Normalised by the GLOBAL target-token count. DDP averages gradients over the W ranks, so rank
        # r's loss smoothed_r * W / sum_r tokens_r gives the gradient of sum_r smoothed_r / sum_r tokens_r:
        # exactly the single-process step over the union of the ranks' batches. The count's all-reduce is
        # queued on the device like a kernel (no host sync). Gradient accumulation (Lightning divides by
        # N = accumulate_grad_batches) stays per micro-batch: exact when the N micro-batches hold equal
        # token counts, otherwise each micro-batch's tokens weigh 1 / (N x its own global count).
        world, total = 1, tokens
        if self.trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            world, total = torch.distributed.get_world_size(), tokens.clone()
            torch.distributed.all_reduce(total)
        loss = smoothed * world / total
        n = len(batch)
        # A non-finite loss makes the gradients non-finite too; the update is then dropped in
        # on_before_optimizer_step. Logged values stay tensors: Lightning reads them every
        # log_every_n_steps (and the progress bar refreshes at that rate, see on_fit_start).
        self.log("train/loss", smoothed.detach() / tokens, prog_bar=True, batch_size=n)
        self.log("train/ppl", torch.exp(nll / tokens), batch_size=n)
        now = time.perf_counter()
        if self._last_step_time is not None:
            self.log("train/tgt_tokens_per_s", tokens.float() / (now - self._last_step_time), batch_size=n)
        self._last_step_time = now
        return loss

    def on_fit_start(self) -> None:
        use_tensor_cores(self.device)
        # Once, now that the parameters are on their device (and wrapped by DDP): not in every forward.
        self.model.flatten_parameters()
        # The progress bar shows the loss: refreshing it materialises the loss on the host (a sync), so
        # it refreshes when the loggers do, not every step.
        bar = self.trainer.progress_bar_callback
        if isinstance(bar, TQDMProgressBar) and bar.refresh_rate == 1:
            bar._refresh_rate = max(int(self.trainer.log_every_n_steps), 1)

    def on_before_optimizer_step(self, optimizer) -> None:
        """Skip the update (on all ranks) when a gradient is not finite; stop after too many.

        Sync-free: the decision stays on the device. A fused Adam takes it as `found_inf` (the GradScaler
        protocol: the kernel leaves parameters, moments and step count untouched), and the skip counters
        are device tensors read every log_every_n_steps (`_read_skip_counters`). No extra collective
        either: under DDP the gradients are already all-reduced, so every rank computes the same norm and
        decides alike; a rank's non-finite loss makes its gradients, hence everyone's, non-finite.
        """
        opt = getattr(optimizer, "optimizer", optimizer)
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        # One fused norm over all gradients: non-finite iff some gradient is; clipping reuses it.
        self._grad_norm = torch.nn.utils.get_total_norm(grads) if grads else None
        # Under a GradScaler (16-mixed), overflowing gradients are normal: the scaler skips those steps.
        if self._grad_norm is None or getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            opt.found_inf = None
            return
        bad = (~torch.isfinite(self._grad_norm)).float()  # [] 1.0 = skip this step
        if self._skip_counts is None:  # [skipped in total, current run, longest run since the last read]
            start = [self.skipped["total"], self.skipped["consecutive"], 0]  # a resumed run continues its run
            self._skip_counts = torch.tensor(start, dtype=torch.float32, device=bad.device)
        run = (self._skip_counts[1] + 1.0) * bad
        self._skip_counts = torch.stack([self._skip_counts[0] + bad, run, torch.maximum(self._skip_counts[2], run)])
        if opt.defaults.get("fused"):
            opt.found_inf = bad
        elif bool(bad):  # an optimiser that cannot skip on the device: one host read per step (free on the CPU)
            for p in self.parameters():
                p.grad = None  # optimisers leave parameters without gradients untouched
        self.log("train/skipped_steps", self._skip_counts[0], batch_size=1)

    def _read_skip_counters(self) -> int:
        """Copy the device-side skip counters to `self.skipped` (one small host read); -> the longest run
        of consecutive skipped steps since the previous read."""
        if self._skip_counts is None:
            return self.skipped["consecutive"]
        total, run, longest = (int(x) for x in self._skip_counts.tolist())
        if total > self.skipped["total"] and self.trainer.is_global_zero:
            log.warning("step %d: %d update(s) skipped for non-finite loss or gradients since the last report "
                        "(%d in total, %d in a row now)", self.global_step, total - self.skipped["total"], total, run)
        self.skipped.update(total=total, consecutive=run)
        self._skip_counts[2] = 0  # the current run lives on in [1]: it is counted again if it goes on
        return longest

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """Every log_every_n_steps: read the skip counters; after `max_bad_steps` skipped steps in a row,
        write last.ckpt and stop with a clear error."""
        if self.global_step % max(int(self.trainer.log_every_n_steps), 1):
            return
        longest = self._read_skip_counters()
        if not self.max_bad_steps or longest < self.max_bad_steps:
            return
        path = self._last_checkpoint_path()
        self.trainer.save_checkpoint(path)  # all ranks take part; rank 0 writes
        raise TrainingDivergedError(
            f"training stopped at step {self.global_step}: {longest} consecutive steps had "
            f"a non-finite loss or gradients (max_bad_steps={self.max_bad_steps}; {self.skipped['total']} skipped "
            f"in total). The last good state is in {path}. Lower optim.lr, clip gradients "
            "(trainer.gradient_clip_val), check the data, then resume with ckpt_path=last.")

    def _last_checkpoint_path(self) -> str:
        for cb in self.trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.dirpath:
                return str(Path(cb.dirpath) / f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}")
        return str(Path(self.trainer.default_root_dir) / "checkpoints" / "last.ckpt")

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Clip by norm to trainer.gradient_clip_val (if set) and log the norm either way."""
        params = [p for p in self.parameters() if p.grad is not None]  # none after a skipped step
        if not params:
            return
        norm = self._grad_norm if self._grad_norm is not None else torch.nn.utils.get_total_norm(
            [p.grad for p in params])
        if gradient_clip_val:
            torch.nn.utils.clip_grads_with_norm_(params, float(gradient_clip_val), norm)
        self.log("train/grad_norm", norm, batch_size=1)
        self._grad_norm = None

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self._val_sums = torch.zeros(3, device=self.device)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        smoothed, nll, tokens = self._losses(batch)
        self._val_sums += torch.stack([nll, smoothed.detach(), tokens.float()])

    def translator(self) -> Translator:
        dtype = precision_dtype(self._trainer.precision, self.device.type) if self._trainer is not None else None
        return Translator(self.model, self.tokenizer, self.search_cfg, device=self.device, dtype=dtype)

    def decode_split(self, sources: list[str]) -> list[str]:
        """Translate `sources`, sharded over ranks and gathered: every rank returns all hypotheses."""
        world, rank = self.trainer.world_size, self.trainer.global_rank
        mine = list(range(rank, len(sources), world))
        if world == 1:
            return [t.text for t in self.translator().translate([sources[i] for i in mine])]
        # Under DDP a rank that fails here (out of memory even for one sentence, ...) must not leave the
        # others waiting in the all_gather below until the collective times out: all ranks agree on
        # failure first, then every rank raises.
        error: BaseException | None = None
        try:
            texts = [t.text for t in self.translator().translate([sources[i] for i in mine])]
        except Exception as e:  # noqa: BLE001 -- re-raised below, after the ranks have agreed
            error = e
        failed = torch.tensor([float(error is not None)], device=self.device)
        failed = self.trainer.strategy.reduce(failed, reduce_op="sum")
        if error is not None:
            raise error
        if float(failed) > 0:
            raise RuntimeError(f"validation decoding failed on {int(failed)} other rank(s) "
                               "(their error is in their log); stopping this rank too")
        gathered: list[Any] = [None] * world
        torch.distributed.all_gather_object(gathered, list(zip(mine, texts)))
        out = [""] * len(sources)
        for part in gathered:
            for i, text in part:
                out[i] = text
        return out

    def on_validation_epoch_end(self) -> None:
        sums = self.trainer.strategy.reduce(self._val_sums, reduce_op="sum")
        nll, smoothed, tokens = (float(x) for x in sums)
        tokens = max(tokens, 1.0)
        metrics = {"loss": smoothed / tokens, "ppl": math.exp(min(nll / tokens, 100.0))}
        valid = self.trainer.datamodule.corpus.splits["valid"]
        limit = self.val_cfg.max_sentences or len(valid.src_text)
        hyps = self.decode_split(valid.src_text[:limit])
        scores = score_corpus(hyps, [valid.tgt_text[:limit]])
        metrics.update(bleu=scores["bleu"], chrf=scores["chrf"], ter=scores["ter"])
        for name, value in metrics.items():
            self.log(f"val/{name}", value, prog_bar=name in ("bleu", "ppl"), batch_size=1)
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            log.info("step %d: val BLEU %.2f chrF %.2f TER %.2f ppl %.2f (%s)", self.global_step,
                     metrics["bleu"], metrics["chrf"], metrics["ter"], metrics["ppl"],
                     scores["signature"]["bleu"])
        if not self.trainer.sanity_checking:  # an untrained model's score is no plateau baseline
            self._update_plateau(metrics[self.val_cfg.metric])

    def _update_plateau(self, value: float) -> None:
        if self.sched_cfg.name != "plateau":
            return
        best = self.plateau["best"]
        better = best is None or (value > best if METRIC_MODES[self.val_cfg.metric] == "max" else value < best)
        if better:
            self.plateau.update(best=value, bad=0)
            return
        self.plateau["bad"] += 1
        if self.plateau["bad"] > self.sched_cfg.plateau_patience:
            self.plateau.update(scale=self.plateau["scale"] * self.sched_cfg.plateau_factor, bad=0)
            log.info("validation %s has not improved: learning rate scaled by %.4g",
                     self.val_cfg.metric, self.plateau["scale"])

    # ------------------------------------------------------------------ optimiser
    def configure_optimizers(self):
        cfg = self.optim_cfg
        cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
        # Fused: one kernel for the whole update instead of a few per parameter group, and it skips a
        # non-finite step on the device (`found_inf`, see on_before_optimizer_step). Not under a
        # GradScaler: Lightning then leaves unscaling to the optimiser, after our gradient clipping.
        plugin = self._trainer.precision_plugin if self._trainer is not None else None  # None: built alone
        fused = self.device.type in ("cuda", "cpu") and getattr(plugin, "scaler", None) is None
        optimizer = cls(self.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                        fused=fused or None)
        total = self.sched_cfg.total_steps
        if not total and self.sched_cfg.decay in ("linear", "cosine"):
            total = int(self.trainer.estimated_stepping_batches)  # max_steps, or epochs x batches

        def factor(step: int) -> float:  # warm-up and decay, times the plateau reductions (if any)
            return lr_factor(step, self.sched_cfg, total, cfg.lr) * self.plateau["scale"]

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[PAYLOAD_KEY] = make_payload(self.run_config, self.tokenizer)
        checkpoint[PAYLOAD_KEY]["plateau"] = dict(self.plateau)
        skipped = dict(self.skipped)
        if self._skip_counts is not None:  # the device counters are ahead of self.skipped between reads
            total, run, _ = (int(x) for x in self._skip_counts.tolist())
            skipped.update(total=total, consecutive=run)
        checkpoint[PAYLOAD_KEY]["skipped"] = skipped
        # Every rank's RNG state, so that dropout continues exactly where it was on every rank. Only rank 0
        # writes the file, but this hook runs on all ranks (Trainer.save_checkpoint is a collective call).
        states = [_rng_state()]
        if self._trainer is not None and self.trainer.world_size > 1:
            states = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(states, _rng_state())
        checkpoint[PAYLOAD_KEY]["rng"] = states

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        plateau = checkpoint.get(PAYLOAD_KEY, {}).get("plateau")
        if plateau:
            self.plateau = dict(plateau)
        payload = checkpoint.get(PAYLOAD_KEY, {})
        if payload.get("skipped"):
            self.skipped = dict(payload["skipped"])
            self._skip_counts = None  # rebuilt from self.skipped at the next step
        if payload.get("rng") and self._trainer is not None:  # resuming a run (not a plain weights load)
            _set_rng_state(payload["rng"], self.trainer.global_rank)
