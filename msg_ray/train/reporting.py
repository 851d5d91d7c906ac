"""Where a training worker reports to (Ray Train or Ray Tune) and the process environment it needs.

Ray is imported inside ``Session``: this module is imported by the training loop, which the plain tests and the
driver import without starting (or importing) Ray.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DIVERGED = "training diverged"


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite. Raised by the worker before anything of the diverged state is
    checkpointed; the driver re-raises it (unwrapped from Ray's failure) and the CLI reports it in one line."""


def worker_env(use_gpu: bool) -> dict[str, str]:
    """Environment of a training process, set before DeepSpeed is imported (it picks its accelerator then)."""
    env = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    if not use_gpu:
        env["DS_ACCELERATOR"] = "cpu"
    return env


class Session:
    """Where a run reports to: Ray Train (``ray.train.*``, any number of workers) or, for one-worker Tune trials
    run in-process, Ray Tune (``ray.tune.*``). Train V2 keeps the two APIs apart."""

    def __init__(self, kind: str = "train") -> None:
        if kind == "train":
            import ray.train as api

            ctx = api.get_context()
            self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        elif kind == "tune":
            import ray.tune as api

            self.rank, self.world = 0, 1
        else:
            raise ValueError(f"Session kind must be 'train' or 'tune', got {kind!r}")
        self.api, self.kind = api, kind

    @property
    def node_id(self) -> str:
        """The Ray node this process runs on (placement of ranks on a multi-node cluster)."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def get_checkpoint(self):
        return self.api.get_checkpoint()

    def report(self, metrics: dict[str, Any], directory: str | None = None, name: str | None = None) -> None:
        """Metrics, and a checkpoint folder when given. Ray Train names the folder ``name``; ray.tune.report takes
        no folder name in Ray 2.60 (the stage/step stays in the checkpoint's meta.json)."""
        if directory is None:
            self.api.report(metrics)
            return
        ckpt = self.api.Checkpoint.from_directory(directory)
        if self.kind == "train":
            self.api.report(metrics, checkpoint=ckpt, checkpoint_dir_name=name)
        else:
            self.api.report(metrics, checkpoint=ckpt)


class LocalSession:
    """Where a run reports when it trains in this process without Ray, as one rank (``worker.run_local``; the GPU
    check ``benchmarks/gpu_check.py`` drives the real loop this way): every report is kept in ``reports``, every
    checkpoint folder is copied to ``root/<name>`` (unless ``keep`` is False), and ``resume_from`` (a checkpoint folder) is where it starts."""

    kind = "local"
    rank, world, node_id = 0, 1, "local"

    def __init__(self, root: str | Path, resume_from: str | Path | None = None, keep: bool = True) -> None:
        self.root, self.resume_from, self.keep = Path(root), resume_from, keep
        self.reports: list[dict[str, Any]] = []
        self.checkpoints: list[Path] = []

    def get_checkpoint(self) -> _Folder | None:
        return None if self.resume_from is None else _Folder(Path(self.resume_from))

    def report(self, metrics: dict[str, Any], directory: str | None = None, name: str | None = None) -> None:
        self.reports.append(dict(metrics))
        if directory is not None and self.keep:
            dest = self.root / (name or f"checkpoint-{len(self.checkpoints)}")
            shutil.copytree(directory, dest, dirs_exist_ok=True)
            self.checkpoints.append(dest)


class _Folder:
    """A checkpoint folder as the loop reads one (``as_directory``, like ``ray.train.Checkpoint``)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def as_directory(self) -> Iterator[str]:
        yield str(self.path)
