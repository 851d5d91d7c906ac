"""MLflow implementation of the tracking seam: a rank-0 ``Tracker`` that never kills training.

Every MLflow call made by ``Tracker`` is wrapped: when the store is unreachable or errors, one warning is printed
and the tracker turns into a cheap no-op (retrying the connection once after ``retry_after_s``), so a dead server
costs seconds, not a training run. HTTP retries/timeouts are shortened only around our own calls. MLflow is
imported inside functions (importing it costs seconds; most callers only need the seam).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from msg_ray.tracking.base import (
    MAX_TAG_VAL_LENGTH,
    TERMINAL_STATUSES,
    clean_key,
    flatten_params,
    plain,
    resolve_tracking_uri,
)

log = logging.getLogger(__name__)

_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000
# Short HTTP settings for our calls (MLflow's defaults: 7 retries, backoff 2, 120 s timeout = minutes when a
# server is down). Values the user exported win.
_SHORT_HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
# Error codes meaning "the store answered but refused this data": drop the data, keep tracking healthy.
_DATA_ERRORS = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "BAD_REQUEST"}


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
    """Get or create an experiment; local stores keep artifacts next to the database, not in the cwd."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        db_dir = Path(uri[len("sqlite:///") :].partition("?")[0]).parent
        location = (db_dir / "artifacts" / re.sub(r"[^\w.\-]", "_", name)).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # another trial/rank created it between our two calls
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


