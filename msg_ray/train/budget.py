"""A run's budget: when it is spent and where the schedule stands, on the step axis or the wall-time axis.

A step budget ends at ``total_steps``; stage starts and the LR schedule read the optimizer step. A wall budget
(``wall_budget_s``) ends when the wall time spent training reaches it; stage starts, warm-up and LR decay then read
as fractions of the nominal ``total_steps`` on the wall-time axis. Every decision uses the wall time all ranks agree
on (the slowest rank's clock, an all-reduce when several ranks train), so the ranks grow and stop together.
"""

from __future__ import annotations

import torch

from msg_ray.growth import MaskRamp


class Budget:
    """Steps (``wall_budget_s`` None or 0) or wall seconds; ``world`` ranks agree on the wall clock."""

    def __init__(self, *, total_steps: int, wall_budget_s: float | None, world: int) -> None:
        self.total_steps, self.wall_budget_s, self.world = total_steps, wall_budget_s, world
        self.agreed_wall = 0.0  # the wall time of the last ``spent`` check, as every rank sees it

    def spent(self, step: int, wall: float) -> bool:
        """Whether the budget is spent after ``step`` steps and ``wall`` seconds on this rank. Under a wall budget
        with several ranks this is a collective (every rank calls it at the same step)."""
        if not self.wall_budget_s:
            return step >= self.total_steps
        t = torch.tensor([wall], dtype=torch.float64)
        if self.world > 1:  # the slowest rank's clock: ranks must agree on every growth and on the end
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        self.agreed_wall = float(t)
        return self.agreed_wall >= self.wall_budget_s

    def lr_step(self, step: int) -> float:
        """Where the LR schedule stands: the step, or under a wall budget the wall-time fraction of total_steps."""
        if not self.wall_budget_s:
            return step
        return self.total_steps * min(1.0, self.agreed_wall / self.wall_budget_s)

    def reached(self, start: int, step: int, ramp: MaskRamp | None) -> bool:
        """Whether a stage starting at step ``start`` (of the nominal schedule) has begun. Under a wall budget a
        stage also waits for the running mask ramp to finish: growths never overlap a ramp."""
        if not self.wall_budget_s:
            return step >= start
        ramp_done = ramp is None or ramp.value(step) >= 1.0
        return ramp_done and self.lr_step(step) >= start
