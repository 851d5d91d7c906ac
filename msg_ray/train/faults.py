"""Fault injection for the reliability tests: kill a worker process, stall one (so a test can take its node away),
or turn one step's loss into NaN, once per run (a marker file in the run's storage makes a resumed or rolled-back
attempt skip it). Configured by ``RunConfig.kill_rank_at_step`` / ``stall_rank_at_step`` / ``inject_nan_at_step``;
all are off by default.
"""

from __future__ import annotations

import json
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


STALLED = ".fault-stalled"  # {"rank", "step", "node_id"}: written when the stall begins
STALL_S = 120.0  # then the process exits, failing the attempt, if nobody took the node away meanwhile


def maybe_stall(stall: tuple[int, int] | None, rank: int, step: int, attempt_dir: Path, node_id: str) -> None:
    """Stop this worker once at (rank, step) and wait, announcing its node in ``attempt_dir/.fault-stalled``: the
    multi-node test removes that node (the worker dies with it) and the run must resume elsewhere."""
    if stall is None or (rank, step) != tuple(stall) or not once(attempt_dir, ".fault-stall-once", step):
        return
    time.sleep(3.0)  # as in maybe_kill: let Ray Train register the last checkpoint first
    info = {"rank": rank, "step": step, "node_id": node_id}
    tmp = attempt_dir / f"{STALLED}.tmp"
    tmp.write_text(json.dumps(info))
    tmp.replace(attempt_dir / STALLED)  # atomic: the test never reads half a file
    time.sleep(STALL_S)
    os._exit(1)


def nan_index(step: int | None, steps: list[int], attempt_dir: Path) -> int | None:
    """Position of ``step`` among the pending ``steps`` whose loss becomes NaN (once per run), else None."""
    if step is None or step not in steps or not once(attempt_dir, ".nan-injected", step):
        return None
    return steps.index(step)
