"""The run flags every command shares (``--schedule``, ``--arch``, ``--data``, ``--workers``, ``--config``,
``--set key=value``, ...) and ``build_run_config(args)``, which turns them into a validated ``RunConfig`` before Ray
starts. Used by ``msg-ray`` subcommands and ``pipelines/*.py``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from msg_ray import presets
from msg_ray.model import ARCHS
from msg_ray.schedule import OPERATORS, Schedule
from msg_ray.train.config import RunConfig, apply_overrides


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--schedule",
        default=None,
        help="preset (default: mini-sch1-g, or mini-sch1-b / mini-llama-sch1 with --arch bert / llama), or a YAML/JSON file",
    )
    p.add_argument("--arch", choices=list(ARCHS), help="must match the schedule's arch (checked)")
    p.add_argument("--data", default="wikitext2", help="built-in corpus, hub dataset name, or local file/folder")
    p.add_argument("--tokenizer", default=None, help="gpt2 | bpe8k | bpe:<size> (default: the data config's)")
    p.add_argument("--workers", type=int, default=None, help="Ray Train workers (data-parallel ranks)")
    p.add_argument("--operator", choices=list(OPERATORS), default=None)
    p.add_argument("--steps", type=int, default=None, help="rescale the schedule to this many optimizer steps")
    p.add_argument("--name", default=None, help="run name (re-using a name resumes that run)")
    p.add_argument("--config", default=None, help="YAML/JSON RunConfig file; flags and --set override it")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field, dotted (engine.zero_stage=3, data.seq_len=128)",
    )
    p.add_argument("--address", default=None, help="Ray cluster address (default: local or $RAY_ADDRESS)")


def read_config_file(path: Path) -> dict[str, Any]:
    """A RunConfig file: YAML, or strict JSON for ``.json`` (YAML would accept JSON's errors, e.g. trailing
    commas); it must hold a mapping of RunConfig fields."""
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"--config {path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {first}"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: must hold a mapping of RunConfig fields, got a {type(data).__name__}")
    return data


def build_run_config(args: argparse.Namespace) -> RunConfig:
    base: dict[str, Any] = {}
    if args.config:
        path = Path(args.config)
        if not path.exists():
            raise ValueError(f"--config: file not found: {path}")
        base = read_config_file(path)
    chosen = args.schedule or base.get("schedule") or presets.DEFAULT_SCHEDULE.get(args.arch or "gpt", "mini-sch1-g")
    sched = Schedule.from_dict(chosen) if isinstance(chosen, dict) else presets.get_schedule(chosen)
    if args.operator:
        sched = sched.replace(operator=args.operator)
    if args.steps is not None:
        if args.steps < 1:
            raise ValueError(f"--steps: must be >= 1, got {args.steps}")
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
