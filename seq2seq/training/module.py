"""LightningModule: training steps (loss in `training.loss`, skipped steps in `callbacks.StepGuard`), the
optimiser and its schedule (`training.schedule`), and validation with BLEU.

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
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import TQDMProgressBar

from seq2seq.checkpoint.format import PAYLOAD_KEY, make_payload
from seq2seq.config import ModelConfig, OptimConfig, SchedulerConfig, SearchConfig, ValidationConfig
from seq2seq.data.batching import Batch
from seq2seq.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer
from seq2seq.decoding.translator import Translator
from seq2seq.evaluation.metrics import score_corpus
from seq2seq.model import Seq2Seq
from seq2seq.model.precision import precision_dtype
from seq2seq.training.callbacks import StepGuard
from seq2seq.training.loss import label_smoothed_nll
from seq2seq.training.schedule import WarmupDecayPlateau

log = logging.getLogger(__name__)


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
        max_oom_steps: int = 3,
    ):
        super().__init__()
        self.model = self.build_model(model, tokenizer)
        self.optim_cfg = optim
        self.sched_cfg = scheduler
        self.search_cfg = search
        self.val_cfg = validation
        self.tokenizer = tokenizer
        self.run_config = run_config  # stored in every checkpoint: translation needs nothing else
        self.step_guard = StepGuard(max_bad_steps, max_oom_steps)  # skips non-finite / out-of-memory steps
        self._val_sums = torch.zeros(3)  # nll sum, smoothed-loss sum, target tokens
        self._last_step_time: float | None = None
        # The run's optimizer steps, for a schedule that decays to its end (set by training.run.train,
        # which counts them without building the training loader early; None: Lightning's estimate).
        self.stepping_batches: int | float | None = None

    def configure_callbacks(self) -> list[pl.Callback]:
        return [self.step_guard]  # every run has the guard, whatever its callbacks config

    def build_model(self, model: ModelConfig, tokenizer: Tokenizer) -> torch.nn.Module:
        """The trained network (a language model's module overrides this, `seq2seq.lm.module`)."""
        return Seq2Seq(model, src_vocab_size=tokenizer.src_vocab_size, tgt_vocab_size=tokenizer.tgt_vocab_size,
                       pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID)

    # ------------------------------------------------------------------ training
    def _losses(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (label-smoothed loss sum, NLL sum, target token count), padding ignored."""
        logits = self.model(batch.src, batch.src_lengths, batch.src_mask, batch.tgt_in)  # [B, T, V]
        return label_smoothed_nll(logits, batch.tgt_out, batch.tgt_mask, self.optim_cfg.label_smoothing,
                                  self.smoothing_excluded())

    def smoothing_excluded(self) -> tuple[int, ...]:
        """Ids that label smoothing gives no mass (PAD and BOS are never a next token), or none."""
        return (PAD_ID, BOS_ID) if self.optim_cfg.smooth_real_tokens_only else ()

    def _out_of_memory(self, where: str) -> torch.Tensor:
        """After this rank's step ran out of memory: report it, release the allocator's cache, and return a
        loss over every parameter whose gradients are NaN, so that the step guard skips the update. Under
        DDP the gradients' all-reduce carries the NaN to the other ranks, which skip it too, and every
        rank still takes part in the same collectives."""
        self.step_guard.out_of_memory()
        log.warning("step %d: out of memory in the %s pass on rank %d: the step is skipped (a smaller "
                    "batching.max_tokens avoids it)", self.global_step, where, self.global_rank)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return sum(p.reshape(-1)[0] for p in self.parameters()) * float("nan")

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        try:
            smoothed, nll, tokens = self._losses(batch)
        except torch.OutOfMemoryError:
            smoothed = None  # leaving the handler frees the exception's frames, which hold the activations
        out_of_memory = smoothed is None
        if out_of_memory:
            smoothed = self._out_of_memory("forward")
            nll, tokens = smoothed.detach(), torch.zeros((), dtype=torch.long, device=self.device)
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
        if out_of_memory:  # nothing to log: no loss was computed, and this step's time is no throughput
            self._last_step_time = None
            return loss
        n = len(batch)
        # A non-finite loss makes the gradients non-finite too; the step guard then drops the update.
        # Logged values stay tensors: Lightning reads them every log_every_n_steps (and the progress bar
        # refreshes at that rate, see on_fit_start).
        self.log("train/loss", smoothed.detach() / tokens, prog_bar=True, batch_size=n)
        self.log("train/ppl", torch.exp(nll / tokens), batch_size=n)
        now = time.perf_counter()
        if self._last_step_time is not None:
            self.log("train/tgt_tokens_per_s", tokens.float() / (now - self._last_step_time), batch_size=n)
        self._last_step_time = now
        return loss

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """Lightning's backward, except that a step running out of memory here is skipped. With one process
        only: under DDP the other ranks are already inside the gradient all-reduce, which this rank cannot
        rejoin, so the run stops with a message instead."""
        try:
            super().backward(loss, *args, **kwargs)
            return
        except torch.OutOfMemoryError:
            if self.trainer.world_size > 1:
                raise RuntimeError(f"out of memory in the backward pass at step {self.global_step} on rank "
                                   f"{self.global_rank}: under DDP such a step cannot be skipped; set a smaller "
                                   "batching.max_tokens and resume with ckpt_path=last") from None
        for p in self.parameters():
            p.grad = None  # whatever the interrupted pass had accumulated
        self._out_of_memory("backward").backward()

    def on_fit_start(self) -> None:
        use_tensor_cores(self.device)
        # Once, now that the parameters are on their device (and wrapped by DDP): not in every forward.
        self.model.flatten_parameters()
        # The progress bar shows the loss: refreshing it materialises the loss on the host (a sync), so
        # it refreshes when the loggers do, not every step.
        bar = self.trainer.progress_bar_callback
        if isinstance(bar, TQDMProgressBar) and bar.refresh_rate == 1:
            bar._refresh_rate = max(int(self.trainer.log_every_n_steps), 1)

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
            # Already equal on every rank (loss sums reduced, hypotheses gathered): the maximum over the
            # ranks keeps them exact, where Lightning's default mean of N equal float32 values may not.
            self.log(f"val/{name}", value, prog_bar=name in ("bleu", "ppl"), batch_size=1,
                     sync_dist=True, reduce_fx="max")
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            log.info("step %d: val BLEU %.2f chrF %.2f TER %.2f ppl %.2f (%s)", self.global_step,
                     metrics["bleu"], metrics["chrf"], metrics["ter"], metrics["ppl"],
                     scores["signature"]["bleu"])
        scheduler = self.lr_schedulers()  # None under trainer.validate()
        if self.trainer.sanity_checking or scheduler is None:  # an untrained model's score is no plateau baseline
            return
        if scheduler.observe(metrics[self.val_cfg.metric]):
            log.info("validation %s has not improved: learning rate scaled by %.4g",
                     self.val_cfg.metric, scheduler.plateau["scale"])

    # ------------------------------------------------------------------ optimiser
    def configure_optimizers(self):
        cfg = self.optim_cfg
        cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
        # Fused: one kernel for the whole update instead of a few per parameter group; it skips a
        # non-finite step on the device (`found_inf`, see StepGuard) and takes its rate as a device tensor,
        # which the schedule fills on the device. Not under a GradScaler: Lightning then leaves unscaling
        # to the optimiser, after gradient clipping.
        plugin = self._trainer.precision_plugin if self._trainer is not None else None  # None: built alone
        fused = self.device.type in ("cuda", "cpu") and getattr(plugin, "scaler", None) is None
        lr = torch.tensor(cfg.lr, device=self.device) if fused else cfg.lr
        optimizer = cls(self.parameters(), lr=lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                        fused=fused or None)
        total = self.sched_cfg.total_steps
        if not total and self.sched_cfg.decay in ("linear", "cosine"):
            steps = self.stepping_batches
            total = int(self.trainer.estimated_stepping_batches if steps is None else steps)  # max_steps, or epochs x batches
        scheduler = WarmupDecayPlateau(optimizer, self.sched_cfg, total, self.val_cfg.metric)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # Lightning's mixed-precision plugin refuses to clip for any optimiser that "unscales internally"
        # (a fused Adam), even under bf16-mixed where there is no GradScaler and so nothing to unscale.
        # The Adam is fused only without a scaler (configure_optimizers), so its gradients are the real
        # ones here and the clip is the plain one Lightning would do: sync-free, on the device.
        if not gradient_clip_val or not getattr(optimizer, "defaults", {}).get("fused"):
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        if gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(self.parameters(), gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(self.parameters(), gradient_clip_val)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[PAYLOAD_KEY] = make_payload(self.run_config, self.tokenizer)
        # Every rank's RNG state, so that dropout continues exactly where it was on every rank. Only rank 0
        # writes the file, but this hook runs on all ranks (Trainer.save_checkpoint is a collective call).
        states = [_rng_state()]
        if self._trainer is not None and self.trainer.world_size > 1:
            states = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(states, _rng_state())
        checkpoint[PAYLOAD_KEY]["rng"] = states

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        payload = checkpoint.get(PAYLOAD_KEY, {})
        # Checkpoints from before schedule.py and StepGuard kept the plateau state and the skip counts in
        # the payload; Lightning restores the scheduler's and the callbacks' states after this hook.
        for state in checkpoint.get("lr_schedulers", []):
            state.setdefault("plateau", payload.get("plateau", {}))
        if "skipped" in payload and "callbacks" in checkpoint:
            checkpoint["callbacks"].setdefault(StepGuard.__qualname__, payload["skipped"])
        if payload.get("rng") and self._trainer is not None:  # resuming a run (not a plain weights load)
            _set_rng_state(payload["rng"], self.trainer.global_rank)
