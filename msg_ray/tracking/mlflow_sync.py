"""Shipping to MLflow: the low-level calls ``Tracker`` and the queries share, and the replay of a ``Spool``.

``replay`` sends a spool's unshipped records in order, in batches, and advances ``shipped.json`` only after MLflow
accepted them; ``sync(spool_dir)`` does the same by hand (creating the run when the spool never got one), for a
spool whose training process is gone. Replay is idempotent: MLflow's SQL store (behind sqlite and behind a
``mlflow server``) keys metric rows on (run, key, timestamp, step, value), and ``log_batch`` skips a row that is
already there (``SqlAlchemyStore._log_metrics_once``: the IntegrityError branch inserts only missing rows), params
with an unchanged value and tags are accepted again, artifacts overwrite themselves. So a batch sent but not
acknowledged (a crash or an outage between the two) is simply sent again. MLflow is imported inside functions.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from msg_ray.tracking.base import MAX_TAG_VAL_LENGTH, resolve_tracking_uri
from msg_ray.tracking.spool import Spool

PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
# Short HTTP settings for our calls (MLflow's defaults: 7 retries, backoff 2, 120 s timeout = minutes when a
# server is down). Values the user exported win.
_SHORT_HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
# MLflow 3's UI opens an experiment by its kind: without this tag it guesses, and a run with no traces can land in
# the GenAI "Evaluation runs" view; "custom_model_development" (the UI's "Machine learning" kind) opens training
# runs and their metric charts. The tag and value are the ones the UI's experiment-kind selector writes.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# Error codes meaning "the store answered but refused this data": drop the data, keep tracking healthy.
_DATA_ERRORS = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "BAD_REQUEST"}
_BATCHED = {"metrics": METRICS_PER_BATCH, "params": PARAMS_PER_BATCH, "tags": PARAMS_PER_BATCH}


@contextlib.contextmanager
def _short_http() -> Iterator[None]:
    """Shorten MLflow's HTTP retries/timeouts for the duration of one of our calls (read per request)."""
    added = [k for k in _SHORT_HTTP_ENV if k not in os.environ]
    for key in added:
        os.environ[key] = _SHORT_HTTP_ENV[key]
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def _client(uri: str):
    """An MlflowClient for a resolved URI; creates a sqlite database's directory first."""
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :].partition("?")[0]).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


