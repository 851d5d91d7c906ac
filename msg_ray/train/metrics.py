"""Online training rates (paper eq. 21) and the learning-rate schedule with growth resets. Pure python/torch.

γ = Δloss/Δt = α·τ with α = Δloss/Δstep and τ = Δstep/Δt. We report the *rate of loss decrease*, i.e.
γ = −d(loss)/dt, so a larger γ means faster learning (the sense in which the paper compares structures).
Slopes are least-squares fits over a sliding window of optimizer steps, which is far less noisy than a
two-point difference of a noisy training loss.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


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


@dataclass(frozen=True, kw_only=True)
class LRSchedule:
    """Linear warm-up, then cosine/linear/constant decay to ``min_ratio``·lr at ``total_steps``.

    ``reset_steps``: growth steps at which the LR jumps back to its maximum and decays again from there
    (appendix D, following Gu et al.: the 1st and 2nd growth). A pure function of the step, so resume is exact.
    """

    lr: float
    total_steps: int
    warmup_steps: int
    decay: str = "cosine"
    min_ratio: float = 0.1
    reset_steps: tuple[int, ...] = ()

    def __call__(self, step: int) -> float:
        anchor = max([0, *[s for s in self.reset_steps if s <= step]])
        if anchor == 0 and step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        start = self.warmup_steps if anchor == 0 else anchor
        span = max(1, self.total_steps - start)
        frac = min(1.0, max(0.0, (step - start) / span))
        if self.decay == "constant":
            mult = 1.0
        elif self.decay == "linear":
            mult = 1.0 - (1.0 - self.min_ratio) * frac
        else:
            mult = self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac))
        return self.lr * mult
