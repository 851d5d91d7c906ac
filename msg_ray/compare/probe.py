"""Linear-probe downstream scores: a frozen model's pooled features and a logistic-regression head on top.

The cheap counterpart of fine-tuning (``finetune.train_classifier``, the paper's protocol): one forward pass over
a task's train/dev/test splits with the model frozen, then a multinomial logistic regression on standardised
features (full-batch L-BFGS in float64, so the fit is deterministic), its L2 weight chosen on the dev split and
scored once on test. It costs a forward pass per example and no backward pass through the model, so a schedule
study can score every run it trains; fine-tuning stays the reference for final numbers. Pure torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from msg_ray.compare.finetune import Encoded, classification_metrics, model_device, pooled_states
from msg_ray.model import GrowableModel

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)  # weight on ||W||^2 next to the mean cross-entropy


@torch.no_grad()
def features(model: GrowableModel, data: Encoded, batch_size: int = 128) -> torch.Tensor:  # -> [N, H] float64
    """Pooled final hidden states of every example (eval mode, no dropout)."""
    model.eval()
    dev = model_device(model)
    out = [
        pooled_states(
            model, data.input_ids[i : i + batch_size].to(dev), data.attention_mask[i : i + batch_size].to(dev)
        ).cpu()
        for i in range(0, len(data), batch_size)
    ]
    return torch.cat(out).double()  # the fit below runs on the CPU in float64, whatever the model's device


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_labels: int, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression, x [N, H] float64, y [N] -> (W [H, C], b [C]); mean CE + l2 * ||W||^2."""
    w = torch.zeros(x.shape[1], num_labels, dtype=x.dtype, requires_grad=True)
    b = torch.zeros(num_labels, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=300, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def probe(model: GrowableModel, splits: dict[str, Encoded], num_labels: int) -> dict[str, float]:
    """Probe scores on ``splits["test"]`` (classification_metrics + the chosen ``l2``); the L2 weight is the one of
    `L2_GRID` with the best dev accuracy (ties: the smaller weight)."""
    for name in ("train", "dev", "test"):
        if name not in splits or len(splits[name]) == 0:
            raise ValueError(f"probe needs a non-empty {name!r} split, got splits {sorted(splits)}")
    feats = {name: features(model, enc) for name, enc in splits.items()}
    mean, std = feats["train"].mean(0), feats["train"].std(0).clamp_min(1e-6)  # statistics of train only
    z = {name: (f - mean) / std for name, f in feats.items()}
    ys = {name: enc.labels for name, enc in splits.items()}

    def predict(name: str, head: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return (z[name] @ head[0] + head[1]).argmax(-1)

    heads = {l2: fit_logistic(z["train"], ys["train"], num_labels, l2) for l2 in L2_GRID}
    dev_acc = {l2: float((predict("dev", h) == ys["dev"]).double().mean()) for l2, h in heads.items()}
    best = max(L2_GRID, key=lambda l2: (dev_acc[l2], -l2))
    return {**classification_metrics(predict("test", heads[best]), ys["test"], num_labels), "l2": best}
