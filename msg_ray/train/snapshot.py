"""A worker run's checkpoints and its final export: what a run writes into a checkpoint folder, how a loaded one
becomes a run position again, and the model export at the end of a run.

``msg_ray.train.checkpoint`` owns the folder format (files, manifests, verification); this module owns what a
training run puts in it: its ``Position`` (step, stage, wall time, FLOPs, metric history), the structure, mask c and
ramp, the run id and config, the adaptive policy's state and the rollbacks taken; every rank adds its loader
position and RNG states. ``export_model`` writes the final model (``export.export_plain`` and, where the shapes
allow, ``export.export_hf``) into the final checkpoint's ``export/`` folder.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from msg_ray import growth as G
from msg_ray.export import export_hf, export_plain
from msg_ray.model import ModelConfig
from msg_ray.train import checkpoint
from msg_ray.train.config import RunConfig
from msg_ray.train.engine import TrainState

HISTORY_KEYS = ("step", "wall_s", "flops", "train_loss", "val_step", "val_loss", "growth_steps", "growth_events")


def new_history() -> dict[str, list]:
    """An empty metric history (per-step losses on each axis, evaluations, growth events)."""
    return {k: [] for k in HISTORY_KEYS}


@dataclass
class Position:
    """Where a run stands: optimizer steps, stage, wall seconds and FLOPs spent, and the metric history so far."""

    step: int = 0
    stage: int = 0
    wall: float = 0.0
    flops: float = 0.0
    history: dict[str, list] = field(default_factory=new_history)


def write(
    directory: str | Path,
    pos: Position,
    cfg: RunConfig,
    *,
    final: bool,
    rank: int,
    world: int,
    state: TrainState,
    module: torch.nn.Module,
    ramp: G.MaskRamp | None,
    loader_state: dict[str, Any],
    run_id: str | None,
    adaptive: dict[str, Any] | None,
    rollbacks: int,
) -> str:
    """Write this rank's part of the checkpoint at ``pos`` into ``directory``; returns the folder's name
    (``stage{k}-step{N}``). ``state``: the full fp32 params and moments (gathered by every rank, written by rank 0);
    ``module``: the trained model, for its mask buffers."""
    folder = checkpoint.folder_name(pos.stage, pos.step, final)
    meta = {
        "folder": folder,
        "step": pos.step,
        "stage": pos.stage,
        "wall_s": pos.wall,
        "flops": pos.flops,
        "structure": cfg.schedule.stages[pos.stage].structure.as_dict(),
        "mask_c": G.mask_value(module),
        "ramp": None if ramp is None else {"start_step": ramp.start_step, "phi": ramp.phi},
        "run_id": run_id,
        "history": pos.history,
        "config": cfg.to_dict(),
        "world_size": world,
        "adaptive": adaptive,
        "rollbacks": rollbacks,
    }
    checkpoint.save(
        directory,
        rank=rank,
        rank_state={"loader": loader_state, "rng": checkpoint.rng_state()},
        meta=meta,
        params=state.params,
        buffers=G.mask_state(module),
        moments={"exp_avg": state.exp_avg, "exp_avg_sq": state.exp_avg_sq, "step": state.step},
    )
    return folder


@dataclass
class Resumed:
    """A loaded checkpoint as the loop takes it back: position, weights and moments, ramp, per-rank state."""

    pos: Position
    folder: str
    rollbacks: int
    model_state: dict[str, torch.Tensor]  # params + mask buffers, for ``load_state_dict`` (restores c mid-ramp)
    state: TrainState
    ramp: G.MaskRamp | None
    adaptive: dict[str, Any] | None
    loader_state: dict[str, Any]
    rng: dict[str, Any] | None  # None when this rank did not exist when the checkpoint was taken


def resumed(loaded: checkpoint.Loaded) -> Resumed:
    """What ``loaded`` restores; its history records the resume (``resumed_from``, kept in every later checkpoint)."""
    m, mom = loaded.meta, loaded.moments
    pos = Position(step=m["step"], stage=m["stage"], wall=m["wall_s"], flops=m["flops"], history=m["history"])
    pos.history.setdefault("resumed_from", []).append(m["folder"])
    return Resumed(
        pos=pos,
        folder=m["folder"],
        rollbacks=m.get("rollbacks", 0),
        model_state={**loaded.params, **loaded.buffers},
        state=TrainState(params=loaded.params, exp_avg=mom["exp_avg"], exp_avg_sq=mom["exp_avg_sq"], step=mom["step"]),
        ramp=G.MaskRamp(**m["ramp"]) if m["ramp"] else None,
        adaptive=m.get("adaptive"),
        loader_state=loaded.rank_state["loader"],
        rng=loaded.rank_state.get("rng"),
    )


def model_card(cfg: RunConfig, pos: Position, run_id: str | None) -> dict[str, Any]:
    """The facts ``export.model_card`` writes into the exported model's README."""
    d, h = cfg.data, pos.history
    return {
        "schedule": cfg.schedule.to_dict(),
        "growth_steps": h["growth_steps"],
        "steps": pos.step,
        "data": {"source": d.source, "tokenizer": d.tokenizer, "seq_len": d.seq_len},
        "final_val_loss": h["val_loss"][-1] if h["val_loss"] else None,
        "run_id": run_id,
    }


def export_model(
    directory: str | Path,
    module: torch.nn.Module,
    config: ModelConfig,
    hf: bool,
    tokenizer: Tokenizer | None = None,
    card: dict[str, Any] | None = None,
) -> None:
    """Final model as ``export_plain`` writes it (state_dict + config) into ``directory/export``, plus a Hugging
    Face checkpoint (with the run's tokenizer and a model card built from ``card``, see ``export.model_card``) in
    ``export/hf`` when ``hf`` and the shapes allow. Never raises for a model it cannot export: it says why."""
    try:
        out = export_plain(module, Path(directory) / "export")
    except ValueError as exc:  # a run that ends mid-ramp: its checkpoint (with masks) is the model
        print(f"msg_ray: export skipped: {exc}", file=sys.stderr, flush=True)
        return
    if hf:  # the architecture's adapter refuses shapes its Hugging Face class cannot hold (ValueError)
        sd = {k: v.detach().float().cpu() for k, v in module.state_dict().items()}
        try:
            export_hf(sd, config, out / "hf", tokenizer=tokenizer, card=card)
        except Exception as exc:  # export is a convenience; never lose the run over it
            print(f"msg_ray: Hugging Face export skipped: {exc}", file=sys.stderr, flush=True)
