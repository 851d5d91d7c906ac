"""MLflow side of a comparison: the parent run, one child per operator/LR/seed, and reading records back.

A comparison is one parent run (tag ``msg_ray.compare = parent``) whose children (tag ``mlflow.parentRunId``)
are the training runs, tagged with their operator, seed, learning rate and FLOPs limit. ``load_records`` rebuilds
`RunRecord`s from MLflow alone: the dense history from each child's ``history.json`` artifact (logged by the
training loop at the end of a run), falling back to the logged metrics, and downstream scores from ``eval/*``.
"""

from __future__ import annotations

import json
from typing import Any

from msg_ray.compare.report import RunRecord
from msg_ray.tracking import (
    TERMINAL_STATUSES,
    RunTracker,
    TrackingConfig,
    child_runs,
    find_runs,
    get_run,
    load_json_artifact,
    load_run_metrics,
    make_tracker,
    resolve_tracking_uri,
)
from msg_ray.train.run import log_run_config

KIND, NAME = "msg_ray.compare", "msg_ray.compare.name"
OP, SEED, LR, LIMIT, BUDGET = (f"msg_ray.compare.{k}" for k in ("operator", "seed", "lr", "flops_limit", "budget"))
RUN_TAG = "msg_ray.run_name"  # the tag msg_ray.train.run uses to find (and resume) a run by name


def open_parent(
    uri: str, experiment: str, name: str, params: dict[str, Any], tracking: TrackingConfig | str = "mlflow"
) -> RunTracker:
    tracker = make_tracker(tracking, uri=uri, experiment=experiment, run_name=name, tags={KIND: "parent", NAME: name})
    tracker.start()
    tracker.log_params(params)
    tracker.flush()
    return tracker


def open_child(
    cfg, parent_id: str | None, *, operator: str, seed: int, lr: float, flops_limit: float, budget: float = 1.0
) -> str | None:
    """Create the training run's MLflow run under the parent and leave it RUNNING.

    ``msg_ray.train.run.run`` resumes an unfinished run carrying its name tag, and the Tune path passes the id
    to the worker, so either way training logs into this child.
    """
    tags = {RUN_TAG: cfg.name, KIND: "child", OP: operator, SEED: seed, LR: lr, LIMIT: flops_limit, BUDGET: budget}
    tracker = make_tracker(
        cfg.tracking,
        uri=cfg.tracking_uri,
        experiment=cfg.experiment,
        run_name=cfg.name,
        parent_run_id=parent_id,
        tags=tags,
    )
    run_id = tracker.start()

    log_run_config(tracker, cfg)
    return run_id


def fail_unfinished(
    uri: str, experiment: str, run_ids: list[str | None], tracking: TrackingConfig | str = "mlflow"
) -> None:
    """Mark children that a failed comparison left RUNNING as FAILED (finished ones keep their status)."""
    for run_id in filter(None, run_ids):
        found = get_run(uri, run_id)
        if found and found["status"] == "RUNNING":
            tracker = make_tracker(tracking, uri=uri, experiment=experiment, run_name=found["name"], run_id=run_id)
            if tracker.start():  # reopen by id (finish needs an open client), then close as FAILED
                tracker.finish("FAILED")


def append_metrics(run_config: dict[str, Any], run_id: str, series: dict[str, list[tuple[int, float]]]) -> bool:
    """Add metric points to a finished run (reopened by id, closed again with the status it had)."""
    uri, exp = run_config.get("tracking_uri"), run_config.get("experiment", "msg_ray")
    before = get_run(uri, run_id)
    status = before["status"] if before else "FINISHED"
    backend = (run_config.get("tracking") or {}).get("backend", "mlflow")  # configs saved before tracking.backend
    tracker = make_tracker(backend, uri=uri, experiment=exp, run_name=run_config.get("name", "run"), run_id=run_id)
    if tracker.start() is None:
        return False
    for key, points in series.items():
        for step, value in points:
            tracker.log_metrics({key: value}, step=step)
    tracker.flush()
    tracker.finish(status if status in TERMINAL_STATUSES else "FINISHED")
    return tracker.healthy


def find_parent(uri: str | None, experiment: str, parent: str | None = None) -> dict[str, Any]:
    """The parent run by id or comparison name; the newest comparison of the experiment when ``parent`` is None."""
    parents = find_runs(uri, experiment, tags={KIND: "parent"})
    if parent is not None:
        parents = [p for p in parents if parent in (p["run_id"], p["tags"].get(NAME), p["name"])]
    if not parents:
        what = f"comparison {parent!r}" if parent else "any comparison"
        raise ValueError(f"experiment {experiment!r} at {resolve_tracking_uri(uri)} has no {what}")
    return max(parents, key=lambda p: p["start_time"] or 0)


