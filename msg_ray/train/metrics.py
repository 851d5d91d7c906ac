"""Online training rates (paper eq. 21): γ, α and τ over a sliding window of optimizer steps. Pure python.

γ = Δloss/Δt = α·τ with α = Δloss/Δstep and τ = Δstep/Δt. We report the *rate of loss decrease*, i.e.
γ = −d(loss)/dt, so a larger γ means faster learning (the sense in which the paper compares structures).
Slopes are least-squares fits over a sliding window of optimizer steps, which is far less noisy than a
two-point difference of a noisy training loss.
"""

from __future__ import annotations

import itertools
import math
from collections import deque


def _slope(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return 0.0 if var == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


class RateMeter:
    """Sliding-window γ, α, τ over the last ``window`` optimizer steps."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.points: deque[tuple[int, float, float]] = deque(maxlen=window)

    def update(self, step: int, wall_s: float, loss: float) -> None:
        self.points.append((step, wall_s, loss))

    def reset(self) -> None:
        """Called at a growth: rates of the old structure must not leak into the new stage's window."""
        self.points.clear()

    def rates(self) -> dict[str, float]:
        if len(self.points) < max(3, self.window // 2):
            return {}
        steps, walls, losses = (list(c) for c in zip(*self.points, strict=True))
        alpha = -_slope([float(s) for s in steps], losses)  # loss decrease per step
        gamma = -_slope(walls, losses)  # loss decrease per second
        dt = walls[-1] - walls[0]
        tau = (steps[-1] - steps[0]) / dt if dt > 0 else 0.0
        return {"growth/gamma": gamma, "growth/alpha": alpha, "growth/tau": tau}


def first_reach(xs: list[float], losses: list[float], target: float) -> float | None:
    """The x (wall seconds, FLOPs, ...) at which ``losses`` first get to ``target``, linear between points, or None.

    ``xs[i]`` is where ``losses[i]`` was measured; the comparison's time- and compute-to-target both read this.
    """
    for i, loss in enumerate(losses):
        if loss <= target:
            if i == 0 or losses[i - 1] == loss:
                return float(xs[i])
            frac = (losses[i - 1] - target) / (losses[i - 1] - loss)
            return float(xs[i - 1] + frac * (xs[i] - xs[i - 1]))
    return None


def decayed_reach(points: list[tuple[float, float]], target: float) -> tuple[float, bool]:
    """Compute (FLOPs) at which runs that each decayed their LR at their own end reach ``target``.

    ``points``: (final FLOPs, final val loss) of one schedule at several budgets. Log-linear between the two budgets
    that bracket the target: (FLOPs, True); (the smallest budget's FLOPs, False) when even that run reaches it (the
    true value is at most that); (NaN, False) when no run does. Unlike :func:`first_reach` on one long run, no
    point is read mid-way through an LR schedule (Kaddour et al., NeurIPS 2023).
    """
    pts = sorted(points)
    if pts[0][1] <= target:
        return pts[0][0], False
    for (f0, v0), (f1, v1) in itertools.pairwise(pts):
        if v1 <= target:
            t = (v0 - target) / (v0 - v1)
            return math.exp(math.log(f0) + t * (math.log(f1) - math.log(f0))), True
    return math.nan, False
