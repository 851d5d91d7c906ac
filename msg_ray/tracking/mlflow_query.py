"""Read-back queries against an MLflow store (comparison reports, sweep results, resume): runs by tags, children
of a parent, metric histories, JSON artifacts. Unlike ``Tracker``, these raise on failure: a report without data is
an error. Callers speak of run ids and tags; the MLflow filter syntax (quoting included) stays here.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from msg_ray.tracking.base import resolve_tracking_uri
from msg_ray.tracking.mlflow_tracker import _client, _short_http


def load_run_metrics(uri: str | None, run_id: str, keys: list[str]) -> dict[str, list[tuple[int, float]]]:
    """Full history of each metric key as [(step, value)] sorted by step (empty list for unknown keys)."""
    client = _client(resolve_tracking_uri(uri))
    out: dict[str, list[tuple[int, float]]] = {}
    with _short_http():
        for key in keys:
            history = client.get_metric_history(run_id, key)
            out[key] = sorted((int(m.step), float(m.value)) for m in history)
    return out


def load_json_artifact(uri: str | None, run_id: str, artifact_path: str) -> Any:
    """A JSON artifact of a run, parsed (raises when the run has none or the store is unreachable)."""
    from mlflow.artifacts import download_artifacts

    quiet = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" not in os.environ
    if quiet:  # one progress bar per run would drown a report
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        with tempfile.TemporaryDirectory() as tmp, _short_http():
            path = download_artifacts(
                run_id=run_id, artifact_path=artifact_path, dst_path=tmp, tracking_uri=resolve_tracking_uri(uri)
            )
            return json.loads(Path(path).read_text())
    finally:
        if quiet:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)


def _run_dict(run) -> dict[str, Any]:
    return {
        "run_id": run.info.run_id,
        "name": run.info.run_name,
        "experiment_id": run.info.experiment_id,
        "status": run.info.status,
        "start_time": run.info.start_time,
        "end_time": run.info.end_time,
        "params": dict(run.data.params),
        "tags": dict(run.data.tags),
        "metrics": dict(run.data.metrics),
    }


def _search(client, experiment_ids: list[str], filter_string: str) -> list[dict[str, Any]]:
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=1000, page_token=token)
        runs.extend(_run_dict(r) for r in page)
        token = page.token
        if not token:
            return runs


def _quote(value: Any) -> str:
    """A string literal for an MLflow filter (single quotes; an embedded quote is doubled, as SQL escapes it)."""
    return "'" + str(value).replace("'", "''") + "'"


def tag_filter(tags: Mapping[str, Any]) -> str:
    """The MLflow filter matching runs whose tags equal ``tags`` (keys back-quoted, values quoted)."""
    for k in tags:
        if "`" in k:
            raise ValueError(f"tag key {k!r}: back-quotes are not allowed")
    return " and ".join(f"tags.`{k}` = {_quote(v)}" for k, v in tags.items())


def find_runs(
    uri: str | None, experiment: str, filter_string: str = "", *, tags: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Runs of an experiment (newest first) as dicts: run_id, name, status, params, tags, latest metrics; only
    those whose tags equal ``tags`` (and match ``filter_string``, an MLflow filter, when given)."""
    parts = [p for p in (filter_string, tag_filter(tags or {})) if p]
    client = _client(resolve_tracking_uri(uri))
    with _short_http():
        exp = client.get_experiment_by_name(experiment)
        return [] if exp is None else _search(client, [exp.experiment_id], " and ".join(parts))


def get_run(uri: str | None, run_id: str) -> dict[str, Any] | None:
    """One run by id (the same dict as ``find_runs``), or None when the store has no such run."""
    client = _client(resolve_tracking_uri(uri))
    with _short_http():
        try:
            return _run_dict(client.get_run(run_id))
        except Exception as e:  # MlflowException RESOURCE_DOES_NOT_EXIST; anything else is a real failure
            if getattr(e, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise


def child_runs(uri: str | None, parent_run_id: str) -> list[dict[str, Any]]:
    """Runs whose mlflow.parentRunId tag names ``parent_run_id``, searched across all experiments."""
    client = _client(resolve_tracking_uri(uri))
    with _short_http():
        exp_ids = [e.experiment_id for e in client.search_experiments()]
        return _search(client, exp_ids, tag_filter({"mlflow.parentRunId": parent_run_id})) if exp_ids else []
