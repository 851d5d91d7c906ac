"""Save and restore everything a resume needs, in a layout independent of ZeRO stage and worker count.

A checkpoint folder (named ``stage{k}-step{N:07d}``, the stage and optimizer step it was taken at) holds:
- ``model.pt`` (rank 0): full fp32 parameters by name plus the MSG mask buffers (exact mid-ramp restore);
- ``optim.pt`` (rank 0): AdamW moments by name and the optimizer step count (consolidated, so a run can resume
  on a different number of workers or ZeRO stage);
- ``meta.json`` (rank 0): structure, stage and schedule position, mask c and ramp start, wall time and FLOPs so
  far, MLflow run id, metric history for plots, and the resolved config;
- ``rank{r}.pt`` (every rank): its data-loader position and RNG states (Python, torch CPU, its CUDA device's);
- ``manifest-rank{r}.json`` (every rank): size and SHA-256 of each file that rank wrote. Loading verifies them,
  so a truncated or altered file is found before it is unpickled, and resume falls back to the previous checkpoint.
Files are written to a temporary name and renamed, so a crash mid-write never leaves a half file under the real
name. No absolute paths are stored, so a checkpoint moves between machines with the storage it lives on.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

META, MODEL, OPTIM = "meta.json", "model.pt", "optim.pt"


def folder_name(stage: int, step: int, final: bool = False) -> str:
    return f"{'final-' if final else ''}stage{stage}-step{step:07d}"


def rng_state() -> dict[str, Any]:
    """This process's RNG states: Python's, torch's CPU generator and, once CUDA is initialised, the generator of
    the current CUDA device (this rank's: dropout and any random op on the GPU draw from it)."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():  # a CPU resume of a GPU run ignores it
        torch.cuda.set_rng_state(state["cuda"])


def save(
    directory: str | Path,
    *,
    rank: int,
    rank_state: dict[str, Any],
    meta: dict[str, Any] | None = None,
    params: dict[str, torch.Tensor] | None = None,
    buffers: dict[str, torch.Tensor] | None = None,
    moments: dict[str, Any] | None = None,
    threads: int = 1,
) -> Path:
    """Write this rank's part of a checkpoint into ``directory`` (rank 0 also writes model/optim/meta). Files are
    written and hashed by up to ``threads`` threads (the worker's CPUs): serialising, fsync and SHA-256 of the
    model and optimizer files overlap instead of running one after the other."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if rank == 0 and (meta is None or params is None or moments is None):
        raise ValueError("checkpoint.save: rank 0 must provide meta, params and moments")
    jobs = [(d / f"rank{rank}.pt", lambda f: torch.save(rank_state, f))]
    if rank == 0:
        jobs.append((d / MODEL, lambda f: torch.save({"params": params, "buffers": buffers or {}}, f)))
        jobs.append((d / OPTIM, lambda f: torch.save(moments, f)))
        jobs.append((d / META, lambda f: f.write(json.dumps(meta, indent=1, default=str).encode())))

    def write(job: tuple[Path, Any]) -> tuple[str, dict[str, Any]]:
        path = _atomic(*job)
        return path.name, {"bytes": path.stat().st_size, "sha256": _sha256(path)}

    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(jobs)))) as pool:
        manifest = dict(pool.map(write, jobs))
    _atomic(d / f"manifest-rank{rank}.json", lambda f: f.write(json.dumps(manifest, indent=1).encode()))
    return d


def _atomic(path: Path, write: Any) -> Path:
    """``write(file)`` into ``path.tmp``, flushed to disk, then renamed onto ``path`` (atomic on POSIX)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 23), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(directory: str | Path) -> None:
    """Check every file a manifest in ``directory`` lists (size, then SHA-256); ValueError naming the first bad
    one. Checkpoints written before manifests existed have none and pass."""
    d = Path(directory)
    for manifest in sorted(d.glob("manifest-rank*.json")):
        try:
            entries = json.loads(manifest.read_text())
        except ValueError as e:
            raise ValueError(f"checkpoint {d.name}: {manifest.name} is unreadable ({e})") from e
        for name, want in entries.items():
            f = d / name
            if not f.is_file():
                raise ValueError(f"checkpoint {d.name}: {name} is missing (listed in {manifest.name})")
            if f.stat().st_size != want["bytes"]:
                raise ValueError(f"checkpoint {d.name}: {name} has {f.stat().st_size} bytes, {want['bytes']} written")
            if _sha256(f) != want["sha256"]:
                raise ValueError(f"checkpoint {d.name}: {name} does not match its SHA-256 (altered or corrupt)")


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
    verify(d)
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


def newest(root: str | Path, rank: int, before_step: float = float("inf"), skip: Path | None = None) -> Loaded | None:
    """The newest loadable checkpoint under ``root`` (the run's storage) taken before ``before_step``, or None.
    Every rank scans the same shared folders in the same order, so all ranks pick the same checkpoint."""
    candidates = []
    for meta in Path(root).rglob(META):
        d = meta.parent.resolve()
        try:
            step = json.loads(meta.read_text())["step"]
        except (OSError, ValueError, KeyError):
            continue
        if d != skip and step < before_step and (d / MODEL).exists():
            candidates.append((step, str(d)))
    for _, d in sorted(candidates, reverse=True):
        try:
            return load(d, rank)
        except ValueError:
            continue
    return None


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
        loaded = newest(root, rank, before_step=bad_step, skip=bad)
        if loaded is not None:
            return loaded, f"checkpoint {bad.name} is damaged ({first}); resuming from {loaded.meta['folder']} instead"
        raise
