"""Tracking for msg_ray: the seam (``RunTracker``, URIs) and its MLflow implementation (the only mlflow importer).

Training and experiments construct ``Tracker`` (MLflow) and type against ``RunTracker``; read-back goes through
``find_runs`` / ``child_runs`` / ``get_run`` / ``load_run_metrics`` / ``load_json_artifact`` with run ids and tags,
never MLflow filter strings. Resolve the tracking URI in the driver (``resolve_tracking_uri``) and hand the
absolute string to workers: Ray Tune changes each trial's cwd. ``Tracker(spool_dir=...)`` keeps every call in a
durable local ``Spool`` until MLflow acknowledged it; ``sync(spool_dir)`` ships a spool by hand.
"""

from msg_ray.tracking.base import (
    DEFAULT_TRACKING_URI,
    MAX_KEY_LENGTH,
    MAX_PARAM_VAL_LENGTH,
    MAX_TAG_VAL_LENGTH,
    TERMINAL_STATUSES,
    RunTracker,
    default_root,
    default_tracking_uri,
    flatten_params,
    resolve_tracking_uri,
)
from msg_ray.tracking.mlflow_query import child_runs, find_runs, get_run, load_json_artifact, load_run_metrics
from msg_ray.tracking.mlflow_sync import sync
from msg_ray.tracking.mlflow_tracker import Tracker
from msg_ray.tracking.spool import Spool

__all__ = [
    "DEFAULT_TRACKING_URI",
    "MAX_KEY_LENGTH",
    "MAX_PARAM_VAL_LENGTH",
    "MAX_TAG_VAL_LENGTH",
    "TERMINAL_STATUSES",
    "RunTracker",
    "Spool",
    "Tracker",
    "child_runs",
    "default_root",
    "default_tracking_uri",
    "find_runs",
    "flatten_params",
    "get_run",
    "load_json_artifact",
    "load_run_metrics",
    "resolve_tracking_uri",
    "sync",
]
