"""Training features the README lists, each shown to act (not merely to be accepted by the config):
the plateau schedule and its state on resume, label smoothing's value, AdamW's decoupled decay,
gradient clipping, gradient accumulation, the TensorBoard logger, loss scaling under fp16 autocast,
and `max_bad_steps` ending the console script with exit status 3.

Each test names in its docstring the mutation of the code it guards that makes it fail (each was
applied once and seen to fail). All run a tiny model on the toy pair of conftest: seconds each.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F

from seq2seq.config import (BatchingConfig, DataConfig, ModelConfig, OptimConfig, SchedulerConfig, SearchConfig,
                            ValidationConfig, section)
from seq2seq.data.datamodule import TranslationDataModule
from seq2seq.training.module import TranslationModule
from seq2seq.training.run import train
from seq2seq.training.trainer import run_config
from seq2seq.data.tokenizer import BOS_ID, PAD_ID

from .helpers import TINY, compose_train, learn, read_metrics, require, run_script, series

# Short decodes and a small validation set: validation here is plumbing, not quality.
QUICK = ["test_after_training=false", "data.max_valid_pairs=4", "search.max_len_a=2", "search.max_len_b=0.5",
         "callbacks.early_stopping.patience=50"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """One prepared-data cache (sentencepiece model, encoded splits) shared by this module's runs."""
    return tmp_path_factory.mktemp("features") / "data"


def overrides(root, data_dir, steps: int, val_every: int, *extra: str) -> list[str]:
    return [*TINY, *learn(root, steps, val_every), f"paths.data_dir={data_dir}", *QUICK, *extra]


def build(cfg) -> tuple[TranslationModule, TranslationDataModule]:
    """The module and data module exactly as `train(cfg)` builds them."""
    datamodule = TranslationDataModule(section(DataConfig, cfg.data, "data"),
                                       section(BatchingConfig, cfg.batching, "batching"), seed=cfg.seed)
    datamodule.setup("fit")
    module = TranslationModule(section(ModelConfig, cfg.model, "model"), section(OptimConfig, cfg.optim, "optim"),
                               section(SchedulerConfig, cfg.scheduler, "scheduler"),
                               section(SearchConfig, cfg.search, "search"),
                               section(ValidationConfig, cfg.validation, "validation"),
                               tokenizer=datamodule.tokenizer, run_config=run_config(cfg),
                               max_bad_steps=cfg.max_bad_steps)
    return module, datamodule


def plain_trainer(root, **kw) -> pl.Trainer:
    """A quiet one-process CPU Trainer writing (if anything) under `root`."""
    return pl.Trainer(accelerator="cpu", devices=1, default_root_dir=root, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False, **kw)


def plateau_state(run_dir) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["lr_schedulers"][0]["plateau"]


def lrs(run_dir) -> dict[int, float]:
    return {int(r["step"]): float(r["lr-Adam"]) for r in read_metrics(run_dir) if r.get("lr-Adam")}


# ------------------------------------------------------------------------------------ plateau
def test_plateau_scheduler_reduces_the_lr_and_resumes_its_state(learnable_corpus, data_dir, tmp_path):
    """scheduler=plateau halves the learning rate after each validation without improvement
    (plateau_patience=0), and a resumed run continues from the reduced rate and the best score so far.
    The learning rate is so small (1e-12) that the weights do not change: BLEU never improves.
    Mutations that make it fail: WarmupDecayPlateau.observe returning False at once (no reduction);
    WarmupDecayPlateau.load_state_dict not restoring `self.plateau` (the resumed run restarts at the full rate)."""
    base = 1e-12
    args = overrides(learnable_corpus, data_dir, 6, 2, "scheduler=plateau", "scheduler.warmup_steps=0",
                     "scheduler.plateau_patience=0", "scheduler.plateau_factor=0.5", f"optim.lr={base}",
                     "validation.metric=bleu")
    run_dir = tmp_path / "run"
    train(compose_train(args, run_dir))
    first = lrs(run_dir)
    # validations at steps 2, 4, 6: the first sets the best score, the next two each halve the rate
    assert sorted(first) == list(range(6))
    # (the rate logged at a step was set before the validation that ended the previous step)
    assert [first[s] / base for s in range(6)] == pytest.approx([1, 1, 1, 1, 1, 0.5])
    assert plateau_state(run_dir)["scale"] == 0.25

    # seq2seq-train hydra.run.dir=<run> ckpt_path=last trainer.max_steps=8: one more validation, one more halving
    train(compose_train([*args, "trainer.max_steps=8", "ckpt_path=last"], run_dir))
    resumed = lrs(run_dir)
    # step 6 runs at the rate saved in the scheduler's state, step 7 at the restored plateau scale (a run
    # that forgot it would be back at 1e-12)
    assert [resumed[s] / base for s in (6, 7)] == pytest.approx([0.5, 0.25])
    assert plateau_state(run_dir)["scale"] == 0.125


