"""Downstream scores of a sweep's trials: linear probes on each trial's final model (``msg_ray.compare.probe``).

``probe_checkpoint(path, tasks, examples)`` loads a trial's final checkpoint, tokenises each classification task
(movie sentiment, BBC topics) with the trial's own tokenizer, and fits the comparison's linear probe on a seeded
subset of ``examples`` texts per split (train/dev/test), so the cost stays a small fraction of a mini run (one
forward pass per text, no backward through the model). Scores are ``{"<task>/probe_<metric>": value}``.

The sweep runs it as one Ray task per finished trial (``probe_task``) and logs the scores to the trial's MLflow run.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import torch

from msg_ray.compare.evaluate import load_model
from msg_ray.compare.finetune import encode
from msg_ray.compare.probe import probe
from msg_ray.data import DataConfig, prepare
from msg_ray.data.downstream import load_classification, num_labels

PROBE_SEQ_LEN = 64  # tokens per text: the snippets are short; news articles are read from their start
PREFIX = "probe/"  # MLflow metric prefix in a trial's run


def _subset(examples: list, n: int, seed: int) -> list:
    """``n`` examples drawn with a fixed seed (the splits are stratified; a random draw keeps them roughly so)."""
    return examples if len(examples) <= n else random.Random(seed).sample(examples, n)


def probe_checkpoint(path: str | Path, tasks: list[str], examples: int, threads: int = 1) -> dict[str, float]:
    """Probe scores of the model in checkpoint folder ``path`` on ``tasks`` (``examples`` texts per split)."""
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    loaded = load_model(path)
    rc: dict[str, Any] = loaded.run_config or {}
    data_cfg = DataConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in rc["data"].items()})
    data = prepare(data_cfg)
    seq_len = min(PROBE_SEQ_LEN, loaded.model.config.max_seq_len)
    args = (data.tokenizer, seq_len, data.cls_id, data.sep_id, data.pad_id)
    out: dict[str, float] = {}
    for task in tasks:
        splits = load_classification(task, seed=data_cfg.split_seed, cache_dir=data_cfg.cache_dir)
        enc = {name: encode(args[0], _subset(ex, examples, 0), *args[1:]) for name, ex in splits.items()}
        scores = probe(loaded.model, enc, num_labels(task))
        out.update({f"{task}/probe_{k}": float(v) for k, v in scores.items() if k != "l2"})
    out["probe_seconds"] = time.perf_counter() - t0
    return out


def probe_task(path: str, tasks: list[str], examples: int) -> dict[str, float]:
    """The Ray task body: probe one checkpoint; a failure is returned as ``{"probe_error": ...}`` (a probe must
    not fail the sweep whose trials all trained)."""
    try:
        return probe_checkpoint(path, tasks, examples)
    except Exception as e:  # noqa: BLE001 - reported in the table and the log, the sweep goes on
        return {"probe_error": f"{type(e).__name__}: {e}"}  # type: ignore[dict-item]