def _experiment_id(client, uri: str, name: str) -> str:
    """Get or create an experiment marked as model training (``EXPERIMENT_KIND``); local stores keep artifacts
    next to the database, not in the cwd. An existing experiment without a kind gets the mark; one whose kind
    someone chose is left as it is."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if EXPERIMENT_KIND_TAG not in exp.tags:
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        db_dir = Path(uri[len("sqlite:///") :].partition("?")[0]).parent
        location = (db_dir / "artifacts" / re.sub(r"[^\w.\-]", "_", name)).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except Exception:  # another trial/rank created it between our two calls
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _is_data_error(exc: BaseException) -> bool:
    """The store answered but refused the data, or our argument was bad: not a reason to stop tracking."""
    code = getattr(exc, "error_code", None)
    if code is not None:  # an MlflowException: the server/store classified it
        return code in _DATA_ERRORS
    return isinstance(exc, TypeError | ValueError | KeyError) and not isinstance(exc, OSError)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:500]


def _tag_entities(tags: dict[str, Any]) -> list:
    from mlflow.entities import RunTag

    return [RunTag(k, str(v)[:MAX_TAG_VAL_LENGTH]) for k, v in tags.items()]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- replay ----------------------------------------------------------------------------------------------------


def replay(
    client, run_id: str, spool: Spool, *, stale_status_upto: int = 0, warn: Callable[[str], None] = _stderr
) -> dict[str, int]:
    """Ship `spool`'s unshipped records to run `run_id`, in order; returns counts of what was sent.

    Consecutive metrics/params/tags records go out together in `log_batch` calls. Data MLflow refuses is
    warned about, counted as `refused` and passed over (sending it again would not help); any other error
    (the store is unreachable) propagates, leaving the records for the next replay. Status records with
    `seq <= stale_status_upto` are passed over: a later session reopened the run.
    """
    counts = {"records": 0, "metrics": 0, "params": 0, "tags": 0, "artifacts": 0, "status": 0, "refused": 0}
    group: list[dict] = []
    end = 0
    for offset, rec in spool.pending():
        if group and not _joins(group, rec):
            _ship_group(client, run_id, spool, group, end, counts, stale_status_upto, warn)
            group = []
        group.append(rec)
        end = offset
    if group:
        _ship_group(client, run_id, spool, group, end, counts, stale_status_upto, warn)
    return counts


def _size(rec: dict) -> int:
    return len(rec.get(rec["kind"]) or ())


def _joins(group: list[dict], rec: dict) -> bool:
    kind = group[0]["kind"]
    limit = _BATCHED.get(kind)
    return limit is not None and rec["kind"] == kind and sum(map(_size, group)) + _size(rec) <= limit


def _ship_group(client, run_id, spool, group, end, counts, stale_status_upto, warn) -> None:
    kind = group[0]["kind"]
    try:
        _send(client, run_id, spool, group, stale_status_upto)
    except Exception as exc:
        if not _is_data_error(exc):
            raise
        warn(f"msg_ray: MLflow refused spooled {kind} (seq {group[0]['seq']}-{group[-1]['seq']}): {_first_line(exc)}")
        counts["refused"] += len(group)
    else:
        if kind in _BATCHED:
            counts[kind] += sum(map(_size, group))
        elif kind == "artifact":
            counts["artifacts"] += 1
        elif kind == "status" and group[0]["seq"] > stale_status_upto:
            counts["status"] += 1
    counts["records"] += len(group)
    spool.mark_shipped(group[-1]["seq"], end, run_id)


def _send(client, run_id: str, spool: Spool, group: list[dict], stale_status_upto: int) -> None:
    from mlflow.entities import Metric, Param

    rec = group[0]
    kind = rec["kind"]
    if kind == "metrics":
        items = [Metric(k, float(v), int(ts), int(step)) for r in group for k, v, ts, step in r["metrics"]]
    elif kind == "params":
        items = [Param(k, str(v)) for r in group for k, v in r["params"].items()]
    elif kind == "tags":
        items = _tag_entities({k: v for r in group for k, v in r["tags"].items()})
    elif kind == "artifact":
        path = spool.artifact_file(rec)
        if not path.exists():
            raise ValueError(f"spooled artifact {path} is missing")
        client.log_artifact(run_id, str(path), rec.get("artifact_path"))
        return
    elif kind == "status":
        if rec["seq"] > stale_status_upto:
            client.set_terminated(run_id, rec["status"])
        return
    else:  # "run": used when the run is created
        return
    step = _BATCHED[kind]
    for i in range(0, len(items), step):  # synchronous: a failure must surface here, not in a thread
        client.log_batch(run_id, synchronous=True, **{kind: items[i : i + step]})


# -- by hand ---------------------------------------------------------------------------------------------------


def sync(spool_dir: str | os.PathLike, uri: str | None = None) -> dict[str, Any]:
    """Replay the spool in `spool_dir` into MLflow by hand; returns what was shipped.

    `uri` defaults to the URI the spool's run was started with. The run the spool belongs to is used, or created
    from the spool's `run` record when it never was (the store was down from the start) or no longer exists;
    a spooled terminal status is applied. Raises when the store is unreachable (nothing is lost: run it again).
    Meant for a spool whose training process is gone; a live Tracker on the same spool replays it itself.
    Returns {"run_id", "created", "records", "metrics", "params", "tags", "artifacts", "status", "refused"}.
    """
    spool = Spool(spool_dir)
    run_rec = spool.run_record()
    if run_rec is None:
        raise ValueError(f"{spool.path}: no run record; not a msg_ray tracking spool")
    uri = resolve_tracking_uri(uri or run_rec.get("uri"))
    client = _client(uri)
    with _short_http():
        run_id, created = _sync_run(client, uri, spool, run_rec)
        counts = replay(client, run_id, spool)
    return {"run_id": run_id, "created": created, **counts}


def _sync_run(client, uri: str, spool: Spool, run_rec: dict) -> tuple[str, bool]:
    """The spool's run id, creating the run from the `run` record when needed (and recording its id)."""
    run_id = spool.run_id
    if run_id is not None:
        try:
            client.get_run(run_id)
            return run_id, False
        except Exception as exc:
            if getattr(exc, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                raise
            _stderr(f"msg_ray: run {run_id} not found at {uri}; creating a new run for spool {spool.directory}")
    tags = {k: str(v)[:MAX_TAG_VAL_LENGTH] for k, v in (run_rec.get("tags") or {}).items()}
    if run_rec.get("parent_run_id"):
        tags["mlflow.parentRunId"] = run_rec["parent_run_id"]
    exp_id = _experiment_id(client, uri, run_rec["experiment"])
    run = client.create_run(exp_id, run_name=run_rec.get("run_name"), tags=tags)
    spool.set_run_id(run.info.run_id)
    return run.info.run_id, True
