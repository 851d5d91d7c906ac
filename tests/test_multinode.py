"""A real multi-node Ray cluster on one machine (``ray.cluster_utils.Cluster``: a head without CPUs and two 1-CPU
worker nodes, each its own raylet): a 2-worker growth schedule runs one worker per node on a shared storage path;
after the first growth the node holding rank 1 is removed (its raylet and the worker die with it), a fresh node
joins, and Ray Train's retry resumes the run from the last checkpoint with the same structure, masks and MLflow run.

The proof of "same": the interrupted attempt logged the two steps right after the growth (mid-ramp) to MLflow
before the node went; the resumed attempt trains them again from the growth's checkpoint and must produce the same
losses (MLflow keeps the first attempt's points, the final checkpoint's history holds the resumed ones).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from test_train import tiny_config

from msg_ray.tracking import find_runs, load_run_metrics
from msg_ray.train import faults

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster():
    """Head (no CPUs: no training worker lands there) + two 1-CPU nodes; this test's own Ray, not the session's."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()  # the session's local Ray: the driver connects to exactly one cluster
    # raylets inherit this: Ray Train V2 registers a report (and its checkpoint) within 0.1 s instead of 2 s
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.1"
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    nodes = [c.add_node(num_cpus=1) for _ in range(2)]
    ray.init(address=c.address)
    try:
        yield c, nodes
    finally:
        ray.shutdown()
        c.shutdown()
        os.environ.pop("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", None)


def _wait_for(path: Path, timeout: float, thread: threading.Thread) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return json.loads(path.read_text())
        if not thread.is_alive():
            raise AssertionError("the run ended before rank 1 stalled")
        time.sleep(0.2)
    raise TimeoutError(f"{path} did not appear within {timeout} s")


@pytest.mark.timeout(3000)  # three raylets on two cores: start-up alone takes minutes on a busy machine
def test_losing_the_node_of_rank_1_resumes_on_a_new_node(cluster, tmp_path):
    import ray

    from msg_ray.train.run import run

    c, nodes = cluster
    out: dict = {}
    cfg = tiny_config(tmp_path, "multinode", stall_rank_at_step=[1, 12], max_failures=1, log_every=1)
    runner = threading.Thread(target=lambda: out.update(result=run(cfg)), daemon=True)
    runner.start()
    stalled = _wait_for(Path(cfg.storage_path) / cfg.name / faults.STALLED, 1200, runner)
    victim = next(n for n in nodes if n.node_id == stalled["node_id"])  # rank 1 sits on a worker node
    c.remove_node(victim, allow_graceful=False)  # the node dies with rank 1 on it, mid-ramp after growth 1
    c.add_node(num_cpus=1)  # replacement capacity for the retry
    runner.join(timeout=1200)
    assert not runner.is_alive() and "result" in out, "the run did not finish after losing a node"
    res = out["result"]

    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert stalled["node_id"] not in alive and len(alive) == 3
    # resumed from the checkpoint of the first growth (step 10), not from scratch
    assert res.history["resumed_from"] == ["stage1-step0000010"]
    assert [e["step"] for e in res.history["growth_events"]] == [10, 20]
    # same weights, structure, masks and optimizer: steps 10-11 trained again give the first attempt's losses
    points = load_run_metrics(res.tracking_uri, res.run_id, ["train/loss"])["train/loss"]
    resumed = dict(zip(res.history["step"], res.history["train_loss"], strict=True))
    assert len(resumed) == 30 and sorted(s for s, _ in points) == sorted(resumed)  # every step once
    logged = dict(points)
    for step in (11, 12):  # 1-based: the two steps trained after the growth at step 10, before the stall
        assert abs(logged[step] - resumed[step]) <= 1e-6, (step, logged[step], resumed[step])
    meta = json.loads((Path(res.checkpoint_path) / "meta.json").read_text())
    assert meta["structure"] == {"hidden_dim": 48, "ffn_dim": 96, "head_num": 3, "layer_num": 2}
    assert meta["mask_c"] is None  # the ramp restarted mid-way finished and was folded
    # one MLflow run, FINISHED
    named = find_runs(res.tracking_uri, "test-train", tags={"msg_ray.run_name": "multinode"})
    assert [r["run_id"] for r in named] == [res.run_id] and named[0]["status"] == "FINISHED"
