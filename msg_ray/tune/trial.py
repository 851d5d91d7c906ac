"""Tune trial functions: one training run per trial, in-process (1 worker) or as a nested TorchTrainer (W workers).

- ``inprocess_trial``: the training loop runs inside the Tune trial's own actor with DeepSpeed world size 1
  (``msg_ray.train.engine.ensure_distributed`` gives each trial process its own free MASTER_PORT), reporting
  through ``ray.tune.report``. No Train controller, no worker group: much cheaper per trial (see the report).
- ``nested_trial``: the trial launches a ``TorchTrainer`` whose rank 0 forwards its reports to Tune
  (``TuneReportCallback``). Resources are sized by ``plan_resources`` so that ``max_concurrent`` trials *and*
  their workers always fit in the cluster (a trial holding a whole CPU while its workers wait for more is how
  concurrent nested trials deadlocked on 2 CPUs); with ``run.use_gpu`` every worker holds one GPU and
  concurrency is sized by the cluster's GPUs.

Both add ``loss_avg`` (mean training loss over the γ window: ASHA's metric, far less noisy than one step's
loss) to every report and flush the rank-0 MLflow buffer first, so a trial ASHA stops keeps its metrics.
"""

from __future__ import annotations

import math
import os
from typing import Any

from msg_ray.train.config import RunConfig
from msg_ray.train.worker import run_worker, torch_trainer

TRIAL_CPU = 0.05  # what a nested trial's own actor holds: it only waits on its TorchTrainer


def inprocess_trial(config: dict[str, Any], plan: dict[str, Any]) -> None:
    """Tune function trainable: train ``plan["trials"][config["trial"]]`` here, world size 1."""
    spec = plan["trials"][config["trial"]]
    run_worker(spec["run"], spec["run_id"], "tune")


def nested_trial(config: dict[str, Any], plan: dict[str, Any]) -> None:
    """Tune function trainable: run the trial's TorchTrainer and forward rank 0's reports to Tune."""
    from ray.tune.integration.ray_train import TuneReportCallback  # heavy: only inside a Tune trial

    spec = plan["trials"][config["trial"]]
    cfg = RunConfig.from_dict(spec["run"])
    # Train V2 moves reports through its controller, which polls workers every 2 s by default: a trial
    # reporting every few steps for ASHA would spend most of its time waiting. Propagated to the controller.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    # same name + storage: a restored trial's TorchTrainer resumes from its last checkpoint
    trainer = torch_trainer(cfg, spec["run_id"], callbacks=[TuneReportCallback()])
    trainer.fit()


def plan_resources(
    mode: str,
    total_cpus: float,
    max_concurrent: int | None,
    workers: int,
    cpus_per_worker: float,
    use_gpu: bool = False,
    total_gpus: float = 0.0,
) -> tuple[dict[str, float], float, int]:
    """(trial resources, CPUs per Train worker, max concurrent trials) such that concurrent trials always fit.

    in-process: the trial is the worker (``cpus_per_worker`` each, plus ``{"GPU": 1}`` with ``use_gpu``). nested:
    each trial holds ``TRIAL_CPU`` and its ``workers`` hold ``cpus_per_worker`` (and one GPU each with ``use_gpu``,
    requested by the trial's TorchTrainer), shrunk (to 0.01 CPU steps) when ``max_concurrent`` trials would not
    fit otherwise; the Train controller itself holds no CPU in Ray Train V2. With ``use_gpu``, concurrency is also
    capped by the cluster's GPUs (``total_gpus // workers``), and a cluster without enough GPUs is an error here,
    before any trial waits forever for one.
    """
    if workers < 1:
        raise ValueError(f"workers_per_trial: must be >= 1, got {workers}")
    if mode not in ("inprocess", "nested"):
        raise ValueError(f"mode: must be 'inprocess' or 'nested', got {mode!r}")
    if mode == "inprocess" and workers != 1:
        raise ValueError("mode 'inprocess' trains with one worker; use mode 'nested' for workers_per_trial > 1")
    gpu_k = int(total_gpus // workers) if use_gpu else None
    if gpu_k is not None and gpu_k < 1:
        raise ValueError(
            f"run.use_gpu: a trial needs {workers} GPU(s) ({workers} worker(s) x 1), the cluster has {total_gpus:g}"
        )
    if mode == "inprocess":
        k = max_concurrent or max(1, int(total_cpus // cpus_per_worker))
        k = min(k, gpu_k) if gpu_k else k
        return {"CPU": cpus_per_worker, **({"GPU": 1.0} if use_gpu else {})}, cpus_per_worker, k
    k = max_concurrent or max(1, int(total_cpus // (workers * cpus_per_worker + TRIAL_CPU)))
    k = min(k, gpu_k) if gpu_k else k
    fit = (total_cpus / k - TRIAL_CPU) / workers
    per_worker = min(cpus_per_worker, math.floor(fit * 100) / 100)
    if per_worker < 0.01:
        raise ValueError(
            f"max_concurrent={k} trials x {workers} workers do not fit in {total_cpus:g} CPUs; lower max_concurrent"
        )
    return {"CPU": TRIAL_CPU}, per_worker, k
