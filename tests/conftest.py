"""Shared fixtures: one local Ray for the session, offline Hugging Face settings, GPU-marker skipping."""

from __future__ import annotations

import os

import pytest
import torch

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
