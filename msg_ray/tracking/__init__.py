"""Tracking for msg_ray: the seam (``RunTracker``, URIs), the tracker registry and its MLflow implementation (the
only mlflow importer), registered here as the built-in backend ``mlflow``.

Training and experiments create trackers with ``make_tracker(cfg.tracking, ...)`` (the backend a run's
``tracking.backend`` names) and type against ``RunTracker``; read-back (MLflow only) goes through
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
from msg_ray.tracking.registry import TrackingConfig, make_tracker, register, tracker_names
from msg_ray.tracking.spool import Spool

register("mlflow", Tracker)

__all__ = [
    "DEFAULT_TRACKING_URI",
    "MAX_KEY_LENGTH",
    "MAX_PARAM_VAL_LENGTH",
    "MAX_TAG_VAL_LENGTH",
    "TERMINAL_STATUSES",
    "RunTracker",
    "Spool",
    "Tracker",
    "TrackingConfig",
    "child_runs",
    "default_root",
    "default_tracking_uri",
    "find_runs",
    "flatten_params",
    "get_run",
    "load_json_artifact",
    "load_run_metrics",
    "make_tracker",
    "register",
    "resolve_tracking_uri",
    "sync",
    "tracker_names",
]
