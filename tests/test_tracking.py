"""msg_ray.tracking against real MLflow stores (sqlite file, a real `mlflow server`)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from netutil import free_port

from msg_ray import plots
from msg_ray.tracking import (
    MAX_PARAM_VAL_LENGTH,
    Tracker,
    child_runs,
    default_tracking_uri,
    find_runs,
    load_run_metrics,
    make_tracker,
    register,
    resolve_tracking_uri,
    tracker_names,
)
from msg_ray.tracking.registry import unregister

# -- URI resolution ------------------------------------------------------------------------------------------


def test_resolve_tracking_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri("sqlite:///sub/x.db") == f"sqlite:///{tmp_path}/sub/x.db"
    assert resolve_tracking_uri("sqlite:////abs/x.db?timeout=30") == "sqlite:////abs/x.db?timeout=30"
    assert resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path}/env.db"
    assert resolve_tracking_uri("http://h:1") == "http://h:1"  # explicit beats env
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("MSG_RAY_HOME", "home")
    assert resolve_tracking_uri(None) == default_tracking_uri() == f"sqlite:///{tmp_path}/home/mlruns.db"
    for bad in ("file:///tmp/mlruns", "./mlruns", "/abs/mlruns", "sqlite://", "sqlite:///:memory:"):
        with pytest.raises(ValueError, match="sqlite:///"):
            resolve_tracking_uri(bad)
    with pytest.raises(ValueError, match="file store"):
        Tracker(uri="file:./mlruns", experiment="e", run_name="r")


# -- sqlite store ----------------------------------------------------------------------------------------------


def test_log_everything_and_read_back(store, tmp_path, capsys, make_history):
    tracker = Tracker(uri=store, experiment="logging", run_name="r1", tags={"operator": "msg"}, flush_every=50)
    run_id = tracker.start()
    assert run_id and tracker.healthy and not tracker.resumed
    tracker.log_params({"model": {"hidden": 128, "ffn": 512}, "zero": 2, "notes": "x" * 10_000, "bad key!": 1})
    for step in range(120):  # crosses flush_every twice; the rest waits for finish()
        tracker.log_metrics({"train/loss": 5.0 - step / 100, "perf/tokens_per_s": 1000.0}, step=step)
    tracker.set_tags({"growth.1": "step 40"})
    (tmp_path / "schedule.txt").write_text("stage 1\nstage 2\n")
    tracker.log_artifact(tmp_path / "schedule.txt")
    tracker.log_artifact(tmp_path / "schedule.txt", artifact_path="sub")
    tracker.log_dict({"model": {"hidden": 128}, "path": tmp_path}, "config.yaml")
    tracker.log_dict({"a": [1, 2]}, "config.json")
    fig = plots.loss_figure(make_history(), [100, 250])
    tracker.log_figure(fig, "loss.png")
    tracker.log_metrics({"bad": "n/a", "a//b": 2.0}, step=0)  # non-number dropped, key normalised
    tracker.log_figure("not a figure", "oops.png")  # refused, but tracking stays on
    tracker.finish()
    assert tracker.healthy and tracker.error is None
    err = capsys.readouterr().err
    assert "'bad'='n/a' is not a number" in err and "refused log figure" in err

    client = MlflowClient(tracking_uri=store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "r1"
    params = run.data.params
    assert params["model.hidden"] == "128" and params["model.ffn"] == "512" and params["zero"] == "2"
    assert params["notes"] == "x" * MAX_PARAM_VAL_LENGTH and params["bad key_"] == "1"
    assert run.data.tags["operator"] == "msg" and run.data.tags["growth.1"] == "step 40"
    assert run.data.metrics["a/b"] == 2.0 and "bad" not in run.data.metrics
    history = client.get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(120))
    assert load_run_metrics(store, run_id, ["train/loss", "missing"])["train/loss"][-1] == (119, 5.0 - 1.19)
    files = {a.path for a in client.list_artifacts(run_id)} | {a.path for a in client.list_artifacts(run_id, "sub")}
    assert files >= {"schedule.txt", "sub/schedule.txt", "config.yaml", "config.json", "loss.png"}
    local = Path(client.download_artifacts(run_id, "config.yaml", str(tmp_path / "dl")))
    assert yaml.safe_load(local.read_text()) == {"model": {"hidden": 128}, "path": str(tmp_path)}
    png = Path(client.download_artifacts(run_id, "loss.png", str(tmp_path / "dl")))
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 5_000
    # local store: artifacts live next to the database, not in whatever cwd the run had
    db_dir = Path(store[len("sqlite:///") :]).parent
    assert client.get_experiment_by_name("logging").artifact_location.startswith((db_dir / "artifacts").as_uri())


def test_resume_by_run_id_continues_the_same_run(store, capsys):
    first = Tracker(uri=store, experiment="resume", run_name="r")
    run_id = first.start()
    first.log_params({"lr": 1e-3, "schedule": {"stages": 3}})
    first.log_metrics({"train/loss": 4.0}, step=10)
    first.finish("FAILED")  # e.g. a worker died

    again = Tracker(uri=store, experiment="resume", run_name="r", run_id=run_id)
    assert again.start() == run_id and again.resumed
    assert MlflowClient(tracking_uri=store).get_run(run_id).info.status == "RUNNING"
    again.log_params({"lr": 1e-3, "schedule": {"stages": 3}, "new": "yes"})  # same values: skipped, no error
    again.log_params({"lr": 3e-3})  # immutable in MLflow: kept as a tag, with a warning
    again.log_metrics({"train/loss": 3.0}, step=11)
    again.finish()
    assert again.healthy

    runs = find_runs(store, "resume")
    assert [r["run_id"] for r in runs] == [run_id]
    (run,) = runs
    assert run["status"] == "FINISHED" and run["params"] == {"lr": "0.001", "schedule.stages": "3", "new": "yes"}
    assert run["tags"]["param_changed.lr"] == "0.003" and run["metrics"]["train/loss"] == 3.0
    assert load_run_metrics(store, run_id, ["train/loss"]) == {"train/loss": [(10, 4.0), (11, 3.0)]}
    assert "params changed" in capsys.readouterr().err
    assert find_runs(store, "no-such-experiment") == []
    stale = Tracker(uri=store, experiment="resume", run_name="r2", run_id="0" * 32)  # id from another store
    assert stale.start() not in (None, "0" * 32) and not stale.resumed
    assert "not found" in capsys.readouterr().err


@pytest.mark.parametrize("spooled", [False, True])
def test_uri_credentials_never_reach_the_tracking_server(store, tmp_path, spooled):
    """A storage URI carrying ``KEY:SECRET@`` is logged (params, config artifacts, tags) with them masked, directly
    and through the spool; the rest of the URI is kept."""
    uri = "s3://AKIAEXAMPLE:s3cr3t%2Fx%2By@bucket/data?endpoint_override=minio:9000"  # secret URL-encoded
    kw = {"spool_dir": tmp_path / "spool"} if spooled else {}
    tracker = Tracker(uri=store, experiment="secrets", run_name="r", **kw)
    run_id = tracker.start()
    tracker.log_params({"data": {"storage_path": uri}})
    tracker.log_dict({"data": {"storage_path": uri}, "list": [uri]}, "resolved_config.json")
    tracker.set_tags({"msg_ray.error": f"OSError: cannot reach {uri}"})
    tracker.finish()
    client = MlflowClient(tracking_uri=store)
    run = client.get_run(run_id)
    masked = "s3://***@bucket/data?endpoint_override=minio:9000"
    assert run.data.params["data.storage_path"] == masked and run.data.tags["msg_ray.error"].endswith(masked)
    text = Path(client.download_artifacts(run_id, "resolved_config.json", str(tmp_path / "dl"))).read_text()
    assert json.loads(text) == {"data": {"storage_path": masked}, "list": [masked]} and "s3cr3t" not in text


def test_parent_and_child_runs(store):
    parent = Tracker(uri=store, experiment="compare", run_name="compare")
    parent_id = parent.start()
    ids = []
    for op in ("msg", "nomask"):
        child = Tracker(uri=store, experiment="compare", run_name=op, parent_run_id=parent_id, tags={"op": op})
        ids.append(child.start())
        child.log_metrics({"val/loss": 4.5}, step=100)
        child.finish()
    parent.finish()
    children = child_runs(store, parent_id)
    assert sorted(c["run_id"] for c in children) == sorted(ids)
    assert {c["tags"]["mlflow.parentRunId"] for c in children} == {parent_id}
    assert {c["name"] for c in children} == {"msg", "nomask"}
    assert len(find_runs(store, "compare", "tags.op = 'msg'")) == 1


def test_disabled_tracker_does_nothing(store):
    tracker = Tracker(uri=store, experiment="off", run_name="rank1", enabled=False)
    assert tracker.start() is None
    tracker.log_params({"a": 1})
    tracker.log_metrics({"x": 1.0}, step=0)
    tracker.finish()
    assert find_runs(store, "off") == []


def test_experiments_are_marked_for_model_training(store):
    """MLflow 3's UI opens an experiment by its ``mlflow.experimentKind`` tag: msg_ray's say model training (read
    back from the store); an experiment made before, without a kind, gets the mark; a kind someone chose stays."""
    client = MlflowClient(tracking_uri=store)
    Tracker(uri=store, experiment="kind-new", run_name="r").start()
    assert client.get_experiment_by_name("kind-new").tags["mlflow.experimentKind"] == "custom_model_development"
    old = client.create_experiment("kind-old")
    genai = client.create_experiment("kind-genai", tags={"mlflow.experimentKind": "genai_development"})
    for name in ("kind-old", "kind-genai"):
        assert Tracker(uri=store, experiment=name, run_name="r").start()
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.get_experiment(genai).tags["mlflow.experimentKind"] == "genai_development"


# -- the tracker registry: tracking.backend picks the tracker train and compare create ------------------------


class JsonlTracker:
    """A second tracker backend: every call a JSON line in ``<uri folder>/<run_name>.jsonl`` (``uri`` is
    ``jsonl:///folder``); what a new backend registers."""

    def __init__(self, *, uri, experiment, run_name, run_id=None, enabled=True, parent_run_id=None, tags=None, **kw):
        self.path = Path(uri.removeprefix("jsonl://")) / f"{run_name}.jsonl"
        self.run_id, self.enabled, self.healthy, self.error = run_id, enabled, enabled, None
        self._write("init", experiment=experiment, parent=parent_run_id, tags=tags or {}, options=sorted(kw))

    def _write(self, call: str, **data) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps({"call": call, **data}, default=str) + "\n")

    def start(self):
        self.run_id = self.run_id or f"jsonl-{self.path.stem}"
        self._write("start", run_id=self.run_id)
        return self.run_id if self.enabled else None

    def log_params(self, params):
        self._write("params", params=dict(params))

    def log_metrics(self, metrics, step):
        self._write("metrics", metrics=dict(metrics), step=step)

    def set_tags(self, tags):
        self._write("tags", tags=dict(tags))

    def log_artifact(self, path, artifact_path=None):
        self._write("artifact", path=str(path))

    def log_dict(self, d, name):
        self._write("dict", name=name)

    def log_figure(self, fig, name):
        self._write("figure", name=name)

    def flush(self):
        pass

    def finish(self, status="FINISHED"):
        self._write("finish", status=status)


