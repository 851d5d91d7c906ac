"""Run a sweep: plan trials from a space, say what it will cost, run Ray Tune in rounds until every label's LR is
bracketed, probe every finished trial, and write the report.

``run_sweep(SweepConfig) -> SweepResult``. Before Ray starts the sweep prints its plan (trials, concurrency and
minutes estimated from a step of the largest structure measured in this process, `msg_ray.tune.estimate`). Round 0
runs the space's grid; while a label's best LR sits at an edge of what it tried, the next round adds one point
beyond that edge per such label (``lr_step``, at most ``lr_extend`` per label; `results.extensions`). Each finished
trial prints a progress line with the running best. After each round every trial that trained to its end is
scored with linear probes (``space.probes``, one Ray task per trial, `msg_ray.tune.probes`).

The sweep's folder ``<storage_path>/<name>`` holds Tune's experiment state (round r > 0 in ``<name>-lr<r>``),
``msg_ray_plan.json`` (the trials, their run configs, MLflow child run ids, the added LR points, the rounds and
the probe scores) and ``results/``: ``results.csv``, ``results.md`` (the winner's claim above the table),
``loss_vs_flops.png`` (the headline figure, `msg_ray.tune.figures`), ``gamma_vs_time.png``,
``best_schedule.yaml`` (what was ranked: under compute 'flops' the schedule solved for equal FLOPs) and
``best_run.yaml`` (the ranked trial's whole run config: ``msg-ray train --config best_run.yaml`` trains it again).
Running the same ``name`` again after an interruption restores each round (``Tuner.restore``): finished trials
are kept, the others resume from their last checkpoint, and they log into the same MLflow runs.

Ray is imported inside the functions that run the sweep (importing it costs seconds; planning needs none).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from msg_ray import plots
from msg_ray.data import prepare, resolve_paths
from msg_ray.flops import full_flops
from msg_ray.schedule import Schedule
from msg_ray.tracking import RunTracker, make_tracker, resolve_tracking_uri
from msg_ray.train.config import RunConfig
from msg_ray.tune import estimate as E
from msg_ray.tune import figures
from msg_ray.tune import results as R
from msg_ray.tune.probes import PREFIX, probe_task
from msg_ray.tune.space import SearchSpace
from msg_ray.tune.trial import inprocess_trial, nested_trial, plan_resources

MODES = ("auto", "inprocess", "nested")
KIND, NAME, LABEL, RUN_TAG = "msg_ray.tune", "msg_ray.tune.name", "msg_ray.tune.label", "msg_ray.run_name"
PLAN = "msg_ray_plan.json"
# run-config fields that say where a trial ran, not what it trained (left out of best_run.yaml)
_WHERE = ("storage_path", "tracking_uri", "experiment", "name")


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


def plan_trials(
    cfg: SweepConfig,
    storage: str,
    uri: str,
    vocab_size: int | None = None,
    extra: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Validated run configs of every trial (raises ValueError before Ray starts); no MLflow runs yet.
    ``vocab_size`` lets a compute-'flops' space solve each trial's length (see `SearchSpace.run_config`);
    ``extra``: LR points added beyond the grid's edges (their trials come after the grid's, in order)."""
    space = cfg.space
    out = []
    for spec in space.trials(tuple(range(cfg.num_samples)), extra):
        over = {
            "storage_path": str(Path(storage) / cfg.sweep_name / "train"),
            "tracking_uri": uri,
            "experiment": cfg.experiment,
            "workers": cfg.workers_per_trial,
            "cpus_per_worker": cfg.cpus_per_worker,
            **cfg.run_overrides,
        }
        if space.budget:  # a compute budget stops trials, so no final checkpoint is reported on the way
            over.setdefault("lr_decay", space.run.get("lr_decay", "constant"))
        rc = space.run_config(spec, cfg.sweep_name, vocab_size, **over)
        rc = replace(rc, data=resolve_paths(rc.data))  # trials run in Tune's own folders, maybe on other nodes
        out.append({"label": spec.label, "seed": spec.seed, "meta": spec.meta, "run": rc.to_dict(), "run_id": None})
    return out


def _backend(run: dict[str, Any]) -> str:
    """The tracking backend of a planned trial's run config (plans written before ``tracking`` existed: MLflow)."""
    return run.get("tracking", {}).get("backend", "mlflow")


