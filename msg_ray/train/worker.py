"""How a training run executes on Ray: the one ``WorkerRun`` entry and the one ``TorchTrainer`` builder.

- ``run_worker(run, run_id, kind)``: set the worker environment, open the reporting session (Ray Train, or Ray Tune
  for a 1-worker trial in the trial's own process) and train. Every path that trains calls it.
- ``train_loop_per_worker``: the Ray Train worker function (``run_worker`` with a Train session).
- ``run_local(cfg, root)``: the same worker path in this process as one rank, without Ray (``benchmarks/gpu_check``).
- ``torch_trainer(cfg, run_id, callbacks)``: the ``TorchTrainer`` of a run, used by ``train.run`` (one run) and by
  nested Tune trials (``tune.trial``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from msg_ray.train.collectives import ray_backend
from msg_ray.train.config import RunConfig
from msg_ray.train.engine import freeze_import_heap
from msg_ray.train.hostmem import keep_freed_memory
from msg_ray.train.loop import WorkerRun
from msg_ray.train.reporting import LocalSession, Session, worker_env


def run_worker(run: dict[str, Any], run_id: str | None, kind: str = "train") -> None:
    """Train the run described by ``run`` (``RunConfig.to_dict()``) in this process, reporting to ``kind``."""
    cfg = RunConfig.from_dict(run)
    os.environ.update(worker_env(cfg.use_gpu))  # before deepspeed is imported
    freeze_import_heap()  # before any model exists: each growth's gc.collect() then takes ms, not ~1 s
    if not cfg.use_gpu:
        keep_freed_memory()  # CPU training: no per-step page faults on the logits (msg_ray.train.hostmem)
    WorkerRun(cfg, run_id=run_id, session=Session(kind)).train()


def run_local(
    run: RunConfig,
    root: str | Path,
    resume_from: str | Path | None = None,
    loop: Callable[..., WorkerRun] = WorkerRun,
    keep_checkpoints: bool = True,
) -> tuple[WorkerRun, LocalSession]:
    """Train ``run`` in this process as one rank without Ray (the environment ``run_worker`` sets, a
    ``LocalSession`` collecting reports and, with ``keep_checkpoints``, checkpoint folders under ``root``); returns
    the finished loop (its engine still alive, for checks) and the session. ``loop``: ``WorkerRun`` or a subclass
    that observes it."""
    os.environ.update(worker_env(run.use_gpu))
    freeze_import_heap()
    if not run.use_gpu:
        keep_freed_memory()
    session = LocalSession(root, resume_from, keep_checkpoints)
    worker = loop(run, run_id=None, session=session)
    worker.train()
    return worker, session


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point (``train_loop_config={"run": cfg.to_dict(), "run_id": ...}``)."""
    run_worker(config["run"], config.get("run_id"), config.get("session", "train"))


def worker_resources(cfg: RunConfig) -> dict[str, float]:
    """Ray resources of one training worker: ``cpus_per_worker`` CPUs and, with ``use_gpu``, one GPU (its rank's)."""
    return {"CPU": cfg.cpus_per_worker, **({"GPU": 1.0} if cfg.use_gpu else {})}


def torch_trainer(cfg: RunConfig, run_id: str | None, callbacks: list | None = None):
    """The Ray Train ``TorchTrainer`` of one run: ``cfg.workers`` workers (``worker_resources`` each), gloo on CPU /
    NCCL on GPUs (``collectives.ray_backend``), resumable under its name in ``cfg.storage_path`` (a re-used name
    continues from the last checkpoint)."""
    import ray.train  # heavy: only where a run is launched
    from ray.train.torch import TorchConfig, TorchTrainer

    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"run": cfg.to_dict(), "run_id": run_id},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.workers, use_gpu=cfg.use_gpu, resources_per_worker=worker_resources(cfg)
        ),
        run_config=ray.train.RunConfig(
            name=cfg.name,
            storage_path=cfg.storage_path,
            callbacks=callbacks or [],
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
        ),
        torch_config=TorchConfig(backend=ray_backend(cfg.use_gpu)),
    )