# ------------------------------------------------------------------------------ label smoothing
@pytest.mark.parametrize("real_only", [False, True])
def test_label_smoothing_value_is_applied(learnable_corpus, data_dir, tmp_path, real_only):
    """val/loss is the label-smoothed cross-entropy with optim.label_smoothing's value (computed here
    on the model's own logits: F.cross_entropy's, or with smooth_real_tokens_only the uniform part over
    the vocabulary less PAD and BOS), and val/ppl the plain one.
    Mutations that make it fail: TranslationModule._losses using eps = 0.0 instead of the config value;
    `smoothing_excluded` ignoring the key (either way)."""
    eps = 0.3
    cfg = compose_train(overrides(learnable_corpus, data_dir, 2, 2, f"optim.label_smoothing={eps}",
                                  f"optim.smooth_real_tokens_only={real_only}",
                                  "validation.max_sentences=2"), tmp_path)
    module, datamodule = build(cfg)
    # far from uniform output: smoothing changes the loss a lot
    plain_trainer(tmp_path, max_steps=60, limit_val_batches=0).fit(module, datamodule=datamodule)
    (logged,) = plain_trainer(tmp_path).validate(module, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in logged.items()}
    smoothed = nll = tokens = 0.0
    module.eval()
    with torch.no_grad():
        for batch in datamodule.val_dataloader():
            logits = module.model(batch.src, batch.src_lengths, batch.src_mask, batch.tgt_in)  # [B, T, V]
            mask = batch.tgt_mask.flatten()
            flat, gold = logits.flatten(0, 1)[mask].float(), batch.tgt_out.flatten()[mask]
            token_nll = F.cross_entropy(flat, gold, reduction="sum")
            if real_only:
                log_probs = flat.log_softmax(-1)
                real = torch.ones(flat.size(-1), dtype=torch.bool)
                real[[PAD_ID, BOS_ID]] = False
                uniform = -log_probs[:, real].mean(-1).sum()
                smoothed += float((1 - eps) * token_nll + eps * uniform)
            else:
                smoothed += float(F.cross_entropy(flat, gold, label_smoothing=eps, reduction="sum"))
            nll += float(token_nll)
            tokens += int(mask.sum())
    assert metrics["val/loss"] == pytest.approx(smoothed / tokens, rel=1e-5)
    assert metrics["val/ppl"] == pytest.approx(math.exp(nll / tokens), rel=1e-5)
    assert abs(smoothed - nll) / tokens > 0.05  # the smoothing makes a difference the check can see


