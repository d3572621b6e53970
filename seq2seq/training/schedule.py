"""The learning-rate schedule: warm-up, then decay, times the reductions on validation plateaus.

The rate of an update is `optim.lr x lr_factor(n) x scale`, where n counts the updates the optimiser
has applied (a step skipped for a non-finite loss or for lack of memory does not advance the schedule)
and `scale` is the product of the plateau reductions so far.

Why not Lightning's own `ReduceLROnPlateau` wiring: torch's plateau scheduler lowers the rate in the
optimiser's parameter groups, which a step-wise schedule (warm-up, decay) overwrites at its next
step; and Lightning steps it at epoch ends or every N batches of an epoch, not after each validation,
which runs every `trainer.val_check_interval` steps here. So one scheduler does both; Lightning still
steps it after every optimiser step and keeps its state (plateau included) in the checkpoints.
"""

from __future__ import annotations

import math

import torch

from seq2seq.config import METRIC_MODES, SchedulerConfig


def lr_factor(step, cfg: SchedulerConfig, total_steps: int, base_lr: float):
    """Multiplier of the peak learning rate for update `step` (0-based: the number of updates applied
    before it). `step` is a number or a 0-dim tensor; for a tensor the result is a tensor on its device,
    computed without reading it back."""
    is_tensor = torch.is_tensor(step)
    n = (step if is_tensor else torch.tensor(float(step), dtype=torch.float64)) + 1
    warmup = max(cfg.warmup_steps, 0)
    floor = cfg.min_lr / base_lr
    after = torch.ones_like(n)  # after warm-up: constant, or decay == "none"
    if cfg.name != "constant" and cfg.decay == "inverse_sqrt":
        after = torch.clamp(torch.sqrt(max(warmup, 1) / n), min=floor)
    elif cfg.name != "constant" and cfg.decay in ("linear", "cosine") and total_steps > warmup:
        progress = torch.clamp((n - warmup) / (total_steps - warmup), max=1.0)
        shape = 1.0 - progress if cfg.decay == "linear" else 0.5 * (1.0 + torch.cos(math.pi * progress))
        after = floor + (1.0 - floor) * shape
    factor = torch.where(n <= warmup, n / max(warmup, 1), after) if warmup else after
    return factor if is_tensor else float(factor)


class WarmupDecayPlateau(torch.optim.lr_scheduler.LRScheduler):
    """`lr_factor` of the applied updates, times the plateau scale (scheduler.name == plateau).

    Stepped by Lightning after every optimiser step (interval "step"); `observe` is called after every
    validation. The count of applied updates is the optimiser's own per-parameter `step` (Adam keeps it;
    a skipped update leaves it unchanged). A fused Adam keeps it on the parameters' device and takes its
    rate as a device tensor, so the schedule then runs on the device too: no host read per step.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, total_steps: int, metric: str):
        self.cfg = cfg
        self.total_steps = total_steps
        self.peak = float(optimizer.defaults["lr"])
        self.mode = METRIC_MODES[metric]
        self.plateau = {"scale": 1.0, "best": None, "bad": 0}
        super().__init__(optimizer)

    def applied_updates(self):
        """Updates the optimiser has applied so far: a tensor (on the device for a fused Adam) or 0."""
        first = self.optimizer.param_groups[0]["params"][0]
        return self.optimizer.state.get(first, {}).get("step", 0)

    def get_lr(self) -> list:
        factor = lr_factor(self.applied_updates(), self.cfg, self.total_steps, self.peak) * self.plateau["scale"]
        lrs = []
        for group in self.optimizer.param_groups:
            if torch.is_tensor(group["lr"]):  # fused: a device tensor, filled in place
                lrs.append(self.peak * torch.as_tensor(factor, device=group["lr"].device))
            else:  # the optimiser's count is then a CPU tensor: reading it waits for nothing
                lrs.append(self.peak * float(factor))
        return lrs

    def observe(self, value: float) -> bool:
        """After a validation scoring `value`: count it against the plateau; -> whether the rate was cut
        (it applies from the next update on)."""
        if self.cfg.name != "plateau":
            return False
        best = self.plateau["best"]
        if best is None or (value > best if self.mode == "max" else value < best):
            self.plateau.update(best=value, bad=0)
            return False
        self.plateau["bad"] += 1
        if self.plateau["bad"] <= self.cfg.plateau_patience:
            return False
        self.plateau.update(scale=self.plateau["scale"] * self.cfg.plateau_factor, bad=0)
        return True

    def state_dict(self) -> dict:
        """Plain numbers only (checkpoints load with weights_only=True); the settings come from the config."""
        return {"last_epoch": self.last_epoch, "plateau": dict(self.plateau)}

    def load_state_dict(self, state: dict) -> None:
        self.last_epoch = int(state["last_epoch"])
        self.plateau.update(state.get("plateau", {}))
        # Lightning restores the optimiser first, with the rates as saved: as a tensor on the CPU, or as a
        # number (written by another kind of optimiser). A fused Adam gets a tensor beside its parameters
        # again (else every update reads it across devices), any other optimiser a number.
        fused = self.optimizer.defaults.get("fused")
        for group in self.optimizer.param_groups:
            device = group["params"][0].device
            lr = group["lr"]
            group["lr"] = torch.as_tensor(lr, dtype=torch.float32, device=device) if fused else float(lr)
