"""Online training rates (msg_ray.train.metrics): RateMeter's γ/α/τ against analytic slopes, and first_reach.

Pure python and fast. Sign convention (module docstring): γ = −d(loss)/dt and α = −d(loss)/dstep, so a loss
that decreases gives positive rates; τ = Δstep/Δt between the first and last sample of the window.
"""

from __future__ import annotations

import math

import pytest

from msg_ray.train.metrics import RateMeter, first_reach

KEYS = {"growth/gamma", "growth/alpha", "growth/tau"}


def _feed(meter: RateMeter, samples) -> RateMeter:
    for step, wall, loss in samples:
        meter.update(step, wall, loss)
    return meter


def _linear(n: int, *, alpha: float, dt: float, loss0: float = 6.0, step0: int = 0, wall0: float = 0.0):
    """Loss falling by ``alpha`` per step, one step every ``dt`` seconds: γ = alpha/dt, τ = 1/dt exactly."""
    return [(step0 + i, wall0 + i * dt, loss0 - alpha * i) for i in range(n)]


# -- RateMeter ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("alpha", "dt"), [(0.01, 0.5), (0.2, 0.04), (3.0, 2.0)])
def test_rates_of_a_linear_decrease_equal_the_analytic_slopes(alpha, dt):
    r = _feed(RateMeter(window=20), _linear(20, alpha=alpha, dt=dt)).rates()
    assert set(r) == KEYS
    assert r["growth/alpha"] == pytest.approx(alpha, rel=1e-9)
    assert r["growth/gamma"] == pytest.approx(alpha / dt, rel=1e-9)
    assert r["growth/tau"] == pytest.approx(1 / dt, rel=1e-9)
    assert r["growth/gamma"] == pytest.approx(r["growth/alpha"] * r["growth/tau"], rel=1e-9)  # γ = α·τ


def test_rising_loss_gives_negative_rates_and_flat_loss_gives_zero():
    rising = _feed(RateMeter(window=10), [(i, 0.1 * i, 2.0 + 0.05 * i) for i in range(10)]).rates()
    assert rising["growth/alpha"] == pytest.approx(-0.05, rel=1e-9)
    assert rising["growth/gamma"] == pytest.approx(-0.5, rel=1e-9)
    assert rising["growth/tau"] == pytest.approx(10.0, rel=1e-9)  # τ does not depend on the loss
    flat = _feed(RateMeter(window=10), [(i, 0.1 * i, 3.0) for i in range(10)]).rates()
    assert flat["growth/alpha"] == pytest.approx(0.0, abs=1e-12)
    assert flat["growth/gamma"] == pytest.approx(0.0, abs=1e-12)


def test_gamma_is_a_least_squares_slope_in_wall_time_with_uneven_steps():
    # loss linear in wall time (γ = 0.8 loss/s exactly) but steps of uneven duration: γ is exact, τ is the
    # window's end-to-end step rate, α is the least-squares slope against the step index.
    walls = [0.0, 0.1, 0.3, 0.35, 0.9, 1.0, 1.6, 1.7]
    samples = [(i, w, 5.0 - 0.8 * w) for i, w in enumerate(walls)]
    r = _feed(RateMeter(window=8), samples).rates()
    assert r["growth/gamma"] == pytest.approx(0.8, rel=1e-9)
    assert r["growth/tau"] == pytest.approx((len(walls) - 1) / (walls[-1] - walls[0]), rel=1e-9)
    n = len(walls)
    ms, ml = (n - 1) / 2, sum(5.0 - 0.8 * w for w in walls) / n
    expected_alpha = -sum((i - ms) * (5.0 - 0.8 * w - ml) for i, w in enumerate(walls)) / sum(
        (i - ms) ** 2 for i in range(n)
    )
    assert r["growth/alpha"] == pytest.approx(expected_alpha, rel=1e-9)


def test_noise_around_a_linear_trend_averages_out():
    # ±0.05 alternating noise on a slope of 0.01/step: a two-point difference would be off by up to 10x,
    # the least-squares fit over 40 steps stays within a few percent.
    samples = [(i, 0.25 * i, 6.0 - 0.01 * i + (0.05 if i % 2 else -0.05)) for i in range(40)]
    r = _feed(RateMeter(window=40), samples).rates()
    assert r["growth/alpha"] == pytest.approx(0.01, rel=0.05)
    assert r["growth/gamma"] == pytest.approx(0.04, rel=0.05)
    assert r["growth/tau"] == pytest.approx(4.0, rel=1e-9)


