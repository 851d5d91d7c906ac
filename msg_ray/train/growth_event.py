"""One growth event, the training-level rule every loop calls: grow -> carry the optimizer state -> start the ramp.

``grow_model`` is the growth of a training run on a plain model: grow it (``growth.expand``: the operator's new
weights, mask buffers and optimizer-state layout), start its mask ramp at the current step and apply it for that
step (φ = 0 folds the masks at once; the ramp folds them at c = 1 later), and carry the AdamW moments by parameter
name where the operator's layout puts them (zeros for new coordinates). Pure torch. The plain reference loop
(``benchmarks/plain.py``, torch AdamW) calls it directly; ``grow_engine`` wraps it for a live DeepSpeed engine:
gather the full fp32 state once -> ``grow_model`` -> release and rebuild the engine -> restore the carried state.
``grow_engine`` is used by the worker loop (``msg_ray.train.loop``) and ``benchmarks/bench_growth.py``. Every rank
calls it (gathering the state is a collective) with the same seed, so every rank builds identical new weights. The
state it gathers and carries is returned with the new engine: the engine holds exactly that state until its first
step, so a checkpoint taken at the stage boundary reuses it instead of gathering again.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from msg_ray import growth as G
from msg_ray.masked_layers import GrowableModel
from msg_ray.model import ModelConfig, build_from_config
from msg_ray.optim_carry import AdamState, carry_adam_state
from msg_ray.structure import Structure
from msg_ray.train.engine import EngineConfig, TrainState, build_engine, gather_state, release, restore_state

PARTS = ("gather", "grow", "carry", "release", "build", "restore")


@dataclass
class GrownModel:
    """What ``grow_model`` leaves: the grown model (its ramp applied for the growth step), its AdamW moments by
    parameter name in the grown shapes, its mask ramp and per-part seconds ("grow", "carry")."""

    model: GrowableModel
    moments: dict[str, AdamState]
    ramp: G.MaskRamp | None  # None when nothing ramps (no masks attached, or φ = 0 folded them at once)
    preserving: bool  # the operator claims the function is unchanged (the loops check the loss)
    seconds: dict[str, float] = field(default_factory=dict)


def grow_model(
    model: GrowableModel,
    moments: Mapping[str, AdamState],
    target: Structure,
    *,
    step: int,
    phi: int,
    operator: str = "msg",
    depth_init: str = "stack",
    seed: int | None = None,
) -> GrownModel:
    """Grow ``model`` to ``target`` at optimizer step ``step`` and carry its AdamW ``moments`` (by parameter name,
    full shapes) into the grown shapes: old moments where the operator's layout puts them, zeros for new
    coordinates and new parameters (paper 3.2.2). If the grown model carries masks, their ramp starts at ``step``
    (c = 0 now, 1 after ``phi`` steps, eq. 17/20) and is already applied for ``step``, so the caller applies it
    from the next step on; φ = 0 folds the masks here. ``target == model.structure`` returns the model unchanged
    (the benchmark's same-size rebuild)."""
    t0 = time.perf_counter()
    growth = (
        G.Growth(model=model, layout={}, preserving=True)
        if target == model.structure
        else G.expand(model, target, operator, depth_init=depth_init, seed=seed)
    )
    new = growth.model
    ramp = G.MaskRamp(start_step=step, phi=phi) if G.is_ramping(new) else None
    if ramp is not None:
        ramp.apply(new, step)  # c for this step (φ = 0 folds the masks before an engine wraps the model)
        ramp = ramp if G.is_ramping(new) else None
    t1 = time.perf_counter()
    shapes = {n: tuple(p.shape) for n, p in new.named_parameters()}
    carried = carry_adam_state(dict(moments), shapes, layout=growth.layout)
    seconds = {"grow": t1 - t0, "carry": time.perf_counter() - t1}
    return GrownModel(model=new, moments=carried, ramp=ramp, preserving=growth.preserving, seconds=seconds)


@dataclass
class Grown:
    """What a growth event leaves: the new engine, the state it holds, its mask ramp and per-part seconds."""

    engine: Any
    state: TrainState  # full fp32 params + moments of the new model, as restored into ``engine``
    ramp: G.MaskRamp | None  # None when nothing ramps (no masks attached, or φ = 0 folded them at once)
    seconds: dict[str, float] = field(default_factory=dict)  # PARTS -> seconds
    preserving: bool = True  # the operator claims the function is unchanged (the loop checks the loss)

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())


def grow_engine(
    engine: Any,
    config: ModelConfig,
    target: Structure,
    engine_cfg: EngineConfig,
    *,
    step: int,
    phi: int,
    operator: str = "msg",
    depth_init: str = "stack",
    seed: int | None = None,
) -> Grown:
    """Grow ``engine``'s model (of ``config.structure``) to ``target`` with ``grow_model`` and return a new engine
    holding the grown weights and the carried AdamW state. ``target == config.structure`` rebuilds at the same
    size (the benchmark's leak check). The old engine is released. The ramp is applied for ``step`` (see
    ``grow_model``): the caller applies it from the next step on."""
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    state = gather_state(engine)  # collective: every rank takes part
    t["gather"], t0 = time.perf_counter() - t0, time.perf_counter()
    old = build_from_config(config)
    old.load_state_dict(state.params)
    t["grow"] = time.perf_counter() - t0
    grown = grow_model(
        old, state.adam_state(), target, step=step, phi=phi, operator=operator, depth_init=depth_init, seed=seed
    )
    t0 = time.perf_counter()
    carried = TrainState(
        params={n: p.detach().float().cpu().clone() for n, p in grown.model.named_parameters()},
        exp_avg={n: m["exp_avg"] for n, m in grown.moments.items()},
        exp_avg_sq={n: m["exp_avg_sq"] for n, m in grown.moments.items()},
        step=state.step,
    )
    t["grow"] += grown.seconds["grow"]
    t["carry"], t0 = grown.seconds["carry"] + time.perf_counter() - t0, time.perf_counter()
    release(engine)
    del engine, state, old
    t["release"], t0 = time.perf_counter() - t0, time.perf_counter()
    engine = build_engine(grown.model, engine_cfg)
    t["build"], t0 = time.perf_counter() - t0, time.perf_counter()
    restore_state(engine, carried)
    t["restore"] = time.perf_counter() - t0
    return Grown(engine=engine, state=carried, ramp=grown.ramp, seconds=t, preserving=grown.preserving)
