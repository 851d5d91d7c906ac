"""MLflow implementation of the tracking seam: a rank-0 ``Tracker`` that never kills training.

Every MLflow call made by ``Tracker`` is wrapped: when the store is unreachable or errors, one warning is printed
and the tracker turns into a cheap no-op (retrying the connection once after ``retry_after_s``), so a dead server
costs seconds, not a training run. With ``spool_dir`` nothing is dropped: every call is first written to a durable
local ``Spool`` and shipped from there (``mlflow_sync.replay``), retried every ``retry_after_s`` for as long as it
takes. HTTP retries/timeouts are shortened only around our own calls. MLflow is imported inside functions
(importing it costs seconds; most callers only need the seam).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from msg_ray.tracking.base import (
    MAX_TAG_VAL_LENGTH,
    TERMINAL_STATUSES,
    clean_key,
    flatten_params,
    public,
    redact,
    resolve_tracking_uri,
)
from msg_ray.tracking.mlflow_sync import (
    METRICS_PER_BATCH,
    PARAMS_PER_BATCH,
    _client,
    _experiment_id,
    _first_line,
    _is_data_error,
    _short_http,
    _tag_entities,
    replay,
)
from msg_ray.tracking.spool import Spool

log = logging.getLogger(__name__)


class Tracker:
    """Rank-0 MLflow run that never raises into training.

    Use `start()` (returns the run id, or None when disabled/unreachable), then `log_*`, then `finish()`; or use
    it as a context manager (`finish("FAILED")` on an exception). `healthy` turns False on the first failure,
    with one warning (`error` keeps its text so the training output can repeat it).

    `spool_dir` (optional) makes tracking lossless: every call is appended to a `Spool` there first (figures as
    PNG files, dicts as JSON/YAML files, artifacts copied), then shipped in order; while MLflow is unreachable
    records wait on disk (no memory growth) and shipping is retried at most every `retry_after_s` seconds, for as
    long as the run lasts (`finish()` tries once more). `start()` on an existing spool (a resume, a restart after
    a crash) resumes the spool's run and ships what is left first; `mlflow_sync.sync(spool_dir)` ships it by
    hand. Use one spool directory per run (e.g. inside the run's checkpoint directory).
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
        spool_dir: str | os.PathLike | None = None,
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
        self.spool = Spool(spool_dir) if spool_dir is not None and enabled else None
        self._unshipped = 0  # metric points spooled since the last shipping attempt
        self._stale_status = 0  # status records up to this seq belong to an earlier session of the run
        if self.spool is not None and self.spool.run_id:
            if run_id and run_id != self.spool.run_id:
                raise ValueError(f"spool_dir {spool_dir} belongs to run {self.spool.run_id}, not {run_id}")
            self.run_id = self.spool.run_id

    # -- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> str | None:
        """Create the run, or resume `run_id` (same run, status back to RUNNING). Returns the run id or None."""
        if not self.enabled:
            return None
        if self.spool is not None:
            if self.spool.run_record() is None:
                self.spool.add_run(
                    experiment=self.experiment,
                    run_name=self.run_name,
                    tags=self.tags,
                    parent_run_id=self.parent_run_id,
                    uri=self.uri,
                )
            self._stale_status = self.spool.last_seq
        self._call("start run", self._open)
        if self._started and self.spool is not None:
            self._ship()
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
        if self.spool is not None:
            self.spool.set_run_id(self.run_id)

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
        if self.spool is not None:
            self.spool.append("status", sync=True, status=status)
            if self._failed_at is not None:  # one last attempt, whatever the retry delay
                self._failed_at = -float("inf")
            self.flush()
            return
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
        if self.spool is not None:
            if new:
                self.spool.append("params", params=new)
                self._params.update(new)  # spooled: will be in the run
                self.flush()
            return
        self._pending_params.update(new)  # kept until sent, so a reconnection still logs them
        if self._pending_params and self._ready():
            self._send_params()

    def _send_params(self) -> None:
        from mlflow.entities import Param

        items = [(k, v) for k, v in self._pending_params.items() if k not in self._params]
        for i in range(0, len(items), PARAMS_PER_BATCH):
            chunk = [Param(k, v) for k, v in items[i : i + PARAMS_PER_BATCH]]
            if not self._call("log params", self._batch(params=chunk)) and not self.healthy:
                return
            for param in chunk:  # sent, or refused as bad data (retrying would not help)
                self._params[param.key] = param.value
                self._pending_params.pop(param.key, None)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Buffer metrics at `step`; sent with log_batch every `flush_every` entries or on flush()."""
        if not self.enabled or (not self.healthy and self._reconnects_left <= 0 and self.spool is None):
            return  # given up for good: buffering would only grow memory
        now = int(time.time() * 1000)
        rows = []
        for key, value in metrics.items():
            try:
                rows.append((clean_key(key), float(value), now, int(step)))
            except (TypeError, ValueError):  # a non-number must not stop training either
                self._warn(f"msg_ray: metric {key!r}={value!r} is not a number; not logged")
        if self.spool is not None:
            if rows:
                self.spool.append("metrics", metrics=rows)
                self._unshipped += len(rows)
                if self._unshipped >= self.flush_every:
                    self.flush()
            return
        from mlflow.entities import Metric

        self._metrics += [Metric(*row) for row in rows]
        if len(self._metrics) > self.max_buffer:  # unreachable for long: keep the newest points
            del self._metrics[: len(self._metrics) - self.max_buffer]
        if len(self._metrics) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Send buffered metrics (with a spool: every unshipped record) now; kept while the store is unreachable."""
        if self.spool is not None:
            self._unshipped = 0
            if self._ready():
                self._ship()
            return
        while self._metrics and self._ready():
            chunk = self._metrics[:METRICS_PER_BATCH]
            ok = self._call("log metrics", self._batch(metrics=chunk))
            if not ok and not self.healthy:
                return
            del self._metrics[: len(chunk)]  # sent, or refused as bad data (retrying would not help)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        tags = {k: redact(str(v)) for k, v in (tags or {}).items()}  # error texts may quote a URI with credentials
        if self.spool is not None and tags:
            self.spool.append("tags", tags={clean_key(k): str(v)[:MAX_TAG_VAL_LENGTH] for k, v in tags.items()})
            self.flush()
            return
        if not tags or not self._ready():
            return
        entities = _tag_entities({clean_key(k): v for k, v in tags.items()})
        for i in range(0, len(entities), PARAMS_PER_BATCH):
            chunk = entities[i : i + PARAMS_PER_BATCH]
            self._call("set tags", self._batch(tags=chunk))

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Upload a local file or directory to the run's artifacts (with a spool: a copy is spooled first)."""
        if self.spool is not None:
            self._spool_file("log artifact", lambda: self.spool.add_artifact(path, artifact_path))
        elif self._ready():
            self._call("log artifact", lambda: self._client.log_artifact(self.run_id, str(path), artifact_path))

    def log_dict(self, d: Mapping[str, Any], name: str) -> None:
        """Store a dict as a .json or .yaml/.yml artifact (format chosen by `name`'s extension)."""
        if self.spool is not None:
            self._spool_file("log dict", lambda: self.spool.add_dict(d, name))
        elif self._ready():
            self._call("log dict", lambda: self._client.log_dict(self.run_id, public(d), name))

    def log_figure(self, fig, name: str) -> None:
        """Store a matplotlib figure (e.g. from msg_ray.plots) as an image artifact; the figure stays open."""
        if self.spool is not None:
            self._spool_file("log figure", lambda: self.spool.add_figure(fig, name))
        elif self._ready():
            self._call("log figure", lambda: self._client.log_figure(self.run_id, fig, name))

    def _spool_file(self, what: str, add: Callable[[], Any]) -> None:
        try:
            add()
        except Exception as exc:  # a missing file, an unserialisable dict, not a figure: warn, train on
            self._warn(f"msg_ray: refused {what}: {_first_line(exc)}")
            return
        self.flush()

    def _ship(self) -> None:
        """Replay the spool's unshipped records into the run (a failure leaves them for the next attempt)."""
        spool, stale = self.spool, self._stale_status
        self._call("ship spooled records", lambda: replay(self._client, self.run_id, spool, stale_status_upto=stale))

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
        if not due or (self._reconnects_left <= 0 and self.spool is None):
            return False  # with a spool: retried every retry_after_s, for as long as it takes
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
        self.error = f"msg_ray: MLflow tracking unavailable at {self.uri}: {_first_line(exc)}; " + (
            "training continues without tracking"
            if self.spool is None
            else f"training continues, tracking kept in {self.spool.directory} until it is back"
        )
        self._warn(self.error)

    @staticmethod
    def _warn(message: str) -> None:
        # stderr always (the run's output must say it); logging too when someone listens, without a
        # second copy from logging's last-resort stderr handler.
        print(message, file=sys.stderr, flush=True)
        if log.hasHandlers():
            log.warning(message)
