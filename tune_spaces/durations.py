"""Stage durations for a fixed mini structure sequence: how to split the steps across the stages.

Splits: the paper's rule ("roughly equal, slightly longer early stages", early weight 1.2), growth done by 48 %
(the fast presets' split) and late growth (by 80 %). Equal compute: every trial is solved to the FLOPs of
``total_steps`` steps of the target, runs to its own end with its LR decayed there, and is ranked by final
validation loss against a full-training reference. Every trial (the reference too) gets the same LR grid
(factor 2 apart); a label whose best LR is at an edge gets one more point beyond it (``lr_extend``), and a choice
still at an edge is flagged with its speed-up withheld. No early stopping: at an early rung a schedule that has
not grown yet would be compared with one that has. Each finished trial is scored with linear probes.

Default size: 12 trials of 300 target steps (+ at most 4 bracketing trials), about 15 minutes on 2 cores.
Full size (the earlier 600-step study: five splits, a finer grid, two extension points, ~70 minutes)::

    msg-ray tune --space durations --set total_steps=600 --set lr_extend=2 \\
        --set 'lrs=[0.0014,0.002,0.0028]' --set lr_step=1.41421356 \\
        --set 'splits=["equal","paper",[0,0.16,0.32,0.48],[0,0.1,0.2,0.3],[0,0.35,0.6,0.8]]'
"""

from msg_ray.tune.space import MINI_RUN

SPACE = {
    "kind": "durations",
    "arch": "gpt",
    "head_dim": 32,
    "structures": [[64, 256, 2, 2], [64, 512, 2, 2], [128, 512, 2, 4], [128, 512, 4, 4]],
    "splits": ["paper", [0.0, 0.16, 0.32, 0.48], [0.0, 0.35, 0.6, 0.8]],
    "total_steps": 300,
    "phi": 25,
    "compute": "flops",
    "lrs": [1.4e-3, 2.8e-3, 5.6e-3],
    "lr_step": 2.0,
    "lr_extend": 1,
    "asha": None,
    "run": MINI_RUN,
}