def _open_parent(cfg: SweepConfig, uri: str, resumed_id: str | None, backend: str) -> RunTracker:
    name = cfg.sweep_name
    parent = make_tracker(
        backend,
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
    t = make_tracker(
        _backend(rc), uri=uri, experiment=experiment, run_name=rc["name"], parent_run_id=parent_id, tags=tags
    )
    run_id = t.start()
    s = rc["schedule"]
    t.log_params(
        {**rc, "operator": s["operator"], "phi": s["phi"], "target": str(s["target"]), "n_stages": len(s["stages"])}
    )
    t.log_dict(s, "schedule.yaml")
    t.flush()
    return run_id


def _load_or_create_plan(
    cfg: SweepConfig, path: Path, uri: str, storage: str, vocab_size: int
) -> tuple[dict, RunTracker]:
    plan_file = path / PLAN
    trials = plan_trials(cfg, storage, uri, vocab_size)
    if plan_file.exists():
        plan = json.loads(plan_file.read_text())
        plan.setdefault("rounds", [list(range(len(plan["trials"])))])  # plans written before LR bracketing
        plan.setdefault("extra", [])
        plan.setdefault("probes", {})
        if plan["digest"] != cfg.space.digest() or len(plan["rounds"][0]) != len(trials):
            raise ValueError(
                f"sweep {cfg.sweep_name!r} at {path} was started with a different space or sample count; "
                "pick another --name to start a new sweep"
            )
        for t in plan["trials"]:  # plans written before the key was renamed
            t.setdefault("run_id", t.pop("mlflow_run_id", None))
        return plan, _open_parent(cfg, uri, plan["parent_run_id"], _backend(trials[0]["run"]))
    parent = _open_parent(cfg, uri, None, _backend(trials[0]["run"]))
    for t in trials:
        t["run_id"] = _open_child(t, parent.run_id, uri, cfg.experiment)
    plan = {
        "name": cfg.sweep_name,
        "digest": cfg.space.digest(),
        "parent_run_id": parent.run_id,
        "trials": trials,
        "space": cfg.space.to_dict(),
        "kind": cfg.space.kind,
        "rounds": [list(range(len(trials)))],
        "extra": [],
        "probes": {},
    }
    _save_plan(plan, path)
    return plan, parent


def _save_plan(plan: dict, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / (PLAN + ".tmp")
    tmp.write_text(json.dumps(plan, indent=1, default=str))
    tmp.replace(path / PLAN)  # a sweep interrupted while writing keeps the previous plan


def _extend_plan(cfg: SweepConfig, plan: dict, path: Path, uri: str, storage: str, vocab_size: int, new: list) -> None:
    """Add the trials of LR points ``new`` as the next round (MLflow child runs opened now)."""
    extra = [*plan["extra"], *new]
    trials = plan_trials(cfg, storage, uri, vocab_size, extra)
    added = trials[len(plan["trials"]) :]
    for t in added:
        t["run_id"] = _open_child(t, plan["parent_run_id"], uri, cfg.experiment)
    n = len(plan["trials"])
    plan["trials"].extend(added)
    plan["extra"] = extra
    plan["rounds"].append(list(range(n, n + len(added))))
    _save_plan(plan, path)


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


def trial_resources(cfg: SweepConfig, plan: dict, cluster: dict[str, float]) -> tuple[dict[str, float], float, int]:
    """`plan_resources` for this sweep on a cluster with ``cluster`` resources (``ray.cluster_resources()``)."""
    use_gpu = bool(plan["trials"][0]["run"].get("use_gpu"))
    return plan_resources(
        cfg.resolved_mode,
        cluster.get("CPU", 1.0),
        cfg.max_concurrent,
        cfg.workers_per_trial,
        cfg.cpus_per_worker,
        use_gpu,
        cluster.get("GPU", 0.0),
    )


def _round_name(cfg: SweepConfig, r: int) -> str:
    return cfg.sweep_name if r == 0 else f"{cfg.sweep_name}-lr{r}"


def _progress_callback(plan: dict, space: SearchSpace, t0: float):
    """A Tune callback printing one line per finished trial, with the running best (lowest score so far)."""
    from ray import tune

    class Progress(tune.Callback):
        def __init__(self) -> None:
            self.best: tuple[float, str] | None = None
            self.done: set[int] = set()

        def _line(self, trial, what: str) -> None:
            i = (trial.config or {}).get("trial")
            if i is None:
                return
            label, r = plan["trials"][i]["label"], trial.last_result or {}
            key = "val_loss" if space.compute == "flops" else "loss_avg"
            v = float(r.get(key, math.nan))
            if what == "done" and not math.isnan(v) and (self.best is None or v < self.best[0]):
                self.best = (v, label)
            best = f"{self.best[1]} {self.best[0]:.4f}" if self.best else "-"
            self.done.add(i)
            print(
                f"[msg_ray tune] {len(self.done)}/{len(plan['trials'])} {what} {label}: {key} {v:.4f} at step "
                f"{r.get('step', 0)} ({r.get('wall_s', 0.0):.0f} s); best so far {best}; "
                f"{(time.perf_counter() - t0) / 60:.1f} min",
                flush=True,
            )

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            self._line(trial, "done")

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            self._line(trial, "FAILED")

    return Progress()


def _tuner(cfg: SweepConfig, plan: dict, r: int, storage: str, callbacks: list):
    import ray
    from ray import tune

    mode = cfg.resolved_mode
    resources, per_worker, k = trial_resources(cfg, plan, ray.cluster_resources())
    for t in plan["trials"]:
        t["run"]["cpus_per_worker"] = per_worker
    fn = inprocess_trial if mode == "inprocess" else nested_trial
    trainable = tune.with_resources(tune.with_parameters(fn, plan=plan), resources)
    name = _round_name(cfg, r)
    path = Path(storage) / name
    if tune.Tuner.can_restore(str(path)):
        print(f"[msg_ray tune] resuming {name} from {path}", flush=True)
        return tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True), k
    stop = dict(cfg.space.budget) or None
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(plan["rounds"][r])},
        tune_config=tune.TuneConfig(scheduler=_scheduler(cfg.space), max_concurrent_trials=k, reuse_actors=False),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            stop=stop,
            verbose=0,
            callbacks=callbacks,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        ),
    )
    return tuner, k


