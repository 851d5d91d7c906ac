"""The durable tracking spool (msg_ray.tracking.spool) and its replay into real MLflow stores (sqlite, a real
`mlflow server` killed and restarted): nothing logged is lost, nothing replayed appears twice."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from netutil import free_port

from msg_ray import plots
from msg_ray.tracking import Spool, Tracker, sync


def _points(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for info in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, info.path) if info.is_dir else {info.path}
    return out


# -- the spool file --------------------------------------------------------------------------------------------


def test_truncated_last_line_is_ignored_and_cut_by_the_next_writer(tmp_path):
    spool = Spool(tmp_path / "spool")
    spool.add_run(experiment="e", run_name="r", tags={}, parent_run_id=None, uri="sqlite:////x.db")
    spool.append("metrics", metrics=[["loss", 1.0, 1000, 0]])
    spool.append("params", params={"lr": "0.1"})
    spool.close()
    with open(spool.path, "ab") as fh:  # a crash in the middle of an append
        fh.write(b'{"seq": 4, "kind": "metrics", "metrics": [["loss", 2.')

    again = Spool(tmp_path / "spool")
    assert again.last_seq == 3
    assert [rec["kind"] for _, rec in again.pending()] == ["run", "metrics", "params"]
    assert again.append("metrics", metrics=[["loss", 3.0, 2000, 1]]) == 4
    again.close()
    lines = spool.path.read_bytes().splitlines()
    assert len(lines) == 4 and json.loads(lines[-1])["metrics"] == [["loss", 3.0, 2000, 1]]
    # acknowledged records are not pending; a stale offset hint falls back to reading from the start
    (end, rec), *_ = list(Spool(spool.directory).pending())
    again.mark_shipped(rec["seq"], end, "abc")
    assert [r["seq"] for _, r in Spool(spool.directory).pending()] == [2, 3, 4]
    again.mark_shipped(2, 5, None)  # offset 5 is mid-line
    assert [r["seq"] for _, r in again.pending()] == [3, 4] and again.run_id == "abc"


# -- sqlite store ----------------------------------------------------------------------------------------------


def test_resume_on_the_same_spool_replays_nothing_twice(store, tmp_path, make_history):
    spool_dir = tmp_path / "spool"
    first = Tracker(uri=store, experiment="spool", run_name="r", spool_dir=spool_dir, flush_every=7)
    run_id = first.start()
    assert run_id and first.healthy
    first.log_params({"model": {"hidden": 64}, "lr": 1e-3})
    for step in range(30):
        first.log_metrics({"train/loss": 5.0 - step / 10, "perf/tps": 100.0 + step}, step=step)
    first.set_tags({"growth.1": "step 10"})
    (tmp_path / "schedule.txt").write_text("stage 1\n")
    first.log_artifact(tmp_path / "schedule.txt", artifact_path="sub")
    first.log_dict({"model": {"hidden": 64}, "path": tmp_path}, "config.yaml")
    first.log_figure(plots.loss_figure(make_history(), [100, 250]), "loss.png")
    first.log_figure("not a figure", "oops.png")  # refused with a warning, tracking stays on
    first.log_artifact(tmp_path / "missing.txt")  # likewise
    first.finish("FAILED")  # e.g. a worker died
    assert first.healthy and Spool(spool_dir).shipped()["seq"] == Spool(spool_dir).last_seq

    client = MlflowClient(tracking_uri=store)
    assert client.get_run(run_id).info.status == "FAILED"
    # a crash after MLflow accepted everything but before shipped.json said so: all of it is replayed
    (spool_dir / "shipped.json").write_text(json.dumps({"seq": 0, "offset": 0, "run_id": run_id}))

    again = Tracker(uri=store, experiment="spool", run_name="r", spool_dir=spool_dir)  # run id from the spool
    assert again.start() == run_id and again.resumed
    assert client.get_run(run_id).info.status == "RUNNING"  # the replayed FAILED belongs to the last session
    again.log_params({"lr": 1e-3, "new": "yes"})
    again.log_metrics({"train/loss": 1.0}, step=30)
    again.finish()

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"model.hidden": "64", "lr": "0.001", "new": "yes"}
    assert run.data.tags["growth.1"] == "step 10"
    loss = _points(client, run_id, "train/loss")
    assert loss == [(s, 5.0 - s / 10) for s in range(30)] + [(30, 1.0)]  # each point exactly once
    assert _points(client, run_id, "perf/tps") == [(s, 100.0 + s) for s in range(30)]
    assert _artifacts(client, run_id) == {"sub/schedule.txt", "config.yaml", "loss.png"}
    local = Path(client.download_artifacts(run_id, "config.yaml", str(tmp_path / "dl")))
    assert yaml.safe_load(local.read_text()) == {"model": {"hidden": 64}, "path": str(tmp_path)}
    with pytest.raises(ValueError, match="belongs to run"):
        Tracker(uri=store, experiment="spool", run_name="r", spool_dir=spool_dir, run_id="0" * 32)


def test_sync_creates_the_run_a_dead_server_never_made(store, tmp_path, capsys, caplog):
    spool_dir = tmp_path / "spool"
    down = f"http://127.0.0.1:{free_port()}"
    caplog.set_level(logging.DEBUG, logger="msg_ray.tracking.mlflow_tracker")
    t0 = time.monotonic()
    tracker = Tracker(
        uri=down,
        experiment="spool-sync",
        run_name="offline",
        tags={"op": "msg"},
        spool_dir=spool_dir,
        retry_after_s=0.0,
        flush_every=1_000,
    )
    assert tracker.start() is None and not tracker.healthy
    tracker.log_params({"lr": 0.1})
    for step in range(2_000):  # stays in the spool, not in memory
        tracker.log_metrics({"train/loss": 1.0 / (step + 1)}, step=step)
    (tmp_path / "notes.txt").write_text("hello")
    tracker.log_artifact(tmp_path / "notes.txt")
    tracker.finish()
    assert time.monotonic() - t0 < 60 and not tracker._metrics
    # with a spool, reconnection is tried on every due flush, not once: after the params, at 1000 and 2000 points,
    # after the artifact and at finish()
    assert sum("still unavailable" in r.getMessage() for r in caplog.records) == 5
    err = capsys.readouterr().err
    assert err.count("MLflow tracking unavailable") == 1 and str(spool_dir) in err

    shipped = sync(spool_dir, uri=store)  # the spool's own URI is still down: ship into the sqlite store
    assert shipped["created"] and shipped["metrics"] == 2_000 and shipped["params"] == 1
    assert shipped["artifacts"] == 1 and shipped["status"] == 1 and shipped["refused"] == 0
    client = MlflowClient(tracking_uri=store)
    run = client.get_run(shipped["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "offline" and run.data.tags["op"] == "msg"
    assert client.get_experiment(run.info.experiment_id).name == "spool-sync"
    assert _points(client, run.info.run_id, "train/loss") == [(s, 1.0 / (s + 1)) for s in range(2_000)]
    assert _artifacts(client, run.info.run_id) == {"notes.txt"}
    again = sync(spool_dir, uri=store)  # nothing left: same run, nothing sent
    assert again["run_id"] == shipped["run_id"] and not again["created"] and again["records"] == 0


# -- a real mlflow server, killed and restarted ----------------------------------------------------------------


def test_server_killed_mid_run_loses_nothing(mlflow_server, tmp_path, capsys):
    port, start_server, kill_server = mlflow_server.port, mlflow_server.start, mlflow_server.kill
    uri, spool_dir = f"http://127.0.0.1:{port}", tmp_path / "spool"
    start_server()
    tracker = Tracker(uri=uri, experiment="spool-server", run_name="r", spool_dir=spool_dir, flush_every=4)
    tracker.retry_after_s = 3600.0  # no reconnection attempts while the server is down (keeps the test fast)
    run_id = tracker.start()
    assert run_id and tracker.healthy
    tracker.log_params({"operator": "msg"})
    for step in range(10):
        tracker.log_metrics({"train/loss": 10.0 - step}, step=step)
    (tmp_path / "config.json").write_text(json.dumps({"phi": 50}))
    tracker.log_artifact(tmp_path / "config.json", artifact_path="config")

    kill_server()  # the outage of the issue: the server process dies at step 10
    for step in range(10, 20):  # training goes on: no exception, records wait in the spool
        tracker.log_metrics({"train/loss": 10.0 - step}, step=step)
    tracker.log_dict({"stage": 2}, "stages/2.json")
    assert not tracker.healthy and "kept in" in (tracker.error or "")

    start_server()  # back: the live tracker ships the backlog on its next due flush
    tracker.retry_after_s = 0.0
    for step in range(20, 24):
        tracker.log_metrics({"train/loss": 10.0 - step}, step=step)
    assert tracker.healthy, capsys.readouterr().err
    client = MlflowClient(tracking_uri=uri)
    assert _points(client, run_id, "train/loss") == [(s, 10.0 - s) for s in range(24)]

    kill_server()  # down again for the end of training
    tracker.retry_after_s = 3600.0
    for step in range(24, 30):
        tracker.log_metrics({"train/loss": 10.0 - step}, step=step)
    tracker.finish()  # one last attempt fails; FINISHED waits in the spool
    start_server()
    shipped = sync(spool_dir)  # by hand, to the URI the spool recorded
    assert shipped["run_id"] == run_id and not shipped["created"] and shipped["metrics"] == 6
    assert shipped["status"] == 1 and shipped["refused"] == 0

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"operator": "msg"}
    assert _points(client, run_id, "train/loss") == [(s, 10.0 - s) for s in range(30)]  # each exactly once
    assert _artifacts(client, run_id) == {"config/config.json", "stages/2.json"}
    local = Path(client.download_artifacts(run_id, "stages/2.json", str(tmp_path / "dl")))
    assert json.loads(local.read_text()) == {"stage": 2}
    err = capsys.readouterr().err
    assert err.count("MLflow tracking unavailable") == 1 and "reachable again" in err


@pytest.mark.slow
def test_a_run_trained_with_mlflow_down_throughout_is_synced_by_name(tmp_path, ray_local, monkeypatch, capsys):
    """Training against an MLflow server that never answers finishes; every tracking call is in the run's spool,
    and `msg-ray sync NAME` ships it into a store afterwards (the run created there, FINISHED, each point once)."""
    from mlflow.tracking import MlflowClient
    from test_train import tiny_config

    from msg_ray.cli import main
    from msg_ray.train.run import run

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    down = "http://127.0.0.1:9"  # the discard port: nothing answers
    out = run(tiny_config(tmp_path, "offline", workers=1, tracking_uri=down, export_hf=False))
    assert out.run_id is None and len(out.history["train_loss"]) == 30
    store = f"sqlite:///{tmp_path / 'later.db'}"
    argv = ["sync", "offline", "--storage-path", str(tmp_path / "ray"), "--tracking-uri", store]
    assert main(argv) == 0
    client = MlflowClient(store)
    [r] = client.search_runs([client.get_experiment_by_name("test-train").experiment_id])
    assert r.info.status == "FINISHED" and r.info.run_name == "offline"
    steps = [m.step for m in client.get_metric_history(r.info.run_id, "train/loss")]
    assert steps == sorted(set(steps)) and steps[-1] == 30 and len(steps) == 15  # log_every 2: each point once
    assert r.data.params["operator"] == "msg" or "val/loss" in r.data.metrics
    assert main(argv) == 0  # a second sync ships nothing new
    assert len(client.get_metric_history(r.info.run_id, "train/loss")) == 15
