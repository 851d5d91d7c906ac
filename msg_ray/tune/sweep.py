"""Run a sweep: plan trials from a space, open MLflow parent/child runs, run Ray Tune + ASHA, write the results.

``run_sweep(SweepConfig) -> SweepResult``. The sweep's folder ``<storage_path>/<name>`` holds Tune's
experiment state, ``msg_ray_plan.json`` (the trials, their run configs and MLflow child run ids) and
``results/`` (``results.csv``, ``results.md``, ``best_schedule.yaml``, ``gamma_vs_time.png``). Running the same
``name`` again after an interruption restores the experiment (``Tuner.restore``): finished trials are kept, the
others resume from their last checkpoint, and they log into the same MLflow runs.

Ray is imported inside the functions that run the sweep (importing it costs seconds; planning needs none).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msg_ray import plots
from msg_ray.data import prepare
from msg_ray.tracking import Tracker, resolve_tracking_uri
from msg_ray.train.config import RunConfig
from msg_ray.tune import results as R
from msg_ray.tune.space import SearchSpace
from msg_ray.tune.trial import inprocess_trial, nested_trial, plan_resources

MODES = ("auto", "inprocess", "nested")
KIND, NAME, LABEL, RUN_TAG = "msg_ray.tune", "msg_ray.tune.name", "msg_ray.tune.label", "msg_ray.run_name"
PLAN = "msg_ray_plan.json"


@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    space: SearchSpace
    name: str = ""  # "" -> the space's name; re-using a name resumes that sweep
    num_samples: int = 1  # the grid is repeated with seeds 0..num_samples-1
    max_concurrent: int | None = None  # None: as many as the cluster's CPUs fit
    workers_per_trial: int = 1
    cpus_per_worker: float = 1.0
    mode: str = "auto"  # auto: in-process for 1 worker, nested TorchTrainer otherwise
    storage_path: str = ""  # "" -> the RunConfig default ($MSG_RAY_HOME/ray or ./runs/ray)
    tracking_uri: str | None = None
    experiment: str = "msg_ray_tune"
    run_overrides: dict[str, Any] = field(default_factory=dict)  # extra RunConfig fields for every trial

    def __post_init__(self) -> None:
        if not isinstance(self.num_samples, int) or self.num_samples < 1:
            raise ValueError(f"SweepConfig.num_samples: must be an int >= 1, got {self.num_samples!r}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ValueError(f"SweepConfig.max_concurrent: must be >= 1, got {self.max_concurrent}")
        if not isinstance(self.workers_per_trial, int) or self.workers_per_trial < 1:
            raise ValueError(f"SweepConfig.workers_per_trial: must be an int >= 1, got {self.workers_per_trial!r}")
        if not self.cpus_per_worker > 0:
            raise ValueError(f"SweepConfig.cpus_per_worker: must be > 0, got {self.cpus_per_worker}")
        if self.mode not in MODES:
            raise ValueError(f"SweepConfig.mode: must be one of {MODES}, got {self.mode!r}")
        if self.mode == "inprocess" and self.workers_per_trial != 1:
            raise ValueError("SweepConfig.mode: 'inprocess' runs one worker per trial; use 'nested' for more")
        if not self.sweep_name or any(c in self.sweep_name for c in "/\\ "):
            raise ValueError(f"SweepConfig.name: must be non-empty without '/', '\\' or spaces, got {self.name!r}")

    @property
    def sweep_name(self) -> str:
        return self.name or self.space.name

    @property
    def resolved_mode(self) -> str:
        return self.mode if self.mode != "auto" else ("inprocess" if self.workers_per_trial == 1 else "nested")


@dataclass
class SweepResult:
    name: str
    path: Path  # the sweep's folder
    parent_run_id: str | None
    tracking_uri: str
    rows: list[dict[str, Any]]
    best_schedule: Path | None
    results_dir: Path
    interrupted: bool
    trials: list[R.TrialSeries]
    seconds: float


def plan_trials(cfg: SweepConfig, storage: str, uri: str, vocab_size: int | None = None) -> list[dict[str, Any]]:
    """Validated run configs of every trial (raises ValueError before Ray starts); no MLflow runs yet.
    ``vocab_size`` lets a compute-'flops' space solve each trial's length (see `SearchSpace.run_config`)."""
    space = cfg.space
    out = []
    for spec in space.trials(tuple(range(cfg.num_samples))):
        extra = {
            "storage_path": str(Path(storage) / cfg.sweep_name / "train"),
            "tracking_uri": uri,
            "experiment": cfg.experiment,
            "workers": cfg.workers_per_trial,
            "cpus_per_worker": cfg.cpus_per_worker,
            **cfg.run_overrides,
        }
        if space.budget:  # a compute budget stops trials, so no final checkpoint is reported on the way
            extra.setdefault("lr_decay", space.run.get("lr_decay", "constant"))
        rc = space.run_config(spec, cfg.sweep_name, vocab_size, **extra)
        out.append({"label": spec.label, "seed": spec.seed, "meta": spec.meta, "run": rc.to_dict(), "run_id": None})
    return out


