"""Stage durations for a fixed mini structure sequence: how to split the steps across the stages.

Splits: equal, the paper's rule ("roughly equal, slightly longer early stages", early weight 1.2), front-loaded
(early weight 2), and two free splits given as start fractions. All trials train the same 4-stage sequence
(the mini Sch1-G shape) for the same number of steps; compared at equal wall time and equal FLOPs.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import MINI_RUN  # noqa: E402

SPACE = {
    "kind": "durations",
    "arch": "gpt",
    "head_dim": 32,
    "structures": [[64, 256, 2, 2], [64, 512, 2, 2], [128, 512, 2, 4], [128, 512, 4, 4]],
    "splits": ["equal", "paper", "front", [0.0, 0.1, 0.2, 0.3], [0.0, 0.35, 0.6, 0.8]],
    "total_steps": 600,
    "phi": 25,
    "asha": {"time_attr": "wall_s", "grace": 20, "max_t": 240, "reduction_factor": 2},
    "run": MINI_RUN,
}
