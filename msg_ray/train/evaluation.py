"""The validation loss of every training loop: one fixed validation set (``EVAL_SEED``) and one evaluation function.

The DeepSpeed worker loop (``msg_ray.train.loop``) and the plain reference loop (``benchmarks/plain.py``) both
draw their validation batches with ``valid_batches`` and score them with ``evaluate``, so a validation loss means
the same in both. Pure torch (``torch.distributed`` only to average over ranks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

EVAL_SEED = 1234  # the validation loader's seed: same blocks (and MLM masks) for every run and every evaluation

Batch = dict[str, torch.Tensor]


def valid_batches(data: Any, n_batches: int, batch_size: int = 32, rank: int = 0, world_size: int = 1) -> list[Batch]:
    """The fixed validation set: the first ``n_batches`` batches of this rank's shard of ``data``'s (a
    ``PreparedData``) valid split, loaded with ``EVAL_SEED``. The worker loop passes its micro-batch size; 32 is
    the plain reference studies' size."""
    loader = data.loader("valid", batch_size=batch_size, rank=rank, world_size=world_size, seed=EVAL_SEED)
    return [next(loader) for _ in range(n_batches)]


def batch_loss(
    model: torch.nn.Module, batch: Batch, device: torch.device | str, forward: Callable | None = None
) -> torch.Tensor:
    """``model.loss`` of ``batch`` (moved to ``device``); ``forward`` runs the model when it is wrapped (a
    DeepSpeed engine), else ``model`` itself does."""
    logits = (forward or model)(batch["input_ids"].to(device))
    return model.loss(logits, batch["labels"].to(device))


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    batches: list[Batch],
    device: torch.device | str,
    forward: Callable | None = None,
    world: int = 1,
) -> float:
    """Mean loss over ``batches`` in eval mode (no dropout); with ``world`` > 1 ranks each batch's loss is first
    averaged over the ranks (a collective: every rank calls it with as many batches)."""
    model.eval()
    losses = []
    for batch in batches:
        loss = batch_loss(model, batch, device, forward).detach().float().reshape(1)
        if world > 1:
            torch.distributed.all_reduce(loss)
            loss /= world
        losses.append(loss.item())
    model.train()
    return sum(losses) / len(losses)