def load_records(uri: str | None, experiment: str, parent: str | None = None) -> tuple[dict[str, Any], list[RunRecord]]:
    """(parent run dict, records of its finished children) from MLflow alone."""
    info = find_parent(uri, experiment, parent)
    records = []
    for child in child_runs(uri, info["run_id"]):
        tags = child["tags"]
        if child["status"] != "FINISHED" or OP not in tags:
            continue
        eval_keys = [k for k in child["metrics"] if k.startswith("eval/")]
        scores = {
            k[len("eval/") :]: [v for _, v in pts]
            for k, pts in load_run_metrics(uri, child["run_id"], eval_keys).items()
        }
        records.append(
            RunRecord(
                operator=tags[OP],
                seed=int(tags[SEED]),
                lr=float(tags[LR]),
                name=child["name"],
                history=_history(uri, child),
                flops_limit=float(tags.get(LIMIT, 1.0)),
                run_id=child["run_id"],
                scores=scores,
                extension=_extension(uri, child),
                budget=float(tags.get(BUDGET, 1.0)),
            )
        )
    if not records:
        raise ValueError(f"comparison {info['run_id']} has no finished child runs")
    return info, sorted(records, key=lambda r: (r.operator, r.lr, r.seed, r.budget))


def _extension(uri: str | None, child: dict[str, Any]) -> dict[str, list] | None:
    if "extend/val_loss" not in child["metrics"]:
        return None
    m = load_run_metrics(uri, child["run_id"], ["extend/val_loss", "extend/wall_s"])
    wall = dict(m["extend/wall_s"])
    steps = [s for s, _ in m["extend/val_loss"]]
    return {
        "step": steps,
        "wall_s": [wall[s] for s in steps],
        "val_step": steps,
        "val_loss": [v for _, v in m["extend/val_loss"]],
    }


def _history(uri: str | None, child: dict[str, Any]) -> dict[str, list]:
    try:
        return load_json_artifact(uri, child["run_id"], "history.json")
    except Exception:  # no artifact (older run, or artifact store unreachable): the logged metrics
        return _history_from_metrics(uri, child)


def _history_from_metrics(uri: str | None, child: dict[str, Any]) -> dict[str, list]:
    m = load_run_metrics(uri, child["run_id"], ["train/loss", "perf/wall_s", "perf/flops", "val/loss"])
    wall, flops = dict(m["perf/wall_s"]), dict(m["perf/flops"])
    pts = [(s, v) for s, v in m["train/loss"] if s in wall and s in flops]
    events = sorted(
        (json.loads(v) for k, v in child["tags"].items() if k.startswith("growth.")), key=lambda e: e["step"]
    )
    return {
        "step": [s for s, _ in pts],
        "wall_s": [wall[s] for s, _ in pts],
        "flops": [flops[s] for s, _ in pts],
        "train_loss": [v for _, v in pts],
        "val_step": [s for s, _ in m["val/loss"]],
        "val_loss": [v for _, v in m["val/loss"]],
        "growth_steps": [e["step"] for e in events],
        "growth_events": events,
    }


def log_report(tracker: RunTracker, report) -> None:
    """Table files and plots as parent artifacts; headline numbers as ``compare/<operator>/<column>`` metrics
    (with the decayed budget curve's ``speedup_flops_to_target_decayed`` where the comparison ran one)."""
    for f in report.files:
        tracker.log_artifact(f, "report")
    for row in report.rows:
        for key in (
            "speedup_equal_steps",
            "speedup_time_to_target",
            "speedup_flops_to_target",
            "final_val_loss",
            "val_vs_full",
            "wall_s",
            "efficiency",
        ):
            mean = row[key][0] if isinstance(row[key], tuple) else row[key]
            if mean == mean:  # skip NaN (time-to-target not reached)
                tracker.log_metrics({f"compare/{row['operator']}/{key}": mean}, step=0)
    for row in report.budget_rows:
        mean = row["speedup_flops_to_target_decayed"][0]
        if mean == mean:
            tracker.log_metrics({f"compare/{row['operator']}/speedup_flops_to_target_decayed": mean}, step=0)
    tracker.flush()
