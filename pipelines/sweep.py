"""Run a schedule-search sweep: the ``ray job submit`` face of ``msg-ray tune`` (same flags).

    ray job submit --address http://HEAD:8265 --working-dir . \
        --runtime-env-json '{"env_vars": {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}}' \
        -- python -m pipelines.sweep --space structures --max-concurrent 8 --workers-per-trial 2 \
           --storage-path /shared/msg_ray --set run.use_gpu=true

Re-running the same command (same ``--name``/space) resumes an interrupted sweep.
"""

import argparse
import sys

from msg_ray.tune.cli import add_tune_args, cmd_tune


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sweep.py", description="MSG schedule search with Ray Tune")
    add_tune_args(parser)
    args = parser.parse_args(argv)
    try:
        return cmd_tune(args)
    except ValueError as exc:  # configuration errors: one clear line, before Ray starts
        print(f"sweep.py: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
