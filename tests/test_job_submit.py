"""A real ``ray start --head`` + ``ray job submit`` of pipelines/prepare.py and then pipelines/pretrain.py on the
shards it wrote, tracked by a real ``mlflow server``."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
from netutil import MlflowServer, free_port, sqlite_store

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _wait_http(url: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


@pytest.fixture
def cluster(tmp_path):
    """Head node on loopback (own ports and temp dir) and an MLflow server; both torn down after the test.

    The head runs under ``ray start --block`` in its own process group and is stopped by signalling that group:
    ``ray stop`` would kill every Ray process on the machine. The test session's local Ray is shut down first so
    the job sees exactly one Ray instance (Ray Train's placement-group cleaner refuses several)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}:{os.environ['PATH']}"}
    gcs, dash = free_port(), free_port()
    ray_tmp = Path("/tmp") / f"rayjob{gcs}"  # short: Ray's socket paths have a length limit
    head_log = open(tmp_path / "head.log", "w")
    head = subprocess.Popen(
        [
            BIN / "ray",
            "start",
            "--head",
            "--block",
            f"--port={gcs}",
            f"--dashboard-port={dash}",
            "--dashboard-host=127.0.0.1",
            "--num-cpus=4",
            f"--temp-dir={ray_tmp}",
            "--include-dashboard=true",
            "--disable-usage-stats",
            # own ports for every per-node service, so another Ray on the machine (e.g. a user's) cannot collide
            *(
                f"--{name}={free_port()}"
                for name in (
                    "dashboard-agent-listen-port",
                    "dashboard-agent-grpc-port",
                    "metrics-export-port",
                    "runtime-env-agent-port",
                    "node-manager-port",
                    "object-manager-port",
                    "ray-client-server-port",
                )
            ),
        ],
        stdout=head_log,
        stderr=head_log,
        env=env,
        start_new_session=True,
    )
    server = MlflowServer(sqlite_store(tmp_path / "db.sqlite"), tmp_path)
    try:
        server.start()
        _wait_http(f"http://127.0.0.1:{dash}/api/version", 60)
        yield {"env": env, "dashboard": f"http://127.0.0.1:{dash}", "mlflow": server.uri}
    finally:
        server.kill(signal.SIGTERM)
        _stop_group(head)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the head's process group (``ray start --block`` then stops what it started), SIGKILL stragglers.
    A 30 s grace made this teardown take 36 s in a 2-core suite run; a test cluster needs no graceful stop."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # workers of the group that outlived the head


def _submit(cluster: dict, runtime_env: dict, args: list[str]) -> subprocess.CompletedProcess:
    cmd = [BIN / "ray", "job", "submit", "--address", cluster["dashboard"], "--working-dir", str(ROOT)]
    cmd += ["--runtime-env-json", json.dumps(runtime_env), "--", "python", "-m", *args]
    for _ in range(12):  # the head's dashboard answers before its job agent is ready to take submissions
        out = subprocess.run(cmd, env=cluster["env"], capture_output=True, text=True, timeout=900)
        if "No available agent" not in out.stderr:
            break
        time.sleep(5)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "succeeded" in out.stdout + out.stderr
    return out


def test_ray_job_submit_prepare_then_pretrain_with_mlflow_server(cluster, tmp_path):
    schedule = tmp_path / "sched.json"
    schedule.write_text(
        json.dumps(
            {
                "arch": "gpt",
                "name": "job-tiny",
                "total_steps": 16,
                "phi": 4,
                "head_dim": 16,
                "stages": [{"structure": [32, 64, 2, 1], "start": 0}, {"structure": [32, 64, 2, 2], "start": 8}],
            }
        )
    )
    runtime_env = {"env_vars": {"MLFLOW_TRACKING_URI": cluster["mlflow"], "RAY_AUTH_MODE": "disabled"}}
    shards = tmp_path / "shards"  # storage every node sees (here: one machine)
    data = ["--data", "wikitext2", "--tokenizer", "bpe:1024"]
    prepare = ["pipelines.prepare", *data, "--seq-len", "32", "--set", "max_train_tokens=200000"]
    prepared = _submit(cluster, runtime_env, [*prepare, "--storage-path", str(shards)])
    (manifest,) = shards.glob("*/manifest.json")
    written = manifest.stat().st_mtime_ns
    assert f"--set data.shards={manifest.parent}" in prepared.stdout
    trained = _submit(
        cluster,
        runtime_env,
        [
            "pipelines.pretrain",
            "--schedule",
            str(schedule),
            "--arch",
            "gpt",
            "--workers",
            "2",
            *data,
            "--name",
            "jobrun",
            "--set",
            f"storage_path={tmp_path / 'storage'}",
            "--set",
            "data.seq_len=32",
            "--set",
            "data.max_train_tokens=200000",
            "--set",
            f"data.storage_path={shards}",
            "--set",
            "engine.micro_batch_size=4",
            "--set",
            "eval_every=8",
            "--set",
            "log_every=4",
            "--set",
            "experiment=jobs",
        ],
    )
    # The training job found the prepare job's shards by key (same source, tokenizer, seq_len, token cap) and
    # wrote nothing to them.
    assert f"data: {manifest.parent}" in trained.stdout and "preparing" not in trained.stdout
    assert manifest.stat().st_mtime_ns == written and len(list(shards.glob("*/manifest.json"))) == 1
    client = mlflow.MlflowClient(cluster["mlflow"])
    exp = client.get_experiment_by_name("jobs")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["operator"] == "msg"
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert len(losses) == 4
    jumps = client.get_metric_history(run.info.run_id, "growth/loss_jump")
    assert len(jumps) == 1 and jumps[0].value <= 1e-5
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "loss_curve.png" in artifacts  # uploaded through the server's artifact proxy
    assert (tmp_path / "storage" / "jobrun" / "final-stage1-step0000016" / "meta.json").exists()
