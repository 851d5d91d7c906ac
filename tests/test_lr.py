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


def _expected(lr: float, decay: str, min_ratio: float, step: int, start: int, end: int) -> float:
    """The documented decay from ``start`` (warm-up end or a reset) to ``end``: lr·mult(frac), frac ∈ [0, 1]."""
    frac = min(1.0, max(0.0, (step - start) / (end - start)))
    if decay == "linear":
        return lr * (1.0 - (1.0 - min_ratio) * frac)
    return lr * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac)))


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_growth_resets_jump_back_to_peak_and_decay_to_the_same_end(decay):
    lr, total, warmup, min_ratio, resets = 2.0, 100, 10, 0.1, (40, 70)
    s = LRSchedule(lr=lr, total_steps=total, warmup_steps=warmup, decay=decay, min_ratio=min_ratio, reset_steps=resets)
    plain = LRSchedule(lr=lr, total_steps=total, warmup_steps=warmup, decay=decay, min_ratio=min_ratio)
    # warm-up, then the plain decay up to the first reset: resets change nothing before they happen
    for step in range(warmup):
        assert s(step) == pytest.approx(lr * (step + 1) / warmup)
    for step in range(resets[0]):
        assert s(step) == pytest.approx(plain(step)), step
    # segments: [warm-up end, 1st reset), [1st reset, 2nd reset), [2nd reset, end]; each decays from the peak
    # towards min_ratio·lr at the run's own end (not at the next reset)
    bounds = [warmup, *resets, total + 1]
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        assert s(start) == pytest.approx(lr), start  # right at the reset (or warm-up end): the peak
        for step in range(start, stop):
            assert s(step) == pytest.approx(_expected(lr, decay, min_ratio, step, start, total)), step
        assert all(s(i) > s(i + 1) for i in range(start, stop - 1)), start  # strictly decreasing in between
    for r in resets:  # a jump back up at each reset, from below the peak
        assert s(r - 1) < s(r) == pytest.approx(lr), r
    # later resets decay over a shorter span, so they sit above the plain schedule until the shared end
    assert all(s(i) > plain(i) for i in range(resets[0], total))
    assert s(total) == pytest.approx(plain(total)) == pytest.approx(min_ratio * lr)
    assert s(total + 50) == pytest.approx(min_ratio * lr)  # held at the floor past the end
    # a growth during warm-up also jumps straight to the peak (the warm-up is not resumed)
    early = LRSchedule(
        lr=lr, total_steps=total, warmup_steps=warmup, decay=decay, min_ratio=min_ratio, reset_steps=(5,)
    )
    assert early(4) == pytest.approx(lr * 5 / warmup) and early(5) == pytest.approx(lr)
    assert early(6) == pytest.approx(_expected(lr, decay, min_ratio, 6, 5, total))


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
    # defaults chosen by measurement (docs/results/gpt-equal-compute.md)
    assert cfg.lr_reset_growths == 0 and cfg.lr_scale == "none"
    assert RunConfig.from_dict({**d, "lr_scale": "width"}).to_dict()["lr_scale"] == "width"
    with pytest.raises(ValueError, match="RunConfig.lr_scale"):
        RunConfig.from_dict({**d, "lr_scale": "muP"})