class Tracker:
    """Rank-0 MLflow run that never raises into training.

    Use `start()` (returns the run id, or None when disabled/unreachable), then `log_*`, then `finish()`; or use
    it as a context manager (`finish("FAILED")` on an exception). `healthy` turns False on the first failure,
    with one warning (`error` keeps its text so the training output can repeat it).
    """

    def __init__(
        self,
        *,
        uri: str | None,
        experiment: str,
        run_name: str,
        run_id: str | None = None,
        enabled: bool = True,
        parent_run_id: str | None = None,
        tags: dict | None = None,
        flush_every: int = 100,
        retry_after_s: float = 300.0,
        max_buffer: int = 20_000,
    ) -> None:
        if not experiment:
            raise ValueError("experiment: must be a non-empty name")
        if flush_every < 1:
            raise ValueError(f"flush_every: must be >= 1, got {flush_every}")
        self.uri = resolve_tracking_uri(uri) if enabled else (uri or "")
        self.experiment, self.run_name, self.enabled = experiment, run_name, enabled
        self.parent_run_id, self.tags = parent_run_id, dict(tags or {})
        self.flush_every, self.retry_after_s, self.max_buffer = flush_every, retry_after_s, max_buffer
        self.run_id: str | None = run_id
        self.healthy: bool = enabled
        self.error: str | None = None
        self.resumed = False
        self._client = None
        self._started = False
        self._failed_at: float | None = None
        self._reconnects_left = 1
        self._params: dict[str, str] = {}  # what the run holds
        self._pending_params: dict[str, str] = {}
        self._metrics: list = []

    # -- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> str | None:
        """Create the run, or resume `run_id` (same run, status back to RUNNING). Returns the run id or None."""
        if not self.enabled:
            return None
        self._call("start run", self._open)
        return self.run_id if self._started else None

    def _open(self) -> None:
        client = _client(self.uri)
        tags = {k: str(v)[:MAX_TAG_VAL_LENGTH] for k, v in self.tags.items()}
        if self.parent_run_id:
            tags["mlflow.parentRunId"] = self.parent_run_id
        run = self._existing_run(client) if self.run_id else None
        if run is None:
            exp_id = _experiment_id(client, self.uri, self.experiment)
            run = client.create_run(exp_id, run_name=self.run_name, tags=tags)
        else:
            self.resumed = True
            self._params = dict(run.data.params)
            if run.info.status != "RUNNING":
                client.update_run(run.info.run_id, status="RUNNING")
            if tags:
                client.log_batch(run.info.run_id, tags=_tag_entities(tags), synchronous=True)
        self._client, self.run_id, self._started = client, run.info.run_id, True

    def _existing_run(self, client):
        try:
            return client.get_run(self.run_id)
        except Exception as exc:
            if getattr(exc, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                raise
            self._warn(f"msg_ray: run {self.run_id} not found at {self.uri}; starting a new run")
            return None

    def finish(self, status: str = "FINISHED") -> None:
        """Flush buffered metrics and mark the run terminated (FINISHED, FAILED or KILLED)."""
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"status: must be one of {TERMINAL_STATUSES}, got {status!r}")
        self.flush()
        self._call("finish run", lambda: self._client.set_terminated(self.run_id, status))

    def __enter__(self) -> Tracker:
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish("FINISHED" if exc_type is None else "FAILED")

    # -- logging -------------------------------------------------------------------------------------------

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log flattened params; ones already logged with the same value (resume) are skipped.

        MLflow params are immutable: a changed value on resume is kept as tag `param_changed.<key>` instead.
        """
        flat = flatten_params(params)
        new = {k: v for k, v in flat.items() if k not in self._params}
        changed = {k: v for k, v in flat.items() if k in self._params and self._params[k] != v}
        if changed:
            self._warn(f"msg_ray: params changed since the run was created, kept as tags: {sorted(changed)}")
            self.set_tags({f"param_changed.{k}": v for k, v in changed.items()})
        self._pending_params.update(new)  # kept until sent, so a reconnection still logs them
        if self._pending_params and self._ready():
            self._send_params()

    def _send_params(self) -> None:
        from mlflow.entities import Param

        items = [(k, v) for k, v in self._pending_params.items() if k not in self._params]
        for i in range(0, len(items), _PARAMS_PER_BATCH):
            chunk = [Param(k, v) for k, v in items[i : i + _PARAMS_PER_BATCH]]
            if not self._call("log params", self._batch(params=chunk)) and not self.healthy:
                return
            for param in chunk:  # sent, or refused as bad data (retrying would not help)
                self._params[param.key] = param.value
                self._pending_params.pop(param.key, None)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Buffer metrics at `step`; sent with log_batch every `flush_every` entries or on flush()."""
        if not self.enabled or (not self.healthy and self._reconnects_left <= 0):
            return  # given up for good: buffering would only grow memory
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for key, value in metrics.items():
            try:
                self._metrics.append(Metric(clean_key(key), float(value), now, int(step)))
            except (TypeError, ValueError):  # a non-number must not stop training either
                self._warn(f"msg_ray: metric {key!r}={value!r} is not a number; not logged")
        if len(self._metrics) > self.max_buffer:  # unreachable for long: keep the newest points
            del self._metrics[: len(self._metrics) - self.max_buffer]
        if len(self._metrics) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Send buffered metrics now (kept in the buffer while the store is unreachable)."""
        while self._metrics and self._ready():
            chunk = self._metrics[:_METRICS_PER_BATCH]
            ok = self._call("log metrics", self._batch(metrics=chunk))
            if not ok and not self.healthy:
                return
            del self._metrics[: len(chunk)]  # sent, or refused as bad data (retrying would not help)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not tags or not self._ready():
            return
        entities = _tag_entities({clean_key(k): v for k, v in tags.items()})
        for i in range(0, len(entities), _PARAMS_PER_BATCH):
            chunk = entities[i : i + _PARAMS_PER_BATCH]
            self._call("set tags", self._batch(tags=chunk))

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Upload a local file or directory to the run's artifacts."""
        if self._ready():
            self._call("log artifact", lambda: self._client.log_artifact(self.run_id, str(path), artifact_path))

    def log_dict(self, d: Mapping[str, Any], name: str) -> None:
        """Store a dict as a .json or .yaml/.yml artifact (format chosen by `name`'s extension)."""
        if self._ready():
            self._call("log dict", lambda: self._client.log_dict(self.run_id, plain(d), name))

    def log_figure(self, fig, name: str) -> None:
        """Store a matplotlib figure (e.g. from msg_ray.plots) as an image artifact; the figure stays open."""
        if self._ready():
            self._call("log figure", lambda: self._client.log_figure(self.run_id, fig, name))

    def _batch(self, **entities: list) -> Callable[[], Any]:
        # synchronous: a failure must surface here, not in MLflow's async logging thread
        return lambda: self._client.log_batch(self.run_id, synchronous=True, **entities)

    # -- failure handling ----------------------------------------------------------------------------------

    def _ready(self) -> bool:
        """True when calls should go through; triggers the single delayed reconnection attempt."""
        if not self.enabled:
            return False
        if self.healthy and self._started:
            return True
        due = self._failed_at is not None and time.monotonic() - self._failed_at >= self.retry_after_s
        if not due or self._reconnects_left <= 0:
            return False
        self._reconnects_left -= 1
        self.healthy = True
        if not self._call("reconnect", self._open, quiet=True):
            return False
        self._warn(f"msg_ray: MLflow tracking at {self.uri} is reachable again (run {self.run_id})")
        self._send_params()
        return self.healthy

    def _call(self, what: str, fn: Callable[[], Any], quiet: bool = False) -> bool:
        """Run one MLflow call; True on success. Refused data: warn, stay healthy. Anything else: go quiet."""
        if not self.healthy:
            return False
        for attempt in range(2):
            try:
                with _short_http():
                    fn()
                return True
            except Exception as exc:
                if attempt == 0 and "database is locked" in str(exc):  # concurrent sqlite writers: wait, retry
                    time.sleep(0.5)
                    continue
                if _is_data_error(exc):
                    self._warn(f"msg_ray: MLflow refused {what}: {_first_line(exc)}")
                    return False
                self._fail(exc, quiet)
                return False
        return False

    def _fail(self, exc: BaseException, quiet: bool) -> None:
        self.healthy, self._failed_at = False, time.monotonic()
        if quiet or self.error is not None:
            log.debug("msg_ray: MLflow still unavailable: %s", exc)
            return
        self.error = (
            f"msg_ray: MLflow tracking unavailable at {self.uri}: {_first_line(exc)}; "
            "training continues without tracking"
        )
        self._warn(self.error)

    @staticmethod
    def _warn(message: str) -> None:
        # stderr always (the run's output must say it); logging too when someone listens, without a
        # second copy from logging's last-resort stderr handler.
        print(message, file=sys.stderr, flush=True)
        if log.hasHandlers():
            log.warning(message)


def _is_data_error(exc: BaseException) -> bool:
    """The store answered but refused the data, or our argument was bad: not a reason to stop tracking."""
    code = getattr(exc, "error_code", None)
    if code is not None:  # an MlflowException: the server/store classified it
        return code in _DATA_ERRORS
    return isinstance(exc, TypeError | ValueError | KeyError) and not isinstance(exc, OSError)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:500]


def _tag_entities(tags: Mapping[str, Any]) -> list:
    from mlflow.entities import RunTag

    return [RunTag(k, str(v)[:MAX_TAG_VAL_LENGTH]) for k, v in tags.items()]
