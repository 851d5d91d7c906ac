"""Tune space kinds: what a kind declares, the registry that holds them, and the built-in kinds.

A :class:`SpaceKind` names the fields of a `SearchSpace` it reads and plans the trials of a space (a list of
:class:`TrialSpec`, before the LR grid, seeds and the full reference are added). The built-in kinds register at
the bottom of this module, one ``register_kind`` line each; adding a kind is a planning function plus that line
(see docs/tune.md). Kinds (every trial is a growth `Schedule` trained with the space's run settings):

- ``structures``: the paper's γ grid (section 3.2.1, figure 2): the ``target`` and, one dimension at a time,
  each value of ``vary`` (e.g. ``{"hidden_dim": [64, 96]}``), each trained as a one-stage run;
- ``durations``: one ``structures`` sequence, several ``splits`` of the steps across its stages
  (``"equal"``, ``"paper"`` (the paper's rule), ``"front"`` (front-loaded), or a list of start fractions);
- ``schedules``: named whole schedules (a preset name, or ``{"structures": [...], "starts": [...]}``);
- ``phi``: one ``schedule`` at several mask-ramp lengths ``values``;
- ``operators``: one ``schedule`` under several ``operators`` (``msg``, ``net2net``, ``nomask``, ``full``);
- ``adaptive``: one ``schedule`` with fixed stage starts, with online growth (``adaptive``), and full training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from msg_ray.registry import Registry
from msg_ray.schedule import FULL, OPERATORS, Schedule, paper_stage_starts
from msg_ray.structure import DIMENSIONS, Structure

# A kind's plan function takes the `msg_ray.tune.space.SearchSpace` being planned (typed Any here: space.py imports
# this registry, and the import graph stays acyclic).
SearchSpace = Any

SPLITS = {"equal": 1.0, "paper": 1.2, "front": 2.0}  # early_weight of paper_stage_starts
_SHORT = {"hidden_dim": "hidden", "ffn_dim": "ffn", "head_num": "heads", "layer_num": "layers"}


@dataclass(frozen=True)
class TrialSpec:
    """One planned trial: a label, the schedule it trains, what it varies (``meta``) and its seed."""

    label: str
    schedule: Schedule
    meta: dict[str, Any]
    seed: int = 0
    run: dict[str, Any] = field(default_factory=dict)  # per-trial RunConfig overrides (e.g. adaptive growth)


@dataclass(frozen=True, kw_only=True)
class SpaceKind:
    """One kind of study: the `SearchSpace` fields it reads (all required) and how it plans its trials."""

    name: str
    fields: frozenset[str]
    plan: Callable[[SearchSpace], list[TrialSpec]]
    fixed_starts: bool = True  # stage starts known before training (compute 'flops' solves lengths from them)
    summary: str = ""


_KINDS: Registry[SpaceKind] = Registry("space kind", "must be one of {names}, got {name!r}")
register_kind = _KINDS.register
kind_names = _KINDS.names
get_kind = _KINDS.get


def kind_fields() -> frozenset[str]:
    """Every field some registered kind reads (a field of another kind is an error in a space)."""
    return frozenset().union(*(k.fields for k in _KINDS.values()))


def structure_of(value: Any, where: str) -> Structure:
    try:
        return Structure.parse(value)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from e


def _plan_structures(space: SearchSpace) -> list[TrialSpec]:
    target = structure_of(space.target, f"space {space.name!r}: target")
    if not isinstance(space.vary, dict):
        raise ValueError(f"space {space.name!r}: vary: must map dimensions to lists of values")
    out = [TrialSpec("target", space.stage_schedule("target", [(target, 0)], phi=0), {"dim": None, "value": None})]
    for dim, values in space.vary.items():
        if dim not in DIMENSIONS:
            raise ValueError(f"space {space.name!r}: vary: unknown dimension {dim!r}; known: {DIMENSIONS}")
        if not isinstance(values, list | tuple):
            raise ValueError(f"space {space.name!r}: vary.{dim}: must be a list of ints, got {values!r}")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"space {space.name!r}: vary.{dim}: values must be ints >= 1, got {v!r}")
            if v >= getattr(target, dim):
                raise ValueError(
                    f"space {space.name!r}: vary.{dim}={v} is not smaller than the target's {getattr(target, dim)}:"
                    f" growing from it to the target would shrink (or not grow) {dim}"
                )
            s = Structure(**{**target.as_dict(), dim: v})
            label = f"{_SHORT[dim]}{v}"
            out.append(TrialSpec(label, space.stage_schedule(label, [(s, 0)], phi=0), {"dim": dim, "value": v}))
    return out if len(out) > 1 else []  # the target alone is no grid


def _plan_durations(space: SearchSpace) -> list[TrialSpec]:
    structs = [structure_of(s, f"space {space.name!r}: structures[{i}]") for i, s in enumerate(space.structures)]
    if len(structs) < 2:
        raise ValueError(f"space {space.name!r}: structures: need at least 2 stages to split")
    out = []
    for split in space.splits:
        if isinstance(split, str):
            if split not in SPLITS:
                raise ValueError(f"space {space.name!r}: splits: unknown split {split!r}; known: {list(SPLITS)}")
            starts: list = paper_stage_starts(space.total_steps, len(structs), SPLITS[split])
            label = split
        else:
            starts = [float(x) for x in split]
            label = "split-" + "-".join(f"{x:g}" for x in starts)
            if len(starts) != len(structs):
                raise ValueError(f"space {space.name!r}: splits: {split!r} needs {len(structs)} start fractions")
        out.append(
            TrialSpec(label, space.stage_schedule(label, list(zip(structs, starts, strict=True))), {"split": label})
        )
    return out


def _plan_schedules(space: SearchSpace) -> list[TrialSpec]:
    if not isinstance(space.schedules, dict):
        raise ValueError(f"space {space.name!r}: schedules: must map labels to schedules")
    return [
        TrialSpec(label, space.schedule_of(spec, label), {"schedule": label}) for label, spec in space.schedules.items()
    ]


def _plan_phi(space: SearchSpace) -> list[TrialSpec]:
    base = space.schedule_of(space.schedule, "base")
    out = []
    for v in space.values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"space {space.name!r}: values: phi must be ints >= 0, got {v!r}")
        try:
            out.append(TrialSpec(f"phi{v}", base.replace(phi=v, name=f"phi{v}"), {"phi": v}))
        except ValueError as e:
            raise ValueError(f"space {space.name!r}: phi={v}: {e}") from e
    return out


def _plan_operators(space: SearchSpace) -> list[TrialSpec]:
    base = space.schedule_of(space.schedule, "base")
    out = []
    for op in space.operators:
        if op not in (*OPERATORS, FULL):
            raise ValueError(f"space {space.name!r}: operators: unknown operator {op!r}; known: {(*OPERATORS, FULL)}")
        s = base.full_baseline(FULL) if op == FULL else base.replace(operator=op, name=op)
        out.append(TrialSpec(op, s, {"operator": op}))
    return out


def _plan_adaptive(space: SearchSpace) -> list[TrialSpec]:
    """The same schedule with fixed stage starts and with online (adaptive) growth, plus full training."""
    if not isinstance(space.adaptive, dict) or "target_gamma" not in space.adaptive:
        raise ValueError(f"space {space.name!r}: adaptive: must be a mapping with at least target_gamma")
    base = space.schedule_of(space.schedule, "base")
    target = base.full_baseline(FULL)
    return [
        TrialSpec("fixed", base.replace(name="fixed"), {"mode": "fixed"}),
        TrialSpec("adaptive", base.replace(name="adaptive"), {"mode": "adaptive"}, run={"adaptive": space.adaptive}),
        TrialSpec(FULL, target, {"mode": FULL}),
    ]


register_kind(SpaceKind(name="structures", fields=frozenset({"target", "vary"}), plan=_plan_structures))
register_kind(SpaceKind(name="durations", fields=frozenset({"structures", "splits"}), plan=_plan_durations))
register_kind(SpaceKind(name="schedules", fields=frozenset({"schedules"}), plan=_plan_schedules))
register_kind(SpaceKind(name="phi", fields=frozenset({"schedule", "values"}), plan=_plan_phi))
register_kind(SpaceKind(name="operators", fields=frozenset({"schedule", "operators"}), plan=_plan_operators))
register_kind(
    SpaceKind(name="adaptive", fields=frozenset({"schedule", "adaptive"}), plan=_plan_adaptive, fixed_starts=False)
)
