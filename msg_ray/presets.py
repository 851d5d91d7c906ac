"""The preset schedules: the MSG paper's tables 2, 8 and 10, their CPU-sized "mini" versions and the "fast"
schedules, built into validated ``Schedule`` objects (``PRESETS``); the run settings each cluster preset's step
budget assumes (``SETTINGS``); and ``get_schedule``, which resolves a preset name or a schedule file.

Readings of the paper (arXiv 2305.02869, tables 2/8/10, appendices D/J), where a table leaves room:
- Sch1-B, Sch1-L, Sch0-B, Sch0-L: the last column ends at 900k, so ``total_steps = 900_000``. The Full
  baselines they are compared with train 1M steps (appendix D): presets ``full-bert-base``/``-large``.
- Sch1-G: the last stage is "190k~end"; appendix D trains GPT-2 for 240k steps, so ``total_steps = 240_000``.
  (The paper then kept training at full size to match wall time; that extension is not part of the preset.)
- Rapid-L: the last column ends at 800k, so ``total_steps = 800_000``; target is Bert-large.
- Sch-GPT-New (table 10, appendix J setting: batch 480, 100k steps): ``total_steps = 100_000``.
- phi = 5000 for all (section 3.2.1), head_dim 64 (the heads of Bert/GPT-2); Sch0-L's (768, ., 16, .) stages
  thus have 16*64 = 1024 attention width over a 768 hidden size, which the decoupled head_dim allows.

Mini versions: every dimension scaled by ``MINI_TARGET / paper target`` and rounded (hidden to 16, ffn to 32,
heads and layers to 1), head_dim 32 (so the mini target has 4*32 = 128 = hidden), same stage fractions on a
budget of ~1k steps. The same dimensions grow in the same order as in the paper (checked when built).
phi = 50, except mini Rapid-L whose 20k-step paper stages become 40 steps: phi = 20 there, keeping the
smallest stage/phi ratio (2) of the other minis.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

from msg_ray.schedule import FIELDS, Schedule, Stage, full
from msg_ray.structure import DIMENSIONS, Structure

PAPER_PHI = 5000

_BERT_STARTS = [0, 200_000, 400_000, 500_000, 600_000, 700_000]


def _stages(structures: list[list[int]], starts: list[int]) -> list[dict]:
    return [{"structure": s, "start": b} for s, b in zip(structures, starts, strict=True)]


PAPER: dict[str, dict] = {
    # Table 2
    "sch1-b": {
        "arch": "bert",
        "total_steps": 900_000,
        "stages": _stages(
            [
                [512, 768, 8, 3],
                [512, 3072, 8, 3],
                [512, 3072, 8, 6],
                [768, 3072, 8, 6],
                [768, 3072, 12, 6],
                [768, 3072, 12, 12],
            ],
            _BERT_STARTS,
        ),
    },
    "sch1-l": {
        "arch": "bert",
        "total_steps": 900_000,
        "stages": _stages(
            [
                [768, 1024, 12, 6],
                [768, 4096, 12, 6],
                [768, 4096, 12, 12],
                [1024, 4096, 12, 12],
                [1024, 4096, 16, 12],
                [1024, 4096, 16, 24],
            ],
            _BERT_STARTS,
        ),
    },
    "sch1-g": {
        "arch": "gpt",
        "total_steps": 240_000,
        "stages": _stages(
            [
                [512, 768, 8, 3],
                [512, 3072, 8, 3],
                [512, 3072, 8, 6],
                [768, 3072, 8, 6],
                [768, 3072, 12, 6],
                [768, 3072, 12, 12],
            ],
            [0, 50_000, 100_000, 130_000, 160_000, 190_000],
        ),
    },
    "rapid-l": {
        "arch": "bert",
        "total_steps": 800_000,
        "stages": _stages(
            [[512, 1024, 8, 6], [512, 4096, 8, 6], [1024, 4096, 8, 6], [1024, 4096, 16, 6], [1024, 4096, 16, 24]],
            [0, 400_000, 420_000, 440_000, 500_000],
        ),
    },
    # Table 8 (appendix G)
    "sch0-l": {
        "arch": "bert",
        "total_steps": 900_000,
        "stages": _stages(
            [[768, 1024, 16, 6], [768, 4096, 16, 6], [768, 4096, 16, 12], [768, 4096, 16, 24]],
            [0, 200_000, 400_000, 600_000],
        ),
    },
    "sch0-b": {
        "arch": "bert",
        "total_steps": 900_000,
        "stages": _stages(
            [[768, 768, 12, 3], [768, 768, 12, 6], [768, 768, 12, 9], [768, 768, 12, 12], [768, 3072, 12, 12]],
            [0, 200_000, 400_000, 600_000, 700_000],
        ),
    },
    # Table 10 (appendix J)
    "sch-gpt-new": {
        "arch": "gpt",
        "total_steps": 100_000,
        "stages": _stages(
            [[512, 768, 8, 12], [768, 768, 8, 12], [768, 768, 12, 12], [768, 3072, 12, 12]],
            [0, 30_000, 60_000, 80_000],
        ),
    },
}

# The paper's no-growth baselines (appendix D: Bert 1M steps, GPT-2 240k steps).
PAPER_FULL: dict[str, dict] = {
    "full-bert-base": {"arch": "bert", "total_steps": 1_000_000, "stages": _stages([[768, 3072, 12, 12]], [0])},
    "full-bert-large": {"arch": "bert", "total_steps": 1_000_000, "stages": _stages([[1024, 4096, 16, 24]], [0])},
    "full-gpt2": {"arch": "gpt", "total_steps": 240_000, "stages": _stages([[768, 3072, 12, 12]], [0])},
}

MINI_TARGET = [128, 512, 4, 4]
MINI_HEAD_DIM = 32

# paper preset name -> (mini total_steps, mini phi); totals chosen so the paper boundaries scale to whole steps.
MINI: dict[str, tuple[int, int]] = {
    "sch1-b": (900, 50),
    "sch1-l": (900, 50),
    "sch1-g": (1200, 50),
    "rapid-l": (1600, 20),
    "sch0-b": (900, 50),
    "sch0-l": (900, 50),
    "sch-gpt-new": (1000, 50),
}

# arch -> total_steps of the one-stage mini baseline (equal to mini-sch1-g / mini-sch1-b; override as needed).
MINI_FULL: dict[str, int] = {"gpt": 1200, "bert": 900, "llama": 1200}

# The schedule a run trains when none is named: the mini version of the paper's schedule for each arch.
DEFAULT_SCHEDULE: dict[str, str] = {"gpt": "mini-sch1-g", "bert": "mini-sch1-b", "llama": "mini-llama-sch1"}

# Llama counterparts of GPT presets: the same stages (shapes, starts, phi, head_dim) on arch "llama".
LLAMA_TWINS: dict[str, str] = {"mini-llama-sch1": "mini-sch1-g"}

# "Fast" schedules: growth finished before half of training, one LR decay over the whole run (no reset), chosen
# by measurement against a tuned full baseline at equal FLOPs (README, "Growth that pays"). Order of growths:
# ffn, hidden, heads, layers, every dimension starting at half its target. Starts are fractions of the run; each
# total_steps spends the FLOPs of ``full_steps`` steps of the target (msg_ray.flops.solve_total_steps) for the
# data it names: mini = 4k byte-level BPE, seq 64; gpt-fast = GPT-2 BPE (50,257), seq 1024; bert-fast = BERT's
# 30,522 WordPiece, seq 512. Under ``msg-ray compare --budget flops`` the length is re-solved for the real data.
FAST_STARTS = [0.0, 0.12, 0.24, 0.36, 0.48]
_MINI_FAST = [[64, 256, 2, 2], [64, 512, 2, 2], [128, 512, 2, 2], [128, 512, 4, 2], [128, 512, 4, 4]]
_PAPER_FAST = [[384, 1536, 6, 6], [384, 3072, 6, 6], [768, 3072, 6, 6], [768, 3072, 12, 6], [768, 3072, 12, 12]]
# A 1B-class Llama target with TinyLlama-1.1B's shape (32 query heads in 4 key/value groups of 8, 22 layers); growth
# starts at half of every dimension, so heads stay whole groups. Budget: Llama-2's 32k vocabulary, seq 2048.
_LLAMA_1B_FAST = [
    [1024, 2816, 16, 11],
    [1024, 5632, 16, 11],
    [2048, 5632, 16, 11],
    [2048, 5632, 32, 11],
    [2048, 5632, 32, 22],
]
FAST: dict[str, dict] = {
    "mini-gpt-fast": {
        "arch": "gpt",
        "structures": _MINI_FAST,
        "total_steps": 2000,
        "full_steps": 1500,
        "phi": 50,
        "head_dim": MINI_HEAD_DIM,
    },
    "mini-bert-fast": {
        "arch": "bert",
        "structures": _MINI_FAST,
        "total_steps": 2664,
        "full_steps": 2000,
        "phi": 50,
        "head_dim": MINI_HEAD_DIM,
    },
    "mini-llama-fast": {
        "arch": "llama",
        "structures": _MINI_FAST,
        "total_steps": 2028,
        "full_steps": 1500,
        "phi": 50,
        "head_dim": MINI_HEAD_DIM,
    },
    "gpt-fast": {
        "arch": "gpt",
        "structures": _PAPER_FAST,
        "total_steps": 330_161,
        "full_steps": 240_000,
        "phi": PAPER_PHI,
        "head_dim": 64,
    },
    "bert-fast": {
        "arch": "bert",
        "structures": _PAPER_FAST,
        "total_steps": 1_403_859,
        "full_steps": 1_000_000,
        "phi": PAPER_PHI,
        "head_dim": 64,
    },
    "llama-1b-fast": {
        "arch": "llama",
        "structures": _LLAMA_1B_FAST,
        "total_steps": 218_803,
        "full_steps": 150_000,
        "phi": PAPER_PHI,
        "head_dim": 64,
        "kv_group_size": 8,
    },
}


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """What a cluster preset's step budget assumes about each optimizer step.

    A preset's ``total_steps`` is a number of steps; what those steps cost and how much data they see follows
    from the sequence length and the global batch (sequences per optimizer step, all workers together), so
    ``tokens_per_step`` is the budget's unit. ``micro_batch`` is the per-worker batch the size fits on one
    80 GB GPU in ``precision``; a run derives its gradient accumulation from it and its worker count. The run
    config takes these as defaults (``msg_ray.train.config``) and warns when a run changes ``tokens_per_step``.
    """

    seq_len: int
    global_batch: int
    micro_batch: int
    precision: str = "bf16"
    zero_stage: int = 2
    source: str = ""  # where the numbers come from (the paper's appendix, or our choice)

    def __post_init__(self) -> None:
        for name in ("seq_len", "global_batch", "micro_batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"RunSettings.{name} must be an int >= 1, got {value!r}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"RunSettings.zero_stage must be 0, 1, 2 or 3, got {self.zero_stage!r}")

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.global_batch


# The paper states sequence length and batch (appendices D and J) but not precision or ZeRO stage: bf16 (A100s and
# later train in it without loss scaling) and ZeRO-2 (the run config's default; none of these sizes needs its
# parameters sharded). Per-GPU batches are the paper's global batch over its GPU count where that divides.
_BERT_D = RunSettings(
    seq_len=128, global_batch=256, micro_batch=32, source="appendix D: batch 256, max sequence length 128, 8 A100s"
)
_GPT_D = RunSettings(
    seq_len=1024, global_batch=140, micro_batch=10, source="appendix D: sequence length 1024, batch 140, 14 A100s"
)
_GPT_J = RunSettings(
    seq_len=1024, global_batch=480, micro_batch=16, source="appendix J: batch 480, NanoGPT's sequence length 1024"
)
SETTINGS: dict[str, RunSettings] = {
    **{name: _BERT_D for name in ("sch1-b", "sch1-l", "rapid-l", "sch0-b", "sch0-l", "full-bert-base")},
    "full-bert-large": _BERT_D,
    **{name: _GPT_D for name in ("sch1-g", "full-gpt2", "gpt-fast")},
    "sch-gpt-new": _GPT_J,
    # bert-fast's budget was solved at seq 512 (its docstring above), over the paper's BERT batch of 256
    "bert-fast": RunSettings(
        seq_len=512, global_batch=256, micro_batch=32, source="seq 512 as solved; appendix D's batch 256"
    ),
    # Not from the paper: 512 sequences of 2048 tokens (~1M tokens per step) for the 1B Llama at seq 2048
    "llama-1b-fast": RunSettings(
        seq_len=2048, global_batch=512, micro_batch=8, source="our choice: seq 2048 as solved, ~1M tokens per step"
    ),
}


def preset_settings(name: str) -> RunSettings | None:
    """The run settings preset ``name``'s budget assumes; None for the mini presets (CPU-sized, the run config's
    own defaults) and for names that are not presets."""
    return SETTINGS.get(name)


# Per-dimension rounding grain for miniature structures (keeps sizes tidy and head counts whole).
_MINI_GRAIN = {"hidden_dim": 16, "ffn_dim": 32, "head_num": 1, "layer_num": 1}


def miniaturize(
    schedule: Schedule,
    *,
    target: Structure,
    total_steps: int,
    phi: int,
    head_dim: int,
    name: str,
) -> Schedule:
    """A tiny copy of ``schedule``: same stage fractions and order of growths, sizes scaled to ``target``.

    Each dimension is scaled by ``target / schedule.target`` and rounded to a grain; raises if rounding
    would merge two sizes that the original schedule distinguishes (the growth order would change).
    """
    target = Structure.parse(target)
    stages = []
    for s in schedule.stages:
        dims = {}
        for d in DIMENSIONS:
            grain = _MINI_GRAIN[d]
            value = getattr(s.structure, d) * getattr(target, d) / getattr(schedule.target, d)
            dims[d] = max(grain, int(round(value / grain)) * grain)
        stages.append(Stage(structure=Structure(**dims), start=s.start))

    def growths(seq: Any) -> list[list[str]]:
        return [x.structure.grown_dims(y.structure) for x, y in pairwise(seq)]

    if growths(stages) != growths(schedule.stages):
        raise ValueError(f"miniaturize {schedule.name!r}: rounding to {target} changes which dimensions grow")
    tiny = dataclasses.replace(schedule, stages=tuple(stages), head_dim=head_dim, name=name, phi=0)
    return tiny.scaled(total_steps=total_steps, phi=phi)


def _build_presets() -> dict[str, Schedule]:
    out: dict[str, Schedule] = {}
    for name, spec in PAPER.items():
        out[name] = Schedule.from_dict({"name": name, "phi": PAPER_PHI, **spec})
    for name, spec in PAPER_FULL.items():
        out[name] = Schedule.from_dict({"name": name, **spec})
    for name, (total, phi) in MINI.items():
        out[f"mini-{name}"] = miniaturize(
            out[name], target=MINI_TARGET, total_steps=total, phi=phi, head_dim=MINI_HEAD_DIM, name=f"mini-{name}"
        )
    for arch, total in MINI_FULL.items():
        out[f"mini-full-{arch}"] = full(
            arch, MINI_TARGET, total, phi=50, head_dim=MINI_HEAD_DIM, name=f"mini-full-{arch}"
        )
    for name, twin in LLAMA_TWINS.items():
        out[name] = out[twin].replace(arch="llama", name=name)
    for name, spec in FAST.items():
        stages = [{"structure": st, "start": b} for st, b in zip(spec["structures"], FAST_STARTS, strict=True)]
        keep = {k: spec[k] for k in ("arch", "total_steps", "phi", "head_dim", "kv_group_size") if k in spec}
        out[name] = Schedule.from_dict({"name": name, "stages": stages, **keep})
    return out


PRESETS: dict[str, Schedule] = _build_presets()


def get_schedule(name_or_path: str | Path | Schedule, **overrides: Any) -> Schedule:
    """A preset by name, or a schedule file (.yaml/.yml/.json), with optional field overrides.

    ``total_steps`` rescales the stage starts (same fractions, see :meth:`Schedule.scaled`); every other
    override (``phi``, ``operator``, ``name``, ...) replaces the field as is.
    """
    if isinstance(name_or_path, Schedule):
        schedule = name_or_path
    elif isinstance(name_or_path, str) and name_or_path in PRESETS:
        schedule = PRESETS[name_or_path]
    elif Path(name_or_path).is_file():
        schedule = Schedule.load(name_or_path)
    else:
        raise ValueError(
            f"unknown schedule {str(name_or_path)!r}: not a preset and not a schedule file; "
            f"presets: {', '.join(sorted(PRESETS))}"
        )
    total_steps = overrides.pop("total_steps", None)
    phi = overrides.pop("phi", None)
    bad = (set(overrides) - set(FIELDS)) | (set(overrides) & {"stages", "target"})
    if bad:
        raise ValueError(f"get_schedule: cannot override {sorted(bad)}")
    # Budget and ramp change together so a shorter run with a shorter phi is validated as a whole.
    if total_steps is not None or phi is not None:
        schedule = schedule.scaled(total_steps=total_steps, phi=phi)
    if overrides:
        schedule = schedule.replace(**overrides)
    return schedule