def _collect(grid, plan: dict, space: SearchSpace, out: dict[int, R.TrialSeries], ckpts: dict[int, str]) -> None:
    """Read one round's results into ``out`` (trial index -> series) and the final checkpoints into ``ckpts``."""
    seeds = tuple(range(max(x["seed"] for x in plan["trials"]) + 1))
    specs = space.trials(seeds, plan["extra"])
    keys = ("step", "wall_s", "flops", "loss_avg", "gamma", "train_loss", "val_loss")
    for res in grid:
        if not res.config:  # a trial that never started before an interruption
            continue
        i = res.config["trial"]
        t = plan["trials"][i]
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
        sched = Schedule.from_dict(t["run"]["schedule"])
        out[i] = R.TrialSeries(specs[i], status, series, sched, dict(plan["probes"].get(str(i), {})))
        if status == "completed" and res.checkpoint is not None:
            ckpts[i] = res.checkpoint.path


def _probe_round(cfg: SweepConfig, plan: dict, path: Path, trials: dict[int, R.TrialSeries], ckpts: dict) -> None:
    """Probe scores of every finished trial not scored yet: one Ray task each, as many at once as CPUs allow."""
    import ray

    space = cfg.space
    todo = [i for i in sorted(ckpts) if str(i) not in plan["probes"]]
    if not space.probes or not todo:
        return
    task = ray.remote(num_cpus=cfg.cpus_per_worker)(probe_task)
    refs = {i: task.remote(ckpts[i], list(space.probes), space.probe_examples) for i in todo}
    for i, ref in refs.items():
        scores = ray.get(ref)
        if "probe_error" in scores:
            print(f"[msg_ray tune] probe of {plan['trials'][i]['label']} failed: {scores['probe_error']}", flush=True)
        plan["probes"][str(i)] = scores
        trials[i].probes = dict(scores)
    secs = [plan["probes"][str(i)].get("probe_seconds", math.nan) for i in todo]
    print(f"[msg_ray tune] probed {len(todo)} trials ({sum(secs) / len(secs):.0f} s each)", flush=True)
    _save_plan(plan, path)


def _finish_children(trials: list[R.TrialSeries], rows: list[dict], plan: dict, uri: str, experiment: str) -> None:
    rank = {r["label"]: r for r in rows}
    for t, p in zip(trials, plan["trials"], strict=True):
        tr = make_tracker(
            _backend(p["run"]), uri=uri, experiment=experiment, run_name=p["run"]["name"], run_id=p["run_id"]
        )
        tr.start()
        r = rank[t.spec.label]
        tr.log_metrics(
            {
                f"tune/{k}": r[k]
                for k in ("rank", "gamma_rank", "gamma_early", "gamma_mid", "loss_at_T", "final_val")
                if isinstance(r[k], int | float) and not math.isnan(r[k])
            },
            step=r["steps"],
        )
        probes = {f"{PREFIX}{k}": v for k, v in t.probes.items() if isinstance(v, int | float)}
        if probes:
            tr.log_metrics(probes, step=r["steps"])
        tr.set_tags({"msg_ray.tune.status": t.status, "msg_ray.tune.chosen": r["chosen"] or "no"})
        # the loop marks a trial FINISHED when it runs to the end; stopped trials never get there
        tr.finish({"completed": "FINISHED", "budget": "FINISHED", "stopped_early": "KILLED"}.get(t.status, "FAILED"))


