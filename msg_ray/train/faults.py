"""Fault injection for the reliability tests: kill a worker process, or turn one step's loss into NaN, once per
run (a marker file in the run's storage makes a resumed or rolled-back attempt skip it). Configured by
``RunConfig.kill_rank_at_step`` / ``inject_nan_at_step``; both are off by default.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def once(attempt_dir: Path, name: str, value: int) -> bool:
    """True the first time ``name`` is asked for in this run's storage (writes its marker), False afterwards."""
    marker = attempt_dir / name
    if marker.exists():
        return False
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(value))
    return True


def maybe_kill(kill: tuple[int, int] | None, rank: int, step: int, attempt_dir: Path) -> None:
    """Kill this worker process once at (rank, step)."""
    if kill is None or (rank, step) != tuple(kill) or not once(attempt_dir, ".fault-injected", step):
        return
    # Ray Train V2 collects reports every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default): die only after it
    # has registered the last checkpoint, so the injected fault tests a resume, not a restart from scratch.
    time.sleep(3.0)
    os._exit(1)


def nan_index(step: int | None, steps: list[int], attempt_dir: Path) -> int | None:
    """Position of ``step`` among the pending ``steps`` whose loss becomes NaN (once per run), else None."""
    if step is None or step not in steps or not once(attempt_dir, ".nan-injected", step):
        return None
    return steps.index(step)
