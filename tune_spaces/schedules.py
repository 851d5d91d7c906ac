"""Whole schedules: which dimension grows first, how many stages, and combined-dimension stages.

The question the paper leaves open: does the order of growths matter, and are stages that grow several
dimensions at once as good as one dimension per stage? All schedules reach the mini target (128, 512, 4, 4)
from the same start (64, 256, 2, 2) at equal compute (each solved to the FLOPs of 600 target steps, ranked by final
validation loss); "full" trains the target from scratch as the baseline.
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
    "total_steps": 600,
    "phi": 25,
    "compute": "flops",
    "asha": None,
    "run": MINI_RUN,
}
