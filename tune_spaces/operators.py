"""Growth operators on one schedule: MSG vs Net2Net vs No-Mask vs training the target from scratch ("full").

Uses the mini Sch1-G preset (6 stages, the paper's GPT schedule shape) at 600 steps with φ = 20. Feeds the
comparison study; ASHA is off so every operator's final loss is seen.
"""

from msg_ray.tune.space import MINI_RUN

SPACE = {
    "kind": "operators",
    "arch": "gpt",
    "schedule": "mini-sch1-g",
    "operators": ["msg", "net2net", "nomask", "full"],
    "total_steps": 600,
    "phi": 20,
    "asha": None,
    "run": MINI_RUN,
}