@pytest.fixture
def jsonl_backend():
    register("jsonl", JsonlTracker)
    yield "jsonl"
    unregister("jsonl")


def test_tracking_backend_picks_the_tracker_train_and_compare_create(jsonl_backend, tmp_path):
    from msg_ray.compare.mlflow_io import open_child, open_parent
    from msg_ray.train.config import RunConfig
    from msg_ray.train.progress import WorkerTracker
    from msg_ray.train.run import _open_mlflow_run

    uri = f"jsonl://{tmp_path}"
    base = {"schedule": "mini-sch1-g", "data": {"source": "wikitext2"}, "storage_path": str(tmp_path / "ray")}
    cfg = RunConfig.from_dict({**base, "name": "jr", "tracking_uri": uri, "tracking": {"backend": jsonl_backend}})
    assert _open_mlflow_run(cfg) == "jsonl-jr"  # the driver opens the run in the configured backend
    calls = _calls(tmp_path / "jr.jsonl")
    params = next(c["params"] for c in calls if c["call"] == "params")
    assert params["tracking"] == {"backend": "jsonl"} and params["phi"] == 50
    assert {"call": "dict", "name": "resolved_config.json"} in calls
    worker = WorkerTracker(cfg, "jsonl-jr", enabled=True)  # rank 0 logs into the same backend, with its spool
    assert isinstance(worker.t, JsonlTracker) and worker.t.run_id == "jsonl-jr"
    assert "spool_dir" in _calls(tmp_path / "jr.jsonl")[-1]["options"]

    parent = open_parent(uri, "cmp", "cmp", {"compare.seeds": "0"}, cfg.tracking)  # a comparison: parent, child
    assert isinstance(parent, JsonlTracker) and parent.run_id == "jsonl-cmp"
    child = replace(cfg, name="cmp-msg")
    assert open_child(child, parent.run_id, operator="msg", seed=0, lr=1e-3, flops_limit=1.5) == "jsonl-cmp-msg"
    assert _calls(tmp_path / "cmp-msg.jsonl")[0]["parent"] == "jsonl-cmp"


