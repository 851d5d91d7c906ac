"""What each comparison workload asks Ray for, and the device it then computes on.

- A comparison run in ``parallel`` mode is one Tune trial training one DeepSpeed rank in its own process: it asks
  for ``cpus_per_worker`` CPUs and, with ``use_gpu``, one GPU (``trial_resources``); with GPUs, at most as many
  trials run at once as the cluster has GPUs (``trial_concurrency``).
- Extending a run (``extend.extend_run``) and evaluating a checkpoint (``evaluate.evaluate_checkpoint``: fine-tuning,
  probes, perplexity) are Ray tasks: ``task_options`` asks for their CPUs and, for a model trained on GPUs, one GPU.
- Inside a task, ``task_device`` is the GPU Ray assigned (Ray sets ``CUDA_VISIBLE_DEVICES``, so it is ``cuda``) or
  the CPU. Requests are plain dicts: a CPU machine can check them (a local Ray with logical GPUs assigns them).
"""

from __future__ import annotations

from typing import Any

import torch

from msg_ray.train.config import RunConfig
from msg_ray.train.worker import worker_resources


def trial_resources(run: RunConfig) -> dict[str, float]:
    """Resources of one ``parallel``-mode trial: one worker's (it trains with DeepSpeed world size 1)."""
    return worker_resources(run)


def trial_concurrency(max_concurrent: int | None, run: RunConfig, cluster: dict[str, float]) -> int | None:
    """Trials at once: ``max_concurrent`` (None: no cap of ours) and, with ``use_gpu``, no more than the cluster's
    GPUs, so a trial never waits in Tune's queue holding its CPUs while every GPU is taken."""
    if not run.use_gpu:
        return max_concurrent
    gpus = max(1, int(cluster.get("GPU", 0)))
    return gpus if max_concurrent is None else min(max_concurrent, gpus)


def task_options(use_gpu: bool, num_cpus: float = 1.0, threads: int = 1) -> dict[str, Any]:
    """``ray.remote``/``.options`` arguments of one extension or evaluation task."""
    env = {"OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    return {"num_cpus": num_cpus, "num_gpus": 1 if use_gpu else 0, "runtime_env": {"env_vars": env}}


def task_device(use_gpu: bool) -> torch.device:
    """Where a task computes: the GPU Ray gave it (``cuda``, the only visible one) when asked for and present."""
    return torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")


def used_gpu(run_config: dict[str, Any] | None) -> bool:
    """Whether the run a checkpoint came from trained on GPUs (its resolved config; False when unknown)."""
    return bool(run_config and run_config.get("use_gpu"))
