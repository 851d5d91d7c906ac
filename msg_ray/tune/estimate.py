"""What a sweep will cost, said before Ray starts: measured steps of each structure the trials train, summed per trial.

``measure_step_seconds`` times a few optimizer steps of one structure in this process (plain torch AdamW on random
tokens at the run's micro-batch and sequence length, the thread count a trial gets); ``step_times`` does it once
per distinct structure of the plan (small stages run at a lower FLOP rate than the target on CPU, so FLOPs alone
under-count them); ``trial_seconds`` sums each stage's steps at its structure's time and adds evaluation, probes
and a fixed start-up per trial; ``plan_text`` is the lines the sweep prints. An estimate, not a promise: a shared
machine runs slower than when it was measured, and the training engine adds its own overhead per step.
"""

from __future__ import annotations

import statistics
import time

import torch

from msg_ray.model import build_from_config
from msg_ray.structure import Structure
from msg_ray.train.config import RunConfig

TRIAL_OVERHEAD_S = 30.0  # per trial: Tune actor start, imports, data load, engine init, checkpoints (30-70 s seen)
PROBE_OVERHEAD_S = 8.0  # per probed trial: a Ray task, the model and the task texts loaded
PROBE_SEQ_LEN = 64


def measure_step_seconds(rc: RunConfig, structure: Structure, vocab_size: int, steps: int = 5) -> float:
    """Seconds per optimizer step of ``structure`` under ``rc`` (micro-batch, seq_len, grad_accum, threads): the
    median of ``steps`` timed steps (one busy moment on a shared machine does not set the estimate)."""
    model = build_from_config(rc.model_config(vocab_size, structure), seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, vocab_size, (rc.engine.micro_batch_size, rc.data.seq_len))
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(rc.cpus_per_worker)))
    try:

        def step() -> float:
            t0 = time.perf_counter()
            model.loss(model(x), x).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return time.perf_counter() - t0

        step()  # first step allocates Adam state and warms the allocator
        return statistics.median(step() for _ in range(steps)) * rc.engine.grad_accum
    finally:
        torch.set_num_threads(threads)


def step_times(rcs: list[RunConfig], vocab_size: int) -> dict[Structure, float]:
    """Seconds per step of every distinct stage structure of ``rcs`` (measured once each, largest first)."""
    structs: dict[Structure, RunConfig] = {}
    for rc in rcs:
        for st in rc.schedule.stages:
            structs.setdefault(st.structure, rc)
    order = sorted(structs, key=lambda s: s.as_tuple(), reverse=True)
    return {s: measure_step_seconds(structs[s], s, vocab_size) for s in order}


def trial_seconds(
    rc: RunConfig,
    step_s: dict[Structure, float],
    probes: int,
    probe_examples: int,
    wall_cap: float | None,
) -> float:
    """One trial's estimated seconds: each stage's steps at its structure's measured ``step_s``, evaluation passes
    of the target (forward only: a third of a step per batch), probes and start-up; ``wall_cap``: a wall budget."""
    sched = rc.schedule
    target_s = step_s[sched.target]
    evals = (sched.total_steps // rc.eval_every + 1) * rc.eval_batches * target_s / 3
    stages = zip(sched.stages, sched.stage_lengths(), strict=True)
    train = sum(n * step_s[st.structure] for st, n in stages) + evals
    if wall_cap is not None:
        train = min(train, wall_cap)
    probe_batches = probes * 3 * probe_examples * PROBE_SEQ_LEN / (rc.engine.micro_batch_size * rc.data.seq_len)
    probe = probes and probe_batches * target_s / 3 + PROBE_OVERHEAD_S
    return train + TRIAL_OVERHEAD_S + probe


def plan_text(
    name: str,
    kind: str,
    n_trials: int,
    concurrency: int,
    where: str,
    step_s: float,
    target: Structure,
    rc: RunConfig,
    seconds: list[float],
    extra_max: int,
    probes: list[str],
    probe_examples: int,
) -> str:
    """The plan the sweep prints before Ray starts."""
    total = sum(seconds) / max(1, min(concurrency, n_trials))
    mean = sum(seconds) / max(1, len(seconds))
    lines = [
        f"[msg_ray tune] plan: {name} ({kind}): {n_trials} trials, {concurrency} at a time ({where})",
        f"[msg_ray tune] measured {step_s:.3f} s/step for {target} (micro-batch {rc.engine.micro_batch_size} x seq "
        f"{rc.data.seq_len}, {max(1, int(rc.cpus_per_worker))} thread); estimate {total / 60:.1f} min "
        f"({mean / 60:.1f} min per trial)",
    ]
    if extra_max:
        lines.append(
            f"[msg_ray tune] LR bracketing: up to {extra_max} more trials where a best LR sits at a grid edge "
            f"(~{mean / 60:.1f} min each, {concurrency} at a time)"
        )
    lines.append(
        f"[msg_ray tune] probes per trial: {', '.join(probes)} ({probe_examples} texts per split)"
        if probes
        else "[msg_ray tune] probes per trial: off"
    )
    return "\n".join(lines)
