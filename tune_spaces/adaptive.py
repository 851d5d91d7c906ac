"""Adaptive growth (beyond the paper) against the same schedule with fixed stage starts, and full training.

The adaptive trial grows to the next stage once its running γ (loss decrease per second over ``window``
steps) stays below ``target_gamma`` for ``patience`` windows, never before ``min_stage_steps`` (>= φ) and at
the latest at the stage's scheduled start. ``target_gamma`` is the full target's γ over the early/medium window,
read off a ``structures`` sweep's table (row "target"; 0.02/s was measured for (128,512,4,4) at lr 1e-3 on
2 shared cores); set your own with ``--set adaptive.target_gamma=<value>``.
"""

from msg_ray.tune.space import MINI_RUN

SPACE = {
    "kind": "adaptive",
    "arch": "gpt",
    "schedule": "mini-sch1-g",
    "adaptive": {"target_gamma": 0.02, "window": 20, "patience": 3, "min_stage_steps": 40},
    "total_steps": 600,
    "phi": 20,
    "asha": None,
    "run": MINI_RUN,
}
