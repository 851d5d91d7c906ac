"""Benchmark: growth schedules vs a tuned full baseline at equal FLOPs, in the plain reference loop (no Ray).

Every schedule and the full baseline get the same LR grid; each schedule is solved to the FLOPs of
``--full-steps`` full steps and its LR decays fully at its own end. Prints, per (schedule, LR policy): the
chosen LR (and whether it is inside the grid), final val loss at equal FLOPs (mean/std over seeds), and the
FLOPs-to-target speed-up, target = the tuned full run's final val loss. Runs many jobs side by side on one GPU
(``--procs``) or on CPU cores. Studies are defined in ``benchmarks.plain_study``.

    python -m benchmarks.bench_schedules --study gpt --device cuda --procs 12 --out results.jsonl
    python -m benchmarks.bench_schedules --report full.jsonl growth.jsonl   # one table from several result files
    python -m benchmarks.bench_schedules --study gpt-operators --resume --out ops.jsonl   # finish a cut-short sweep
    python -m benchmarks.bench_schedules --study gpt-operators --downstream --out ops.jsonl   # + linear-probe scores
    python -m benchmarks.bench_schedules --study gpt-warmup150 --only ffn-first-48 --lrs 8e-3 --budgets 0.5,0.6 \
        --out budgets.jsonl   # growth at half and 0.6x full's FLOPs, each decayed at its own end
"""

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

from benchmarks import plain_study as S

_STATE: dict = {}


def _init(data_cfg: dict, device: str, threads: int, downstream: bool) -> None:
    import torch

    from benchmarks.plain import valid_batches
    from msg_ray.data import DataConfig, prepare
    from msg_ray.train.hostmem import keep_freed_memory

    torch.set_num_threads(threads)
    keep_freed_memory()
    _STATE["data"] = data = prepare(DataConfig(**data_cfg))
    _STATE["valid"] = valid_batches(data, 40)
    _STATE["device"] = device
    _STATE["downstream"] = _probe_scorer(DataConfig(**data_cfg)) if downstream else None


def _probe_scorer(data_cfg):
    """model -> {metric: value}: linear probes (msg_ray.compare.probe) on the tasks of S.DOWNSTREAM."""
    from msg_ray.compare.evaluate import EvalConfig, evaluate_classification

    cfg = EvalConfig(tasks=tuple(k.split("/")[0] for k in S.DOWNSTREAM), cls_mode="probe")
    return lambda model: {
        k: v[0] for task in cfg.tasks for k, v in evaluate_classification(model, task, data_cfg, cfg).items()
    }


def _run(job):
    from benchmarks.plain import run_plain

    return run_plain(job, _STATE["data"], _STATE["valid"], _STATE["device"], _STATE["downstream"])


def _load(path: str) -> list[dict]:
    """Saved results (one JSON object per line); a missing file holds none (a --resume from scratch)."""
    if not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study", choices=sorted(S.STUDIES))
    p.add_argument("--report", nargs="+", metavar="JSONL", help="print the table of saved result files (no training)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--out", default="bench_schedules.jsonl")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every step count (quick checks)")
    p.add_argument("--only", default="", help="comma list of labels to run (default: all)")
    p.add_argument("--lrs", default="", help="comma list: run only these LRs of the study's grid")
    p.add_argument("--seeds", default="", help="comma list: run only these seeds")
    p.add_argument(
        "--budgets",
        default="",
        help="comma list of fractions of full's FLOPs: run the selected jobs at these budgets, each "
        "decayed at its own end (the decayed budget curve; full at the study's budget is the target)",
    )
    p.add_argument("--resume", action="store_true", help="keep --out's results and run only the jobs it lacks")
    p.add_argument(
        "--downstream",
        action="store_true",
        help="score every final model with linear probes (movie sentiment, BBC topics)",
    )
    p.add_argument(
        "--rename",
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="--report: read label OLD as NEW (the same schedule saved by two studies under two labels)",
    )
    p.add_argument(
        "--data",
        dest="data_overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="DataConfig override for every run (tokenizer=bpe:4096, seq_len=128)",
    )
    args = p.parse_args(argv)
    if args.report:
        if missing := [f for f in args.report if not Path(f).exists()]:
            p.error(f"--report: no such file: {', '.join(missing)}")
        try:
            renames = dict(item.split("=", 1) for item in args.rename)
        except ValueError:
            p.error(f"--rename expects OLD=NEW, got {args.rename!r}")
        print(S.report([S.relabel(r, renames) for f in args.report for r in _load(f)]))
        return 0
    if not args.study:
        p.error("--study is required (or --report FILES)")
    study = S.select(S.STUDIES[args.study](args.scale), args.only, args.lrs, args.seeds, args.data_overrides)
    if args.budgets:
        study = S.at_budgets(study, args.budgets)
    results = _load(args.out) if args.resume else []
    study, t0 = S.pending(study, results), time.perf_counter()
    print(f"{len(study.jobs)} job(s) to run, {len(results)} already in {args.out}", flush=True)
    ctx = get_context("spawn")
    with (
        open(args.out, "a" if args.resume else "w") as f,
        ProcessPoolExecutor(
            args.procs,
            mp_context=ctx,
            initializer=_init,
            initargs=(study.data, args.device, args.threads, args.downstream),
        ) as pool,
    ):
        futures = [pool.submit(_run, job) for job in study.jobs]
        for i, fut in enumerate(as_completed(futures), 1):
            r = fut.result()
            results.append(r)
            f.write(json.dumps(r) + "\n")
            f.flush()
            print(
                f"[{i}/{len(futures)} {time.perf_counter() - t0:.0f}s] {r['job']['label']} lr={r['job']['lr']:g} "
                f"s{r['job']['seed']}: steps {r['total_steps']} val {r['final_val']:.4f}",
                flush=True,
            )
    if not any(r["job"]["label"] == S.FULL for r in results):  # e.g. the baseline was run into another file
        print(f"no full baseline among these results: combine files with --report {args.out} <full results>")
        return 0
    print(S.report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