def test_smoothing_over_real_tokens_puts_no_target_mass_on_pad_or_bos():
    """The smoothed loss's gradient w.r.t. the logits is softmax - q, q the target distribution it pulls
    towards: q(PAD) = q(BOS) = 0 and every other wrong piece eps / (V - 2). Mutation: dropping the
    exclusion in `label_smoothed_nll` gives q(PAD) = eps / V."""
    from seq2seq.training.loss import label_smoothed_nll

    V, eps, gold = 12, 0.2, 7
    logits = torch.randn(1, 1, V, requires_grad=True)
    target, mask = torch.tensor([[gold]]), torch.tensor([[True]])
    loss, _, _ = label_smoothed_nll(logits, target, mask, eps, excluded=(PAD_ID, BOS_ID))
    loss.backward()
    q = (logits.softmax(-1) - logits.grad)[0, 0].detach()  # [V]
    assert q[PAD_ID] == pytest.approx(0.0, abs=1e-6) and q[BOS_ID] == pytest.approx(0.0, abs=1e-6)
    assert q[gold] == pytest.approx(1 - eps + eps / (V - 2), abs=1e-6)
    others = [i for i in range(V) if i not in (PAD_ID, BOS_ID, gold)]
    assert torch.allclose(q[others], torch.full((len(others),), eps / (V - 2)), atol=1e-6)
    assert float(q.sum()) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("excluded", [(), (PAD_ID, BOS_ID)], ids=["all", "real-only"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_written_out_loss_gradient_is_autograds(excluded, dtype):
    """`label_smoothed_nll` writes its backward out (softmax - q, one fused pass per step): it must equal
    autograd's gradient of the plain formula, padding positions included (zero), under an outer scale,
    and come back in the logits' dtype. Mutations that make it fail: dropping the mask from the
    backward; scattering +(1 - eps) at the gold id; ignoring the incoming gradient."""
    from seq2seq.training.loss import label_smoothed_nll

    def plain(logits, target, mask, eps):
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        nll_t = -log_probs.gather(2, target.unsqueeze(2)).squeeze(2)
        kept = [i for i in range(logits.size(-1)) if i not in excluded]
        uniform_t = -log_probs[..., kept].mean(dim=-1)
        return torch.where(mask, (1 - eps) * nll_t + eps * uniform_t, 0.0).sum()

    torch.manual_seed(0)
    logits = torch.randn(3, 5, 13).to(dtype).requires_grad_()
    target = torch.randint(2, 13, (3, 5))
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2, [True] + [False] * 4])
    loss, nll, count = label_smoothed_nll(logits, target, mask, 0.1, excluded)
    (2.5 * loss).backward()
    ours, logits.grad = logits.grad, None
    (2.5 * plain(logits, target, mask, 0.1)).backward()
    assert ours.dtype == dtype and not nll.requires_grad and int(count) == 9
    assert float(loss) == pytest.approx(float(plain(logits, target, mask, 0.1)), rel=1e-6)
    assert torch.allclose(ours.float(), logits.grad.float(), atol=1e-6)
    assert ours[1, 3:].abs().sum() == 0 and ours[2, 1:].abs().sum() == 0


# ------------------------------------------------------------------------------------- AdamW
def test_adamw_decays_weights_decoupled_from_the_gradient(learnable_corpus, data_dir, tmp_path):
    """optim=adamw: with zero gradients a step only shrinks each weight by lr * weight_decay
    (decoupled decay), where Adam's L2 decay (optim=adam with the same weight_decay) moves it by
    about lr, whatever its size. Mutation that makes it fail: configure_optimizers always building
    torch.optim.Adam."""
    moved = {}
    for name in ("adamw", "adam"):
        cfg = compose_train(overrides(learnable_corpus, data_dir, 2, 2, f"optim={name}", "optim.weight_decay=0.01",
                                      "optim.lr=0.1", "scheduler.warmup_steps=0"), tmp_path / name)
        module, _ = build(cfg)
        optimizer = module.configure_optimizers()["optimizer"]
        before = [p.detach().clone() for p in module.parameters()]
        for p in module.parameters():
            p.grad = torch.zeros_like(p)
        optimizer.step()
        lr = optimizer.param_groups[0]["lr"]
        assert lr == pytest.approx(0.1)
        moved[name] = all(torch.allclose(p, b * (1 - lr * 0.01), rtol=0, atol=1e-7)
                          for p, b in zip(module.parameters(), before))
    assert moved == {"adamw": True, "adam": False}