def _print_plan(cfg: SweepConfig, plan: dict, first: RunConfig, vocab: int, cluster: dict, where: str) -> None:
    space = cfg.space
    _, _, k = trial_resources(cfg, plan, cluster)
    target = space.reference_target()
    rcs = [RunConfig.from_dict(t["run"]) for t in plan["trials"]]
    step_s = E.step_times(rcs, vocab)
    wall = space.budget.get("wall_s")
    secs = [E.trial_seconds(rc, step_s, len(space.probes), space.probe_examples, wall) for rc in rcs]
    labels = {t["meta"].get("base_label", t["label"]) for t in plan["trials"]}
    extra_max = space.lr_extend * len(labels) * cfg.num_samples * len(space.budget_fracs or [1]) if space.lrs else 0
    print(
        E.plan_text(
            cfg.sweep_name,
            space.kind,
            len(plan["trials"]),
            k,
            where,
            step_s[target],
            target,
            first,
            secs,
            extra_max,
            list(space.probes),
            space.probe_examples,
        ),
        flush=True,
    )


def run_sweep(cfg: SweepConfig, *, ray_address: str | None = None, plan_only: bool = False) -> SweepResult:
    """Plan, validate, print the plan, run (or resume) the sweep round by round and write/log its results.
    ``plan_only``: print the plan and its estimate, then stop (no Ray, no MLflow runs)."""
    t0 = time.perf_counter()
    uri = resolve_tracking_uri(cfg.tracking_uri)
    storage = cfg.storage_path or str(Path(os.environ.get("MSG_RAY_HOME", "runs")) / "ray")  # RunConfig's default
    storage = str(Path(storage).resolve()) if "://" not in storage else storage
    path = Path(storage) / cfg.sweep_name
    first = RunConfig.from_dict(plan_trials(cfg, storage, uri)[0]["run"])  # every error before MLflow or Ray
    data = prepare(first.data)  # fetch/tokenise once in the driver, before any trial starts
    address = ray_address or os.environ.get("RAY_ADDRESS")
    if plan_only:
        plan = {"trials": plan_trials(cfg, storage, uri, data.vocab_size)}
        _print_plan(cfg, plan, first, data.vocab_size, {"CPU": float(os.cpu_count() or 1)}, "this machine's CPUs")
        return SweepResult(cfg.sweep_name, path, None, uri, [], None, path / "results", True, [], 0.0)
    import ray

    plan, parent = _load_or_create_plan(cfg, path, uri, storage, data.vocab_size)
    if not ray.is_initialized() and address in (None, "", "local"):  # a new local Ray gets this machine's CPUs
        _print_plan(cfg, plan, first, data.vocab_size, {"CPU": float(os.cpu_count() or 1)}, "local Ray")
    if not ray.is_initialized():
        ray.init(address=address)
    else:
        _print_plan(cfg, plan, first, data.vocab_size, ray.cluster_resources(), "the running Ray cluster")
    series: dict[int, R.TrialSeries] = {}
    ckpts: dict[int, str] = {}
    progress = _progress_callback(plan, cfg.space, t0)
    r, interrupted = 0, False
    while r < len(plan["rounds"]):
        tuner, k = _tuner(cfg, plan, r, storage, [progress])
        if r:
            print(f"[msg_ray tune] round {r}: {len(plan['rounds'][r])} trials at LRs beyond a grid edge", flush=True)
        grid = tuner.fit()
        _collect(grid, plan, cfg.space, series, ckpts)
        n = len(plan["rounds"][r])
        if grid.num_terminated + grid.num_errors < n or any(
            i not in series or series[i].status == "pending" for i in plan["rounds"][r]
        ):
            interrupted = True
            break
        _probe_round(cfg, plan, path, series, ckpts)
        r += 1
        if r == len(plan["rounds"]):
            new = R.extensions(R.choices([series[i] for i in sorted(series)], cfg.space), cfg.space)
            if new:
                _extend_plan(cfg, plan, path, uri, storage, data.vocab_size, new)
    trials = [series[i] for i in sorted(series)]
    out = path / "results"
    if interrupted:
        print(f"[msg_ray tune] {cfg.sweep_name} interrupted; run the same command again to resume", flush=True)
        parent.flush()
        return SweepResult(
            cfg.sweep_name, path, parent.run_id, uri, [], None, out, True, trials, time.perf_counter() - t0
        )
    rows = R.table(trials, cfg.space, data.vocab_size, first.data.seq_len)
    line = R.claim(rows, trials, cfg.space, _budget_axis(cfg.space, first, data.vocab_size))
    best = _write_results(rows, trials, plan, cfg, out, parent, line)
    _finish_children(trials, rows, plan, uri, cfg.experiment)
    parent.finish("FINISHED")
    print(R.markdown(rows, f"sweep {cfg.sweep_name} ({cfg.space.kind})", line), flush=True)
    print(f"[msg_ray tune] results: {out}; best schedule: {best}", flush=True)
    return SweepResult(
        cfg.sweep_name, path, parent.run_id, uri, rows, best, out, False, trials, time.perf_counter() - t0
    )


