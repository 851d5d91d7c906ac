"""Schedule search with Ray Tune: search spaces (``tune_spaces/``), trials, ASHA on compute, ranked results.

from msg_ray.tune import SweepConfig, load_space, run_sweep
result = run_sweep(SweepConfig(space=load_space("structures"), max_concurrent=2))
"""

from msg_ray.tune.space import SearchSpace, TrialSpec, load_space
from msg_ray.tune.sweep import SweepConfig, SweepResult, run_sweep

__all__ = ["SearchSpace", "SweepConfig", "SweepResult", "TrialSpec", "load_space", "run_sweep"]
