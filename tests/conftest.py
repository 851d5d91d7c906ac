"""Shared fixtures: one local Ray for the session, offline Hugging Face settings, GPU-marker skipping, an MLflow
sqlite store per module and a real `mlflow server` on demand."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from netutil import MlflowServer, sqlite_store

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def ray_local():
    """A real local Ray (4 logical CPUs on 2 cores so a 2-worker TorchTrainer and its controller fit).

    Started on first use and kept for later modules; started again if a test shut it down (the job-submit test
    does, so that only its own head node runs on the machine)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=True)
    yield ray


@pytest.fixture(scope="session", autouse=True)
def _ray_shutdown_at_exit():
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _synthetic_history(n: int = 400, growths: tuple[int, ...] = (100, 250), seed: int = 0) -> dict:
    """A synthetic run history: loss bumps after each growth, slower steps after the first growth."""
    import numpy as np

    rng = np.random.default_rng(seed)
    step = np.arange(n)
    loss = 7 * np.exp(-step / 150) + 3 + 0.05 * rng.standard_normal(n)
    for g in growths:  # a small bump after each growth, like a No-Mask run
        loss[g : g + 20] += 0.3 * np.exp(-np.arange(len(loss[g : g + 20])) / 5)
    wall = np.cumsum(np.where(step < growths[0], 0.05, 0.1))
    return {
        "step": step.tolist(),
        "wall_s": wall.tolist(),
        "flops": (step * 1e12).tolist(),
        "train_loss": loss.tolist(),
        "val_step": list(range(0, n, 50)),
        "val_loss": loss[::50].tolist(),
    }


@pytest.fixture
def make_history():
    """``make_history(n=400, growths=(100, 250), seed=0)`` -> a synthetic run history for plot/tracking tests."""
    return _synthetic_history


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One sqlite store per test module (own experiment per test), copied from the process's migrated template;
    the mlflow server fixture serves the same file, so its startup skips the migrations too."""
    return sqlite_store(tmp_path_factory.mktemp("mlflow") / "mlruns.db")


@pytest.fixture
def mlflow_server(store, tmp_path):
    """A real `mlflow server` (:class:`netutil.MlflowServer`) over ``store``, not yet started; killed at teardown."""
    server = MlflowServer(store, tmp_path)
    yield server
    server.kill(signal.SIGTERM)
