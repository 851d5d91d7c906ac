"""``msg-ray`` command line: ``train``, ``tune``, ``compare``, ``eval``, ``report``. Thin: parse, call one function.

Config loading is shared with ``pipelines/*.py``: ``build_run_config(args)`` turns the common flags
(``--schedule``, ``--arch``, ``--data``, ``--workers``, ``--config``, ``--set key=value``) into a validated
``RunConfig``; every error is raised before Ray starts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--schedule", default=None, help="preset (mini-sch1-g [default], sch1-b, ...) or a YAML/JSON file")
    p.add_argument("--arch", choices=["gpt", "bert"], help="must match the schedule's arch (checked)")
    p.add_argument("--data", default="wikitext2", help="built-in corpus, hub dataset name, or local file/folder")
    p.add_argument("--tokenizer", default=None, help="gpt2 | bpe8k | bpe:<size> (default: the data config's)")
    p.add_argument("--workers", type=int, default=None, help="Ray Train workers (data-parallel ranks)")
    p.add_argument("--operator", choices=["msg", "net2net", "nomask"], default=None)
    p.add_argument("--steps", type=int, default=None, help="rescale the schedule to this many optimizer steps")
    p.add_argument("--name", default=None, help="run name (re-using a name resumes that run)")
    p.add_argument("--config", default=None, help="YAML/JSON RunConfig file; flags and --set override it")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, dotted (engine.zero_stage=3, data.seq_len=128)")  # fmt: skip
    p.add_argument("--address", default=None, help="Ray cluster address (default: local or $RAY_ADDRESS)")


def build_run_config(args: argparse.Namespace):
    from msg_ray.schedule import Schedule, get_schedule
    from msg_ray.train.config import RunConfig, apply_overrides

    base: dict[str, Any] = {}
    if args.config:
        path = Path(args.config)
        if not path.exists():
            raise ValueError(f"--config: file not found: {path}")
        base = yaml.safe_load(path.read_text()) or {}
    chosen = args.schedule or base.get("schedule") or "mini-sch1-g"
    sched = Schedule.from_dict(chosen) if isinstance(chosen, dict) else get_schedule(chosen)
    if args.operator:
        sched = sched.replace(operator=args.operator)
    if args.steps:
        sched = sched.scaled(total_steps=args.steps)
    if args.arch and args.arch != sched.arch:
        raise ValueError(f"--arch {args.arch} does not match schedule {sched.name!r} (arch {sched.arch})")
    d = {**base, "schedule": sched.to_dict()}
    data = dict(d.get("data", {}))
    data.setdefault("source", args.data)
    if args.tokenizer:
        data["tokenizer"] = args.tokenizer
    d["data"] = data
    if args.workers is not None:
        d["workers"] = args.workers
    if args.name:
        d["name"] = args.name
    d = apply_overrides(d, args.overrides)
    return RunConfig.from_dict(d)


def cmd_train(args: argparse.Namespace) -> int:
    from msg_ray.train.run import run

    cfg = build_run_config(args)
    result = run(cfg, ray_address=args.address)
    final = result.history.get("val_loss", [None])[-1] if result.history.get("val_loss") else None
    print(json.dumps({"name": result.name, "final_val_loss": final, "checkpoint": result.checkpoint_path,
                      "mlflow_run_id": result.mlflow_run_id, "tracking_uri": result.tracking_uri}, indent=1))  # fmt: skip
    print(f"MLflow UI: mlflow ui --backend-store-uri {result.tracking_uri}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="msg-ray", description="Masked Structural Growth pretraining on Ray")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="pretrain one schedule (Ray Train + DeepSpeed), tracked in MLflow")
    add_run_args(p)
    p.set_defaults(func=cmd_train)
    from msg_ray.compare.cli import register_cli as register_compare
    from msg_ray.tune.cli import register_cli as register_tune

    register_tune(sub)
    register_compare(sub)  # compare, eval, report
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:  # configuration errors: one clear line, no traceback
        print(f"msg-ray: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
