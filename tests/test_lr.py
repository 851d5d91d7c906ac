"""The learning-rate module: warm-up, one decay to the run's own end, growth resets, the per-stage width rule."""

from __future__ import annotations

import math

import pytest

from msg_ray.structure import Structure
from msg_ray.train.config import RunConfig
from msg_ray.train.lr import LRSchedule, stage_lr_multiplier


def test_warmup_then_cosine_to_min_at_the_runs_own_end():
    s = LRSchedule(lr=1.0, total_steps=100, warmup_steps=10, min_ratio=0.1)
    assert s(0) == pytest.approx(0.1) and s(9) == pytest.approx(1.0)
    assert s(10) == pytest.approx(1.0)
    assert s(55) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert s(100) == pytest.approx(0.1)  # fully decayed at its own end
    assert all(s(i) >= s(i + 1) for i in range(10, 100))  # monotone after warm-up


def test_growth_resets_jump_back_to_peak_and_decay_to_the_same_end():
    s = LRSchedule(lr=2.0, total_steps=100, warmup_steps=10, reset_steps=(40, 70))
    plain = LRSchedule(lr=2.0, total_steps=100, warmup_steps=10)
    assert s(39) == pytest.approx(plain(39))
    assert s(40) == pytest.approx(2.0) and s(70) == pytest.approx(2.0)
    assert s(69) < 2.0 and s(55) > plain(55)
    assert s(100) == pytest.approx(plain(100)) == pytest.approx(0.2)


@pytest.mark.parametrize("decay", ["linear", "constant"])
def test_other_decays(decay):
    s = LRSchedule(lr=1.0, total_steps=50, warmup_steps=0, decay=decay, min_ratio=0.0)
    assert s(50) == pytest.approx(0.0 if decay == "linear" else 1.0)


def test_width_rule_scales_peak_by_target_over_stage_hidden():
    target = Structure(128, 512, 4, 4)
    assert stage_lr_multiplier("width", Structure(64, 256, 2, 2), target) == 2.0
    assert stage_lr_multiplier("width", Structure(128, 512, 4, 2), target) == 1.0
    assert stage_lr_multiplier("none", Structure(64, 256, 2, 2), target) == 1.0
    with pytest.raises(ValueError, match="lr_scale"):
        stage_lr_multiplier("sqrt", target, target)


def test_run_config_lr_policy_fields_validated_and_defaults():
    d = {"schedule": "mini-gpt-fast", "data": {"source": "wikitext2"}}
    cfg = RunConfig.from_dict(d)
    assert cfg.lr_reset_growths == 0 and cfg.lr_scale == "none"  # defaults chosen by measurement (README)
    assert RunConfig.from_dict({**d, "lr_scale": "width"}).to_dict()["lr_scale"] == "width"
    with pytest.raises(ValueError, match="RunConfig.lr_scale"):
        RunConfig.from_dict({**d, "lr_scale": "muP"})