def _calls(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_unknown_tracking_backend_is_one_line_naming_the_field(jsonl_backend):
    from msg_ray.train.config import RunConfig

    assert tracker_names() == ("mlflow", "jsonl")
    with pytest.raises(ValueError) as err:
        RunConfig.from_dict({"schedule": "mini-sch1-g", "data": {"source": "x"}, "tracking": {"backend": "wandb"}})
    assert str(err.value) == "RunConfig.tracking.backend must be one of ('mlflow', 'jsonl'), got 'wandb'"
    with pytest.raises(ValueError, match=r"^tracking\.backend must be one of \('mlflow', 'jsonl'\), got 'x'$"):
        make_tracker("x", uri=None, experiment="e", run_name="r")
    with pytest.raises(ValueError, match="already registered"):
        register("mlflow", JsonlTracker)


# -- failures --------------------------------------------------------------------------------------------------


def test_unreachable_server_warns_once_and_stays_fast(tmp_path, capsys):
    uri = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    tracker = Tracker(uri=uri, experiment="e", run_name="r", flush_every=10)
    assert tracker.start() is None and not tracker.healthy
    tracker.log_params({"a": {"b": 1}})
    for step in range(500):
        tracker.log_metrics({"train/loss": 1.0}, step=step)
    tracker.set_tags({"t": 1})
    (tmp_path / "f.txt").write_text("x")
    tracker.log_artifact(tmp_path / "f.txt")
    tracker.log_dict({"a": 1}, "c.json")
    tracker.log_figure(plots.gamma_vs_time({"t": ([0, 1], [1, 2])}), "g.png")
    tracker.flush()
    tracker.finish("FAILED")
    elapsed = time.monotonic() - t0
    assert elapsed < 20, elapsed
    err = capsys.readouterr().err
    assert err.count("MLflow tracking unavailable") == 1, err
    assert f"unavailable at {uri}" in err and "training continues without tracking" in err
    assert tracker.error and tracker.error in err
    # failure at startup never leaves msg_ray's short HTTP settings behind
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ


def test_real_server_outage_then_reconnect_with_artifacts(mlflow_server, tmp_path, capsys, make_history):
    port, start_server = mlflow_server.port, mlflow_server.start
    uri = f"http://127.0.0.1:{port}"
    tracker = Tracker(uri=uri, experiment="server", run_name="r", retry_after_s=3600, flush_every=1000)
    assert tracker.start() is None and not tracker.healthy  # server not up yet: training would go on
    tracker.log_params({"operator": "msg"})  # kept for the reconnection too
    for step in range(5):
        tracker.log_metrics({"train/loss": 5.0 - step}, step=step)  # kept for the one reconnection

    t0 = time.monotonic()
    start_server()
    startup_s = time.monotonic() - t0
    tracker.retry_after_s = 0.0  # as if the retry delay had passed
    tracker.flush()  # reconnects once, creates the run, delivers the buffered points
    assert tracker.healthy and tracker.run_id, capsys.readouterr().err
    (tmp_path / "config.json").write_text(json.dumps({"phi": 50}))
    tracker.log_artifact(tmp_path / "config.json", artifact_path="config")
    tracker.log_figure(plots.loss_curves({"msg": make_history()}, growth_steps={"msg": [100, 250]}), "loss.png")
    tracker.finish()

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"operator": "msg"}
    assert load_run_metrics(uri, tracker.run_id, ["train/loss"])["train/loss"] == [(s, 5.0 - s) for s in range(5)]
    downloaded = Path(client.download_artifacts(tracker.run_id, "config/config.json", str(tmp_path / "dl")))
    assert json.loads(downloaded.read_text()) == {"phi": 50}
    # proxied artifact upload: the bytes landed in the server's --artifacts-destination
    stored = list((tmp_path / "srv-artifacts").rglob("loss.png"))
    assert len(stored) == 1 and stored[0].stat().st_size > 5_000
    err = capsys.readouterr().err
    assert err.count("MLflow tracking unavailable") == 1 and "reachable again" in err
    print(f"mlflow server startup: {startup_s:.1f} s")
