"""Search spaces: load a ``tune_spaces/*.py`` (or YAML/JSON) study, validate it, and plan its trials.

A space file defines ``SPACE``: a mapping (or a `SearchSpace`) with a ``kind`` and the fields of that kind; the
module docstring documents the study. Kinds (every trial is a growth `Schedule` trained with the same run
settings, ``run``):

- ``structures``: the paper's γ grid (section 3.2.1, figure 2): the ``target`` and, one dimension at a time,
  each value of ``vary`` (e.g. ``{"hidden_dim": [64, 96]}``), each trained as a one-stage run;
- ``durations``: one ``structures`` sequence, several ``splits`` of the steps across its stages
  (``"equal"``, ``"paper"`` (the paper's rule), ``"front"`` (front-loaded), or a list of start fractions);
- ``schedules``: named whole schedules (a preset name, or ``{"structures": [...], "starts": [...]}``);
- ``phi``: one ``schedule`` at several mask-ramp lengths ``values``;
- ``operators``: one ``schedule`` under several ``operators`` (``msg``, ``net2net``, ``nomask``, ``full``).

Everything is validated here, before Ray starts: unknown fields or dimensions, structures that would shrink,
empty grids and invalid schedules/run configs raise ValueError naming the field.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from msg_ray.flops import equal_flops
from msg_ray.presets import get_schedule
from msg_ray.schedule import FULL, OPERATORS, Schedule, Stage, full, paper_stage_starts
from msg_ray.structure import DIMENSIONS, Structure
from msg_ray.train.config import RunConfig, apply_overrides, merge_dicts

KINDS = ("structures", "durations", "schedules", "phi", "operators", "adaptive")
COMPUTES = ("steps", "flops")
TIME_ATTRS = ("wall_s", "flops")
SPLITS = {"equal": 1.0, "paper": 1.2, "front": 2.0}  # early_weight of paper_stage_starts
_KIND_FIELDS = {
    "structures": {"target", "vary"},
    "durations": {"structures", "splits"},
    "schedules": {"schedules"},
    "phi": {"schedule", "values"},
    "operators": {"schedule", "operators"},
    "adaptive": {"schedule", "adaptive"},
}
_SHORT = {"hidden_dim": "hidden", "ffn_dim": "ffn", "head_num": "heads", "layer_num": "layers"}
# Run settings every sweep starts from (a space's ``run`` overrides them): frequent Tune reports for ASHA.
RUN_DEFAULTS: dict[str, Any] = {"report_every": 5, "log_every": 10, "gamma_window": 20, "warmup_steps": 10}


def spaces_dir() -> Path:
    """Where named spaces live: ``$MSG_RAY_TUNE_SPACES`` or the repository's ``tune_spaces/``."""
    env = os.environ.get("MSG_RAY_TUNE_SPACES")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "tune_spaces"


@dataclass(frozen=True)
class TrialSpec:
    """One planned trial: a label, the schedule it trains, what it varies (``meta``) and its seed."""

    label: str
    schedule: Schedule
    meta: dict[str, Any]
    seed: int = 0
    run: dict[str, Any] = field(default_factory=dict)  # per-trial RunConfig overrides (e.g. adaptive growth)


