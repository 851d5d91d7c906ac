"""Search spaces: load a ``tune_spaces/*.py`` (or YAML/JSON) study, validate it, and plan its trials.

A space file defines ``SPACE``: a mapping (or a `SearchSpace`) with a ``kind`` (a registered
`msg_ray.tune.kinds.SpaceKind`: structures, durations, schedules, phi, operators, adaptive) and the fields of that
kind; the module docstring documents the study. On top of a kind's grid a space may add an LR grid (``lrs``; the
sweep extends it by ``lr_step`` at an edge, at most ``lr_extend`` points per label), a warm-up grid (``warmups``),
budgets (``budget_fracs``: each trial also run, its LR decayed at its own end, at fractions of the FLOPs budget)
and the linear probes scored on every trial's final model (``probes``). Seeds come from the sweep.

Everything is validated here, before Ray starts: unknown fields or dimensions, structures that would shrink,
empty grids and invalid schedules/run configs raise ValueError naming the field.

Built-in spaces live in the top-level ``tune_spaces/`` of a checkout and ship in the wheel as the
``msg_ray.tune_spaces`` package (``pyproject.toml`` maps one onto the other).
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

from msg_ray.data.downstream import CLASSIFICATION_TASKS
from msg_ray.flops import equal_flops
from msg_ray.presets import get_schedule
from msg_ray.schedule import FULL, Schedule, Stage, full, paper_stage_starts
from msg_ray.train.config import RunConfig, apply_overrides, merge_dicts
from msg_ray.tune.kinds import TrialSpec, get_kind, kind_fields, kind_names, structure_of

COMPUTES = ("steps", "flops")
TIME_ATTRS = ("wall_s", "flops")
PROBE_TASKS = ("movie_snippets", "bbc_news")
LR_STEP = 2**0.5  # the next LR point beyond an edge of the grid: x or / sqrt(2)
# Run settings every sweep starts from (a space's ``run`` overrides them): frequent Tune reports for ASHA.
RUN_DEFAULTS: dict[str, Any] = {"report_every": 5, "log_every": 10, "gamma_window": 20, "warmup_steps": 10}
# Run settings of the built-in spaces (``tune_spaces/``): mini scale on WikiText-2 (CPU minutes), one worker per
# trial; a sweep overrides any of them with ``--set run.<key>=<value>``.
MINI_RUN: dict[str, Any] = {
    "data": {"source": "wikitext2", "tokenizer": "bpe8k", "seq_len": 64},
    "engine": {"zero_stage": 0, "micro_batch_size": 16, "lr": 1e-3},
    "warmup_steps": 20,
    "gamma_window": 20,
    "report_every": 5,
    "log_every": 10,
    "eval_every": 25,  # the validation curve FLOPs-to-target and the sweep's figure are read from
    "eval_batches": 4,
    "export_hf": False,
}


def spaces_dir() -> Path:
    """Where named spaces live: ``$MSG_RAY_TUNE_SPACES``, else the checkout's ``tune_spaces/``, else the installed
    ``msg_ray.tune_spaces`` package (a non-editable ``pip install .``)."""
    env = os.environ.get("MSG_RAY_TUNE_SPACES")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[2] / "tune_spaces"
    if checkout.is_dir():
        return checkout
    spec = importlib.util.find_spec("msg_ray.tune_spaces")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("no built-in spaces: neither a checkout's tune_spaces/ nor an installed msg_ray.tune_spaces")
    return Path(next(iter(spec.submodule_search_locations)))


def known_spaces() -> list[str]:
    """Names of the built-in spaces (files in `spaces_dir` not starting with ``_``)."""
    return sorted(p.stem for p in spaces_dir().glob("*.py") if not p.stem.startswith("_"))


def lr_label(base: str, lr: float, warmup: int | None = None, frac: float | None = None) -> str:
    """A trial's label on the LR/warm-up/budget grid, e.g. ``paper@lr0.002-wu20-b0.5``."""
    return f"{base}@lr{lr:.3g}" + (f"-wu{warmup}" if warmup is not None else "") + (f"-b{frac:g}" if frac else "")


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
    lr_step: float = LR_STEP  # factor to the next LR beyond an edge of the grid
    lr_extend: int = 2  # at most this many LRs added per label (0: never extend; an edge choice is then flagged)
    warmups: list[int] | None = None  # a warm-up grid crossed with lrs (None: run.warmup_steps for every trial)
    budget_fracs: list[float] | None = None  # compute 'flops': also run each trial at these fractions of the budget
    probes: list[str] = field(default_factory=lambda: list(PROBE_TASKS))  # linear probes per trial ([]: none)
    probe_examples: int = 512  # probe examples per split (train/dev/test) and task
    doc: str = ""

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"space {self.name!r}: {name}: {why}")

        try:
            kind = get_kind(self.kind)
        except ValueError as e:
            raise bad("kind", str(e)) from None
        if not self.name or any(c in self.name for c in "/\\ "):
            raise bad("name", "must be non-empty without '/', '\\' or spaces")
        for n in sorted(kind_fields() - kind.fields):
            if getattr(self, n) is not None:
                other = next(k for k in kind_names() if n in get_kind(k).fields)
                raise bad(n, f"is a field of kind {other!r}, not of {self.kind!r}")
        for n in sorted(kind.fields):
            if getattr(self, n) is None:
                raise bad(n, f"is required for kind {self.kind!r}")
        if len(self.budget) > 1 or set(self.budget) - set(TIME_ATTRS):
            raise bad("budget", f"must be {{}} or one of {{'wall_s': T}}, {{'flops': F}}, got {self.budget!r}")
        if not all(_positive(v) for v in self.budget.values()):
            raise bad("budget", f"values must be positive numbers, got {self.budget!r}")
        self._check_compute()
        self._check_grids()
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
        if not get_kind(self.kind).fixed_starts:
            raise bad("compute", f"'flops' needs fixed stage starts; kind {self.kind!r} decides them online")
        if self.budget:
            raise bad("budget", "must be {} with compute 'flops': every trial runs to its own end at equal FLOPs")
        if self.asha is not None:
            raise bad(
                "asha",
                "must be None with compute 'flops': early stopping would compare schedules that "
                "have grown with ones that have not, and final losses are what is ranked",
            )

    def _check_grids(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"space {self.name!r}: {name}: {why}")

        if not _positive(self.lr_step) or self.lr_step <= 1:
            raise bad("lr_step", f"must be a number > 1 (the factor to the next LR), got {self.lr_step!r}")
        if isinstance(self.lr_extend, bool) or not isinstance(self.lr_extend, int) or self.lr_extend < 0:
            raise bad("lr_extend", f"must be an int >= 0, got {self.lr_extend!r}")
        if self.warmups is not None:
            if not self.lrs:
                raise bad("warmups", "needs an LR grid (lrs): warm-up is chosen together with the LR")
            ok = isinstance(self.warmups, list | tuple) and self.warmups and len(set(self.warmups)) == len(self.warmups)
            if not ok or any(isinstance(w, bool) or not isinstance(w, int) or w < 0 for w in self.warmups):
                raise bad("warmups", f"must be a list of distinct ints >= 0, got {self.warmups!r}")
        if self.budget_fracs is not None:
            if self.compute != "flops":
                raise bad("budget_fracs", "needs compute 'flops' (each fraction is a budget every trial is solved to)")
            fr = self.budget_fracs
            if (
                not isinstance(fr, list | tuple)
                or 1.0 not in fr
                or len(set(fr)) != len(fr)
                or not all(_positive(x) and x <= 1 for x in fr)
            ):
                raise bad("budget_fracs", f"must be distinct fractions in (0, 1] including 1.0, got {fr!r}")
        if not isinstance(self.probes, list | tuple) or set(self.probes) - set(CLASSIFICATION_TASKS):
            raise bad("probes", f"must be a list of {sorted(CLASSIFICATION_TASKS)} ([]: none), got {self.probes!r}")
        if (
            isinstance(self.probe_examples, bool)
            or not isinstance(self.probe_examples, int)
            or self.probe_examples < 16
        ):
            raise bad("probe_examples", f"must be an int >= 16, got {self.probe_examples!r}")

    # -- planning ---------------------------------------------------------------------------------------
    def _kind_trials(self) -> list[TrialSpec]:
        return get_kind(self.kind).plan(self)

    def reference_target(self):
        """The structure every trial is measured against (the largest target among the trials)."""
        return max((t.schedule.target for t in self._kind_trials()), key=lambda s: s.as_tuple())

    def base_trials(self) -> list[TrialSpec]:
        """The kind's grid plus the full reference (compute 'flops'), before the LR/warm-up/budget grid."""
        base = self._kind_trials()
        if not base:
            raise ValueError(f"space {self.name!r}: the grid is empty")
        return self._with_reference(base)

    def trials(self, seeds: tuple[int, ...] = (0,), extra: list[dict[str, Any]] | None = None) -> list[TrialSpec]:
        """Every trial of the grid, repeated per seed (labels get ``-s<seed>`` when there are several).

        ``extra``: LR points the sweep added beyond the grid's edges, ``{"base": label, "lr": x, "warmup": w}`` each
        (appended after the grid, in order, every budget and seed)."""
        base = self.base_trials()
        if self.lrs:  # the same LR (and warm-up) grid for every trial, the reference included
            points = [(t, lr, w) for t in base for lr in self.lrs for w in (self.warmups or [None])]
            by_label = {t.label: t for t in base}
            for e in extra or []:
                if e["base"] not in by_label:
                    raise ValueError(f"space {self.name!r}: an added LR point names no trial: {e['base']!r}")
                points.append((by_label[e["base"]], float(e["lr"]), e.get("warmup")))
            base = [self._grid_point(t, lr, w, f) for t, lr, w in points for f in (self.budget_fracs or [None])]
        elif self.budget_fracs:
            base = [self._grid_point(t, None, None, f) for t in base for f in self.budget_fracs]
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

    @staticmethod
    def _grid_point(t: TrialSpec, lr: float | None, warmup: int | None, frac: float | None) -> TrialSpec:
        run, meta = dict(t.run), {**t.meta, "base_label": t.label}
        if lr is not None:
            run, meta["lr"] = merge_dicts(run, {"engine": {"lr": lr}}), lr
        if warmup is not None:
            run["warmup_steps"] = meta["warmup"] = warmup
        if frac is not None:
            meta["budget_frac"] = frac
        label = lr_label(t.label, lr, warmup, frac) if lr is not None else f"{t.label}-b{frac:g}"
        return TrialSpec(label, t.schedule, meta, 0, run)

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

    def stage_schedule(self, label: str, stages: list[tuple[Any, int | float]], **kw: Any) -> Schedule:
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

    def schedule_of(self, spec: Any, label: str) -> Schedule:
        """A preset name/file (rescaled to total_steps, phi), or {"structures": [...], "starts": [...]}."""
        try:
            if isinstance(spec, str):  # a preset's stages on the space's arch (mini-sch1-g trains llama too)
                s = get_schedule(spec, total_steps=self.total_steps, phi=self.phi)
                return s.replace(name=label, arch=self.arch)
            if isinstance(spec, dict) and "structures" in spec:
                unknown = set(spec) - {"structures", "starts", "operator"}
                if unknown:
                    raise ValueError(f"unknown key(s) {sorted(unknown)}")
                structs = [structure_of(x, f"structures[{i}]") for i, x in enumerate(spec["structures"])]
                starts = spec.get("starts") or paper_stage_starts(self.total_steps, len(structs))
                kw = {"operator": spec["operator"]} if "operator" in spec else {}
                return self.stage_schedule(label, list(zip(structs, starts, strict=True)), **kw)
            if isinstance(spec, dict):
                return Schedule.from_dict({**spec, "name": label})
        except ValueError as e:
            raise ValueError(f"space {self.name!r}: schedule {label!r}: {e}") from e
        raise ValueError(f"space {self.name!r}: schedule {label!r}: expected a preset name or a mapping, got {spec!r}")

    # -- run configs ------------------------------------------------------------------------------------
    def run_config(self, trial: TrialSpec, sweep_name: str, vocab_size: int | None = None, **extra: Any) -> RunConfig:
        """The trial's validated RunConfig: RUN_DEFAULTS < space.run < trial.run < extra; schedule, name, seed set
        here. With compute 'flops' and a ``vocab_size``, the schedule is solved to the FLOPs of ``total_steps``
        (times the trial's ``budget_frac``) steps of the space's target (without one, it is validated as written - the check before data exists)."""
        d = merge_dicts(merge_dicts(merge_dicts(RUN_DEFAULTS, self.run), trial.run), extra)
        d.update(schedule=trial.schedule.to_dict(), name=f"{sweep_name}-{trial.label}", seed=trial.seed)
        data = dict(d.get("data") or {})
        if data.get("cache_dir"):  # Tune trials run in their own cwd
            data["cache_dir"] = str(Path(data["cache_dir"]).resolve())
        d["data"] = data
        try:
            rc = RunConfig.from_dict(d)
            if self.compute == "flops" and vocab_size is not None:
                steps = max(1, round(self.total_steps * trial.meta.get("budget_frac", 1.0)))
                solved = equal_flops(trial.schedule, steps, vocab_size, rc.data.seq_len, self.reference_target())
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
            raise ValueError(f"space {name!r}: kind is required ({', '.join(kind_names())})")
        return cls(**{"name": name, "doc": doc, **d})


def _positive(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, int | float) and v > 0 and math.isfinite(v)


def load_space(name_or_path: str | os.PathLike, overrides: list[str] | None = None) -> SearchSpace:
    """A named space (``tune_spaces/<name>.py``) or a space file (.py defining SPACE, .yaml/.yml/.json),
    with optional ``key.sub=value`` overrides (e.g. ``budget.wall_s=30``, ``run.engine.lr=0.001``)."""
    path = Path(name_or_path)
    if not path.is_file():
        named = spaces_dir() / f"{name_or_path}.py"
        if not named.is_file():
            raise ValueError(f"unknown space {str(name_or_path)!r}: not a file and not one of {known_spaces()}")
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
