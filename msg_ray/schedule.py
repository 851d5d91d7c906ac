"""Growth schedules: validated stage lists (structure + start step), file I/O, and the paper's stage-start rule.

``Schedule`` is a validated list of ``Stage``s (a structure and the step it starts at); ``full`` is one-stage
training; ``paper_stage_starts`` / ``schedule_from_structures`` split a step budget across a list of structures as
section 3.2.1 does. The named presets (the paper's tables and their CPU-sized versions) and ``get_schedule``, which
resolves a preset name or a schedule file, live in ``msg_ray.presets``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from msg_ray.architecture import arch_names, check_kv_groups
from msg_ray.growth import DEPTH_INITS, OPERATORS
from msg_ray.operators import get_operator
from msg_ray.structure import Structure

FULL = "full"  # the name of full training (from scratch at the target) in comparisons, sweeps and studies
# the fields a schedule file may hold (``target`` is informational, checked on load)
FIELDS = (
    "name",
    "arch",
    "operator",
    "phi",
    "head_dim",
    "kv_group_size",
    "depth_init",
    "total_steps",
    "stages",
    "target",
)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, kw_only=True)
class Stage:
    """One stage: train ``structure`` from ``start`` until the next stage's start.

    ``start`` is an optimizer step (int) or a fraction of ``total_steps`` (float in [0, 1)); a float
    lets one file describe a schedule for any budget.
    """

    structure: Structure
    start: int | float

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "structure", Structure.parse(self.structure))
        except ValueError as e:
            raise ValueError(f"Stage.structure: {e}") from e
        start = self.start
        if isinstance(start, bool) or not isinstance(start, (int, float)):
            raise ValueError(f"Stage.start must be an int step or a float fraction, got {start!r}")
        if isinstance(start, int) and start < 0:
            raise ValueError(f"Stage.start must be >= 0, got {start}")
        if isinstance(start, float) and not 0.0 <= start < 1.0:
            raise ValueError(f"Stage.start as a float is a fraction of total_steps in [0, 1), got {start}")

    def resolve(self, total_steps: int) -> int:
        """The start as an optimizer step for a run of ``total_steps``."""
        if isinstance(self.start, float):
            return int(round(self.start * total_steps))
        return self.start


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """A growth schedule: stages of increasing structure; one stage means plain ("full") training.

    ``phi`` is the mask ramp length in optimizer steps (paper section 3.2.1); ``head_dim`` is the fixed
    attention head size (heads grow in count, not in size). ``stages`` may also be given as dicts
    ``{"structure": [h, f, n, l], "start": ...}``; validation errors name the stage index and field.
    """

    arch: str
    stages: tuple[Stage, ...]
    total_steps: int
    operator: str = "msg"
    phi: int = 5000
    head_dim: int = 64
    kv_group_size: int = 1  # query heads per key/value head (grouped-query attention; llama only)
    depth_init: str = "stack"
    name: str = ""

    def __post_init__(self) -> None:
        self._check_scalars()
        object.__setattr__(self, "stages", self._coerce_stages(self.stages))
        self._check_stages()

    def _err(self, msg: str) -> ValueError:
        return ValueError(f"Schedule {self.name!r}: {msg}" if self.name else f"Schedule: {msg}")

    def _check_scalars(self) -> None:
        if not isinstance(self.name, str):
            raise ValueError(f"Schedule.name must be a string, got {self.name!r}")
        for field, allowed in (("arch", arch_names()), ("operator", OPERATORS), ("depth_init", DEPTH_INITS)):
            if getattr(self, field) not in allowed:
                raise self._err(f"{field} must be one of {allowed}, got {getattr(self, field)!r}")
        for field, minimum in (("total_steps", 1), ("phi", 0), ("head_dim", 1)):
            value = getattr(self, field)
            if not _is_int(value) or value < minimum:
                raise self._err(f"{field} must be an int >= {minimum}, got {value!r}")

    def _coerce_stages(self, stages: Any) -> tuple[Stage, ...]:
        if isinstance(stages, (str, bytes, dict)) or not hasattr(stages, "__iter__"):
            raise self._err(f"stages must be a list of stages, got {type(stages).__name__}")
        out = []
        for i, stage in enumerate(stages):
            if isinstance(stage, Stage):
                out.append(stage)
                continue
            if not isinstance(stage, dict):
                raise self._err(f"stages[{i}] must be a Stage or a dict with structure and start, got {stage!r}")
            unknown = set(stage) - {"structure", "start"}
            missing = {"structure", "start"} - set(stage)
            if unknown or missing:
                raise self._err(f"stages[{i}]: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
            try:
                out.append(Stage(structure=stage["structure"], start=stage["start"]))
            except ValueError as e:
                raise self._err(f"stages[{i}].{str(e).removeprefix('Stage.')}") from e
        if not out:
            raise self._err("stages must hold at least one stage")
        return tuple(out)

    def _check_stages(self) -> None:
        starts = [s.resolve(self.total_steps) for s in self.stages]
        if starts[0] != 0:
            raise self._err(f"stages[0].start must be 0 (training starts in the first stage), got {starts[0]}")
        for i, (stage, start) in enumerate(zip(self.stages, starts, strict=True)):
            if start >= self.total_steps:
                raise self._err(f"stages[{i}].start={stage.start} resolves to step {start} >= total_steps")
            try:
                check_kv_groups(self.arch, stage.structure.head_num, self.kv_group_size, f"stages[{i}].structure")
            except ValueError as e:
                raise self._err(str(e)) from e
            if i == 0:
                continue
            if start <= starts[i - 1]:
                raise self._err(
                    f"stages[{i}].start={stage.start} (step {start}) must be after stages[{i - 1}] (step {starts[i - 1]})"
                )
            try:
                grown = self.stages[i - 1].structure.grown_dims(stage.structure)
            except ValueError as e:
                raise self._err(f"stages[{i}].structure: {e}") from e
            if not grown:
                raise self._err(f"stages[{i}].structure {stage.structure} grows no dimension over stages[{i - 1}]")
            self._check_operator(i, grown)
        # The mask ramp of a growth must finish before the next growth starts (and before the run ends);
        # overlapping ramps are not something the paper's operator defines.
        if self.phi > 0:
            ends = starts[1:] + [self.total_steps]
            for i in range(1, len(starts)):
                if self._ramps(i) and ends[i] - starts[i] < self.phi:
                    raise self._err(
                        f"stages[{i}].start: stage {i} lasts {ends[i] - starts[i]} steps, shorter than phi={self.phi}"
                    )

    def _check_operator(self, i: int, grown: list[str]) -> None:
        """The operator can perform growth i (its architectures, HyperCloning's integer factors): caught here, at
        validation, rather than inside a worker at the growth step."""
        op = get_operator(self.operator)
        own = [d for d in grown if d in op.dims]
        if own and op.archs is not None and self.arch not in op.archs:
            raise self._err(f"operator {self.operator!r} supports arch {op.archs}, not {self.arch!r}")
        before, after = self.stages[i - 1].structure, self.stages[i].structure
        for d in own if op.needs_integer_factors else ():
            if getattr(after, d) % getattr(before, d):
                raise self._err(
                    f"stages[{i}].structure: operator {self.operator!r} grows {d} by integer factors; "
                    f"{getattr(before, d)} -> {getattr(after, d)} is not one"
                )

    def _ramps(self, i: int) -> bool:
        """Whether the growth into stage ``i`` attaches masks: MSG itself, or dimensions the operator leaves to
        MSG (G_stack grows only layers, HyperCloning only width)."""
        op = get_operator(self.operator)
        grown = self.stages[i - 1].structure.grown_dims(self.stages[i].structure)
        return op.masks or any(d not in op.dims for d in grown)

    # ------------------------------------------------------------------ queries
    @property
    def target(self) -> Structure:
        return self.stages[-1].structure

    @property
    def is_full(self) -> bool:
        return len(self.stages) == 1

    def boundaries(self) -> list[int]:
        """Resolved start step of each stage."""
        return [s.resolve(self.total_steps) for s in self.stages]

    def stage_lengths(self) -> list[int]:
        starts = self.boundaries()
        return [b - a for a, b in zip(starts, starts[1:] + [self.total_steps], strict=True)]

    def growth_steps(self) -> list[int]:
        """Steps at which the model grows (the starts of stages 1..K-1)."""
        return self.boundaries()[1:]

    def stage_index(self, step: int) -> int:
        """Index of the stage that trains at optimizer ``step`` (steps past the end belong to the last stage)."""
        if not _is_int(step) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        index = 0
        for i, start in enumerate(self.boundaries()):
            if step >= start:
                index = i
        return index

    def structure_at(self, step: int) -> Structure:
        return self.stages[self.stage_index(step)].structure

    def full_baseline(self, name: str = "", target: Structure | None = None) -> Schedule:
        """``target`` (default: this one's) from scratch, same steps, arch, head_dim, kv grouping, phi."""
        return full(
            self.arch,
            target or self.target,
            self.total_steps,
            head_dim=self.head_dim,
            phi=self.phi,
            kv_group_size=self.kv_group_size,
            name=name or f"full-{self.name or self.arch}",
        )

    # ------------------------------------------------------------------ conversions
    def to_dict(self) -> dict[str, Any]:
        """Plain dict (structures as [h, f, n, l] lists) that :meth:`from_dict` reads back."""
        return {
            "name": self.name,
            "arch": self.arch,
            "operator": self.operator,
            "phi": self.phi,
            "head_dim": self.head_dim,
            **({"kv_group_size": self.kv_group_size} if self.kv_group_size != 1 else {}),
            "depth_init": self.depth_init,
            "total_steps": self.total_steps,
            "stages": [{"structure": list(s.structure.as_tuple()), "start": s.start} for s in self.stages],
            "target": list(self.target.as_tuple()),  # informational; checked on load
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Schedule:
        if not isinstance(d, dict):
            raise ValueError(f"Schedule: expected a mapping, got {type(d).__name__}")
        unknown = set(d) - set(FIELDS)
        if unknown:
            raise ValueError(f"Schedule: unknown field(s) {sorted(unknown)}; expected {list(FIELDS)}")
        for required in ("arch", "stages", "total_steps"):
            if required not in d:
                raise ValueError(f"Schedule.{required} is missing")
        kwargs = {k: v for k, v in d.items() if k != "target"}
        schedule = cls(**kwargs)
        if "target" in d:
            try:
                target = Structure.parse(d["target"])
            except ValueError as e:
                raise schedule._err(f"target: {e}") from e
            if target != schedule.target:
                raise schedule._err(f"target {target} differs from the last stage's structure {schedule.target}")
        return schedule

    def save(self, path: str | Path) -> Path:
        """Write as YAML (``.yaml``/``.yml``) or JSON (``.json``)."""
        path = Path(path)
        kind = _file_kind(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "yaml":
            path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None))
        else:
            path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Schedule:
        path = Path(path)
        kind = _file_kind(path)
        text = path.read_text()
        try:
            data = yaml.safe_load(text) if kind == "yaml" else json.loads(text)
        except (yaml.YAMLError, json.JSONDecodeError) as e:
            raise ValueError(f"Schedule file {path}: not valid {kind}: {e}") from e
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> Schedule:
        return dataclasses.replace(self, **changes)

    def scaled(self, *, total_steps: int | None = None, phi: int | None = None) -> Schedule:
        """Same stage fractions on a new step budget; starts become ints (rounded to the nearest step)."""
        new_total = self.total_steps if total_steps is None else total_steps
        if not _is_int(new_total) or new_total < 1:
            raise self._err(f"total_steps must be an int >= 1, got {new_total!r}")
        # Integer round-half-up of start * new / old, so exact ratios (e.g. 900k -> 900) stay exact.
        starts = [(2 * b * new_total + self.total_steps) // (2 * self.total_steps) for b in self.boundaries()]
        stages = tuple(Stage(structure=s.structure, start=b) for s, b in zip(self.stages, starts, strict=True))
        return dataclasses.replace(self, stages=stages, total_steps=new_total, phi=self.phi if phi is None else phi)


def _file_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return "yaml"
    if suffix == ".json":
        return "json"
    raise ValueError(f"Schedule file {path}: suffix must be .yaml, .yml or .json")


def full(arch: str, target: Structure | Any, total_steps: int, **kw: Any) -> Schedule:
    """One-stage schedule: train ``target`` from scratch (the paper's Full-* baselines)."""
    kw.setdefault("name", f"full-{arch}")
    return Schedule(
        arch=arch, stages=(Stage(structure=Structure.parse(target), start=0),), total_steps=total_steps, **kw
    )


def paper_stage_starts(total_steps: int, n_stages: int, early_weight: float = 1.2) -> list[int]:
    """Start steps for ``n_stages`` stages splitting ``total_steps`` (paper section 3.2.1).

    "Roughly equal number of steps, while slightly emphasizing the early stages": stage weights fall
    linearly from ``early_weight`` (first stage) to 1 (last stage); ``early_weight=1`` gives equal splits.
    """
    if not _is_int(n_stages) or n_stages < 1:
        raise ValueError(f"n_stages must be an int >= 1, got {n_stages!r}")
    if not _is_int(total_steps) or total_steps < n_stages:
        raise ValueError(f"total_steps must be an int >= n_stages={n_stages}, got {total_steps!r}")
    if not early_weight >= 1.0:
        raise ValueError(f"early_weight must be >= 1 (early stages are not shorter), got {early_weight}")
    if n_stages == 1:
        return [0]
    weights = [early_weight - (early_weight - 1.0) * i / (n_stages - 1) for i in range(n_stages)]
    total_weight = sum(weights)
    starts, acc = [], 0.0
    for w in weights:
        starts.append(int(round(total_steps * acc / total_weight)))
        acc += w
    # Rounding may tie two starts on tiny budgets; push later ones forward so every stage has >= 1 step.
    for i in range(1, n_stages):
        starts[i] = max(starts[i], starts[i - 1] + 1)
    if starts[-1] >= total_steps:
        raise ValueError(f"total_steps={total_steps} is too small for {n_stages} stages")
    return starts


def schedule_from_structures(
    arch: str,
    structures: list[Any],
    total_steps: int,
    *,
    early_weight: float = 1.2,
    **kw: Any,
) -> Schedule:
    """Schedule over ``structures`` with stage starts from :func:`paper_stage_starts`."""
    starts = paper_stage_starts(total_steps, len(structures), early_weight)
    stages = tuple(Stage(structure=s, start=b) for s, b in zip(structures, starts, strict=True))
    return Schedule(arch=arch, stages=stages, total_steps=total_steps, **kw)
