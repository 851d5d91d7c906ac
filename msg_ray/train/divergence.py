"""The divergence guard: which step's loss says training diverged (NaN/inf, or above k x the running median), and
the rollback target when a run is configured to recover (``on_divergence: rollback``).

Every rank runs the check on its own losses and the ranks then agree (any rank diverged -> all act), so a
rollback never leaves one rank waiting in a collective the others skipped. The agreement is one all-reduce on the
engine's device (``msg_ray.train.collectives``), run only when a process group has more than one rank.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import torch

from msg_ray.train import collectives

MIN_HISTORY = 10  # losses the running median needs before the k x median rule applies


@dataclass(frozen=True)
class Diverged(Exception):
    """Raised inside the training loop (before anything of the diverged state is checkpointed)."""

    step: int
    loss: float
    why: str

    def __str__(self) -> str:
        return f"loss {self.loss} at step {self.step} ({self.why})"


def find(previous: list[float], pending: list[tuple[int, float]], factor: float, window: int) -> Diverged | None:
    """The first pending (step, loss) that is not finite or, with ``factor`` > 0, exceeds ``factor`` times the
    median of the ``window`` losses before it (once at least ``MIN_HISTORY`` of them exist)."""
    recent = list(previous[-window:])
    for step, loss in pending:
        if not math.isfinite(loss):
            return Diverged(step, loss, "not finite")
        if factor > 0 and len(recent) >= min(window, MIN_HISTORY):
            median = statistics.median(recent)
            if loss > factor * median:
                return Diverged(step, loss, f"{loss:.4g} > {factor:g} x the running median {median:.4g}")
        recent = (recent + [loss])[-window:]
    return None


def agree(found: Diverged | None, device: torch.device | str) -> bool:
    """Whether any rank found a divergence (an all-reduce on ``device``, the engine's, when several ranks train)."""
    return collectives.any_rank(found is not None, device)
