"""The tracking seam: what training and experiments need from a tracking backend, with no backend imported.

- ``RunTracker``: the protocol every tracker satisfies (start or resume a run, log params/metrics/tags/artifacts,
  flush, finish). ``msg_ray.tracking.mlflow_tracker.Tracker`` is the MLflow implementation; another backend plugs
  in by satisfying the same protocol and registering a factory (``msg_ray.tracking.registry``).
- Where the embedded store lives (``default_root``, ``default_tracking_uri``) and ``resolve_tracking_uri``, which
  makes a URI safe to hand to Ray workers.
- ``flatten_params`` / ``plain``: configs as flat params and JSON-able dicts; ``public`` is ``plain`` with the
  credentials of URIs (``s3://KEY:SECRET@bucket``) masked, for what a tracking server shows to everyone.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

# MLflow's own limits (mlflow.utils.validation); copied so importing this module does not import mlflow.
MAX_PARAM_VAL_LENGTH = 6000
MAX_TAG_VAL_LENGTH = 8000
MAX_KEY_LENGTH = 250
TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")
_BAD_KEY_CHARS = re.compile(r"[^/\w.\- :]")
_URI_SECRET = re.compile(r"(\b[a-zA-Z][\w+.-]*://)[^/@\s:]+:[^/@\s]+@")  # scheme://user:password@


def redact(text: str) -> str:
    """``text`` with the ``user:password@`` of every URI in it replaced by ``***@``."""
    return _URI_SECRET.sub(r"\1***@", text)


class RunTracker(Protocol):
    """One tracked run. Implementations never raise into training: a backend failure is a warning, ``healthy``
    turns False and ``error`` keeps the warning's text (the training output repeats it)."""

    run_id: str | None
    healthy: bool
    error: str | None

    def start(self) -> str | None: ...  # open (or resume, when constructed with a run_id) the run; its id
    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...
    def set_tags(self, tags: Mapping[str, Any]) -> None: ...
    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None: ...
    def log_dict(self, d: Mapping[str, Any], name: str) -> None: ...
    def log_figure(self, fig: Any, name: str) -> None: ...
    def flush(self) -> None: ...  # send what is buffered
    def finish(self, status: str = "FINISHED") -> None: ...


def default_root() -> Path:
    """Where embedded defaults live: $MSG_RAY_HOME, else ./runs, made absolute."""
    return Path(os.environ.get("MSG_RAY_HOME") or "runs").expanduser().resolve()


def default_tracking_uri() -> str:
    """The embedded default store: a sqlite file `<default_root()>/mlruns.db`."""
    return f"sqlite:///{default_root() / 'mlruns.db'}"


DEFAULT_TRACKING_URI = default_tracking_uri()


def resolve_tracking_uri(uri: str | None = None) -> str:
    """Pick the tracking URI (explicit > $MLFLOW_TRACKING_URI > default) and make it safe to hand to workers.

    Relative sqlite paths become absolute (Ray Tune runs trials in their own cwd, where a relative path would
    scatter one database per trial). File stores and bare paths raise ValueError: MLflow >= 3.14 refuses them.
    """
    raw = (uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()).strip()
    scheme = raw.split(":", 1)[0].lower() if ":" in raw else ""
    if scheme == "file" or len(scheme) <= 1:  # "file:...", "/abs/path", "rel/path", "C:\\path"
        raise ValueError(
            f"tracking URI {raw!r} is a file store or a bare path, which MLflow 3 refuses; use "
            "'sqlite:////abs/path/mlruns.db' for a local store or 'http://host:port' for a tracking server"
        )
    if scheme != "sqlite":
        return raw
    if not raw.startswith("sqlite:///") or raw in ("sqlite:///", "sqlite:///:memory:"):
        raise ValueError(f"tracking URI {raw!r} has no database file; use 'sqlite:////abs/path/mlruns.db'")
    path, sep, query = raw[len("sqlite:///") :].partition("?")
    absolute = Path(path).expanduser()
    absolute = absolute if absolute.is_absolute() else Path.cwd() / absolute
    return f"sqlite:///{os.path.normpath(absolute)}{sep}{query}"


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested mappings/dataclasses to {"a.b.c": str(value)}, keys sanitised, values truncated."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, prefix=f"{name}."))
        else:
            flat[clean_key(name)] = redact(str(value))[:MAX_PARAM_VAL_LENGTH]
    return flat


def clean_key(key: str) -> str:
    """A key MLflow accepts: allowed characters only, and a normalised relative path ("a//b" -> "a/b")."""
    key = posixpath.normpath(_BAD_KEY_CHARS.sub("_", str(key)) or "_").lstrip("/")
    return ("_" + key if key.startswith(".") else key)[:MAX_KEY_LENGTH]


def public(d: Any) -> Any:
    """``plain(d)`` with URI credentials masked in every string (configs logged as artifacts)."""
    return _masked(plain(d))


def _masked(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _masked(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_masked(v) for v in d]
    return redact(d) if isinstance(d, str) else d


def plain(d: Any) -> Any:
    """Make configs (dataclasses, Paths, tuples) serialisable as JSON/YAML."""
    if dataclasses.is_dataclass(d) and not isinstance(d, type):
        d = dataclasses.asdict(d)
    if isinstance(d, Mapping):
        return {str(k): plain(v) for k, v in d.items()}
    if isinstance(d, list | tuple):
        return [plain(v) for v in d]
    if d is None or isinstance(d, bool | int | float | str):
        return d
    return str(d)
