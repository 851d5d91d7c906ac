"""One growth event on a live DeepSpeed engine: gather once -> grow -> carry -> rebuild -> ramp.

The training layer's only implementation of a growth, used by the worker loop (``msg_ray.train.loop``) and by
``pipelines/bench_growth.py``. Every rank calls it (gathering the state is a collective) with the same seed, so
every rank builds identical new weights. The state it gathers and carries is returned with the new engine: the
engine holds exactly that state until its first step, so a checkpoint taken at the stage boundary reuses it instead
of gathering again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from msg_ray import growth as G
from msg_ray.model import ModelConfig, build_from_config
from msg_ray.structure import Structure
from msg_ray.train.engine import (
    EngineConfig,
    TrainState,
    build_engine,
    carry_train_state,
    gather_state,
    release,
    restore_state,
)

PARTS = ("gather", "grow", "carry", "release", "build", "restore")


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
    """Grow ``engine``'s model (of ``config.structure``) to ``target`` and return a new engine holding the grown
    weights and the carried AdamW state (old moments where the operator's layout puts them, zeros for new
    coordinates).
    ``target == config.structure`` rebuilds at the same size (the benchmark's leak check). The old engine is
    released. If the grown model carries masks, their ramp starts at ``step`` (c = 0 now, 1 after ``phi`` steps)
    and is already applied for ``step``: the caller applies it from the next step on."""
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    state = gather_state(engine)  # collective: every rank takes part
    t["gather"], t0 = time.perf_counter() - t0, time.perf_counter()
    old = build_from_config(config)
    old.load_state_dict(state.params)
    growth = (
        G.Growth(model=old, layout={}, preserving=True)
        if target == config.structure
        else G.expand(old, target, operator, depth_init=depth_init, seed=seed)
    )
    new = growth.model
    ramp = G.MaskRamp(start_step=step, phi=phi) if G.is_ramping(new) else None
    if ramp is not None:
        ramp.apply(new, step)  # c for this step (φ = 0 folds the masks before the engine wraps the model)
        ramp = ramp if G.is_ramping(new) else None
    t["grow"], t0 = time.perf_counter() - t0, time.perf_counter()
    carried = carry_train_state(state, dict(new.named_parameters()), layout=growth.layout)
    t["carry"], t0 = time.perf_counter() - t0, time.perf_counter()
    release(engine)
    del engine, state, old
    t["release"], t0 = time.perf_counter() - t0, time.perf_counter()
    engine = build_engine(new, engine_cfg)
    t["build"], t0 = time.perf_counter() - t0, time.perf_counter()
    restore_state(engine, carried)
    t["restore"] = time.perf_counter() - t0
    return Grown(engine=engine, state=carried, ramp=ramp, seconds=t, preserving=growth.preserving)
