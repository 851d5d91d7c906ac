"""The typed configuration of one training run (schedule, data, engine, tracking), validated before Ray starts.

``RunConfig.to_dict()`` is the resolved config saved with every run and checkpoint; ``RunConfig.from_dict`` reads
it back, and resolves a partial one: a cluster preset's run settings (``msg_ray.presets.SETTINGS``: sequence
length, global batch, precision, ZeRO stage) fill what it leaves out, and a ``BudgetWarning`` says when the run's
tokens per step differ from those the preset's step budget was solved for. ``apply_overrides`` implements the
CLI's ``--set key=value`` (dotted keys into the nested dict).
"""

from __future__ import annotations

import ast
import math
import os
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from msg_ray.architecture import get_arch
from msg_ray.data import DataConfig
from msg_ray.model import ModelConfig
from msg_ray.presets import PRESETS, RunSettings, get_schedule, preset_settings
from msg_ray.schedule import Schedule
from msg_ray.structure import Structure
from msg_ray.tracking import TrackingConfig
from msg_ray.train.engine import EngineConfig
from msg_ray.train.lr import LR_SCALES
from msg_ray.validate import check_types

LR_DECAYS = ("cosine", "linear", "constant")


class BudgetWarning(UserWarning):
    """A run trains a different number of tokens per step than its preset's step budget was solved for."""


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    schedule: Schedule
    data: DataConfig
    engine: EngineConfig = field(default_factory=EngineConfig)
    name: str = "msg-run"
    workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    storage_path: str = ""  # "" -> $MSG_RAY_HOME/ray or ./runs/ray, made absolute (shared storage on a cluster)
    tracking_uri: str | None = None  # None -> $MLFLOW_TRACKING_URI or the local sqlite store
    experiment: str = "msg_ray"
    tracking: TrackingConfig = field(default_factory=TrackingConfig)  # tracking.backend: a registered tracker
    # tokens per optimizer step the schedule's step budget was solved for (its preset's seq_len x global batch);
    # filled by from_dict for a cluster preset, None for schedules that state none
    budget_tokens_per_step: int | None = None
    seed: int = 0
    warmup_steps: int = 50
    lr_decay: str = "cosine"
    min_lr_ratio: float = 0.1
    # LR back to its peak at the first k growths (the paper's appendix D uses 2). Default 0: one decay over the
    # run; resets made no difference beyond seed noise at equal FLOPs on the fast presets (msg_ray.train.lr, README).
    lr_reset_growths: int = 0
    lr_scale: str = "none"  # per-stage peak LR rule: none | width (x target hidden_dim / stage hidden_dim)
    # >0: train for this many wall seconds; stage starts, warm-up and LR decay are fractions of the nominal
    # total_steps read on the wall-time axis (the compare's --budget wall). 0: train total_steps steps.
    wall_budget_s: float = 0.0
    dropout: float = 0.0
    # the norms' epsilon; lower it when a growth must be exact to more digits than fp32 noise (LEMON's rescaled
    # norms are exact only up to ε: shrinking the variance by H_old/H_new weights ε by H_new/H_old)
    ln_eps: float = 1e-5
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 8
    ckpt_every: int = 0  # 0: only at stage boundaries and the end
    report_every: int = 0  # >0: also report metrics (no checkpoint) to Ray every N steps (Tune/ASHA); 0: never
    gamma_window: int = 50  # optimizer steps in the γ/α/τ window (eq. 21)
    growth_check_tol: float = 1e-4  # |loss after - loss before| allowed for msg growth (fp32)
    max_failures: int = 0  # Ray FailureConfig retries (resume from the last checkpoint)
    export_hf: bool = True
    adaptive: dict[str, Any] | None = None  # online growth times, see msg_ray.train.adaptive and _check_adaptive
    # divergence: a NaN/inf loss always counts; > divergence_factor x the running median of the last
    # divergence_window losses counts too when the factor is > 0. stop: fail the run (FAILED in MLflow, last good
    # checkpoint kept); rollback: reload the newest checkpoint before it with the LR x rollback_lr_factor, at most
    # max_rollbacks times, then stop.
    divergence_factor: float = 0.0
    divergence_window: int = 50
    on_divergence: str = "stop"
    max_rollbacks: int = 2
    rollback_lr_factor: float = 0.5
    kill_rank_at_step: tuple[int, int] | None = None  # fault injection for tests: (rank, step), first attempt only
    inject_nan_at_step: int | None = None  # fault injection for tests: one NaN loss at this step, first time only
    # fault injection for tests: (rank, step) stops and waits (first attempt only), so a test can take its node away
    stall_rank_at_step: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"RunConfig.{name}: {why}")

        check_types(self, "RunConfig.")
        if not self.name or any(c in self.name for c in "/\\ "):
            raise bad("name", f"must be non-empty without '/', '\\' or spaces, got {self.name!r}")
        for name in ("workers", "log_every", "eval_every", "eval_batches", "gamma_window"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise bad(name, f"must be an int >= 1, got {v!r}")
        for name in ("warmup_steps", "ckpt_every", "report_every", "lr_reset_growths", "max_failures", "seed"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise bad(name, f"must be an int >= 0, got {v!r}")
        if self.on_divergence not in ("stop", "rollback"):
            raise bad("on_divergence", f"must be 'stop' or 'rollback', got {self.on_divergence!r}")
        if self.divergence_factor != 0 and not self.divergence_factor > 1:
            raise bad("divergence_factor", f"must be 0 (off) or > 1, got {self.divergence_factor!r}")
        if not 0 < self.rollback_lr_factor <= 1:
            raise bad("rollback_lr_factor", f"must be in (0, 1], got {self.rollback_lr_factor!r}")
        if self.divergence_window < 1 or self.max_rollbacks < 0:
            raise bad(
                "divergence_window" if self.divergence_window < 1 else "max_rollbacks",
                f"must be >= 1 / >= 0, got {self.divergence_window!r} / {self.max_rollbacks!r}",
            )
        if self.lr_decay not in LR_DECAYS:
            raise bad("lr_decay", f"must be one of {LR_DECAYS}, got {self.lr_decay!r}")
        if (
            isinstance(self.wall_budget_s, bool)
            or not isinstance(self.wall_budget_s, int | float)
            or not (self.wall_budget_s >= 0 and math.isfinite(self.wall_budget_s))
        ):
            raise bad(
                "wall_budget_s", f"must be a number of seconds >= 0 (0: no wall budget), got {self.wall_budget_s!r}"
            )
        if self.lr_scale not in LR_SCALES:
            raise bad("lr_scale", f"must be one of {LR_SCALES}, got {self.lr_scale!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise bad("min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        if not 0.0 <= self.dropout < 1.0:
            raise bad("dropout", f"must be in [0, 1), got {self.dropout!r}")
        if not 0.0 < self.ln_eps < 1e-2:
            raise bad("ln_eps", f"must be in (0, 1e-2), got {self.ln_eps!r}")
        if self.budget_tokens_per_step is not None and self.budget_tokens_per_step < 1:
            raise bad("budget_tokens_per_step", f"must be None or an int >= 1, got {self.budget_tokens_per_step!r}")
        if self.cpus_per_worker <= 0:
            raise bad("cpus_per_worker", f"must be > 0, got {self.cpus_per_worker}")
        if self.data.seq_len > 4096:
            raise bad("data.seq_len", f"must be <= 4096 (learned positions), got {self.data.seq_len}")
        objective = get_arch(self.schedule.arch).objective
        if self.data.objective != objective:
            raise bad(
                "data.objective", f"arch {self.schedule.arch!r} trains with {objective!r}, got {self.data.objective!r}"
            )
        if self.adaptive is not None:
            _check_adaptive(self.adaptive, self.schedule)
        if not self.storage_path:
            root = Path(os.environ.get("MSG_RAY_HOME", "runs"))
            object.__setattr__(self, "storage_path", str((root / "ray").resolve()))
        elif "://" not in self.storage_path:
            object.__setattr__(self, "storage_path", str(Path(self.storage_path).resolve()))

    @property
    def total_steps(self) -> int:
        return self.schedule.total_steps

    def model_config(self, vocab_size: int, structure: Structure | None = None) -> ModelConfig:
        """The model this run builds for ``structure`` (default: the first stage's) over a ``vocab_size`` vocabulary
        (known once the data is prepared)."""
        s = self.schedule
        return ModelConfig(
            arch=s.arch,
            structure=structure or s.stages[0].structure,
            vocab_size=vocab_size,
            max_seq_len=self.data.seq_len,
            head_dim=s.head_dim,
            dropout=self.dropout,
            ln_eps=self.ln_eps,
            kv_group_size=s.kv_group_size,
        )

    @property
    def tokens_per_step(self) -> int:
        return self.engine.micro_batch_size * self.engine.grad_accum * self.workers * self.data.seq_len

    def budget_mismatch(self) -> str | None:
        """One line saying how this run's tokens per step differ from those its step budget was solved for; None
        when they agree or the schedule states no budget."""
        budget = self.budget_tokens_per_step
        if budget is None or self.tokens_per_step == budget:
            return None
        e = self.engine
        return (
            f"RunConfig: schedule {self.schedule.name!r} was solved for {budget:,} tokens per step, this run trains "
            f"{self.tokens_per_step:,} (data.seq_len {self.data.seq_len} x engine.micro_batch_size "
            f"{e.micro_batch_size} x engine.grad_accum {e.grad_accum} x workers {self.workers}): its steps no longer "
            "spend the FLOPs and tokens of the preset's budget; compare runs by FLOPs or tokens, not steps"
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "schedule":
                v = v.to_dict()
            elif f.name in ("data", "engine", "tracking"):
                v = asdict(v)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        d = dict(d)
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"RunConfig: unknown field(s) {sorted(unknown)}")
        if "schedule" not in d:
            raise ValueError("RunConfig.schedule is required")
        sched = d["schedule"]
        d["schedule"] = Schedule.from_dict(sched) if isinstance(sched, dict) else get_schedule(sched)
        settings = None if "budget_tokens_per_step" in d else _preset_of(d["schedule"])
        if settings is not None:  # a partial config of a cluster preset: its run settings are the defaults
            d = _preset_defaults(d, settings)
        data = d.get("data", {})
        if isinstance(data, dict) and "objective" not in data:  # the arch decides the objective
            data = {**data, "objective": get_arch(d["schedule"].arch).objective}
        d["data"] = _sub(DataConfig, data, "data")
        d["engine"] = _sub(EngineConfig, d.get("engine", {}), "engine")
        d["tracking"] = _sub(TrackingConfig, d.get("tracking", {}), "tracking")
        for name in ("kill_rank_at_step", "stall_rank_at_step"):
            if isinstance(d.get(name), list):
                d[name] = tuple(d[name])
        cfg = cls(**d)
        mismatch = cfg.budget_mismatch() if settings is not None else None
        if mismatch:  # once, where the config is resolved (a resolved config carries budget_tokens_per_step)
            warnings.warn(mismatch, BudgetWarning, stacklevel=2)
        return cfg


def _preset_of(schedule: Schedule) -> RunSettings | None:
    """The run settings of the cluster preset ``schedule`` is (same name, arch and stage structures; its length
    may be rescaled), or None."""
    settings, preset = preset_settings(schedule.name), PRESETS.get(schedule.name)
    if settings is None or preset is None or preset.arch != schedule.arch:
        return None
    same = [s.structure for s in preset.stages] == [s.structure for s in schedule.stages]
    return settings if same else None


def _preset_defaults(d: dict[str, Any], settings: RunSettings) -> dict[str, Any]:
    """``d`` with the preset's run settings where it leaves them out: ``data.seq_len``, ``engine.precision`` and
    ``engine.zero_stage`` as they are, and a micro-batch and gradient accumulation that make the preset's global
    batch over ``workers`` (the largest per-worker batch up to the preset's that divides it exactly; rounded when
    nothing does). Sections given as config objects rather than mappings count as fully given."""
    d = {**d, "budget_tokens_per_step": settings.tokens_per_step}
    data, engine = d.get("data", {}), d.get("engine", {})
    if isinstance(data, dict):
        d["data"] = {"seq_len": settings.seq_len, **data}
    if not isinstance(engine, dict):
        return d
    engine = {"precision": settings.precision, "zero_stage": settings.zero_stage, **engine}
    workers = d.get("workers", 1)
    workers = workers if isinstance(workers, int) and not isinstance(workers, bool) and workers >= 1 else 1
    micro, accum = engine.get("micro_batch_size"), engine.get("grad_accum")
    per_worker = settings.global_batch / workers
    if micro is None and accum is None:
        if settings.global_batch % workers == 0:
            micro = max(m for m in range(1, settings.micro_batch + 1) if int(per_worker) % m == 0)
        else:
            micro = settings.micro_batch
    if micro is None and isinstance(accum, int) and accum >= 1:
        micro = max(1, round(per_worker / accum))
    if accum is None and isinstance(micro, int) and micro >= 1:
        accum = max(1, round(per_worker / micro))
    engine.update({k: v for k, v in (("micro_batch_size", micro), ("grad_accum", accum)) if v is not None})
    d["engine"] = engine
    return d


ADAPTIVE_KEYS = {"target_gamma", "window", "patience", "min_stage_steps", "margin"}


def _check_adaptive(a: Any, schedule: Schedule) -> None:
    """``adaptive``: grow to the next stage once the running γ stays below the target structure's γ
    (``target_gamma``: a number, or ``{"times": [...], "gammas": [...]}`` measured by a probe/sweep), never
    before ``min_stage_steps`` (>= φ) and at the latest at the stage's scheduled start."""
    if not isinstance(a, dict):
        raise ValueError(f"RunConfig.adaptive must be a mapping, got {type(a).__name__}")
    unknown = set(a) - ADAPTIVE_KEYS
    if unknown:
        raise ValueError(f"RunConfig.adaptive: unknown field(s) {sorted(unknown)}; known: {sorted(ADAPTIVE_KEYS)}")
    if "target_gamma" not in a:
        raise ValueError("RunConfig.adaptive.target_gamma is required (a number or {times, gammas})")
    tg = a["target_gamma"]
    if isinstance(tg, dict) and set(tg) != {"times", "gammas"}:
        raise ValueError("RunConfig.adaptive.target_gamma: a curve needs exactly the keys 'times' and 'gammas'")
    if a.get("min_stage_steps", schedule.phi) < schedule.phi:
        raise ValueError(f"RunConfig.adaptive.min_stage_steps must be >= phi ({schedule.phi}) so ramps finish")
    if len(schedule.stages) < 2:
        raise ValueError("RunConfig.adaptive needs a schedule with at least 2 stages")


def _sub(cls: type, value: Any, name: str) -> Any:
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"RunConfig.{name} must be a mapping, got {type(value).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = set(value) - known
    if unknown:
        raise ValueError(f"RunConfig.{name}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
    value = {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
    try:
        return cls(**value)
    except ValueError as e:  # name the field as the user wrote it: RunConfig.engine.lr
        raise ValueError(f"RunConfig.{name}.{e}") from None


def parse_value(text: str) -> Any:
    """CLI value: Python literal when it parses (ints, floats, bools, lists), else the raw string."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(d: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings to a nested config dict (returns a new dict)."""
    out = _deep_copy(d)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {} if node.get(p) is None else _not_nested(key, p)
            node = node[p]
        node[parts[-1]] = parse_value(text.strip())
    return out


def _not_nested(key: str, part: str) -> dict:
    raise ValueError(f"--set {key}: {part!r} is not a nested section")


def _deep_copy(d: Any) -> Any:
    return {k: _deep_copy(v) for k, v in d.items()} if isinstance(d, dict) else d


def _deep(d: Any) -> Any:
    return {k: _deep(v) for k, v in d.items()} if isinstance(d, dict) else d


def merge_dicts(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``b`` over ``a``, nested mappings merged key by key (a trial's ``engine.lr`` keeps the space's engine);
    the inputs are not modified."""
    out = _deep(a)
    for k, v in b.items():
        out[k] = merge_dicts(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else _deep(v)
    return out