def test_the_window_slides_so_only_the_last_window_samples_count():
    # 30 steps at α = 0.1 then 12 at α = 0.02 and half the speed: once the window (10) holds only the second
    # segment, its rates are exactly the second segment's.
    first = _linear(30, alpha=0.1, dt=0.1)
    last_step, last_wall, last_loss = first[-1]
    second = _linear(12, alpha=0.02, dt=0.2, loss0=last_loss - 0.02, step0=last_step + 1, wall0=last_wall + 0.2)
    meter = _feed(RateMeter(window=10), first)
    assert meter.rates()["growth/alpha"] == pytest.approx(0.1, rel=1e-9)
    _feed(meter, second[:5])  # a mixed window: strictly between the two slopes
    mixed = meter.rates()
    assert 0.02 < mixed["growth/alpha"] < 0.1
    assert len(meter.points) == 10
    _feed(meter, second[5:])
    r = meter.rates()
    assert [p[0] for p in meter.points] == [s for s, _, _ in second[-10:]]
    assert r["growth/alpha"] == pytest.approx(0.02, rel=1e-9)
    assert r["growth/gamma"] == pytest.approx(0.1, rel=1e-9)
    assert r["growth/tau"] == pytest.approx(5.0, rel=1e-9)


@pytest.mark.parametrize(("window", "needed"), [(4, 3), (5, 3), (7, 3), (10, 5), (11, 5), (20, 10)])
def test_too_few_samples_give_no_rates(window, needed):
    # rates() needs max(3, window // 2) samples; with fewer it returns an empty dict (nothing is logged)
    meter = RateMeter(window=window)
    assert meter.rates() == {}
    samples = _linear(needed, alpha=0.1, dt=0.1)
    _feed(meter, samples[:-1])
    assert meter.rates() == {}
    meter.update(*samples[-1])
    r = meter.rates()
    assert set(r) == KEYS and r["growth/alpha"] == pytest.approx(0.1, rel=1e-9)


def test_reset_clears_the_window_so_old_rates_do_not_leak_into_the_new_stage():
    meter = _feed(RateMeter(window=6), _linear(6, alpha=0.5, dt=0.1))
    assert meter.rates()["growth/alpha"] == pytest.approx(0.5, rel=1e-9)
    meter.reset()
    assert len(meter.points) == 0 and meter.rates() == {}
    new_stage = _linear(3, alpha=0.05, dt=0.3, loss0=3.0, step0=6, wall0=0.9)
    _feed(meter, new_stage[:2])
    assert meter.rates() == {}  # 2 samples after the growth: still too few (3 needed)
    meter.update(*new_stage[2])
    r = meter.rates()
    assert r["growth/alpha"] == pytest.approx(0.05, rel=1e-9)  # only the new stage's samples
    assert r["growth/gamma"] == pytest.approx(0.05 / 0.3, rel=1e-9)
    assert r["growth/tau"] == pytest.approx(1 / 0.3, rel=1e-9)


def test_samples_at_one_wall_time_give_zero_gamma_and_tau_not_a_division_error():
    r = _feed(RateMeter(window=4), [(i, 2.0, 5.0 - 0.1 * i) for i in range(4)]).rates()
    assert r["growth/gamma"] == 0.0 and r["growth/tau"] == 0.0
    assert r["growth/alpha"] == pytest.approx(0.1, rel=1e-9)  # the step axis still has a slope


# -- first_reach -------------------------------------------------------------------------------------------


def test_first_reach_interpolates_linearly_between_the_bracketing_points():
    xs, losses = [0.0, 10.0, 20.0, 30.0], [5.0, 4.0, 2.0, 1.0]
    # 3.0 is crossed between (10, 4.0) and (20, 2.0): halfway
    assert first_reach(xs, losses, 3.0) == pytest.approx(15.0)
    # 3.5: a quarter of the way from 4.0 to 2.0
    assert first_reach(xs, losses, 3.5) == pytest.approx(10.0 + 10.0 * (4.0 - 3.5) / (4.0 - 2.0))
    assert first_reach(xs, losses, 1.5) == pytest.approx(20.0 + 10.0 * (2.0 - 1.5) / (2.0 - 1.0))


def test_first_reach_exact_hits_start_and_misses():
    xs, losses = [0.0, 10.0, 20.0], [5.0, 4.0, 2.0]
    assert first_reach(xs, losses, 4.0) == pytest.approx(10.0)  # reached exactly at a point: that point's x
    assert first_reach(xs, losses, 2.0) == pytest.approx(20.0)
    assert first_reach(xs, losses, 5.0) == 0.0  # the first point already reaches it: no interpolation before it
    assert first_reach(xs, losses, 7.0) == 0.0
    assert first_reach(xs, losses, 1.99) is None  # never reached
    assert first_reach([], [], 1.0) is None


def test_first_reach_returns_the_first_crossing_not_a_later_one():
    xs, losses = [0.0, 10.0, 20.0, 30.0], [5.0, 2.0, 6.0, 1.0]  # below 3 at x=10, back up, below again
    assert first_reach(xs, losses, 3.0) == pytest.approx(10.0 * (5.0 - 3.0) / (5.0 - 2.0))


def test_first_reach_on_uneven_flops_axis_returns_a_float():
    xs, losses = [1e12, 3e12, 7e12], [4, 2, 1]  # ints: the result is still a float
    hit = first_reach(xs, losses, 3)
    assert isinstance(hit, float) and hit == pytest.approx(2e12, rel=1e-12)
    start = first_reach([5, 6], [1, 0], 2)
    assert isinstance(start, float) and start == 5.0
    assert math.isclose(first_reach(xs, losses, 1.5), 3e12 + 4e12 * 0.5)
