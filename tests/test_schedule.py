"""Learning-rate schedules: warm-up, then the configured decay."""

import pytest

from seq2seq.config import SchedulerConfig
from seq2seq.schedule import lr_factor


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

    from seq2seq.schedule import WarmupDecayPlateau

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

    from seq2seq.schedule import WarmupDecayPlateau

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