@dataclass(frozen=True, kw_only=True)
class SearchSpace:
    kind: str
    name: str
    arch: str = "gpt"
    head_dim: int = 32
    total_steps: int = 300  # schedule length (structures: the step cap of each probe)
    phi: int | None = None  # None: a preset keeps its own phi, other schedules get 0
    # structures
    target: Any = None
    vary: dict[str, list[int]] | None = None
    # durations
    structures: list | None = None
    splits: list | None = None
    # schedules
    schedules: dict[str, Any] | None = None
    # phi / operators
    schedule: Any = None
    values: list[int] | None = None
    operators: list[str] | None = None
    # adaptive: RunConfig.adaptive settings (growth when γ falls below the target's), compared with fixed/full
    adaptive: dict[str, Any] | None = None
    # how trials run and stop
    budget: dict[str, float] = field(default_factory=dict)  # {"wall_s": T} or {"flops": F}; {}: run total_steps
    asha: dict[str, Any] | None = None  # None: no early stopping; {} or settings: ASHA on a compute axis
    run: dict[str, Any] = field(default_factory=dict)  # RunConfig overrides (data, engine, lr_decay, ...)
    best: dict[str, Any] = field(default_factory=dict)  # structures: the written schedule's total_steps/phi
    # "flops": every trial is solved to the FLOPs of total_steps steps of the space's target and runs to its end
    # (its LR decayed there); trials rank by final validation loss, a full-training reference is added, and the
    # table gives each row its FLOPs-to-target speed-up. "steps": every trial trains total_steps (γ view).
    compute: str = "steps"
    lrs: list[float] | None = None  # the same LR grid for every trial (full reference included); best LR each
    doc: str = ""

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"space {self.name!r}: {name}: {why}")

        if self.kind not in KINDS:
            raise bad("kind", f"must be one of {KINDS}, got {self.kind!r}")
        if not self.name or any(c in self.name for c in "/\\ "):
            raise bad("name", "must be non-empty without '/', '\\' or spaces")
        for other, names in _KIND_FIELDS.items():
            for n in sorted(names - _KIND_FIELDS[self.kind]):
                if getattr(self, n) is not None:
                    raise bad(n, f"is a field of kind {other!r}, not of {self.kind!r}")
        for n in _KIND_FIELDS[self.kind]:
            if getattr(self, n) is None:
                raise bad(n, f"is required for kind {self.kind!r}")
        if len(self.budget) > 1 or set(self.budget) - set(TIME_ATTRS):
            raise bad("budget", f"must be {{}} or one of {{'wall_s': T}}, {{'flops': F}}, got {self.budget!r}")
        if not all(_positive(v) for v in self.budget.values()):
            raise bad("budget", f"values must be positive numbers, got {self.budget!r}")
        self._check_compute()
        if self.asha is not None:
            unknown = set(self.asha) - {"time_attr", "grace", "max_t", "reduction_factor"}
            if unknown:
                raise bad("asha", f"unknown key(s) {sorted(unknown)}")
            if not all(_positive(self.asha.get(k, 2)) for k in ("grace", "max_t", "reduction_factor")):
                raise bad("asha", f"grace, max_t and reduction_factor must be positive numbers, got {self.asha!r}")
            if self.asha.get("time_attr", "wall_s") not in TIME_ATTRS:
                raise bad("asha.time_attr", f"must be one of {TIME_ATTRS} (compute, not iterations)")
            if self.asha.get("time_attr", "wall_s") not in self.budget and "max_t" not in self.asha:
                raise bad("asha.max_t", "is required unless budget is on the same axis (the ASHA horizon)")
        self.trials()  # builds and validates every schedule

    def _check_compute(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"space {self.name!r}: {name}: {why}")

        if self.compute not in COMPUTES:
            raise bad("compute", f"must be one of {COMPUTES}, got {self.compute!r}")
        if self.lrs is not None and (
            not isinstance(self.lrs, list | tuple)
            or not self.lrs
            or len(set(self.lrs)) != len(self.lrs)
            or any(isinstance(x, bool) or not isinstance(x, int | float) or not x > 0 for x in self.lrs)
        ):
            raise bad("lrs", f"must be a list of distinct positive learning rates, got {self.lrs!r}")
        if self.compute != "flops":
            return
        if self.kind == "adaptive":
            raise bad("compute", "'flops' needs fixed stage starts; kind 'adaptive' decides them online")
        if self.budget:
            raise bad("budget", "must be {} with compute 'flops': every trial runs to its own end at equal FLOPs")
        if self.asha is not None:
            raise bad(
                "asha",
                "must be None with compute 'flops': early stopping would compare schedules that "
                "have grown with ones that have not, and final losses are what is ranked",
            )

    # -- planning ---------------------------------------------------------------------------------------
    def reference_target(self) -> Structure:
        """The structure every trial is measured against (the largest target among the trials)."""
        return max((t.schedule.target for t in getattr(self, f"_{self.kind}")()), key=lambda s: s.as_tuple())

    def trials(self, seeds: tuple[int, ...] = (0,)) -> list[TrialSpec]:
        """Every trial of the grid, repeated per seed (labels get ``-s<seed>`` when there are several)."""
        base = getattr(self, f"_{self.kind}")()
        if not base:
            raise ValueError(f"space {self.name!r}: the grid is empty")
        base = self._with_reference(base)
        if self.lrs:  # the same LR grid for every trial, the reference included
            base = [
                TrialSpec(
                    f"{t.label}@lr{lr:g}",
                    t.schedule,
                    {**t.meta, "lr": lr, "base_label": t.label},
                    0,
                    merge_dicts(t.run, {"engine": {"lr": lr}}),
                )
                for t in base
                for lr in self.lrs
            ]
        labels = [t.label for t in base]
        if len(set(labels)) != len(labels):
            raise ValueError(
                f"space {self.name!r}: duplicate trials {sorted({x for x in labels if labels.count(x) > 1})}"
            )
        out = []
        for seed in seeds:
            for t in base:
                label = t.label if len(seeds) == 1 else f"{t.label}-s{seed}"
                out.append(TrialSpec(label, t.schedule, t.meta, seed, t.run))
        return out

    def _with_reference(self, base: list[TrialSpec]) -> list[TrialSpec]:
        """Under compute 'flops', a full-training reference joins the grid unless a trial already trains the target
        from scratch (the speed-up of every row is measured against it)."""
        target = max((t.schedule.target for t in base), key=lambda s: s.as_tuple())
        if self.compute != "flops" or any(t.schedule.is_full and t.schedule.target == target for t in base):
            return base
        b = base[0].schedule
        ref = full(
            self.arch,
            target,
            self.total_steps,
            head_dim=b.head_dim,
            phi=b.phi,
            kv_group_size=b.kv_group_size,
            name=FULL,
        )
        return [*base, TrialSpec(FULL, ref, {"reference": True})]

    def _sched(self, label: str, stages: list[tuple[Any, int | float]], **kw: Any) -> Schedule:
        try:
            return Schedule(
                arch=self.arch,
                head_dim=self.head_dim,
                total_steps=self.total_steps,
                name=label,
                stages=tuple(Stage(structure=s, start=b) for s, b in stages),
                **{"phi": self.phi or 0, **kw},
            )
        except ValueError as e:
            raise ValueError(f"space {self.name!r}: trial {label!r}: {e}") from e

    def _structures(self) -> list[TrialSpec]:
        target = _structure(self.target, f"space {self.name!r}: target")
        if not isinstance(self.vary, dict):
            raise ValueError(f"space {self.name!r}: vary: must map dimensions to lists of values")
        out = [TrialSpec("target", self._sched("target", [(target, 0)], phi=0), {"dim": None, "value": None})]
        for dim, values in self.vary.items():
            if dim not in DIMENSIONS:
                raise ValueError(f"space {self.name!r}: vary: unknown dimension {dim!r}; known: {DIMENSIONS}")
            if not isinstance(values, list | tuple):
                raise ValueError(f"space {self.name!r}: vary.{dim}: must be a list of ints, got {values!r}")
            for v in values:
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise ValueError(f"space {self.name!r}: vary.{dim}: values must be ints >= 1, got {v!r}")
                if v >= getattr(target, dim):
                    raise ValueError(
                        f"space {self.name!r}: vary.{dim}={v} is not smaller than the target's {getattr(target, dim)}:"
                        f" growing from it to the target would shrink (or not grow) {dim}"
                    )
                s = Structure(**{**target.as_dict(), dim: v})
                label = f"{_SHORT[dim]}{v}"
                out.append(TrialSpec(label, self._sched(label, [(s, 0)], phi=0), {"dim": dim, "value": v}))
        return out if len(out) > 1 else []  # the target alone is no grid

    def _durations(self) -> list[TrialSpec]:
        structs = [_structure(s, f"space {self.name!r}: structures[{i}]") for i, s in enumerate(self.structures)]
        if len(structs) < 2:
            raise ValueError(f"space {self.name!r}: structures: need at least 2 stages to split")
        out = []
        for split in self.splits:
            if isinstance(split, str):
                if split not in SPLITS:
                    raise ValueError(f"space {self.name!r}: splits: unknown split {split!r}; known: {list(SPLITS)}")
                starts: list = paper_stage_starts(self.total_steps, len(structs), SPLITS[split])
                label = split
            else:
                starts = [float(x) for x in split]
                label = "split-" + "-".join(f"{x:g}" for x in starts)
                if len(starts) != len(structs):
                    raise ValueError(f"space {self.name!r}: splits: {split!r} needs {len(structs)} start fractions")
            out.append(TrialSpec(label, self._sched(label, list(zip(structs, starts, strict=True))), {"split": label}))
        return out

    def _schedules(self) -> list[TrialSpec]:
        if not isinstance(self.schedules, dict):
            raise ValueError(f"space {self.name!r}: schedules: must map labels to schedules")
        return [
            TrialSpec(label, self._schedule_of(spec, label), {"schedule": label})
            for label, spec in self.schedules.items()
        ]

    def _phi(self) -> list[TrialSpec]:
        base = self._schedule_of(self.schedule, "base")
        out = []
        for v in self.values:
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"space {self.name!r}: values: phi must be ints >= 0, got {v!r}")
            try:
                out.append(TrialSpec(f"phi{v}", base.replace(phi=v, name=f"phi{v}"), {"phi": v}))
            except ValueError as e:
                raise ValueError(f"space {self.name!r}: phi={v}: {e}") from e
        return out

    def _operators(self) -> list[TrialSpec]:
        base = self._schedule_of(self.schedule, "base")
        out = []
        for op in self.operators:
            if op not in (*OPERATORS, FULL):
                raise ValueError(
                    f"space {self.name!r}: operators: unknown operator {op!r}; known: {(*OPERATORS, FULL)}"
                )
            s = base.full_baseline(FULL) if op == FULL else base.replace(operator=op, name=op)
            out.append(TrialSpec(op, s, {"operator": op}))
        return out

    def _adaptive(self) -> list[TrialSpec]:
        """The same schedule with fixed stage starts and with online (adaptive) growth, plus full training."""
        if not isinstance(self.adaptive, dict) or "target_gamma" not in self.adaptive:
            raise ValueError(f"space {self.name!r}: adaptive: must be a mapping with at least target_gamma")
        base = self._schedule_of(self.schedule, "base")
        target = base.full_baseline(FULL)
        return [
            TrialSpec("fixed", base.replace(name="fixed"), {"mode": "fixed"}),
            TrialSpec("adaptive", base.replace(name="adaptive"), {"mode": "adaptive"}, run={"adaptive": self.adaptive}),
            TrialSpec(FULL, target, {"mode": FULL}),
        ]

    def _schedule_of(self, spec: Any, label: str) -> Schedule:
        """A preset name/file (rescaled to total_steps, phi), or {"structures": [...], "starts": [...]}."""
        try:
            if isinstance(spec, str):  # a preset's stages on the space's arch (mini-sch1-g trains llama too)
                s = get_schedule(spec, total_steps=self.total_steps, phi=self.phi)
                return s.replace(name=label, arch=self.arch)
            if isinstance(spec, dict) and "structures" in spec:
                unknown = set(spec) - {"structures", "starts", "operator"}
                if unknown:
                    raise ValueError(f"unknown key(s) {sorted(unknown)}")
                structs = [_structure(x, f"structures[{i}]") for i, x in enumerate(spec["structures"])]
                starts = spec.get("starts") or paper_stage_starts(self.total_steps, len(structs))
                kw = {"operator": spec["operator"]} if "operator" in spec else {}
                return self._sched(label, list(zip(structs, starts, strict=True)), **kw)
            if isinstance(spec, dict):
                return Schedule.from_dict({**spec, "name": label})
        except ValueError as e:
            raise ValueError(f"space {self.name!r}: schedule {label!r}: {e}") from e
        raise ValueError(f"space {self.name!r}: schedule {label!r}: expected a preset name or a mapping, got {spec!r}")

    # -- run configs ------------------------------------------------------------------------------------
    def run_config(self, trial: TrialSpec, sweep_name: str, vocab_size: int | None = None, **extra: Any) -> RunConfig:
        """The trial's validated RunConfig: RUN_DEFAULTS < space.run < trial.run < extra; schedule, name, seed set
        here. With compute 'flops' and a ``vocab_size``, the schedule is solved to the FLOPs of ``total_steps``
        steps of the space's target (without one, it is validated as written - the check before data exists)."""
        d = merge_dicts(merge_dicts(merge_dicts(RUN_DEFAULTS, self.run), trial.run), extra)
        d.update(schedule=trial.schedule.to_dict(), name=f"{sweep_name}-{trial.label}", seed=trial.seed)
        data = dict(d.get("data") or {})
        if data.get("cache_dir"):  # Tune trials run in their own cwd
            data["cache_dir"] = str(Path(data["cache_dir"]).resolve())
        d["data"] = data
        try:
            rc = RunConfig.from_dict(d)
            if self.compute == "flops" and vocab_size is not None:
                solved = equal_flops(
                    trial.schedule, self.total_steps, vocab_size, rc.data.seq_len, self.reference_target()
                )
                rc = RunConfig.from_dict({**rc.to_dict(), "schedule": solved.to_dict()})
            return rc
        except ValueError as e:
            raise ValueError(f"space {self.name!r}: run: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None and k != "doc"}

    def digest(self) -> str:
        """Identifies the space's content (a resumed sweep must be the same study)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: dict[str, Any], name: str = "", doc: str = "") -> SearchSpace:
        if not isinstance(d, dict):
            raise ValueError(f"space {name!r}: SPACE must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"space {name!r}: unknown field(s) {sorted(unknown)}; known: {sorted(known - {'doc'})}")
        if "kind" not in d:
            raise ValueError(f"space {name!r}: kind is required ({', '.join(KINDS)})")
        return cls(**{"name": name, "doc": doc, **d})


def _positive(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, int | float) and v > 0 and math.isfinite(v)


def _structure(value: Any, where: str) -> Structure:
    try:
        return Structure.parse(value)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from e


def load_space(name_or_path: str | os.PathLike, overrides: list[str] | None = None) -> SearchSpace:
    """A named space (``tune_spaces/<name>.py``) or a space file (.py defining SPACE, .yaml/.yml/.json),
    with optional ``key.sub=value`` overrides (e.g. ``budget.wall_s=30``, ``run.engine.lr=0.001``)."""
    path = Path(name_or_path)
    if not path.is_file():
        named = spaces_dir() / f"{name_or_path}.py"
        if not named.is_file():
            known = sorted(p.stem for p in spaces_dir().glob("*.py") if not p.stem.startswith("_"))
            raise ValueError(f"unknown space {str(name_or_path)!r}: not a file and not one of {known}")
        path = named
    raw, doc = _read_space_file(path)
    if isinstance(raw, SearchSpace):
        raw = {**raw.to_dict(), "name": raw.name}
        doc = doc or raw.get("doc", "")
    if not isinstance(raw, dict):
        raise ValueError(f"space file {path}: SPACE must be a mapping, got {type(raw).__name__}")
    name = raw.pop("name", None) or path.stem
    raw = apply_overrides(raw, overrides or [])
    return SearchSpace.from_dict(raw, name=name, doc=doc)


def _read_space_file(path: Path) -> tuple[Any, str]:
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml", ".json"):
        try:
            data = yaml.safe_load(path.read_text())  # JSON is YAML
        except yaml.YAMLError as e:
            raise ValueError(f"space file {path}: not valid YAML/JSON: {e}") from e
        return data, (data.pop("doc", "") if isinstance(data, dict) else "")
    if suffix != ".py":
        raise ValueError(f"space file {path}: suffix must be .py, .yaml, .yml or .json")
    spec = importlib.util.spec_from_file_location(f"msg_ray_space_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except Exception as e:
        raise ValueError(f"space file {path}: failed to import: {type(e).__name__}: {e}") from e
    if not hasattr(module, "SPACE"):
        raise ValueError(f"space file {path}: defines no SPACE")
    return module.SPACE, (module.__doc__ or "").strip()
