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
