"""γ grid around the mini target (128, 512, 4, 4), head_dim 32 — the paper's figure-2 study at CPU scale.

Each trial trains one structure from scratch for the same wall-time budget: the target, and the target with one
dimension reduced at a time (hidden_dim, ffn_dim, head_num, layer_num). Trials are compared on γ = −Δloss/Δt
over early/medium wall-time windows (the paper's footnote 4: not once the loss levels off), and ASHA stops the
slowest learners at equal wall seconds. The best schedule written afterwards starts from the reductions that
learned faster than the target and grows them back one per stage over ``best.total_steps`` steps.

The LR is fixed (``run.engine.lr``): γ compares structures at one LR, as the paper's figure 2 does; give it an
LR grid with ``--set 'lrs=[0.001,0.002,0.004]'`` (each structure then at its best, bracketed) at three times the
cost. Probes are off: a wall budget stops each probe before a final checkpoint exists.

Default size: 7 trials of at most 60 s each with ASHA, about 6 minutes on 2 cores. Full size:
``--set budget.wall_s=90 --set asha.grace=30``.
"""

from msg_ray.tune.space import MINI_RUN

SPACE = {
    "kind": "structures",
    "arch": "gpt",
    "head_dim": 32,
    "target": [128, 512, 4, 4],
    "vary": {"hidden_dim": [64], "ffn_dim": [128, 256], "head_num": [2], "layer_num": [1, 2]},
    "total_steps": 100_000,  # a cap: the wall budget ends each probe
    "budget": {"wall_s": 60},
    "asha": {"time_attr": "wall_s", "grace": 20, "reduction_factor": 2},
    "probes": [],
    "run": {**MINI_RUN, "lr_decay": "constant"},
    "best": {"total_steps": 1200, "phi": 50},
}
