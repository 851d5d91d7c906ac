"""Data for the preset schedules: the MSG paper's tables 2, 8 and 10, and their CPU-sized "mini" versions.

Pure data (no imports): ``msg_ray.schedule`` turns it into validated ``Schedule`` objects (``PRESETS``).

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
