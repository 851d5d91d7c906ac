"""Ray Data executor for `msg_ray.data.prepare`: chunk tasks tokenised in parallel over the cluster's CPUs.

``prepare(cfg, executor=ray_executor(address))``: each chunk task becomes one row of a Ray dataset, one block per
row, and ``map_batches`` (one task per batch of one, ``num_cpus=1``) runs `msg_ray.data.pipeline.run_chunk` on it,
which writes the chunk's shards to the shared storage itself; only the small done markers come back to the
driver. Ray starts (or connects to ``address``) only when an executor is actually called, i.e. when shards are
missing. The tokenizer's own thread pool is switched off in the tasks, so a task uses the one CPU Ray gave it and
throughput scales with the CPUs Ray has. Small corpora (under ``local_below`` characters) are tokenised in the
driver instead (same function, same bytes), so the Quick start on WikiText-2 does not wait for Ray Data.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from msg_ray.data.pipeline import Executor, run_chunk, run_chunks


def _map_batch(batch: dict[str, np.ndarray], ctx: dict[str, Any]) -> dict[str, np.ndarray]:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    out = [json.dumps(run_chunk(json.loads(t), ctx)) for t in batch["task"]]
    return {"result": np.array(out, dtype=object)}


def _task_chars(task: dict[str, Any]) -> int:
    """About how much text a chunk task holds (a whole csv/JSON/parquet file counts as its size on disk)."""
    if "texts" in task:
        return sum(map(len, task["texts"]))
    if "end" in task:
        return task["end"] - task["start"]
    return os.path.getsize(task["path"])


def ray_executor(address: str | None = None, local_below: int = 16 << 20) -> Executor:
    """An executor running chunk tasks with Ray Data ``map_batches`` (connects to ``address``, ``RAY_ADDRESS`` or
    starts a local Ray if none is running in this process). A wave of less than ``local_below`` characters of text
    (WikiText-2 is 13 MB) runs in this process instead: Ray Data's start-up would cost more than it saves."""

    def ray(tasks: list[dict[str, Any]], ctx: dict[str, Any]) -> list[dict[str, Any]]:
        import ray as ray_
        import ray.data

        if sum(map(_task_chars, tasks)) < local_below:
            return run_chunks(tasks, ctx)

        if not ray_.is_initialized():
            ray_.init(address=address or os.environ.get("RAY_ADDRESS"))
        items = [{"task": json.dumps(t)} for t in tasks]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        rows = ds.map_batches(_map_batch, fn_kwargs={"ctx": ctx}, batch_size=1, num_cpus=1).take_all()
        return [json.loads(r["result"]) for r in rows]

    return ray
