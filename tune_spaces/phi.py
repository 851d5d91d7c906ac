"""Mask ramp length φ on one mini schedule (the paper's table 3 study: φ ∈ {0, 100, 250, 500, 800, 1000} at
loss@N, here scaled to a short mini schedule). φ = 0 is a hard switch-on of the new weights.

Equal compute: each trial is solved to the FLOPs of ``total_steps`` target steps and ranked by final validation
loss, against a full-training reference, each at its best LR of a shared grid (bracketed: one more point beyond
an edge, ``lr_extend``). ASHA is off: every φ must run to the end, since the table compares final losses.

Default size: 15 trials of 200 target steps (+ at most 5 bracketing trials), about 15 minutes on 2 cores.
Full size (600 steps, six φ values, ~80 minutes)::

    msg-ray tune --space phi --set total_steps=600 --set 'values=[0,5,12,25,40,60]' --set lr_extend=2
"""

from msg_ray.tune.space import MINI_RUN

SPACE = {
    "kind": "phi",
    "arch": "gpt",
    "head_dim": 32,
    "schedule": {"structures": [[64, 256, 2, 2], [64, 512, 2, 2], [128, 512, 2, 4], [128, 512, 4, 4]]},
    "values": [0, 10, 20, 40],
    "total_steps": 200,
    "compute": "flops",
    "lrs": [1.4e-3, 2.8e-3, 5.6e-3],
    "lr_step": 2.0,
    "lr_extend": 1,
    "asha": None,
    "run": MINI_RUN,
}
