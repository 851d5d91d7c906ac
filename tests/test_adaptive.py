"""Adaptive growth policy (msg_ray.train.adaptive): when γ falls below the target's, with hysteresis,
patience and a minimum stage length; probe curves; state round-trip and validation. Pure python, no Ray."""

from __future__ import annotations

import json
import math
import random

import pytest

from msg_ray.train.adaptive import AdaptiveGrowth, gamma_curve, gamma_from_history


def _curve(rate: float, floor: float, steps: int, dt: float = 0.1, noise: float = 0.0, seed: int = 0):
    """loss(t) = floor + (5 - floor) * exp(-rate t), sampled every dt seconds, with optional noise."""
    rng = random.Random(seed)
    return [(i, i * dt, floor + (5 - floor) * math.exp(-rate * i * dt) + rng.gauss(0, noise)) for i in range(steps)]


def test_adaptive_grows_when_gamma_falls_below_target_and_not_before_min_stage():
    # A small model that learns fast then levels off at 4.0 vs a target whose γ is 0.3 loss/s throughout.
    ag = AdaptiveGrowth(0.3, window=10, patience=3, min_stage_steps=20)
    decided = None
    for step, t, loss in _curve(rate=1.0, floor=4.0, steps=200):
        ag.update(step, t, loss)
        if decided is None and ag.should_grow(step, 0):
            decided = step
    # γ(t) = e^{-t} loss/s crosses 0.3 at t = 1.2 s (step 12); the window lags ~0.5 s, patience 3, min stage 20.
    assert decided is not None and 20 <= decided <= 25, decided
    assert ag.last_gamma < 0.3
    ag.reset(decided)
    assert not ag.should_grow(decided + 5, decided)  # empty window after a growth


def test_adaptive_hysteresis_ignores_noise_and_follows_a_time_varying_target():
    # Our γ is a constant 0.5 loss/s (linear decrease plus noise); the target's γ is 0.3 until t = 20 s, then 0.8.
    pts = [(i, i * 0.1, 5 - 0.05 * i + random.Random(i).gauss(0, 0.002)) for i in range(300)]
    times, gammas = [0.0, 20.0, 20.1, 100.0], [0.3, 0.3, 0.8, 0.8]
    ag = AdaptiveGrowth(gamma_curve(times, gammas), window=20, patience=5, min_stage_steps=0, margin=0.05)
    first = next((s for s, t, loss in pts if (ag.update(s, t, loss) or True) and ag.should_grow(s, 0)), None)
    assert first is not None and 201 <= first <= 210, first
    # A constant target inside the ±5 % band of our γ never triggers (no flapping on noise).
    flat = [(i, i * 0.1, 5 - 0.05 * i + random.Random(i).gauss(0, 1e-4)) for i in range(300)]  # γ = 0.5 exactly
    ag = AdaptiveGrowth(0.51, window=20, patience=3, min_stage_steps=0, margin=0.05)
    for s, t, loss in flat:
        ag.update(s, t, loss)
        assert not ag.should_grow(s, 0)


def test_adaptive_probe_curve_state_and_validation():
    pts = _curve(rate=0.5, floor=1.0, steps=100)
    times, gammas = gamma_from_history([p[1] for p in pts], [p[2] for p in pts], window=5)
    assert len(times) == 96 and gammas[0] > gammas[-1] > 0  # a decaying rate
    ag = AdaptiveGrowth(gamma_curve(times, gammas), window=5, patience=1, min_stage_steps=3)
    for s, t, loss in pts[:10]:
        ag.update(s, t, loss)
    clone = AdaptiveGrowth(0.1, window=5, patience=1, min_stage_steps=3)
    clone.load_state_dict(json.loads(json.dumps(ag.state_dict())))
    assert clone.state_dict() == ag.state_dict()
    for bad in ({"window": 2}, {"patience": 0}, {"min_stage_steps": -1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            AdaptiveGrowth(0.1, **{"window": 5, "patience": 1, "min_stage_steps": 0, **bad})
