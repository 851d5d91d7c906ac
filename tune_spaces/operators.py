"""Growth operators on one schedule: MSG vs Net2Net vs No-Mask vs training the target from scratch ("full").

Uses the mini Sch1-G preset (6 stages, the paper's GPT schedule shape) with φ = 20. Equal compute: every trial is
solved to the FLOPs of ``total_steps`` target steps, runs to its own end and is ranked by final validation loss,
each operator at its best LR of a shared grid (bracketed: one more point beyond an edge, ``lr_extend``). ASHA is
off so every operator's final loss is seen. Feeds the comparison study.

Default size: 12 trials of 300 target steps (+ at most 4 bracketing trials), about 15 minutes on 2 cores.
Full size (600 steps, two extension points, ~35 minutes)::

    msg-ray tune --space operators --set total_steps=600 --set lr_extend=2
"""

from msg_ray.tune.space import MINI_RUN

SPACE = {
    "kind": "operators",
    "arch": "gpt",
    "schedule": "mini-sch1-g",
    "operators": ["msg", "net2net", "nomask", "full"],
    "total_steps": 300,
    "phi": 20,
    "compute": "flops",
    "lrs": [1.4e-3, 2.8e-3, 5.6e-3],
    "lr_step": 2.0,
    "lr_extend": 1,
    "asha": None,
    "run": MINI_RUN,
}
