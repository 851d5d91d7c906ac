"""``msg-ray`` command line: ``train``, ``tune``, ``compare``, ``eval``, ``report``, ``sync``. Thin: parse, call one
function.

The shared run flags and their ``RunConfig`` (validated before Ray starts) live in ``msg_ray.cli_args``.
``quiet_ray()`` keeps two pieces of Ray's own console noise out of the user's console, where Ray allows it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

from msg_ray.cli_args import add_run_args, build_run_config
from msg_ray.compare.cli import register_cli as register_compare
from msg_ray.tracking import sync
from msg_ray.train.reporting import TrainingDiverged
from msg_ray.train.run import run
from msg_ray.tune.cli import register_cli as register_tune

# Ray logs this at every new local cluster (token auth is on by default): information, not a problem to act on.
# The warning for auth turned *off* ("Token authentication is disabled ...") is left alone.
_TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"
_TOKEN_ENABLED = "Token authentication is enabled"
RUNTIME_ENV_HOOK = "RAY_RUNTIME_ENV_HOOK"  # Ray calls this function on the runtime_env of every ray.init


class _DropTokenAuthEnabled(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_TOKEN_ENABLED)


_TOKEN_FILTER = _DropTokenAuthEnabled()


def ray_runtime_env(runtime_env: dict[str, Any] | None) -> dict[str, Any]:
    """The job's runtime env plus a worker setup hook that sets each Ray worker's ``RAY_ADDRESS`` to its own cluster.

    Why: Ray Train's PlacementGroupCleaner actor asks the state API about the train controller with no address,
    so Ray looks for "the" local cluster; with two local Ray instances on the machine (two ``msg-ray train`` side
    by side) that lookup raises "Found multiple active Ray instances" and the cleaner's thread dies with a
    traceback printed to the user's console. With ``RAY_ADDRESS`` set the lookup finds the worker's own cluster.
    A setup hook the user gave is kept (theirs wins). The hook is a closure, so Ray pickles it by value: workers
    do not import msg_ray for it.
    """

    def own_cluster_address() -> None:
        import ray  # inside the worker: connected to exactly one cluster, whose GCS address this is

        os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address

    env = dict(runtime_env or {})
    env.setdefault("worker_process_setup_hook", own_cluster_address)
    return env


def quiet_ray() -> None:
    """Before any ``ray.init`` of this process: drop Ray's "token authentication is enabled" notice and install
    :func:`ray_runtime_env` as Ray's runtime-env hook (unless the user set one: ``RAY_RUNTIME_ENV_HOOK``)."""
    logger = logging.getLogger(_TOKEN_LOGGER)
    if _TOKEN_FILTER not in logger.filters:
        logger.addFilter(_TOKEN_FILTER)
    os.environ.setdefault(RUNTIME_ENV_HOOK, f"{__name__}.ray_runtime_env")


def cmd_train(args: argparse.Namespace) -> int:
    cfg = build_run_config(args)
    result = run(cfg, ray_address=args.address)
    final = result.history.get("val_loss", [None])[-1] if result.history.get("val_loss") else None
    final = final if final is not None and math.isfinite(final) else None  # valid JSON: null, never NaN
    print(
        json.dumps(
            {
                "name": result.name,
                "final_val_loss": final,
                "checkpoint": result.checkpoint_path,
                "run_id": result.run_id,
                "tracking_uri": result.tracking_uri,
            },
            indent=1,
        )
    )
    print(f"MLflow UI: mlflow ui --backend-store-uri {result.tracking_uri}")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    """Ship the tracking spools of run NAME (written while MLflow was unreachable) into MLflow."""
    root = Path(args.storage_path or Path(os.environ.get("MSG_RAY_HOME", "runs")) / "ray") / args.name
    spools = sorted(p.parent for p in (root / "tracking-spool").glob("*/spool.jsonl"))
    if not spools:
        raise ValueError(f"sync: no tracking spool under {root / 'tracking-spool'} (check NAME and --storage-path)")
    out = [{"spool": str(d), **sync(d, uri=args.tracking_uri)} for d in spools]
    print(json.dumps(out, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="msg-ray", description="Masked Structural Growth pretraining on Ray")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="pretrain one schedule (Ray Train + DeepSpeed), tracked in MLflow")
    add_run_args(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("sync", help="ship a run's tracking spool into MLflow (after an MLflow outage)")
    p.add_argument("name", help="the run's --name")
    p.add_argument("--storage-path", default="", help="the run's storage (default: $MSG_RAY_HOME/ray or runs/ray)")
    p.add_argument("--tracking-uri", default=None, help="default: the URI the run was started with")
    p.set_defaults(func=cmd_sync)
    register_tune(sub)
    register_compare(sub)  # compare, eval, report
    args = parser.parse_args(argv)
    quiet_ray()
    try:
        return args.func(args)
    except ValueError as exc:  # configuration errors: one clear line, no traceback
        print(f"msg-ray: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"msg-ray: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        from ray.train import TrainingFailedError  # ray is imported by any command that trained

        if not isinstance(exc, TrainingFailedError):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(
            f"msg-ray: error: training failed: {first}\n  (the run's checkpoints are kept: re-run the same "
            "command to resume from the last one)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
