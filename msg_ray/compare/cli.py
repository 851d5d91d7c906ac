"""``msg-ray compare | eval | report``: argument parsing only; each command calls one function of msg_ray.compare.

Wire into ``msg_ray.cli.main`` with ``register_cli(sub)`` after the ``train`` parser is added.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from msg_ray.cli_args import add_run_args, build_run_config
from msg_ray.compare.evaluate import EvalConfig, evaluate_many
from msg_ray.compare.rebuild import rebuild_report
from msg_ray.compare.runner import CompareConfig, run_comparison
from msg_ray.train.config import apply_overrides


def _floats(text: str, flag: str = "--lrs") -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"{flag}: expected a comma list of numbers (1e-3,2e-3), got {text!r}") from None


def _seeds(text: str) -> tuple[int, ...]:
    """``3`` -> (0, 1, 2); ``0,4,7`` -> those seeds."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--seeds: expected N or a comma list of ints, got {text!r}") from None
    if "," in text:
        return tuple(values)
    if len(values) != 1 or values[0] < 1:
        raise ValueError(f"--seeds must be >= 1, got {text!r}")
    return tuple(range(values[0]))


def _lr_of(text: str) -> dict[str, float]:
    out = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        op, sep, lr = item.partition("=")
        try:
            out[op.strip()] = float(lr)
        except ValueError:
            raise ValueError(f"--lr-of: expected OP=LR items (msg=8e-3,full=4e-3), got {item!r}") from None
        if not sep:
            raise ValueError(f"--lr-of: expected OP=LR items (msg=8e-3,full=4e-3), got {item!r}")
    return out


def register_cli(sub: argparse._SubParsersAction) -> None:
    """Add the ``compare``, ``eval`` and ``report`` subcommands to ``msg-ray``'s subparsers."""

    p = sub.add_parser("compare", help="MSG vs Net2Net vs No-Mask vs full: train, evaluate, speed-up table + plots")
    add_run_args(p)
    p.add_argument("--operators", default="msg,net2net,nomask,full", help="comma list; must include full")
    p.add_argument("--seeds", default="1", help="N (seeds 0..N-1) or a comma list")
    p.add_argument("--lrs", default=None, help="comma list: the same LR search for every operator (best kept)")
    p.add_argument(
        "--lr-search-seeds",
        type=int,
        default=None,
        help="run the LR search on the first K seeds only; the other seeds run at each operator's chosen LR",
    )
    p.add_argument(
        "--lr-of",
        default=None,
        metavar="OP=LR,...",
        help="no LR search: each operator at its own LR (e.g. msg=8e-3,full=4e-3: more seeds at chosen LRs)",
    )
    p.add_argument(
        "--budget",
        choices=["flops", "steps", "wall"],
        default="flops",
        help="flops: --steps is the full run's budget, every schedule is solved to the same FLOPs "
        "(default); steps: every run trains --steps steps; wall: every run trains --wall-s seconds",
    )
    p.add_argument("--wall-s", type=float, default=0.0, help="--budget wall: training seconds of every run")
    p.add_argument(
        "--budget-fractions",
        default="",
        metavar="F,...",
        help="--budget flops: also train each growth operator (chosen LR, every seed) at these fractions "
        "of full's FLOPs, each decayed at its own end; the report reads FLOPs-to-target off them",
    )
    p.add_argument("--mode", choices=["auto", "parallel", "sequential"], default="auto")
    p.add_argument("--max-concurrent", type=int, default=None)
    p.add_argument("--evaluate", action="store_true", help="run the downstream evaluators on every final model")
    p.add_argument(
        "--eval-set",
        dest="eval_overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="EvalConfig override, dotted (lm.steps=100, cls.steps=200, seeds=[0,1,2])",
    )
    p.add_argument("--out", default="", help="folder for the table and plots")
    p.add_argument(
        "--extend-steps",
        type=int,
        default=0,
        help="continue schedule runs that miss the full run's final loss by up to N steps (time-to-target)",
    )
    p.set_defaults(func=cmd_compare)

    e = sub.add_parser("eval", help="downstream evaluation of checkpoint/export folders (parallel Ray tasks)")
    e.add_argument("checkpoints", nargs="+")
    e.add_argument("--set", dest="eval_overrides", action="append", default=[], metavar="KEY=VALUE")
    e.add_argument("--no-log", action="store_true", help="do not log scores to the producing MLflow run")
    e.add_argument("--address", default=None)
    e.set_defaults(func=cmd_eval)

    r = sub.add_parser("report", help="rebuild a comparison's table and plots from MLflow alone")
    r.add_argument("experiment")
    r.add_argument("--parent", default=None, help="comparison run id or name (default: the newest)")
    r.add_argument("--tracking-uri", default=None)
    r.add_argument("--out", default=None)
    r.add_argument(
        "--merge",
        action="append",
        default=[],
        metavar="PARENT",
        help="another comparison (id or name) of the same setting to add to the table, e.g. a wider LR grid",
    )
    r.add_argument(
        "--extend-steps",
        type=int,
        default=0,
        help="first continue runs that missed the full run's loss by up to N steps (trains; logged)",
    )
    r.set_defaults(func=cmd_report)


def eval_config(overrides: list[str]):

    return EvalConfig.from_dict(apply_overrides({}, overrides))


def compare_config(args: argparse.Namespace, default_name: str = "compare"):
    """The `CompareConfig` of parsed ``compare`` flags (``--name`` names the comparison, not one run)."""

    return CompareConfig(
        base=build_run_config(replace_ns(args, name=None)),
        operators=tuple(x.strip() for x in args.operators.split(",") if x.strip()),
        seeds=_seeds(args.seeds),
        lrs=_floats(args.lrs) if args.lrs else None,
        lr_search_seeds=args.lr_search_seeds,
        lr_of=_lr_of(args.lr_of) if args.lr_of else None,
        name=args.name or default_name,
        mode=args.mode,
        max_concurrent=args.max_concurrent,
        evaluate=args.evaluate,
        eval=eval_config(args.eval_overrides),
        out_dir=args.out,
        extend_steps=args.extend_steps,
        budget=args.budget,
        wall_s=args.wall_s,
        budget_fractions=_floats(args.budget_fractions, "--budget-fractions"),
    )


def cmd_compare(args: argparse.Namespace) -> int:

    result = run_comparison(compare_config(args), ray_address=args.address)
    _print({"parent_run_id": result.parent_run_id, "report": str(result.out_dir), "tracking_uri": result.tracking_uri})
    return 0


def replace_ns(ns: argparse.Namespace, **changes: Any) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(ns), **changes})


def cmd_eval(args: argparse.Namespace) -> int:

    if args.address:
        os.environ["RAY_ADDRESS"] = args.address
    results = evaluate_many(args.checkpoints, eval_config(args.eval_overrides), log=not args.no_log)
    for res in results:
        res = replace_dict(res, summary={k: f"{m:.4g} ({s:.2g})" for k, (m, s) in res["summary"].items()})
        _print({k: v for k, v in res.items() if k != "scores"})
    return 0


def replace_dict(d: dict, **changes: Any) -> dict:
    return {**d, **changes}


def cmd_report(args: argparse.Namespace) -> int:
    report, info = rebuild_report(
        args.experiment,
        tracking_uri=args.tracking_uri,
        parent=args.parent,
        out_dir=args.out,
        extend_steps=args.extend_steps,
        merge=tuple(args.merge),
    )
    print(report.markdown)
    _print({"parent_run_id": info["run_id"], "files": [str(f) for f in report.files]})
    return 0


def _print(d: dict) -> None:
    print(json.dumps(d, indent=1, default=str), flush=True)
