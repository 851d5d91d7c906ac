"""The single-process step loop: one step function, a hook for everything else.

``run_steps`` takes optimizer steps: each step's LR from ``lr_at`` (``msg_ray.train.lr``), the loss from
``loss_fn(batch)``, one clipped AdamW step (``msg_ray.train.optim.clipped_step``), then ``after_step(step, loss)``
- the hook for evaluation, logging and early stopping (it returns True to stop). The comparison extension and
fine-tuning (language model and classifier) run on it; the distributed loop (``msg_ray.train.loop``) takes the
same LR and optimizer rules through the DeepSpeed engine. Pure torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from msg_ray.train.optim import apply_lr, clipped_step


def run_steps(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    batches: Iterator[Any],
    loss_fn: Callable[[Any], torch.Tensor],
    *,
    steps: int,
    lr_at: Callable[[int], float],
    grad_clip: float,
    first_step: int = 0,
    after_step: Callable[[int, float], bool | None] | None = None,
) -> list[float]:
    """Train ``model`` for up to ``steps`` steps numbered from ``first_step``; returns the training losses.
    ``after_step`` gets the number of steps done so far (``first_step`` + i + 1) and the step's loss."""
    losses: list[float] = []
    for i in range(steps):
        step = first_step + i
        model.train()  # a hook may have evaluated in eval mode
        apply_lr(opt, lr_at(step))
        loss = loss_fn(next(batches))
        clipped_step(model, opt, loss, grad_clip)
        losses.append(loss.item())
        if after_step is not None and after_step(step + 1, losses[-1]):
            break
    model.eval()
    return losses