def _open_parent(cfg: SweepConfig, uri: str, resumed_id: str | None) -> Tracker:
    name = cfg.sweep_name
    parent = Tracker(
        uri=uri,
        experiment=cfg.experiment,
        run_name=name,
        run_id=resumed_id,
        tags={KIND: "parent", NAME: name, "msg_ray.tune.kind": cfg.space.kind},
    )
    parent.start()
    parent.log_params(
        {
            "space": cfg.space.to_dict(),
            "space.digest": cfg.space.digest(),
            "num_samples": cfg.num_samples,
            "max_concurrent": cfg.max_concurrent,
            "workers_per_trial": cfg.workers_per_trial,
            "mode": cfg.resolved_mode,
            "asha": cfg.space.asha,
        }
    )
    if cfg.space.doc:
        parent.set_tags({"mlflow.note.content": cfg.space.doc})
    parent.flush()
    return parent


def _open_child(trial: dict[str, Any], parent_id: str | None, uri: str, experiment: str) -> str | None:
    rc = trial["run"]
    tags = {
        RUN_TAG: rc["name"],
        KIND: "child",
        LABEL: trial["label"],
        "msg_ray.tune.seed": trial["seed"],
        **{f"msg_ray.tune.{k}": v for k, v in trial["meta"].items()},
    }
    t = Tracker(uri=uri, experiment=experiment, run_name=rc["name"], parent_run_id=parent_id, tags=tags)
    run_id = t.start()
    s = rc["schedule"]
    t.log_params(
        {**rc, "operator": s["operator"], "phi": s["phi"], "target": str(s["target"]), "n_stages": len(s["stages"])}
    )
    t.log_dict(s, "schedule.yaml")
    t.flush()
    return run_id


def _load_or_create_plan(cfg: SweepConfig, path: Path, uri: str, storage: str, vocab_size: int) -> tuple[dict, Tracker]:
    plan_file = path / PLAN
    trials = plan_trials(cfg, storage, uri, vocab_size)
    if plan_file.exists():
        plan = json.loads(plan_file.read_text())
        if plan["digest"] != cfg.space.digest() or len(plan["trials"]) != len(trials):
            raise ValueError(
                f"sweep {cfg.sweep_name!r} at {path} was started with a different space or sample count; "
                "pick another --name to start a new sweep"
            )
        for t in plan["trials"]:  # plans written before the key was renamed
            t.setdefault("run_id", t.pop("mlflow_run_id", None))
        return plan, _open_parent(cfg, uri, plan["parent_run_id"])
    parent = _open_parent(cfg, uri, None)
    for t in trials:
        t["run_id"] = _open_child(t, parent.run_id, uri, cfg.experiment)
    plan = {
        "name": cfg.sweep_name,
        "digest": cfg.space.digest(),
        "parent_run_id": parent.run_id,
        "trials": trials,
        "space": cfg.space.to_dict(),
        "kind": cfg.space.kind,
    }
    path.mkdir(parents=True, exist_ok=True)
    plan_file.write_text(json.dumps(plan, indent=1, default=str))
    return plan, parent


