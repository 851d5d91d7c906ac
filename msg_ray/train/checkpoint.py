"""Save and restore everything a resume needs, in a layout independent of ZeRO stage and worker count.

A checkpoint folder (named ``stage{k}-step{N:07d}``, the stage and optimizer step it was taken at) holds:
- ``model.pt`` (rank 0): full fp32 parameters by name plus the MSG mask buffers (exact mid-ramp restore);
- ``optim.pt`` (rank 0): AdamW moments by name and the optimizer step count (consolidated, so a run can resume
  on a different number of workers or ZeRO stage);
- ``meta.json`` (rank 0): structure, stage and schedule position, mask c and ramp start, wall time and FLOPs so
  far, MLflow run id, metric history for plots, and the resolved config;
- ``rank{r}.pt`` (every rank): its data-loader position and RNG states.
No absolute paths are stored, so a checkpoint moves between machines with the storage it lives on.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

META, MODEL, OPTIM = "meta.json", "model.pt", "optim.pt"


def folder_name(stage: int, step: int, final: bool = False) -> str:
    return f"{'final-' if final else ''}stage{stage}-step{step:07d}"


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])


def save(
    directory: str | Path,
    *,
    rank: int,
    rank_state: dict[str, Any],
    meta: dict[str, Any] | None = None,
    params: dict[str, torch.Tensor] | None = None,
    buffers: dict[str, torch.Tensor] | None = None,
    moments: dict[str, Any] | None = None,
) -> Path:
    """Write this rank's part of a checkpoint into ``directory`` (rank 0 also writes model/optim/meta)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    torch.save(rank_state, d / f"rank{rank}.pt")
    if rank == 0:
        if meta is None or params is None or moments is None:
            raise ValueError("checkpoint.save: rank 0 must provide meta, params and moments")
        torch.save({"params": params, "buffers": buffers or {}}, d / MODEL)
        torch.save(moments, d / OPTIM)
        (d / META).write_text(json.dumps(meta, indent=1, default=str))
    return d


@dataclass
class Loaded:
    meta: dict[str, Any]
    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    moments: dict[str, Any]
    rank_state: dict[str, Any]


def read(path: str | Path) -> Any:
    """A checkpoint file's tensors and plain values. ``weights_only=True``: a crafted file cannot run code on load
    (it holds only tensors, dicts, lists, tuples, numbers, strings and None). An unreadable file (truncated, not a
    checkpoint, or carrying other objects) raises ValueError naming it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle/zip errors of a damaged file, or UnpicklingError of a disallowed object
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ValueError(f"{path}: unreadable checkpoint file ({type(e).__name__}: {first})") from e


def load(directory: str | Path, rank: int) -> Loaded:
    """Read a checkpoint. A rank with no file of its own (the world grew) gets rank 0's loader position and no
    RNG state; the loader shards by its own rank, so data stays disjoint."""
    d = Path(directory)
    missing = [f for f in (META, MODEL, OPTIM) if not (d / f).exists()]
    if missing:
        raise ValueError(f"checkpoint {d.name} is incomplete: missing {missing}")
    model = read(d / MODEL)
    rank_file = d / f"rank{rank}.pt"
    rank_state = read(rank_file) if rank_file.exists() else {**read(d / "rank0.pt"), "rng": None}
    return Loaded(
        meta=json.loads((d / META).read_text()),
        params=model["params"],
        buffers=model["buffers"],
        moments=read(d / OPTIM),
        rank_state=rank_state,
    )


def load_or_previous(directory: str | Path, rank: int, root: str | Path) -> tuple[Loaded, str | None]:
    """``load(directory)``; when that checkpoint is damaged, the newest loadable checkpoint folder under ``root``
    (the run's storage) taken at an earlier step. Returns (loaded, warning or None). Every rank scans the same
    shared folders in the same order, so all ranks fall back to the same checkpoint."""
    try:
        return load(directory, rank), None
    except ValueError as first:
        bad = Path(directory).resolve()
        try:
            bad_step = json.loads((bad / META).read_text())["step"]
        except (OSError, ValueError, KeyError):
            bad_step = float("inf")
        candidates = []
        for meta in Path(root).rglob(META):
            d = meta.parent.resolve()
            try:
                step = json.loads(meta.read_text())["step"]
            except (OSError, ValueError, KeyError):
                continue
            if d != bad and step < bad_step and (d / MODEL).exists():
                candidates.append((step, str(d)))
        for _, d in sorted(candidates, reverse=True):
            try:
                loaded = load(d, rank)
            except ValueError:
                continue
            return loaded, f"checkpoint {bad.name} is damaged ({first}); resuming from {Path(d).name} instead"
        raise
