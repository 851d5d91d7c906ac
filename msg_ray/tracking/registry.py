"""Which tracker a run writes to: the tracker registry and ``TrackingConfig.backend``, the config field that picks one.

A tracker backend is a name and a factory: a callable taking the run's identity (``uri``, ``experiment``,
``run_name``) and the optional ``run_id``, ``enabled``, ``parent_run_id``, ``tags``, ``spool_dir`` and
``retry_after_s``, and returning a ``RunTracker`` (``msg_ray.tracking.base``). ``make_tracker`` is the one place
training, Tune and comparisons create trackers; ``msg_ray.tracking`` registers the built-in MLflow backend (one
line), and a new tracker is one more ``register`` call. No backend is imported here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from msg_ray.tracking.base import RunTracker
from msg_ray.validate import check_types

TrackerFactory = Callable[..., RunTracker]
DEFAULT_BACKEND = "mlflow"

_REGISTRY: dict[str, TrackerFactory] = {}


def register(name: str, factory: TrackerFactory) -> TrackerFactory:
    """Add tracker backend ``name`` (a name may be registered once)."""
    if not name or not isinstance(name, str):
        raise ValueError(f"tracker backend name must be a non-empty string, got {name!r}")
    if name in _REGISTRY:
        raise ValueError(f"tracker backend {name!r} is already registered")
    _REGISTRY[name] = factory
    return factory


def unregister(name: str) -> None:
    """Remove backend ``name`` (for tests and plugins that registered a temporary one)."""
    _REGISTRY.pop(name, None)


def tracker_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def check_backend(name: Any) -> str:
    """``name`` if it is a registered backend; a one-line ValueError listing the known ones otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"backend must be one of {tracker_names()}, got {name!r}")
    return name


@dataclass(frozen=True, kw_only=True)
class TrackingConfig:
    """A run's ``tracking`` section: which registered tracker backend records it (``tracking.backend``).

    The store and the experiment stay in ``RunConfig.tracking_uri`` and ``RunConfig.experiment``.
    """

    backend: str = DEFAULT_BACKEND

    def __post_init__(self) -> None:
        check_types(self)
        check_backend(self.backend)


def make_tracker(
    tracking: TrackingConfig | str,
    *,
    uri: str | None,
    experiment: str,
    run_name: str,
    run_id: str | None = None,
    enabled: bool = True,
    parent_run_id: str | None = None,
    tags: dict | None = None,
    spool_dir: str | os.PathLike | None = None,
    **options: Any,
) -> RunTracker:
    """A tracker of ``tracking``'s backend (a ``TrackingConfig`` or a backend name) for one run.

    ``options`` go to the backend's factory as they are (the MLflow one takes ``flush_every``, ``retry_after_s``).
    """
    backend = tracking.backend if isinstance(tracking, TrackingConfig) else tracking
    try:
        factory = _REGISTRY[check_backend(backend)]
    except ValueError as e:
        raise ValueError(f"tracking.{e}") from None
    return factory(
        uri=uri,
        experiment=experiment,
        run_name=run_name,
        run_id=run_id,
        enabled=enabled,
        parent_run_id=parent_run_id,
        tags=tags,
        spool_dir=spool_dir,
        **options,
    )
