"""Run a comparison: one base RunConfig -> operator x learning rate x seed runs, trained, evaluated, reported.

Every run shares the base's data, data order (seed), compute budget and evaluation set; "full" trains the target
structure from scratch (``schedule.full`` with the same head_dim) for the base's steps N. ``budget="flops"``
(default) gives every growth schedule the FLOPs of those N full steps (its length solved by
``msg_ray.flops.solve_total_steps``, stage fractions kept, its LR decayed at its own end); ``"steps"`` gives it N
steps, which hands the schedule fewer FLOPs than the baseline; ``"wall"`` gives every run ``wall_s`` seconds of
training (stage starts and LR decay as fractions of that time; side by side runs share the machine's load). With ``lr_search_seeds = k`` a comparison runs
in two phases: every LR on the first k seeds, then the other seeds at each operator's chosen LR only (the same
tuning effort for every operator, fewer runs). Execution modes:
- ``parallel``: one Ray Tune trial per run, each training in-process with DeepSpeed world size 1 (the loop's
  "tune" session), ``max_concurrent`` at a time; with ``use_gpu`` each trial holds one GPU and no more trials run
  at once than the cluster has GPUs (``msg_ray.compare.resources``). Runs side by side see the same machine load,
  which is what a wall-time ratio needs on a shared CPU (platform notes: a lone run is faster than two side by side);
- ``sequential``: ``msg_ray.train.run.run`` one after another, any number of Ray Train workers per run.
``auto`` picks parallel for 1-worker runs, sequential otherwise.

Ray is imported inside the functions that start runs (importing it costs seconds; planning and reports need none).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from msg_ray.compare import mlflow_io
from msg_ray.compare.evaluate import EvalConfig, evaluate_many
from msg_ray.compare.extend import compact, extend_run
from msg_ray.compare.report import FULL, Report, RunRecord, best_lrs, reach_target, write_report
from msg_ray.compare.resources import task_options, trial_concurrency, trial_resources, used_gpu
from msg_ray.data import prepare, resolve_paths
from msg_ray.flops import equal_flops, flops_ratio
from msg_ray.schedule import OPERATORS
from msg_ray.tracking import resolve_tracking_uri
from msg_ray.train.config import RunConfig
from msg_ray.train.run import check_resources, run
from msg_ray.train.worker import run_worker

MODES = ("auto", "parallel", "sequential")
BUDGETS = ("steps", "flops", "wall")


@dataclass(frozen=True, kw_only=True)
class CompareConfig:
    base: RunConfig  # its schedule is the growth schedule compared; its operator is replaced per run
    operators: tuple[str, ...] = ("msg", "net2net", "nomask", FULL)
    seeds: tuple[int, ...] = (0,)
    lrs: tuple[float, ...] | None = None  # None: the base lr; several: every operator gets the same LR search
    # None: every seed runs every LR. k: the first k seeds run the LR search, the other seeds then run only at
    # each operator's chosen LR (chosen on those k seeds) - the same tuning effort per operator, fewer runs.
    lr_search_seeds: int | None = None
    # operator -> LR: no search, each operator at its own LR (e.g. more seeds at the LRs a merged search chose)
    lr_of: dict[str, float] | None = None
    name: str = "compare"
    mode: str = "auto"
    max_concurrent: int | None = None  # parallel mode: trials at once (None: as many as Ray's CPUs/GPUs allow)
    evaluate: bool = False
    eval: EvalConfig = field(default_factory=EvalConfig)
    out_dir: str = ""  # "" -> <storage_path>/../compare/<name>-<parent id>
    extend_steps: int = 0  # >0: continue schedule runs that miss the full run's loss by up to this many steps
    zoom_window: int = 200
    # "flops" (default): the base schedule's total_steps is the full run's budget N, and every growth schedule is
    # solved (same stage fractions) to spend the FLOPs of N full steps; "steps": every run trains N steps;
    # "wall": every run trains ``wall_s`` seconds, stage starts and LR decay as fractions of that time.
    budget: str = "flops"
    wall_s: float = 0.0
    # fractions (0, 1) of the full run's FLOPs: each growth operator also trains at these budgets (its chosen LR,
    # every seed), each run solved to its budget and decayed at its own end - the decayed budget curve, from which
    # FLOPs-to-target is read without taking a point mid-way through a longer run's LR schedule
    budget_fractions: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.budget not in BUDGETS:
            raise ValueError(f"CompareConfig.budget must be one of {BUDGETS}, got {self.budget!r}")
        if (self.budget == "wall") != (self.wall_s > 0):
            raise ValueError(
                f"CompareConfig.wall_s: budget 'wall' needs wall_s > 0 seconds (and only it takes one), "
                f"got budget={self.budget!r}, wall_s={self.wall_s!r}"
            )
        ops = self.operators
        if not ops or len(set(ops)) != len(ops) or set(ops) - {*OPERATORS, FULL}:
            raise ValueError(f"CompareConfig.operators must be distinct names from {(*OPERATORS, FULL)}, got {ops!r}")
        if FULL not in ops:
            raise ValueError("CompareConfig.operators must include 'full' (the baseline of every speed-up)")
        for op in set(ops) - {FULL}:  # every operator can perform every growth of the schedule (checked now)
            try:
                self.base.schedule.replace(operator=op)
            except ValueError as e:
                raise ValueError(f"CompareConfig.operators: {e}") from e
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"CompareConfig.seeds must be distinct ints, got {self.seeds!r}")
        if self.lrs is not None and (
            not self.lrs
            or any(not (lr > 0 and math.isfinite(lr)) for lr in self.lrs)
            or len(set(self.lrs)) != len(self.lrs)
        ):
            raise ValueError(f"CompareConfig.lrs must be distinct positive numbers, got {self.lrs!r}")
        if self.mode not in MODES:
            raise ValueError(f"CompareConfig.mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "parallel" and self.base.workers != 1:
            raise ValueError("CompareConfig.mode 'parallel' trains each run in one Tune trial: base.workers must be 1")
        if set(ops) - {FULL} and self.base.schedule.is_full:
            raise ValueError("CompareConfig.base.schedule has one stage: give a growth schedule to compare operators")
        if self.lr_search_seeds is not None and not 1 <= self.lr_search_seeds <= len(self.seeds):
            raise ValueError(
                f"CompareConfig.lr_search_seeds must be in [1, {len(self.seeds)}] (the number of seeds), "
                f"got {self.lr_search_seeds}"
            )
        if self.lr_of is not None:
            if self.lrs is not None or self.lr_search_seeds is not None:
                raise ValueError("CompareConfig.lr_of replaces the LR search: give it without lrs/lr_search_seeds")
            if set(self.lr_of) != set(ops) or any(
                not (isinstance(v, float | int) and v > 0) for v in self.lr_of.values()
            ):
                raise ValueError(
                    f"CompareConfig.lr_of must give every operator {sorted(ops)} a positive LR, got {self.lr_of!r}"
                )
        fr = self.budget_fractions
        if fr and (
            self.budget != "flops"
            or not set(ops) - {FULL}
            or len(set(fr)) != len(fr)
            or not all(isinstance(f, float | int) and 0 < f < 1 for f in fr)
        ):
            raise ValueError(
                f"CompareConfig.budget_fractions must be distinct fractions in (0, 1), with budget "
                f"'flops' and a growth operator, got {fr!r} (budget={self.budget!r})"
            )
        if self.extend_steps < 0:
            raise ValueError(f"CompareConfig.extend_steps must be >= 0, got {self.extend_steps}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ValueError(f"CompareConfig.max_concurrent must be >= 1, got {self.max_concurrent}")
        if not self.name or any(c in self.name for c in "/\\ "):
            raise ValueError(f"CompareConfig.name must be non-empty without '/', '\\' or spaces, got {self.name!r}")


@dataclass
class PlannedRun:
    operator: str
    seed: int
    lr: float
    config: RunConfig
    flops_limit: float = 1.0
    run_id: str | None = None
    budget: float = 1.0  # fraction of the full run's FLOPs (< 1: a run of the decayed budget curve)


def plan(
    cfg: CompareConfig,
    tag: str = "",
    *,
    seeds: tuple[int, ...] | None = None,
    lr_of: dict[str, float] | None = None,
    vocab_size: int | None = None,
    budget: float = 1.0,
) -> list[PlannedRun]:
    """The runs of a comparison (names ``<name>[-tag]-<operator>-lr<lr>-s<seed>``), without running them.

    ``seeds`` (default: all) limits the plan to those seeds; ``lr_of`` (operator -> LR) replaces the LR search
    with one LR per operator - the second phase of a comparison with ``lr_search_seeds``. ``vocab_size`` (the
    tokenizer's) is needed by ``budget="flops"`` to solve each schedule's length. ``budget`` < 1: the growth
    operators only, each solved to that fraction of the full run's FLOPs (names end ``-b<fraction>``).
    """
    if cfg.budget == "flops" and vocab_size is None:
        raise ValueError("plan: budget 'flops' needs the vocab_size to count FLOPs")
    base, sched = cfg.base, cfg.base.schedule
    # local paths made absolute here, on the driver: trials run in Tune's own folders, maybe on other nodes
    base = replace(base, data=resolve_paths(base.data))
    schedules = {}
    for op in cfg.operators:
        if op == FULL:
            schedules[op] = sched.full_baseline()
        elif cfg.budget == "flops":
            steps = max(1, round(sched.total_steps * budget))
            schedules[op] = equal_flops(sched.replace(operator=op), steps, vocab_size, base.data.seq_len)
        else:
            schedules[op] = sched.replace(operator=op)
    # Order: per (lr, seed), full first, then the schedules. Parallel mode launches trials in this order, so the
    # full run trains side by side with the first schedule (same machine load for the ratio that matters).
    ops = [*([FULL] if budget == 1.0 else []), *(op for op in cfg.operators if op != FULL)]
    out = []
    seeds = cfg.seeds if seeds is None else seeds
    lr_of = lr_of or cfg.lr_of
    if lr_of:  # one pass over seeds x operators, each at its own LR
        grid = [(lr_of[op], seed, op) for seed in seeds for op in ops]
    else:
        grid = [(lr, seed, op) for lr in cfg.lrs or (base.engine.lr,) for seed in seeds for op in ops]
    for lr, seed, op in grid:
        bud = f"b{budget:g}" if budget != 1.0 else ""
        name = "-".join(x for x in (cfg.name, tag, op, f"lr{lr:g}", f"s{seed}", bud) if x)
        rc = replace(
            base,
            schedule=schedules[op],
            seed=seed,
            name=name,
            engine=replace(base.engine, lr=lr),
            data=replace(base.data, seed=seed),
            wall_budget_s=cfg.wall_s,
        )
        out.append(PlannedRun(operator=op, seed=seed, lr=lr, config=rc, budget=budget))
    return out


@dataclass
class ComparisonResult:
    parent_run_id: str | None
    tracking_uri: str
    experiment: str
    records: list[RunRecord]
    report: Report
    out_dir: Path
    eval_results: list[dict[str, Any]]


def run_comparison(cfg: CompareConfig, *, ray_address: str | None = None) -> ComparisonResult:
    """Train every planned run, evaluate (optional), write and log the report; returns where it all is."""
    import ray

    uri = resolve_tracking_uri(cfg.base.tracking_uri)
    base = replace(cfg.base, tracking_uri=uri)
    cfg = replace(cfg, base=base)
    data = prepare(base.data)  # fetch/tokenise once, before any trial starts
    parent = mlflow_io.open_parent(uri, base.experiment, cfg.name, _params(cfg), base.tracking)
    tag = (parent.run_id or "")[:8]
    search = cfg.seeds[: cfg.lr_search_seeds or len(cfg.seeds)]
    runs = _open_runs(
        plan(cfg, tag, seeds=search, vocab_size=data.vocab_size), parent.run_id, data.vocab_size, base.data.seq_len
    )
    if not ray.is_initialized():
        ray.init(address=ray_address or os.environ.get("RAY_ADDRESS"))
    mode = cfg.mode if cfg.mode != "auto" else ("parallel" if base.workers == 1 else "sequential")
    try:
        paths = _execute(runs, cfg, mode, tag, ray_address)
        records = [_record(r, p) for r, p in zip(runs, paths, strict=True)]
        if len(search) < len(cfg.seeds):  # phase 2: the other seeds at each operator's chosen LR
            rest = tuple(s for s in cfg.seeds if s not in search)
            more = _open_runs(
                plan(cfg, tag, seeds=rest, lr_of=best_lrs(records), vocab_size=data.vocab_size),
                parent.run_id,
                data.vocab_size,
                base.data.seq_len,
            )
            runs += more
            more_paths = _execute(more, cfg, mode, f"{tag}-seeds", ray_address)
            paths += more_paths
            records += [_record(r, p) for r, p in zip(more, more_paths, strict=True)]
        if cfg.extend_steps:
            extend_unreached(records, paths, cfg.extend_steps)
        evals = _evaluate(records, paths, cfg) if cfg.evaluate else []
        if cfg.budget_fractions:  # the decayed budget curve: growth operators at their chosen LRs, side by side
            chosen = best_lrs(records)
            planned = [
                r
                for f in cfg.budget_fractions
                for r in plan(cfg, tag, lr_of=chosen, vocab_size=data.vocab_size, budget=f)
            ]
            more = _open_runs(planned, parent.run_id, data.vocab_size, base.data.seq_len)
            runs += more
            more_paths = _execute(more, cfg, mode, f"{tag}-budgets", ray_address)
            records += [_record(r, p) for r, p in zip(more, more_paths, strict=True)]
        out = Path(cfg.out_dir or Path(base.storage_path).parent / "compare" / f"{cfg.name}-{tag}")
        title = f"{cfg.name} ({base.schedule.name or base.schedule.arch}, equal {cfg.budget})"
        report = write_report(records, out, title=title, zoom_window=cfg.zoom_window)
        mlflow_io.log_report(parent, report)
    except BaseException:
        mlflow_io.fail_unfinished(uri, base.experiment, [r.run_id for r in runs], base.tracking)
        parent.finish("FAILED")
        raise
    parent.finish("FINISHED")
    print(report.markdown, flush=True)
    return ComparisonResult(parent.run_id, uri, base.experiment, records, report, out, evals)


def _execute(runs: list[PlannedRun], cfg: CompareConfig, mode: str, tag: str, ray_address: str | None) -> list[str]:
    """Train ``runs`` (Tune trials side by side, or Ray Train runs one after another); their final checkpoints."""
    return _run_parallel(runs, cfg, tag) if mode == "parallel" else _run_sequential(runs, ray_address)


def _open_runs(runs: list[PlannedRun], parent_id: str | None, vocab_size: int, seq_len: int) -> list[PlannedRun]:
    """Give each planned run its FLOPs-ratio limit and an MLflow child run under the comparison's parent."""

    for r in runs:
        r.flops_limit = flops_ratio(r.config.schedule, vocab_size, seq_len)
        r.run_id = mlflow_io.open_child(
            r.config, parent_id, operator=r.operator, seed=r.seed, lr=r.lr, flops_limit=r.flops_limit, budget=r.budget
        )
    return runs


def _params(cfg: CompareConfig) -> dict[str, Any]:
    return {
        "compare.operators": ",".join(cfg.operators),
        "compare.seeds": ",".join(map(str, cfg.seeds)),
        "compare.lrs": ",".join(f"{op}={x:g}" for op, x in cfg.lr_of.items())
        if cfg.lr_of
        else ",".join(f"{x:g}" for x in cfg.lrs or (cfg.base.engine.lr,)),
        "compare.mode": cfg.mode,
        "compare.lr_search_seeds": cfg.lr_search_seeds or len(cfg.seeds),
        "compare.budget": cfg.budget,
        "compare.budget_fractions": ",".join(f"{f:g}" for f in cfg.budget_fractions),
        "base": cfg.base.to_dict(),
    }


def _record(r: PlannedRun, checkpoint: str) -> RunRecord:
    meta = json.loads((Path(checkpoint) / "meta.json").read_text())
    return RunRecord(
        operator=r.operator,
        seed=r.seed,
        lr=r.lr,
        name=r.config.name,
        history=meta["history"],
        flops_limit=r.flops_limit,
        run_id=r.run_id,
        budget=r.budget,
    )


def extend_unreached(records: list[RunRecord], paths: list[str | None], max_steps: int) -> int:
    """Continue (Ray tasks, in parallel) the best-LR schedule runs that did not reach their full run's loss;
    the continuation is logged to each run as ``extend/val_loss`` and ``extend/wall_s``. Returns how many."""
    import ray

    lrs = best_lrs([r for r in records if r.budget == 1.0])
    full_by_seed = {r.seed: r for r in records if r.operator == FULL and r.lr == lrs[FULL]}
    todo = [
        i
        for i, r in enumerate(records)
        if r.operator != FULL
        and r.lr == lrs[r.operator]
        and paths[i]
        and r.budget == 1.0
        and r.seed in full_by_seed
        and reach_target(r, full_by_seed[r.seed]) is None
    ]
    task = ray.remote(extend_run)
    refs = [
        task.options(**extend_options(paths[i])).remote(paths[i], full_by_seed[records[i].seed].final_val, max_steps)
        for i in todo
    ]
    for i, ext in zip(todo, ray.get(refs), strict=True):
        e = records[i].extension = compact(ext)
        series = {
            "extend/val_loss": list(zip(e["val_step"], e["val_loss"], strict=True)),
            "extend/wall_s": list(zip(e["step"], e["wall_s"], strict=True)),
        }
        meta = json.loads((Path(paths[i]) / "meta.json").read_text())
        if records[i].run_id:
            mlflow_io.append_metrics(meta["config"], records[i].run_id, series)
    return len(todo)


def extend_options(checkpoint: str) -> dict[str, Any]:
    """Ray options of the task extending ``checkpoint``: a GPU when its run trained on GPUs."""
    meta = json.loads((Path(checkpoint) / "meta.json").read_text())
    return task_options(used_gpu(meta.get("config")))


def final_checkpoints(storage_path: str, names: list[str]) -> list[str | None]:
    """The final checkpoint folder of each run name under ``storage_path`` (Ray Train or Tune layout)."""
    found: dict[str, str] = {}
    for meta in Path(storage_path).rglob("meta.json"):
        try:
            m = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        if str(m.get("folder", "")).startswith("final-"):
            found[m.get("config", {}).get("name", "")] = str(meta.parent)
    return [found.get(n) for n in names]


def _evaluate(records: list[RunRecord], paths: list[str], cfg: CompareConfig) -> list[dict[str, Any]]:
    """Evaluate the runs at each operator's chosen LR (the only ones the table reports), in parallel."""
    lrs = best_lrs(records)
    todo = [i for i, r in enumerate(records) if r.lr == lrs[r.operator]]
    results = evaluate_many([paths[i] for i in todo], cfg.eval, log=True)
    for i, res in zip(todo, results, strict=True):
        records[i].scores = res["scores"]
    return results


def _run_sequential(runs: list[PlannedRun], ray_address: str | None) -> list[str]:

    paths = []
    for r in runs:
        result = run(r.config, ray_address=ray_address)
        if result.checkpoint_path is None:
            raise RuntimeError(f"run {r.config.name} finished without a checkpoint")
        paths.append(result.checkpoint_path)
    return paths


def _tune_trainable(config: dict[str, Any]) -> None:
    """One run inside a Tune trial: DeepSpeed world size 1 in this process, reporting through Ray Tune."""
    run_worker(config["run"], config["run_id"], "tune")


def _run_parallel(runs: list[PlannedRun], cfg: CompareConfig, tag: str) -> list[str]:
    import ray
    from ray import tune

    space = {"i": tune.grid_search(list(range(len(runs))))}
    configs = [{"run": r.config.to_dict(), "run_id": r.run_id} for r in runs]

    def trainable(config: dict[str, Any]) -> None:
        _tune_trainable(configs[config["i"]])

    cluster = ray.cluster_resources()
    check_resources(replace(cfg.base, workers=1), cluster)  # a GPU trial on a cluster without GPUs would wait forever
    concurrent = trial_concurrency(cfg.max_concurrent, cfg.base, cluster)
    tuner = tune.Tuner(
        tune.with_resources(trainable, trial_resources(cfg.base)),
        param_space=space,
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrent),
        run_config=tune.RunConfig(
            name="-".join(x for x in (cfg.name, tag) if x), storage_path=cfg.base.storage_path, verbose=0
        ),
    )
    grid = tuner.fit()
    paths: list[str | None] = [None] * len(runs)
    errors = []
    for res in grid:
        i = res.config["i"]
        if res.error is not None or res.checkpoint is None:
            errors.append(f"{runs[i].config.name}: {res.error or 'no checkpoint'}")
        else:
            paths[i] = res.checkpoint.path
    if errors:
        raise RuntimeError("comparison runs failed:\n" + "\n".join(errors))
    return paths  # type: ignore[return-value]