# ----------------------------------------------------------------------------- gradient clipping
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_gradient_clipping_bounds_the_norm_the_optimizer_sees(learnable_corpus, data_dir, tmp_path, monkeypatch,
                                                             precision):
    """trainer.gradient_clip_val=0.01: every update uses gradients of total norm <= 0.01, while the
    logged (pre-clipping) norm is larger; the norm is logged by StepGuard. Under bf16-mixed the Adam is
    fused (no GradScaler), which Lightning's mixed-precision plugin refuses to clip for: the module clips
    itself (the first GPU check failed here). Mutations that make it fail: a
    TranslationModule.configure_gradient_clipping that only logs; one that defers to Lightning always."""
    seen: list[float] = []
    original = torch.optim.Adam.step

    def step(self, closure=None):
        def recorded():
            loss = closure()  # forward, backward and clipping happen inside Lightning's closure
            grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
            seen.append(float(torch.nn.utils.get_total_norm(grads)))
            return loss
        return original(self, recorded if closure is not None else None)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    # A GRU under bf16: the CPU runs an LSTM in bf16 only with AVX512-BF16, which not every machine has.
    cell = ["model.cell=gru"] if precision == "bf16-mixed" else []
    train(compose_train(overrides(learnable_corpus, data_dir, 3, 3, "trainer.gradient_clip_val=0.01",
                                           f"trainer.precision={precision}", *cell), tmp_path))
    logged = series(read_metrics(tmp_path), "train/grad_norm")
    assert len(seen) == 3 and len(logged) == 3
    assert min(logged) > 0.05  # clipping had work to do
    assert max(seen) <= 0.01 * (1 + 1e-4), seen


# --------------------------------------------------------------------------- gradient accumulation
class AccumulationProbe(pl.Callback):
    """Records, per training batch, whether gradients from an earlier batch were still there when its
    backward began (accumulation keeps them until the optimiser step)."""

    def __init__(self):
        self.carried: list[bool] = []

    def on_before_backward(self, trainer, pl_module, loss):
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.carried.append(bool(grads) and any(bool(g.abs().sum() > 0) for g in grads))


def test_gradient_accumulation_steps_once_per_n_batches(learnable_corpus, data_dir, tmp_path, monkeypatch):
    """trainer.accumulate_grad_batches=2 with trainer.max_steps=3: 6 batches, 3 optimiser updates, and
    each update's gradient holds both of its batches. Mutation that makes it fail: train() building the
    Trainer with accumulate_grad_batches=1 whatever the config says."""
    probe = AccumulationProbe()
    original = TranslationModule.configure_callbacks

    def configure_callbacks(self):
        return [*(original(self) or []), probe]

    monkeypatch.setattr(TranslationModule, "configure_callbacks", configure_callbacks)
    train(compose_train(overrides(learnable_corpus, data_dir, 3, 3, "trainer.accumulate_grad_batches=2"), tmp_path))
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 3
    assert {int(s["step"]) for s in last["optimizer_states"][0]["state"].values()} == {3}
    assert probe.carried == [False, True] * 3


