"""A plain single-process reference trainer over the core: no Ray, no DeepSpeed, no MLflow.

Two jobs: (1) the "any correct training loop" check of a growth schedule - the same schedule, LR rule,
equal-FLOPs budget, growth event (``msg_ray.train.growth_event.grow_model``: grow, carry the AdamW moments by name
and layout, start the mask ramp), validation set and evaluation (``msg_ray.train.evaluation``) and FLOPs axis
(``msg_ray.flops.flops_per_step``) as the platform's DeepSpeed loop, in ~100 lines of plain torch (AdamW);
(2) fast schedule/LR sweeps on one GPU, many small runs side by side (``benchmarks/bench_schedules.py``).
Everything is a function of a `PlainJob`, so results are reproducible.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from msg_ray.flops import flops_per_step, solve_total_steps
from msg_ray.model import ModelConfig, build_from_config
from msg_ray.schedule import Schedule
from msg_ray.train.evaluation import batch_loss, evaluate, valid_batches
from msg_ray.train.growth_event import grow_model
from msg_ray.train.lr import LRSchedule, stage_lr_multiplier
from msg_ray.train.metrics import first_reach
from msg_ray.train.optim import adamw, apply_lr, clipped_step, load_moments, moments


@dataclass(frozen=True, kw_only=True)
class PlainJob:
    """One run: ``schedule`` trained at ``lr`` with the LR policy, for the FLOPs of ``full_steps`` full steps."""

    schedule: Schedule
    lr: float
    full_steps: int
    seed: int = 0
    batch_size: int = 16
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    lr_reset_growths: int = 0
    lr_scale: str = "none"
    eval_points: int = 30  # validation evaluations spread over the run (the last one at the end)
    label: str = ""
    # the structure whose ``full_steps`` set the FLOPs budget (default: the schedule's target); a static smaller
    # model given it trains at equal compute with full training of the larger target
    budget_of: tuple[int, int, int, int] | None = None


# valid_batches: the validation set of every loop (``msg_ray.train.evaluation``), re-exported for the studies
__all__ = ["PlainJob", "flops_to_reach", "run_plain", "valid_batches"]


def _adamw(model: torch.nn.Module, job: PlainJob, state: dict[str, dict] | None, step: int) -> torch.optim.AdamW:
    opt = adamw(model, job.lr, job.weight_decay)
    if state:  # moments by parameter name, already in the model's shapes (carried by ``grow_model``)
        load_moments(model, opt, state, step)
    return opt


def run_plain(
    job: PlainJob,
    data: Any,
    valid_batches: list[dict[str, torch.Tensor]],
    device: str = "cpu",
    downstream: Callable[[torch.nn.Module], dict[str, float]] | None = None,
) -> dict:
    """Train ``job`` on ``data`` (a `PreparedData`); returns the loss curve on the FLOPs and wall axes, the loss
    jump at each growth (``growth_jumps``), and ``downstream(final model)`` (e.g. linear-probe scores) under
    ``"downstream"`` when given."""
    sched = job.schedule
    seq_len = int(data.train_blocks.shape[1])
    vocab = data.vocab_size
    if job.budget_of is not None or not sched.is_full:
        sched = sched.scaled(total_steps=solve_total_steps(sched, job.full_steps, vocab, seq_len, job.budget_of))
    elif sched.total_steps != job.full_steps:  # full training at another budget (e.g. the decayed budget curve)
        sched = sched.scaled(total_steps=job.full_steps)
    total = sched.total_steps
    lr = LRSchedule(
        lr=job.lr,
        total_steps=total,
        warmup_steps=job.warmup_steps,
        min_ratio=job.min_lr_ratio,
        reset_steps=tuple(sched.growth_steps()[: job.lr_reset_growths]),
    )
    torch.manual_seed(job.seed)

    def config(structure):
        return ModelConfig(
            arch=sched.arch,
            structure=structure,
            vocab_size=vocab,
            max_seq_len=seq_len,
            head_dim=sched.head_dim,
            kv_group_size=sched.kv_group_size,
        )

    model = build_from_config(config(sched.stages[0].structure), seed=job.seed).to(device)
    opt = _adamw(model, job, None, 0)
    loader = data.loader("train", batch_size=job.batch_size, seed=job.seed)
    evals = sorted({max(1, round(total * (i + 1) / job.eval_points)) for i in range(job.eval_points)})
    starts, stage, ramp = sched.growth_steps(), 0, None
    curve: dict[str, list] = {"step": [], "flops": [], "wall_s": [], "val_loss": []}
    jumps: list[float] = []  # validation loss (first batch) right after each growth minus right before
    flops, wall, t0 = 0.0, 0.0, time.perf_counter()
    for step in range(total):
        if stage + 1 < len(sched.stages) and step >= starts[stage]:
            stage += 1
            moms = moments(model, opt)
            before = evaluate(model, valid_batches[:1], device)
            grown = grow_model(  # on the CPU: the same new weights whatever the device
                model.cpu(),
                moms,
                sched.stages[stage].structure,
                step=step,
                phi=sched.phi,
                operator=sched.operator,
                depth_init=sched.depth_init,
                seed=job.seed * 1000 + stage,
            )
            model, ramp = grown.model.to(device), grown.ramp
            jumps.append(evaluate(model, valid_batches[:1], device) - before)  # 0 for a preserving operator
            opt = _adamw(model, job, grown.moments, step)
        if ramp is not None:
            ramp.apply(model, step)
        structure = sched.stages[stage].structure
        apply_lr(opt, lr(step) * stage_lr_multiplier(job.lr_scale, structure, sched.target))
        batch = next(loader)
        clipped_step(model, opt, batch_loss(model, batch, device), grad_clip=1.0)
        flops += flops_per_step(sched, structure, vocab, seq_len, job.batch_size * seq_len)
        if step + 1 in evals:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            wall += time.perf_counter() - t0
            val = evaluate(model, valid_batches, device)
            if not math.isfinite(val):
                break
            for k, v in (("step", step + 1), ("flops", flops), ("wall_s", wall), ("val_loss", val)):
                curve[k].append(v)
            t0 = time.perf_counter()
    out = {
        "job": {**asdict(job), "schedule": sched.to_dict()},
        "total_steps": total,
        **curve,
        "final_val": curve["val_loss"][-1] if curve["val_loss"] else math.nan,
        "growth_jumps": jumps,
    }
    if downstream is not None:  # a run stopped by a non-finite loss has nothing to score
        finished = bool(curve["step"]) and curve["step"][-1] == total
        out["downstream"] = downstream(model.cpu()) if finished else None
    return out


def flops_to_reach(result: dict, target: float) -> float:
    """FLOPs at which the validation loss first gets to ``target`` (linear between evaluations), else NaN."""
    hit = first_reach(result["flops"], result["val_loss"], target)
    return math.nan if hit is None else hit
