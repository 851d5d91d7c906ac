"""Adaptive growth: decide online when to grow to the next stage (the paper's hindsight rule made practical).

The paper (section 3.2.1) notes that the ideal moment to grow is when the current structure's pre-training
rate γ = −Δloss/Δt falls below the full target's γ *at the same wall time*, but that this needs the target's
curve in hindsight. ``AdaptiveGrowth`` takes that curve from a short probe of the target (or a ``structures``
sweep), as a function of wall seconds or a constant, and watches the running γ of the current stage:

- γ is the least-squares slope of loss against wall time over the last ``window`` updates of the current stage
  (far less noisy than a two-point difference), with the same sign convention as ``msg_ray.train.metrics``:
  positive = loss decreasing;
- hysteresis: an update counts as "below" when γ < target·(1 − margin) and clears the count only when
  γ > target·(1 + margin); inside the band the count is kept. ``patience`` consecutive "below" updates are
  needed, so one noisy window does not trigger a growth;
- no growth before ``min_stage_steps`` steps of the stage (set it ≥ φ so a mask ramp finishes first).

Pure Python (no torch, Ray or MLflow): the training loop feeds it ``update(step, wall_s, loss)`` every step,
asks ``should_grow(step, stage_start_step)`` and calls ``reset(step)`` after a growth.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable, Sequence


def _slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return 0.0 if var == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


def gamma_curve(times: Sequence[float], gammas: Sequence[float]) -> Callable[[float], float]:
    """Piecewise-linear γ(t) through measured points (held constant outside them), e.g. from a target probe."""
    if len(times) != len(gammas) or not times:
        raise ValueError(f"gamma_curve: need equal, non-empty times/gammas, got {len(times)} and {len(gammas)}")
    pts = sorted(zip((float(t) for t in times), (float(g) for g in gammas), strict=True))
    ts = [t for t, _ in pts]
    gs = [g for _, g in pts]

    def at(t: float) -> float:
        if t <= ts[0]:
            return gs[0]
        if t >= ts[-1]:
            return gs[-1]
        i = bisect.bisect_right(ts, t)
        t0, t1, g0, g1 = ts[i - 1], ts[i], gs[i - 1], gs[i]
        return g0 if t1 == t0 else g0 + (g1 - g0) * (t - t0) / (t1 - t0)

    return at


def gamma_from_history(wall_s: Sequence[float], loss: Sequence[float], window: int) -> tuple[list[float], list[float]]:
    """Sliding-window γ of a recorded run (e.g. the target probe): ``(times, gammas)`` for ``gamma_curve``."""
    if len(wall_s) != len(loss):
        raise ValueError(f"gamma_from_history: {len(wall_s)} times but {len(loss)} losses")
    if window < 3:
        raise ValueError(f"gamma_from_history: window must be >= 3, got {window}")
    times, gammas = [], []
    for end in range(window, len(loss) + 1):
        ws, ls = wall_s[end - window : end], loss[end - window : end]
        times.append(float(ws[-1]))
        gammas.append(-_slope([float(x) for x in ws], [float(y) for y in ls]))
    return times, gammas


class AdaptiveGrowth:
    """Grow when the running γ of the current stage stays below the target's γ at the same wall time."""

    def __init__(
        self,
        target_gamma: Callable[[float], float] | float,
        window: int,
        patience: int,
        min_stage_steps: int,
        *,
        margin: float = 0.05,
    ) -> None:
        if isinstance(target_gamma, bool) or not (callable(target_gamma) or isinstance(target_gamma, int | float)):
            raise ValueError(f"AdaptiveGrowth.target_gamma: must be a callable or a number, got {target_gamma!r}")
        for name, value, minimum in (
            ("window", window, 3),
            ("patience", patience, 1),
            ("min_stage_steps", min_stage_steps, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"AdaptiveGrowth.{name}: must be an int >= {minimum}, got {value!r}")
        if not 0.0 <= margin < 1.0:
            raise ValueError(f"AdaptiveGrowth.margin: must be in [0, 1), got {margin}")
        const = float(target_gamma) if not callable(target_gamma) else None
        self.target: Callable[[float], float] = target_gamma if const is None else (lambda _t: const)  # type: ignore[assignment]
        self.window, self.patience, self.min_stage_steps, self.margin = window, patience, min_stage_steps, margin
        self.points: deque[tuple[float, float]] = deque(maxlen=window)
        self.below = 0  # consecutive windows below the target (with hysteresis)
        self.last_gamma: float | None = None
        self.last_target: float | None = None
        self.stage_start = 0

    def update(self, step: int, wall_s: float, loss: float) -> None:
        """Feed one optimizer step's (step, cumulative wall seconds, training loss)."""
        if loss != loss:  # NaN: a broken step says nothing about the rate
            return
        self.points.append((float(wall_s), float(loss)))
        if len(self.points) < self.window:
            return
        ws, ls = zip(*self.points, strict=True)
        gamma = -_slope(ws, ls)
        target = float(self.target(float(wall_s)))
        self.last_gamma, self.last_target = gamma, target
        low, high = target - abs(target) * self.margin, target + abs(target) * self.margin
        if gamma < low:
            self.below += 1
        elif gamma > high:
            self.below = 0

    def should_grow(self, step: int, stage_start_step: int) -> bool:
        """True once the stage is long enough and γ has been below the target for ``patience`` windows."""
        if step - stage_start_step < self.min_stage_steps:
            return False
        return len(self.points) >= self.window and self.below >= self.patience

    def reset(self, step: int) -> None:
        """Forget the old structure's points after a growth at ``step`` (its rate says nothing about the new)."""
        self.points.clear()
        self.below = 0
        self.last_gamma = self.last_target = None
        self.stage_start = step

    def state_dict(self) -> dict:
        """Everything needed to resume exactly (checkpoints)."""
        return {"points": list(self.points), "below": self.below, "stage_start": self.stage_start}

    def load_state_dict(self, state: dict) -> None:
        self.points = deque((tuple(p) for p in state["points"]), maxlen=self.window)
        self.below, self.stage_start = int(state["below"]), int(state["stage_start"])