def _budget_axis(space: SearchSpace, first: RunConfig, vocab: int) -> str:
    target = space.reference_target()
    if space.compute == "flops":
        f = full_flops(first.schedule, space.total_steps, vocab, first.data.seq_len, first.tokens_per_step)
        fr = f" at fractions {space.budget_fracs} of it" if space.budget_fracs else ""
        return f"equal training FLOPs = {space.total_steps} steps of full {target} ({f:.3g}){fr}"
    if space.budget:
        ((k, v),) = space.budget.items()
        return f"equal {k} = {v:g}"
    return f"{space.total_steps} steps each (not equal compute)"


def _write_results(
    rows: list[dict],
    trials: list[R.TrialSeries],
    plan: dict,
    cfg: SweepConfig,
    out: Path,
    parent: RunTracker,
    line: str,
) -> Path | None:
    space = cfg.space
    R.write_csv(rows, out / "results.csv")
    (out / "results.md").write_text(R.markdown(rows, f"sweep {cfg.sweep_name} ({space.kind})", line))
    best: Path | None = None
    try:
        best = _write_best(rows, trials, plan, space, out, line)
    except ValueError as e:  # e.g. a best.total_steps too small for the stages: keep the table, say why
        print(f"[msg_ray tune] no best schedule written: {e}", flush=True)
    key = "val_loss" if space.compute == "flops" else "loss_avg"
    plots.save(figures.loss_vs_flops(trials, R.choices(trials, space), key=key), out / "loss_vs_flops.png")
    curves = R.gamma_curves(trials)
    if curves:
        plots.save(plots.gamma_vs_time(curves), out / "gamma_vs_time.png")
    parent.log_artifact(out)
    parent.log_metrics(
        {"tune/n_trials": len(rows), "tune/n_stopped_early": sum(t.status == "stopped_early" for t in trials)}, step=0
    )
    parent.set_tags({"msg_ray.tune.best": rows[0]["label"], "msg_ray.tune.claim": line[:4000]})
    return best


def _write_best(
    rows: list[dict], trials: list[R.TrialSeries], plan: dict, space: SearchSpace, out: Path, line: str
) -> Path:
    """best_schedule.yaml (what was ranked, with its LR/warm-up/loss as a header) and best_run.yaml (the ranked
    trial's run config, so ``msg-ray train --config best_run.yaml`` trains the same budget, LR and warm-up)."""
    sched = R.best_schedule(rows, trials, space)
    path = sched.save(out / "best_schedule.yaml")
    top = R.best_trial(rows, trials)
    run = next(t["run"] for t in plan["trials"] if t["label"] == top.spec.label)
    run = {k: v for k, v in run.items() if k not in _WHERE} | {"schedule": sched.to_dict()}
    if space.kind == "structures":  # a composed schedule: it was never trained as such
        header = [f"# {space.name}-best: composed from the γ grid, run settings of {top.spec.label} ({line})"]
    else:
        header = [
            f"# ranked: {top.spec.label}: {sched.total_steps} steps, lr {run['engine']['lr']:g}, "
            f"warm-up {run['warmup_steps']}, seed {run['seed']}, final val loss {R.final_val(top):.6g}",
            f"# {line}",
            "# train it as ranked: msg-ray train --config best_run.yaml (this file alone uses the default LR)",
        ]
    path.write_text("\n".join(header) + "\n" + path.read_text())
    (out / "best_run.yaml").write_text("\n".join(header) + "\n" + yaml.safe_dump(run, sort_keys=False))
    return path
