"""The learning rate of a run: warm-up, one decay to the run's own end, optional resets at growths, and the
per-stage rule (``lr_scale``). Pure python, so resume is exact and the rule is testable without an engine.

Policies (both searchable in Tune spaces through ``run.lr_reset_growths`` / ``run.lr_scale``):
- ``reset_steps``: at these growth steps the LR jumps back to its peak and decays again to the run's end
  (the paper's appendix D, after Gu et al.: the 1st and 2nd growth). msg_ray's default is *no* reset: measured
  at equal FLOPs on the fast GPT preset, resets at the 1st/2nd growth changed the final loss by less than the
  spread over seeds (docs/results/gpt-equal-compute.md), and one decay over the run is the simpler schedule;
- ``lr_scale="width"``: muP-style, the peak LR of a stage is multiplied by target hidden_dim / stage hidden_dim
  (Adam's best LR for hidden matrices scales like 1/width), so narrow early stages train at a larger LR.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from msg_ray.structure import Structure

LR_SCALES = ("none", "width")


def stage_lr_multiplier(rule: str, stage: Structure, target: Structure) -> float:
    """Peak-LR multiplier of a stage of structure ``stage`` in a schedule growing to ``target``."""
    if rule == "none":
        return 1.0
    if rule == "width":
        return target.hidden_dim / stage.hidden_dim
    raise ValueError(f"lr_scale must be one of {LR_SCALES}, got {rule!r}")


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