def _scheduler(space: SearchSpace):
    from ray.tune.schedulers import ASHAScheduler

    if space.asha is None:
        return None
    a = space.asha
    attr = a.get("time_attr", "wall_s")
    max_t = float(a.get("max_t") or space.budget.get(attr) or next(iter(space.budget.values())))
    rf = float(a.get("reduction_factor", 2))
    return ASHAScheduler(
        time_attr=attr,
        metric="loss_avg",
        mode="min",
        max_t=max_t,
        grace_period=float(a.get("grace", max_t / rf**2)),
        reduction_factor=rf,
    )


def _tuner(cfg: SweepConfig, plan: dict, path: Path, storage: str):
    import ray
    from ray import tune

    mode = cfg.resolved_mode
    resources, per_worker, k = plan_resources(
        mode, ray.cluster_resources().get("CPU", 1.0), cfg.max_concurrent, cfg.workers_per_trial, cfg.cpus_per_worker
    )
    for t in plan["trials"]:
        t["run"]["cpus_per_worker"] = per_worker
    fn = inprocess_trial if mode == "inprocess" else nested_trial
    trainable = tune.with_resources(tune.with_parameters(fn, plan=plan), resources)
    if tune.Tuner.can_restore(str(path)):
        print(f"[msg_ray tune] resuming sweep {cfg.sweep_name} from {path}", flush=True)
        return tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True), k
    stop = dict(cfg.space.budget) or None
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(list(range(len(plan["trials"]))))},
        tune_config=tune.TuneConfig(scheduler=_scheduler(cfg.space), max_concurrent_trials=k, reuse_actors=False),
        run_config=tune.RunConfig(
            name=cfg.sweep_name,
            storage_path=storage,
            stop=stop,
            verbose=0,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        ),
    )
    return tuner, k


def _collect(grid, plan: dict, space: SearchSpace) -> list[R.TrialSeries]:
    specs = space.trials(tuple(range(max(x["seed"] for x in plan["trials"]) + 1)))
    by_index: dict[int, R.TrialSeries] = {}
    keys = ("step", "wall_s", "flops", "loss_avg", "gamma", "train_loss", "val_loss")
    for res in grid:
        if not res.config:  # a trial that never started before an interruption
            continue
        i = res.config["trial"]
        t = plan["trials"][i]
        spec = specs[i]
        df = res.metrics_dataframe
        series = {k: [float(v) for v in df[k]] if df is not None and k in df else [] for k in keys}
        total = t["run"]["schedule"]["total_steps"]
        last = res.metrics or {}
        if res.error is not None:
            status = "error"
        elif not series["step"]:
            status = "pending"
        elif last.get("step", 0) >= total:
            status = "completed"
        elif space.budget and all(last.get(k, 0) >= v for k, v in space.budget.items()):
            status = "budget"
        else:
            status = "stopped_early"
        by_index[i] = R.TrialSeries(spec, status, series)
    return [by_index[i] for i in sorted(by_index)]


def _finish_children(trials: list[R.TrialSeries], rows: list[dict], plan: dict, uri: str, experiment: str) -> None:
    rank = {r["label"]: r for r in rows}
    for t, p in zip(trials, plan["trials"], strict=True):
        tr = Tracker(uri=uri, experiment=experiment, run_name=p["run"]["name"], run_id=p["run_id"])
        tr.start()
        r = rank[t.spec.label]
        tr.log_metrics(
            {
                f"tune/{k}": r[k]
                for k in ("rank", "gamma_rank", "gamma_early", "gamma_mid", "loss_at_T")
                if isinstance(r[k], int | float) and not math.isnan(r[k])
            },
            step=r["steps"],
        )
        tr.set_tags({"msg_ray.tune.status": t.status})
        # the loop marks a trial FINISHED when it runs to the end; stopped trials never get there
        tr.finish({"completed": "FINISHED", "budget": "FINISHED", "stopped_early": "KILLED"}.get(t.status, "FAILED"))


