"""Adaptive growth (beyond the paper) against the same schedule with fixed stage starts, and full training.

The adaptive trial grows to the next stage once its running γ (loss decrease per second over ``window``
steps) stays below ``target_gamma`` for ``patience`` windows, never before ``min_stage_steps`` (>= φ) and at
the latest at the stage's scheduled start. ``target_gamma`` is the full target's γ over the early/medium window,
read off a ``structures`` sweep's table (row "target"; 0.02/s was measured for (128,512,4,4) at lr 1e-3 on
2 shared cores); set your own with ``--set adaptive.target_gamma=<value>``.

Every trial trains ``total_steps`` steps (not equal FLOPs: the adaptive trial decides its stage lengths online)
at each LR of a shared grid; the chosen LR (lowest final smoothed training loss) is bracketed like the other
spaces' (one more point beyond an edge).

Default size: 9 trials of 300 steps (+ at most 3 bracketing trials), about 10 minutes on 2 cores.
Full size: ``--set total_steps=600 --set adaptive.min_stage_steps=40 --set lr_extend=2`` (~25 minutes).
"""

from msg_ray.tune.space import MINI_RUN

SPACE = {
    "kind": "adaptive",
    "arch": "gpt",
    "schedule": "mini-sch1-g",
    "adaptive": {"target_gamma": 0.02, "window": 20, "patience": 3, "min_stage_steps": 25},
    "total_steps": 300,
    "lrs": [1.4e-3, 2.8e-3, 5.6e-3],
    "lr_step": 2.0,
    "lr_extend": 1,
    "phi": 20,
    "asha": None,
    "run": MINI_RUN,
}
