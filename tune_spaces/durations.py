"""Stage durations for a fixed mini structure sequence: how to split the steps across the stages.

Splits: equal, the paper's rule ("roughly equal, slightly longer early stages", early weight 1.2), front-loaded
(early weight 2), and free splits given as start fractions (growth done by 48 %, the fast presets' split; by 30 %;
and late, by 80 %). Equal compute: every trial is solved to the FLOPs of 600 steps of the target, runs to its own
end with its LR decayed there, and is ranked by final validation loss; a full-training reference joins the grid,
and every trial (the reference too) gets the same 3-point LR grid, so each row has an honest speed-up. No early
stopping: at an early rung a schedule that has not grown yet would be compared with one that has.
"""

from msg_ray.tune.space import MINI_RUN

SPACE = {
    "kind": "durations",
    "arch": "gpt",
    "head_dim": 32,
    "structures": [[64, 256, 2, 2], [64, 512, 2, 2], [128, 512, 2, 4], [128, 512, 4, 4]],
    "splits": ["equal", "paper", [0.0, 0.16, 0.32, 0.48], [0.0, 0.1, 0.2, 0.3], [0.0, 0.35, 0.6, 0.8]],
    "total_steps": 600,
    "phi": 25,
    "compute": "flops",
    "lrs": [1.4e-3, 2e-3, 2.8e-3],
    "asha": None,
    "run": MINI_RUN,
}
