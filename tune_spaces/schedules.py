"""Whole schedules: which dimension grows first, how many stages, and combined-dimension stages.

The question the paper leaves open: does the order of growths matter, and are stages that grow several
dimensions at once as good as one dimension per stage? All schedules reach the mini target (128, 512, 4, 4)
from the same start (64, 256, 2, 2) at equal compute (each solved to the FLOPs of ``total_steps`` target steps,
ranked by final validation loss at its best LR of a shared grid, bracketed: one more point beyond an edge);
"full" trains the target from scratch as the baseline.

Default size: 15 trials of 200 target steps (+ at most 5 bracketing trials), about 15 minutes on 2 cores.
Full size (600 steps, two extension points, ~60 minutes)::

    msg-ray tune --space schedules --set total_steps=600 --set lr_extend=2
"""

from msg_ray.tune.space import MINI_RUN

START, TARGET = [64, 256, 2, 2], [128, 512, 4, 4]

SPACE = {
    "kind": "schedules",
    "arch": "gpt",
    "head_dim": 32,
    "schedules": {
        "ffn-first": {"structures": [START, [64, 512, 2, 2], [128, 512, 2, 2], [128, 512, 4, 2], TARGET]},
        "depth-first": {"structures": [START, [64, 256, 2, 4], [64, 512, 2, 4], [128, 512, 2, 4], TARGET]},
        "width-then-depth": {"structures": [START, [128, 512, 4, 2], TARGET]},
        "all-at-once": {"structures": [START, TARGET]},
        "full": {"structures": [TARGET]},
    },
    "total_steps": 200,
    "phi": 20,
    "compute": "flops",
    "lrs": [1.4e-3, 2.8e-3, 5.6e-3],
    "lr_step": 2.0,
    "lr_extend": 1,
    "asha": None,
    "run": MINI_RUN,
}
