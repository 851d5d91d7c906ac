"""Benchmark growth events on the real DeepSpeed engine, in one process (world size 1, CPU, gloo).

Walks the mini GPT schedule ``mini-sch1-g`` (80,128,3,1) -> ... -> (128,512,4,4): at each stage it trains a few
steps on random tokens (tokens/s while the masks ramp and after they fold), then grows with the training loop's own
growth event (``msg_ray.train.growth_event.grow_engine``), timing each part of it:

  gather   ``gather_state(engine)``: full fp32 masters + Adam moments by name
  grow     rebuild the old model from the masters + ``grow_model``'s growth (``growth.expand``) and ramp start
  carry    ``grow_model``'s carry (``msg_ray.optim_carry.carry_adam_state``): moments into the grown shapes
  release  ``release(engine)``;  build  ``build_engine(new)``;  restore  ``restore_state(engine, carried)``

After the schedule's growths it keeps doing growth-like rebuilds at the final size (same steps, no size change)
until 10 rebuilds have run, recording process RSS (psutil) before and after each so a leak shows as a trend.
Each growth is checked like the loop does: the loss on a fixed batch before and after must agree (MSG).

    python -m benchmarks.bench_growth                 # ZeRO-2, fp32, 1 thread (~30 s)
    python -m benchmarks.bench_growth --zero 3 --precision bf16
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time

os.environ.setdefault("DS_ACCELERATOR", "cpu")  # set before DeepSpeed is imported (by engine.build_engine)
os.environ.setdefault("OMP_NUM_THREADS", "1")

import psutil
import torch

from msg_ray import growth as G
from msg_ray.model import ModelConfig, build_from_config, with_structure
from msg_ray.presets import get_schedule
from msg_ray.schedule import Schedule
from msg_ray.train.engine import EngineConfig, build_engine, freeze_import_heap, release
from msg_ray.train.growth_event import PARTS, grow_engine


def rss_mb() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


def tokens(vocab: int, batch: int, seq: int, seed: int) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


def train(engine, steps: int, vocab: int, batch: int, seq: int, ramp: G.MaskRamp | None, seed: int) -> list[float]:
    """``steps`` optimizer steps on random tokens; returns per-step seconds. The mask ramp follows the steps."""
    times = []
    for i in range(steps):
        if ramp is not None:
            ramp.apply(engine.module, i)
        ids = tokens(vocab, batch, seq, seed + i)
        t0 = time.perf_counter()
        loss = engine.module.loss(engine(ids), ids)
        engine.backward(loss)
        engine.step()
        times.append(time.perf_counter() - t0)
    return times


@torch.no_grad()
def probe(engine, ids: torch.Tensor) -> float:
    engine.module.eval()
    loss = engine.module.loss(engine(ids), ids).item()
    engine.module.train()
    return loss


def stage_rates(engine, args, n_tokens: int, ramping: bool, seed: int) -> tuple[float, float]:
    """Tokens/s (median step) while the masks ramp (first half, c 0 -> 1) and after they fold (second half)."""
    half = max(2, args.steps // 2)
    ramp = G.MaskRamp(start_step=0, phi=half) if ramping else None
    times = train(engine, 2 * half, args.vocab, args.batch, args.seq, ramp, seed)
    if ramp is not None:
        ramp.apply(engine.module, 2 * half)  # fold (c = 1) before the next growth, as the loop's ramp does
    first, second = times[1:half], times[half + 1 :]  # drop one warm-up step of each half
    # Median step time: other processes on a shared machine add spikes that a mean would absorb.
    return n_tokens / statistics.median(first), n_tokens / statistics.median(second)


def run(args: argparse.Namespace, sched: Schedule) -> tuple[list[str], list[str], float]:
    cfg = EngineConfig(zero_stage=args.zero, precision=args.precision, micro_batch_size=args.batch, lr=1e-3)
    config = ModelConfig(
        arch=sched.arch,
        structure=sched.stages[0].structure,
        vocab_size=args.vocab,
        max_seq_len=args.seq,
        head_dim=sched.head_dim,
    )
    targets = [s.structure for s in sched.stages[1:]]
    targets += [targets[-1]] * (args.rebuilds - len(targets))
    probe_ids, n_tok = tokens(args.vocab, args.batch, args.seq, seed=12345), args.batch * args.seq
    t0 = time.perf_counter()
    engine = build_engine(build_from_config(config, seed=0), cfg)  # includes DeepSpeed import + process group
    first_build = time.perf_counter() - t0
    current, stage_rows, event_rows = sched.stages[0].structure, [], []
    for i, target in enumerate([None, *targets]):
        if target is not None:
            before, rss0 = probe(engine, probe_ids), rss_mb()
            grown = grow_engine(
                engine, with_structure(config, current), target, cfg, step=0, phi=max(2, args.steps // 2), seed=1000 + i
            )
            engine, t = grown.engine, grown.seconds
            rss1, after = rss_mb(), probe(engine, probe_ids)
            kind = "grow" if target != current else "rebuild"
            cells = " | ".join(f"{t[p]:.3f}" for p in PARTS)
            event_rows.append(
                f"| {i} | {kind} {current} -> {target} | {cells} | {sum(t.values()):.2f} "
                f"| {rss0:,.0f} | {rss1:,.0f} | {abs(after - before):.1e} |"
            )
            print(event_rows[-1], file=sys.stderr, flush=True)
            grew, current = target != current, target
        else:
            grew = False
        if i < len(sched.stages):  # train each schedule stage; extra same-size rebuilds only take 2 steps
            ramp_tps, plain_tps = stage_rates(engine, args, n_tok, grew, seed=100 * i)
            ramp_cell = f"{ramp_tps:,.0f}" if grew else "-"
            stage_rows.append(f"| {i} | {current} | {ramp_cell} | {plain_tps:,.0f} |")
        else:
            train(engine, 2, args.vocab, args.batch, args.seq, None, seed=100 * i)
    release(engine)
    return stage_rows, event_rows, first_build


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zero", type=int, choices=(0, 1, 2, 3), default=2, help="DeepSpeed ZeRO stage")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--schedule", default="mini-sch1-g", help="preset or schedule file (default mini-sch1-g)")
    p.add_argument("--steps", type=int, default=20, help="training steps per stage (half ramping, half folded)")
    p.add_argument("--rebuilds", type=int, default=10, help="growths + same-size rebuilds in a row")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--vocab", type=int, default=4096)
    # 1 thread by default: on a shared 2-core machine two OpenMP threads stall at barriers whenever another
    # process runs (10x slower steps seen); use --threads 2 on an otherwise idle machine.
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sched = get_schedule(args.schedule)
    if args.rebuilds < len(sched.stages) - 1:
        raise ValueError(f"--rebuilds must be >= the schedule's {len(sched.stages) - 1} growths, got {args.rebuilds}")
    freeze_import_heap()  # as the training worker does before its first model
    t0 = time.perf_counter()
    stage_rows, event_rows, first_build = run(args, sched)
    import deepspeed

    print(
        f"## Growth events on DeepSpeed {deepspeed.__version__} (ZeRO-{args.zero}, {args.precision}, world size 1, "
        f"CPU, {args.threads} thread(s)), schedule {sched.name}, batch {args.batch} x seq {args.seq}, "
        f"vocab {args.vocab}\n"
    )
    print(
        "| # | event | " + " | ".join(f"{p} s" for p in PARTS) + " | total s | RSS before MB | RSS after MB | |Δloss| |"
    )
    print("|---|---|" + "---:|" * (len(PARTS) + 4))
    print("\n".join(event_rows))
    print(
        f"\n(first engine build, with DeepSpeed import and process group: {first_build:.2f} s; release = "
        "engine.destroy + a full gc.collect)"
    )
    print(
        f"\n## Training rate per stage ({args.steps} steps, median step: first half masks ramp 0 -> 1, "
        "second half folded)\n"
    )
    print("| stage | structure | tokens/s ramping | tokens/s folded |")
    print("|---|---|---:|---:|")
    print("\n".join(stage_rows))
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