# ----------------------------------------------------------------------------------- TensorBoard
def test_tensorboard_logger_writes_the_training_curves(learnable_corpus, data_dir, tmp_path):
    """logger=tensorboard: event files under <run>/tensorboard/ hold the same train/loss and val/bleu
    as the CSV log. Mutation that makes it fail: conf/logger/tensorboard.yaml without its tensorboard
    entry (CSV only)."""
    require("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(compose_train(overrides(learnable_corpus, data_dir, 4, 2, "logger=tensorboard"), tmp_path))
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    csv_rows = read_metrics(tmp_path)
    for tag in ("train/loss", "val/bleu"):
        got = [e.value for e in acc.Scalars(tag)]
        assert got == pytest.approx(series(csv_rows, tag), rel=1e-6), tag
    assert len(acc.Scalars("train/loss")) == 4


# ------------------------------------------------------------------------ fp16 loss scaling
def test_fp16_loss_scaling_skips_overflow_steps_without_counting_them_as_bad(learnable_corpus, data_dir,
                                                                            tmp_path, monkeypatch):
    """Under 16-mixed a GradScaler scales the loss; a step whose gradients overflow is the scaler's
    to skip (it lowers the scale), not a bad step of max_bad_steps. On a GPU Lightning's `16-mixed`
    brings the scaler; the CPU has no fp16 AMP in Lightning (it runs 16-mixed as bf16), so this test
    gives the Trainer the same plugin explicitly: MixedPrecision('16-mixed', 'cpu', GradScaler('cpu')).
    Mutation that makes it fail: StepGuard.on_before_optimizer_step counting non-finite gradients also when the
    precision plugin has a scaler (the run then stops with max_bad_steps=1)."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    # GRU: oneDNN has no fp16 LSTM on most CPUs
    cfg = compose_train(overrides(learnable_corpus, data_dir, 3, 3, "max_bad_steps=1", "model.cell=gru"), tmp_path)
    module, datamodule = build(cfg)

    def on_after_backward(self):
        if self.global_step == 1:  # an overflow, as fp16 gradients have while the scale is too high
            next(self.parameters()).grad.fill_(float("inf"))

    monkeypatch.setattr(TranslationModule, "on_after_backward", on_after_backward, raising=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    trainer = plain_trainer(tmp_path, max_steps=3, limit_val_batches=0, gradient_clip_val=1.0,
                            plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 3
    assert scaler.get_scale() < 2.0**10  # the overflow lowered the scale
    adam_steps = {int(s["step"]) for s in trainer.optimizers[0].state.values()}
    assert adam_steps == {2}  # the scaler skipped the overflowing update
    assert module.step_guard.skipped["total"] == 0


# ------------------------------------------------------------------------------ max_bad_steps
def test_max_bad_steps_ends_the_console_script_with_status_3(learnable_corpus, tmp_path):
    """A learning rate of 1e30 makes every step after the first non-finite: with max_bad_steps=2,
    `seq2seq-train` writes last.ckpt, says why on stderr and exits with status 3 (2 is for usage errors).
    Mutation that makes it fail: train.hydra_main exiting with 1 instead of 3 on TrainingDivergedError."""
    run_dir = tmp_path / "run"
    proc = run_script("train", *overrides(learnable_corpus, tmp_path / "data", 20, 10, "optim.lr=1e30",
                                          "scheduler.warmup_steps=0", "max_bad_steps=2"),
                      f"hydra.run.dir={run_dir}", check=False)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "error: training stopped at step" in proc.stderr and "max_bad_steps=2" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


# ------------------------------------------------------------------------- averaging (average_last)
@pytest.mark.parametrize("outcome", ["real", "better", "worse"])
def test_average_of_the_last_validated_checkpoints_replaces_best_only_if_it_validates_better(
        learnable_corpus, data_dir, tmp_path, monkeypatch, outcome):
    """average_last=2 with validations at steps 2, 4, 6: only the last two validated checkpoints are
    kept; their average is validated after training and becomes best.ckpt (weights = their mean,
    `averaged_from` naming them) exactly when its score beats the best single checkpoint's.
    "better"/"worse" stub the validation of the average to force each branch; "real" validates it.
    Mutations that make it fail: comparing with the wrong sign (mode ignored); writing best.ckpt
    whatever the score; ValidatedCheckpoints keeping every validation (save_top_k=-1)."""
    forced = {"better": 1e-3, "worse": 1e9}.get(outcome)  # val/ppl: lower is better
    if forced is not None:
        monkeypatch.setattr(pl.Trainer, "validate", lambda self, *a, **k: [{"val/ppl": forced}])
    run_dir = tmp_path / "run"
    metrics = train(compose_train(overrides(learnable_corpus, data_dir, 6, 2, "average_last=2",
                                            "validation.metric=ppl", "test_after_training=false"), run_dir))
    ckpts = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("validated-*.ckpt")) == ["validated-step4.ckpt", "validated-step6.ckpt"]
    chosen = metrics["average/chosen"] == 1.0
    assert chosen == (metrics["average/ppl"] < metrics["average/best_single"])
    if forced is not None:
        assert chosen == (outcome == "better")
    best = torch.load(ckpts / "best.ckpt", weights_only=True)
    assert ("averaged_from" in best) == chosen
    if chosen:
        a, b = (torch.load(ckpts / f"validated-step{s}.ckpt", weights_only=True)["state_dict"] for s in (4, 6))
        for key, value in best["state_dict"].items():
            if value.is_floating_point():
                assert torch.allclose(value, (a[key] + b[key]) / 2, atol=1e-6), key
