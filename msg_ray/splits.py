"""How a step budget is split into growth stages: the paper's stage starts (section 3.2.1) and schedules built
from a list of structures with them. Pure python over ``msg_ray.schedule``.
"""

from __future__ import annotations

from typing import Any

from msg_ray.schedule import Schedule, Stage, _is_int


def paper_stage_starts(total_steps: int, n_stages: int, early_weight: float = 1.2) -> list[int]:
    """Start steps for ``n_stages`` stages splitting ``total_steps`` (paper section 3.2.1).

    "Roughly equal number of steps, while slightly emphasizing the early stages": stage weights fall
    linearly from ``early_weight`` (first stage) to 1 (last stage); ``early_weight=1`` gives equal splits.
    """
    if not _is_int(n_stages) or n_stages < 1:
        raise ValueError(f"n_stages must be an int >= 1, got {n_stages!r}")
    if not _is_int(total_steps) or total_steps < n_stages:
        raise ValueError(f"total_steps must be an int >= n_stages={n_stages}, got {total_steps!r}")
    if not early_weight >= 1.0:
        raise ValueError(f"early_weight must be >= 1 (early stages are not shorter), got {early_weight}")
    if n_stages == 1:
        return [0]
    weights = [early_weight - (early_weight - 1.0) * i / (n_stages - 1) for i in range(n_stages)]
    total_weight = sum(weights)
    starts, acc = [], 0.0
    for w in weights:
        starts.append(int(round(total_steps * acc / total_weight)))
        acc += w
    # Rounding may tie two starts on tiny budgets; push later ones forward so every stage has >= 1 step.
    for i in range(1, n_stages):
        starts[i] = max(starts[i], starts[i - 1] + 1)
    if starts[-1] >= total_steps:
        raise ValueError(f"total_steps={total_steps} is too small for {n_stages} stages")
    return starts


def schedule_from_structures(
    arch: str,
    structures: list[Any],
    total_steps: int,
    *,
    early_weight: float = 1.2,
    **kw: Any,
) -> Schedule:
    """Schedule over ``structures`` with stage starts from :func:`paper_stage_starts`."""
    starts = paper_stage_starts(total_steps, len(structures), early_weight)
    stages = tuple(Stage(structure=s, start=b) for s, b in zip(structures, starts, strict=True))
    return Schedule(arch=arch, stages=stages, total_steps=total_steps, **kw)
