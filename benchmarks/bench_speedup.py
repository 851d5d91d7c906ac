"""Benchmark: the mini-scale speed-ups of a growth schedule, measured side by side in one comparison.

Runs ``msg-ray compare`` (same flags; defaults: mini-sch1-g on WikiText-2, msg/nomask/net2net/full, parallel
trials) and prints, besides the comparison table, one row per stage of each operator's run: its step rate
against the full run's average step rate, next to the FLOPs-per-step ratio (the stage's own speed-up limit;
small stages trail it most, because the LM head and per-step overheads do not shrink with the model).
``--from-mlflow EXPERIMENT`` prints the same tables for an existing comparison without training.

    python -m benchmarks.bench_speedup --schedule mini-sch1-g --lrs 1e-3,2e-3,3e-3 --set data.seq_len=64
    python -m benchmarks.bench_speedup --from-mlflow msg_ray --tracking-uri sqlite:////abs/mlruns.db
"""

from __future__ import annotations

import argparse
import sys

from msg_ray.compare.cli import compare_config, register_cli
from msg_ray.compare.report import FULL, RunRecord, representative, to_markdown


def _at(history: dict, key: str, step: int) -> float:
    """Value of ``key`` after ``step`` optimizer steps (0 before the first step)."""
    return 0.0 if step == 0 else float(history[key][history["step"].index(step)])


def stage_rows(run: RunRecord, full: RunRecord) -> list[dict]:
    """Per stage of ``run``: steps/s against the full run's average steps/s (the target's shape never changes, so
    its rate is one number; this also holds when ``--budget flops`` gives the two runs different step counts)."""
    h, f = run.history, full.history
    full_rate = f["step"][-1] / f["wall_s"][-1]
    full_fps = f["flops"][-1] / f["step"][-1]  # FLOPs per step of the target
    bounds = [0, *run.growth_steps, h["step"][-1]]
    rows = []
    for k, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)):
        rate = (b - a) / (_at(h, "wall_s", b) - _at(h, "wall_s", a))
        fps = (_at(h, "flops", b) - _at(h, "flops", a)) / (b - a)
        events = h.get("growth_events") or []
        structure = events[k - 1]["structure"] if k and len(events) >= k else "first stage"
        rows.append(
            {
                "operator": run.operator,
                "stage": k,
                "structure": structure,
                "steps": f"{a}-{b}",
                "steps_per_s": rate,
                "full_steps_per_s": full_rate,
                "realised_ratio": rate / full_rate,
                "flops_ratio": full_fps / fps,
                "realised/limit": (rate / full_rate) / (full_fps / fps),
            }
        )
    return rows


def print_stage_table(records: list[RunRecord]) -> str:
    reps = representative(records)
    rows = [r for op, rec in reps.items() if op != FULL for r in stage_rows(rec, reps[FULL])]
    text = to_markdown(rows)
    print("\nPer-stage step rates (side by side with full; growth events count in the stage they open):\n")
    print(text, flush=True)
    return text


def main(argv: list[str]) -> int:
    if argv[:1] == ["--from-mlflow"]:
        from msg_ray.compare.mlflow_io import load_records
        from msg_ray.compare.report import summarize

        p = argparse.ArgumentParser(prog="bench_speedup.py --from-mlflow")
        p.add_argument("experiment")
        p.add_argument("--tracking-uri", default=None)
        p.add_argument("--parent", default=None)
        a = p.parse_args(argv[1:])
        _, records = load_records(a.tracking_uri, a.experiment, a.parent)
        print(to_markdown(summarize(records)))
        print_stage_table(records)
        return 0
    parser = argparse.ArgumentParser(prog="bench_speedup.py")
    register_cli(parser.add_subparsers(dest="command"))
    defaults = ["--schedule", "mini-sch1-g"] if "--schedule" not in argv else []
    args = parser.parse_args(["compare", *defaults, *argv])
    from msg_ray.compare.runner import run_comparison

    result = run_comparison(compare_config(args, "bench-speedup"), ray_address=args.address)
    print_stage_table(result.records)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
