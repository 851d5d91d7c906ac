"""Continue a finished schedule run at its final (full) size until it reaches a target validation loss.

The time-to-target speed-up needs the wall time at which a schedule run reaches the full run's final validation
loss; a run that has not reached it by the end of its budget is continued, like the paper's Sch1-G, which keeps
training at full size. The continuation restores the final checkpoint exactly (weights, AdamW moments and step,
data-loader position) and trains one process with torch AdamW (what the DeepSpeed engine wraps for one worker)
at the schedule's last learning rate (its decayed floor), evaluating on the same validation batches every
``eval_every`` steps. Its wall clock continues the run's own; run it side by side with comparable load.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from msg_ray.data import prepare
from msg_ray.model import build_from_config
from msg_ray.structure import Structure
from msg_ray.train import checkpoint as C
from msg_ray.train.config import RunConfig
from msg_ray.train.evaluation import evaluate, valid_batches
from msg_ray.train.lr import LRSchedule
from msg_ray.train.optim import adamw, load_moments
from msg_ray.train.steps import run_steps


def extend_run(checkpoint: str | Path, target_loss: float, max_steps: int, threads: int = 1) -> dict[str, list]:
    """Train on from ``checkpoint`` for at most ``max_steps`` steps, stopping once val loss <= ``target_loss``.

    Returns ``{"step", "wall_s", "train_loss", "val_step", "val_loss"}`` continuing the run's own step and wall-time axes.
    """

    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    torch.set_num_threads(threads)
    loaded = C.load(checkpoint, rank=0)
    meta = loaded.meta
    cfg = RunConfig.from_dict(meta["config"])
    if cfg.workers != 1 or cfg.engine.grad_accum != 1:
        raise ValueError("extend_run continues 1-worker runs without gradient accumulation")
    data = prepare(cfg.data)
    e = cfg.engine
    model = build_from_config(cfg.model_config(data.vocab_size, Structure.parse(meta["structure"])))
    model.load_state_dict({**loaded.params, **loaded.buffers})
    opt = adamw(model, e.lr, e.weight_decay, betas=e.betas, eps=e.eps)
    mom = loaded.moments
    by_name = {n: {"exp_avg": mom["exp_avg"][n], "exp_avg_sq": mom["exp_avg_sq"][n]} for n in mom["exp_avg"]}
    load_moments(model, opt, by_name, mom["step"])
    # the run's decayed floor, held for the whole extension
    lr = LRSchedule(
        lr=e.lr,
        total_steps=cfg.total_steps,
        warmup_steps=cfg.warmup_steps,
        decay=cfg.lr_decay,
        min_ratio=cfg.min_lr_ratio,
    )(cfg.total_steps)
    loader = data.loader("train", batch_size=e.micro_batch_size, seed=cfg.seed)
    loader.load_state_dict(loaded.rank_state["loader"])
    valid = valid_batches(data, cfg.eval_batches, e.micro_batch_size)  # the training loop's validation set
    out: dict[str, list] = {"step": [], "wall_s": [], "train_loss": [], "val_step": [], "val_loss": []}
    clock = {"wall": float(meta["wall_s"]), "t0": time.perf_counter()}

    def after_step(step: int, loss: float) -> bool:
        clock["wall"] += time.perf_counter() - clock["t0"]  # training time only: evaluation is not counted
        out["step"].append(step)
        out["wall_s"].append(clock["wall"])
        out["train_loss"].append(loss)
        reached = False
        if step % cfg.eval_every == 0:
            out["val_step"].append(step)
            out["val_loss"].append(evaluate(model, valid, "cpu"))
            reached = out["val_loss"][-1] <= target_loss
        clock["t0"] = time.perf_counter()
        return reached

    run_steps(
        model,
        opt,
        loader,
        lambda b: model.loss(model(b["input_ids"]), b["labels"]),
        steps=max_steps,
        lr_at=lambda _step: lr,
        grad_clip=e.grad_clip,
        first_step=int(meta["step"]),
        after_step=after_step,
    )
    return out


def compact(ext: dict[str, list]) -> dict[str, list]:
    """Keep the evaluated steps only (all a time-to-target needs; what MLflow holds as ``extend/*``)."""
    wall = dict(zip(ext["step"], ext["wall_s"], strict=True))
    return {
        "step": list(ext["val_step"]),
        "wall_s": [wall[s] for s in ext["val_step"]],
        "val_step": list(ext["val_step"]),
        "val_loss": list(ext["val_loss"]),
    }
