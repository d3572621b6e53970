"""Learning-rate schedules: warm-up, then the configured decay."""

import pytest

from seq2seq.config import SchedulerConfig
from seq2seq.training.schedule import lr_factor


def cfg(**kw):
    return SchedulerConfig(**{"warmup_steps": 10, **kw})


def test_warmup_is_linear_from_zero():
    assert [lr_factor(s, cfg(), 100, 1e-3) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])


def test_inverse_sqrt_decays_after_warmup():
    assert lr_factor(39, cfg(decay="inverse_sqrt"), 0, 1e-3) == pytest.approx(0.5)


@pytest.mark.parametrize("decay", ["linear", "cosine"])
def test_linear_and_cosine_reach_the_floor_at_the_horizon(decay):
    c = cfg(decay=decay, min_lr=1e-4)
    assert lr_factor(10, c, 110, 1e-3) == pytest.approx(1.0, abs=0.02)
    assert lr_factor(109, c, 110, 1e-3) == pytest.approx(0.1)
    assert lr_factor(500, c, 110, 1e-3) == pytest.approx(0.1)


def test_constant_ignores_decay():
    assert lr_factor(1000, cfg(name="constant", decay="inverse_sqrt"), 0, 1e-3) == 1.0


def test_the_schedule_follows_applied_updates_on_the_device():
    """With a fused Adam the rate is a tensor, filled from the optimiser's own count of applied updates:
    a step skipped through `found_inf` (as the step guard skips one) leaves the warm-up where it was.
    Mutation that makes it fail: WarmupDecayPlateau.applied_updates returning `self.last_epoch`."""
    import torch

    from seq2seq.training.schedule import WarmupDecayPlateau

    weight = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([weight], lr=torch.tensor(1e-3), fused=True)
    sched = WarmupDecayPlateau(opt, cfg(warmup_steps=4), 0, "bleu")
    seen = []
    for skip in (False, True, True, False, False):
        seen.append(float(opt.param_groups[0]["lr"]))
        weight.grad = torch.ones(3)
        opt.found_inf = torch.tensor(float(skip))
        opt.step()
        sched.step()
    assert torch.is_tensor(opt.param_groups[0]["lr"])
    assert seen == pytest.approx([1e-3 * n / 4 for n in (1, 2, 2, 2, 3)])


def test_plateau_cuts_after_patience_and_its_state_is_checkpointed():
    """scheduler=plateau: the rate halves once `plateau_patience` validations in a row have not improved on
    the best, and scale, best and count survive a checkpoint. Mutation that makes it fail: `observe`
    comparing with `>=`/`<=` (an equal score counted as an improvement)."""
    import torch

    from seq2seq.training.schedule import WarmupDecayPlateau

    weight = torch.nn.Parameter(torch.ones(1))
    opt = torch.optim.Adam([weight], lr=1.0)
    sched = WarmupDecayPlateau(opt, cfg(name="plateau", warmup_steps=0, decay="none", plateau_patience=1,
                                        plateau_factor=0.5), 0, "ter")  # lower is better
    assert [sched.observe(v) for v in (50.0, 49.0, 49.0, 49.5, 48.0, 48.0)] == [False, False, False, True,
                                                                                False, False]
    opt.step()  # (no gradient: nothing to update)
    sched.step()
    assert opt.param_groups[0]["lr"] == 0.5
    state = sched.state_dict()
    assert state["plateau"] == {"scale": 0.5, "best": 48.0, "bad": 1}
    fresh = WarmupDecayPlateau(torch.optim.Adam([weight], lr=1.0), cfg(name="plateau", warmup_steps=0,
                                                                       decay="none"), 0, "ter")
    fresh.load_state_dict(state)
    fresh.optimizer.step()
    fresh.step()
    assert fresh.optimizer.param_groups[0]["lr"] == 0.5


def test_a_checkpoint_from_before_this_scheduler_resumes_with_its_plateau_and_skip_counts():
    """Older checkpoints kept the plateau state and the skip counts in the payload, the rate as a number
    and a LambdaLR's state: resuming one continues the plateau scale and the counts, with the rate a
    device tensor again for the fused Adam. Mutation that makes it fail: TranslationModule.on_load_checkpoint
    not moving the payload's plateau into the scheduler's state (the resumed run at the full rate)."""
    from types import SimpleNamespace

    import torch

    from seq2seq.checkpoint.format import PAYLOAD_KEY
    from seq2seq.config import ModelConfig, OptimConfig, SearchConfig, ValidationConfig, section
    from seq2seq.training.module import TranslationModule
    from seq2seq.training.schedule import WarmupDecayPlateau

    model = section(ModelConfig, dict(cell="gru", embedding_size=8, encoder_hidden_size=6, decoder_hidden_size=8,
                                      encoder_layers=1, attention_size=6), "model")
    sched_cfg = cfg(name="plateau", warmup_steps=0, decay="none")
    module = TranslationModule(model, OptimConfig(lr=1e-3), sched_cfg, SearchConfig(), ValidationConfig(),
                               tokenizer=SimpleNamespace(src_vocab_size=12, tgt_vocab_size=12), run_config={})
    plateau = {"scale": 0.25, "best": 31.5, "bad": 1}
    old_opt = torch.optim.Adam(module.parameters(), lr=1e-3, fused=True)  # the rate as a number
    checkpoint = {"lr_schedulers": [{"last_epoch": 40, "base_lrs": [1e-3], "lr_lambdas": [None]}], "callbacks": {},
                  "optimizer_states": [old_opt.state_dict()],
                  PAYLOAD_KEY: {"plateau": plateau, "skipped": {"total": 3, "consecutive": 1}}}
    module.on_load_checkpoint(checkpoint)

    opt = torch.optim.Adam(module.parameters(), lr=torch.tensor(1e-3), fused=True)
    sched = WarmupDecayPlateau(opt, sched_cfg, 0, "bleu")
    opt.load_state_dict(checkpoint["optimizer_states"][0])  # Lightning's order: optimiser, scheduler, callbacks
    sched.load_state_dict(checkpoint["lr_schedulers"][0])
    module.step_guard.load_state_dict(checkpoint["callbacks"]["StepGuard"])
    assert sched.plateau == plateau and sched.last_epoch == 40
    assert module.step_guard.skipped["total"] == 3 and module.step_guard.skipped["consecutive"] == 1
    opt.step()
    sched.step()
    assert torch.is_tensor(opt.param_groups[0]["lr"]) and float(opt.param_groups[0]["lr"]) == pytest.approx(2.5e-4)
