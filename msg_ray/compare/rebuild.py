"""Rebuild a comparison's report from MLflow alone, optionally merging comparisons of the same setting."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from msg_ray.compare import mlflow_io
from msg_ray.compare.report import Report, write_report
from msg_ray.compare.runner import extend_unreached, final_checkpoints


def rebuild_report(
    experiment: str,
    *,
    tracking_uri: str | None = None,
    parent: str | None = None,
    out_dir: str | None = None,
    zoom_window: int = 200,
    extend_steps: int = 0,
    merge: tuple[str, ...] = (),
) -> tuple[Report, dict[str, Any]]:
    """Rebuild a comparison's table and plots from MLflow alone (no training); returns (report, parent run).

    ``extend_steps > 0`` first continues the schedule runs that never reached the full run's loss (their final
    checkpoints are looked up under the comparison's storage path), logs that to MLflow, then reports.
    ``merge``: other comparisons (run ids or names) of the same setting whose runs join the table - e.g. one that
    widened the LR grid after a grid-edge warning, so the choice is made over the whole grid without retraining.
    """
    info, records = mlflow_io.load_records(tracking_uri, experiment, parent)
    for other in merge:
        more_info, more = mlflow_io.load_records(tracking_uri, experiment, other)
        _check_mergeable(info, more_info)
        records += more
    keys = [(r.operator, r.lr, r.seed, r.budget) for r in records]
    if len(set(keys)) != len(keys):
        raise ValueError("merge: the comparisons ran the same (operator, lr, seed, budget) more than once")
    if extend_steps:
        import ray

        if not ray.is_initialized():
            ray.init(address=os.environ.get("RAY_ADDRESS"))
        storage = info["params"].get("base.storage_path", "")
        if extend_unreached(records, final_checkpoints(storage, [r.name for r in records]), extend_steps):
            info, records = mlflow_io.load_records(tracking_uri, experiment, info["run_id"])
    name = info["tags"].get(mlflow_io.NAME, info["name"])
    out = Path(out_dir or Path("runs") / "compare" / f"{name}-{info['run_id'][:8]}-report")
    return write_report(records, out, title=f"{name} (from MLflow)", zoom_window=zoom_window), info


# Settings two comparisons must share for their runs to sit in one table.
_MERGE_KEYS = (
    "compare.budget",
    "base.data.source",
    "base.data.tokenizer",
    "base.data.seq_len",
    "base.schedule.name",
    "base.schedule.total_steps",
    "base.engine.micro_batch_size",
    "base.warmup_steps",
    "base.lr_scale",
)


def _check_mergeable(a: dict[str, Any], b: dict[str, Any]) -> None:
    for key in _MERGE_KEYS:
        if a["params"].get(key) != b["params"].get(key):
            raise ValueError(
                f"merge: comparisons {a['run_id'][:8]} and {b['run_id'][:8]} differ in {key} "
                f"({a['params'].get(key)!r} vs {b['params'].get(key)!r})"
            )