def run_sweep(cfg: SweepConfig, *, ray_address: str | None = None) -> SweepResult:
    """Plan, validate, run (or resume) the sweep and write/log its results."""
    import ray

    t0 = time.perf_counter()
    uri = resolve_tracking_uri(cfg.tracking_uri)
    storage = cfg.storage_path or str(Path(os.environ.get("MSG_RAY_HOME", "runs")) / "ray")  # RunConfig's default
    storage = str(Path(storage).resolve()) if "://" not in storage else storage
    path = Path(storage) / cfg.sweep_name
    first = RunConfig.from_dict(plan_trials(cfg, storage, uri)[0]["run"])  # every error before MLflow or Ray
    data = prepare(first.data)  # fetch/tokenise once in the driver, before any trial starts
    plan, parent = _load_or_create_plan(cfg, path, uri, storage, data.vocab_size)
    if not ray.is_initialized():
        ray.init(address=ray_address or os.environ.get("RAY_ADDRESS"))
    tuner, k = _tuner(cfg, plan, path, storage)
    print(
        f"[msg_ray tune] {cfg.sweep_name}: {len(plan['trials'])} trials, {k} at a time ({cfg.resolved_mode})",
        flush=True,
    )
    grid = tuner.fit()
    trials = _collect(grid, plan, cfg.space)
    n = len(plan["trials"])
    interrupted = (
        len(trials) < n or any(t.status == "pending" for t in trials) or grid.num_terminated + grid.num_errors < n
    )
    out = path / "results"
    if interrupted:
        print(f"[msg_ray tune] {cfg.sweep_name} interrupted; run the same command again to resume", flush=True)
        parent.flush()
        return SweepResult(
            cfg.sweep_name, path, parent.run_id, uri, [], None, out, True, trials, time.perf_counter() - t0
        )
    rows = R.table(trials, cfg.space, data.vocab_size, first.data.seq_len)
    best = _write_results(rows, trials, cfg, out, parent)
    _finish_children(trials, rows, plan, uri, cfg.experiment)
    parent.finish("FINISHED")
    print(R.markdown(rows, f"sweep {cfg.sweep_name} ({cfg.space.kind})"), flush=True)
    print(f"[msg_ray tune] results: {out}; best schedule: {best}", flush=True)
    return SweepResult(
        cfg.sweep_name, path, parent.run_id, uri, rows, best, out, False, trials, time.perf_counter() - t0
    )


def _write_results(
    rows: list[dict], trials: list[R.TrialSeries], cfg: SweepConfig, out: Path, parent: Tracker
) -> Path | None:

    R.write_csv(rows, out / "results.csv")
    (out / "results.md").write_text(R.markdown(rows, f"sweep {cfg.sweep_name} ({cfg.space.kind})"))
    best: Path | None = None
    try:
        best = R.best_schedule(rows, trials, cfg.space).save(out / "best_schedule.yaml")
    except ValueError as e:  # e.g. a best.total_steps too small for the stages: keep the table, say why
        print(f"[msg_ray tune] no best schedule written: {e}", flush=True)
    curves = R.gamma_curves(trials)
    if curves:
        plots.save(plots.gamma_vs_time(curves), out / "gamma_vs_time.png")
    parent.log_artifact(out)
    parent.log_metrics(
        {"tune/n_trials": len(rows), "tune/n_stopped_early": sum(t.status == "stopped_early" for t in trials)}, step=0
    )
    parent.set_tags({"msg_ray.tune.best": rows[0]["label"]})
    return best
