"""The divergence guard's rule (pure) and, end to end, a run that diverges once and rolls back to its last good
checkpoint with a lower LR, then finishes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from msg_ray.train.divergence import MIN_HISTORY, find


def test_nan_and_inf_always_count():
    assert find([2.0] * 3, [(4, 1.9), (5, math.nan)], factor=0.0, window=50).step == 5
    assert find([], [(1, math.inf)], factor=0.0, window=50).why == "not finite"
    assert find([2.0] * 3, [(4, 1.9), (5, 100.0)], factor=0.0, window=50) is None  # the median rule is off


def test_k_times_the_running_median():
    history = [3.0, 2.9, 2.8, 2.7, 2.6, 2.5, 2.4, 2.3, 2.2, 2.1]  # median 2.55
    d = find(history, [(11, 2.0), (12, 12.0), (13, 2.0)], factor=4.0, window=50)
    assert d.step == 12 and "4 x the running median" in d.why
    assert find(history, [(11, 10.0)], factor=4.0, window=50) is None  # 10.0 < 4 x 2.55
    assert find(history[: MIN_HISTORY - 1], [(10, 50.0)], factor=4.0, window=50) is None  # too little history
    # the window moves: after many low losses an old high median no longer hides a spike
    assert find([10.0] * 20, [(21 + i, 1.0) for i in range(20)] + [(41, 5.0)], factor=4.0, window=10).step == 41


@pytest.mark.slow
def test_a_diverged_step_rolls_back_to_the_last_checkpoint_with_a_lower_lr(tmp_path, ray_local):
    from test_train import tiny_config

    from msg_ray.train.run import run

    cfg = tiny_config(
        tmp_path,
        "rollback",
        workers=1,
        ckpt_every=4,
        inject_nan_at_step=10,
        on_divergence="rollback",
        engine={"zero_stage": 0, "micro_batch_size": 4, "lr": 3e-3},
    )
    out = run(cfg)
    h = out.history
    assert h["rollbacks"] == [{"diverged_step": 10, "to_step": 8}]
    assert len(h["train_loss"]) == 30 and all(math.isfinite(x) for x in h["train_loss"])
    assert h["step"] == list(range(1, 31))  # steps 9-10 were re-trained once, kept once
    meta = json.loads((Path(out.checkpoint_path) / "meta.json").read_text())
    assert meta["rollbacks"] == 1
