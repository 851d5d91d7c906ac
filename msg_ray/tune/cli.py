"""``msg-ray tune``: run (or resume) a schedule-search sweep. Thin: parse, build a SweepConfig, call run_sweep.

``register_cli(subparsers)`` adds the subcommand to ``msg-ray``'s parser; ``pipelines/sweep.py`` uses the same
``add_tune_args``/``sweep_config`` so ``ray job submit`` runs exactly what the CLI runs.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from msg_ray.model import ARCHS
from msg_ray.tune.space import load_space
from msg_ray.tune.sweep import SweepConfig, run_sweep


def add_tune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--space",
        required=True,
        help="a built-in space (structures, durations, schedules, phi, operators, adaptive; docs/tune.md) "
        "or a space file (.py defining SPACE, .yaml, .json)",
    )
    p.add_argument(
        "--arch",
        choices=list(ARCHS),
        default=None,
        help="train every trial as this architecture (default: the space's arch)",
    )
    p.add_argument("--num-samples", type=int, default=1, help="repeat the grid with seeds 0..N-1")
    p.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: what the CPUs fit)")
    p.add_argument("--workers-per-trial", type=int, default=1, help=">1 runs each trial as a nested TorchTrainer")
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--mode", choices=["auto", "inprocess", "nested"], default="auto")
    p.add_argument("--name", default=None, help="sweep name (re-using a name resumes that sweep)")
    p.add_argument("--storage-path", default="", help="Ray storage (shared on a cluster)")
    p.add_argument("--tracking-uri", default=None, help="MLflow URI (default: $MLFLOW_TRACKING_URI or local sqlite)")
    p.add_argument("--experiment", default="msg_ray_tune")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a space field, dotted (budget.wall_s=30, run.engine.lr=0.001)",
    )
    p.add_argument("--address", default=None, help="Ray cluster address (default: local or $RAY_ADDRESS)")
    p.add_argument("--no-probes", action="store_true", help="skip the linear probes on each trial (space: probes=[])")
    p.add_argument(
        "--plan-only", action="store_true", help="print the plan and its time estimate, then stop (no Ray, no MLflow)"
    )


def sweep_config(args: argparse.Namespace):

    extra = ([f"arch={args.arch}"] if args.arch else []) + (["probes=[]"] if getattr(args, "no_probes", False) else [])
    space = load_space(args.space, args.overrides + extra)
    return SweepConfig(
        space=space,
        name=args.name or "",
        num_samples=args.num_samples,
        max_concurrent=args.max_concurrent,
        workers_per_trial=args.workers_per_trial,
        cpus_per_worker=args.cpus_per_worker,
        mode=args.mode,
        storage_path=args.storage_path,
        tracking_uri=args.tracking_uri,
        experiment=args.experiment,
    )


def cmd_tune(args: argparse.Namespace) -> int:

    result = run_sweep(sweep_config(args), ray_address=args.address, plan_only=args.plan_only)
    if args.plan_only:
        return 0
    summary: dict[str, Any] = {
        "name": result.name,
        "interrupted": result.interrupted,
        "path": str(result.path),
        "results": str(result.results_dir),
        "best_schedule": str(result.best_schedule),
        "parent_run_id": result.parent_run_id,
        "tracking_uri": result.tracking_uri,
        "seconds": round(result.seconds, 1),
    }
    print(json.dumps(summary, indent=1))
    if result.best_schedule:
        run_file = result.best_schedule.parent / "best_run.yaml"
        how = f"--config {run_file}" if run_file.is_file() else f"--schedule {result.best_schedule}"
        print(f"train it: msg-ray train {how}")
    print(f"MLflow UI: mlflow ui --backend-store-uri {result.tracking_uri}")
    return 3 if result.interrupted else 0


def register_cli(subparsers) -> None:
    """Add ``msg-ray tune`` to msg-ray's subparsers (``sub = parser.add_subparsers(...)``)."""
    p = subparsers.add_parser("tune", help="schedule search with Ray Tune (γ grid, durations, schedules, φ, operators)")
    add_tune_args(p)
    p.set_defaults(func=cmd_tune)
