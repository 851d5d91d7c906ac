"""Driver side of one training run: validate and prepare (before Ray), open the MLflow run, launch Ray Train.

``run(config) -> RunResult`` is the single entry the CLI, the pipelines, Tune and the comparison use.
The MLflow run is created (or found again, by the run-name tag) here in the driver, so a Ray retry or a user
re-running the same ``name`` continues the same MLflow run instead of opening a duplicate.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from msg_ray.data import prepare
from msg_ray.tracking import RunTracker, find_runs, make_tracker, resolve_tracking_uri
from msg_ray.train.config import RunConfig
from msg_ray.train.progress import spool_dir
from msg_ray.train.reporting import DIVERGED, TrainingDiverged
from msg_ray.train.worker import torch_trainer

RUN_TAG = "msg_ray.run_name"


@dataclass
class RunResult:
    name: str
    run_id: str | None
    tracking_uri: str
    checkpoint_path: str | None
    metrics: dict[str, Any]
    history: dict[str, list]

    @property
    def export_dir(self) -> Path | None:
        return Path(self.checkpoint_path) / "export" if self.checkpoint_path else None


def _open_mlflow_run(cfg: RunConfig) -> str | None:
    """Find the unfinished MLflow run of this run name (resume) or create it; log params, config, schedule."""
    try:
        found = find_runs(cfg.tracking_uri, cfg.experiment, tags={RUN_TAG: cfg.name})
    except Exception:  # the store is down: Tracker.start below says so once; the spool keeps everything
        found = []
    existing = [r for r in found if r.get("status") != "FINISHED"]
    kw = {"uri": cfg.tracking_uri, "experiment": cfg.experiment, "run_name": cfg.name, "tags": {RUN_TAG: cfg.name}}
    tracker = make_tracker(cfg.tracking, run_id=existing[0]["run_id"] if existing else None, **kw)
    run_id = tracker.start()
    if run_id is None:  # unreachable: the run's params go to the spool rank 0 continues (msg-ray sync ships it)
        tracker = make_tracker(cfg.tracking, spool_dir=spool_dir(cfg, None), **kw)
        tracker.start()
    log_run_config(tracker, cfg)
    return run_id


def log_run_config(tracker: RunTracker, cfg: RunConfig) -> None:
    """Params (flattened config plus the headline schedule fields) and the resolved config/schedule artifacts."""
    s = cfg.schedule
    tracker.log_params(
        {
            **cfg.to_dict(),
            "operator": s.operator,
            "phi": s.phi,
            "zero_stage": cfg.engine.zero_stage,
            "target": str(s.target),
            "n_stages": len(s.stages),
        }
    )
    tracker.log_dict(cfg.to_dict(), "resolved_config.json")
    tracker.log_dict(s.to_dict(), "schedule.yaml")
    tracker.flush()


def check_resources(cfg: RunConfig, cluster: dict[str, float]) -> None:
    """Refuse (ValueError naming the field) a run the cluster can never place, instead of waiting forever for
    workers: GPUs for ``use_gpu``, and ``workers`` x ``cpus_per_worker`` CPUs (what the cluster has now: an
    autoscaling cluster must already hold the nodes)."""
    gpus, cpus = cluster.get("GPU", 0.0), cluster.get("CPU", 0.0)
    if cfg.use_gpu and gpus < cfg.workers:
        raise ValueError(
            f"RunConfig.use_gpu: the Ray cluster has {gpus:g} GPU(s), the run needs {cfg.workers} "
            "(one per worker); set use_gpu=false or add GPU nodes"
        )
    if cfg.cpus_per_worker * cfg.workers > cpus:
        raise ValueError(
            f"RunConfig.cpus_per_worker: {cfg.workers} worker(s) x {cfg.cpus_per_worker:g} CPUs exceed "
            f"the cluster's {cpus:g} CPUs"
        )


def run(cfg: RunConfig, *, ray_address: str | None = None) -> RunResult:
    """Train one schedule with Ray Train + DeepSpeed; returns where the results are."""
    import ray  # heavy: only when a run is launched

    data = prepare(cfg.data)  # fetch/tokenise/pack in the driver: data errors surface before Ray starts
    cfg = replace(cfg, tracking_uri=resolve_tracking_uri(cfg.tracking_uri))
    print(f"[msg_ray {cfg.name}] data: {json.dumps(data.stats, default=str)}", flush=True)
    if not ray.is_initialized():
        ray.init(address=ray_address or os.environ.get("RAY_ADDRESS"))
    check_resources(cfg, ray.cluster_resources())  # before the MLflow run exists: a refused run leaves nothing
    run_id = _open_mlflow_run(cfg)
    trainer = torch_trainer(cfg, run_id)
    try:
        result = trainer.fit()
    except Exception as e:
        text = str(e)
        tracker = make_tracker(
            cfg.tracking, uri=cfg.tracking_uri, experiment=cfg.experiment, run_name=cfg.name, run_id=run_id
        )
        if tracker.start():  # reopen by id (finish needs an open client), record why, close as FAILED
            tracker.set_tags(
                {"msg_ray.error": text.strip().splitlines()[-1][:500] if text.strip() else type(e).__name__}
            )
            tracker.finish("FAILED")
        if DIVERGED in text:  # Ray wraps the worker's error: surface the worker's own one-line message
            raise TrainingDiverged(f"run {cfg.name!r}: {DIVERGED}{text.split(DIVERGED, 1)[1].splitlines()[0]}") from e
        raise
    ckpt = result.checkpoint
    history: dict[str, list] = {}
    if ckpt is not None:
        meta = Path(ckpt.path) / "meta.json"
        history = json.loads(meta.read_text())["history"] if meta.exists() else {}
    return RunResult(
        name=cfg.name,
        run_id=run_id,
        tracking_uri=cfg.tracking_uri,
        checkpoint_path=ckpt.path if ckpt else None,
        metrics=dict(result.metrics or {}),
        history=history,
    )
