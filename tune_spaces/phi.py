"""Mask ramp length φ on one mini schedule (the paper's table 3 study: φ ∈ {0, 100, 250, 500, 800, 1000} at
loss@N, here scaled to a 600-step mini schedule). φ = 0 is a hard switch-on of the new weights.

Equal compute: each trial is solved to the FLOPs of 600 target steps and ranked by final validation loss,
against a full-training reference. ASHA is off: every φ must run to the end, since the table compares final losses.
"""

from msg_ray.tune.space import MINI_RUN

SPACE = {
    "kind": "phi",
    "arch": "gpt",
    "head_dim": 32,
    "schedule": {"structures": [[64, 256, 2, 2], [64, 512, 2, 2], [128, 512, 2, 4], [128, 512, 4, 4]]},
    "values": [0, 5, 12, 25, 40, 60],
    "total_steps": 600,
    "compute": "flops",
    "asha": None,
    "run": MINI_RUN,
}
