"""AdamW as every msg_ray loop uses it: the no-decay rule, moments by parameter name, one clipped step at an LR.

The DeepSpeed engine builds its optimizer with ``param_groups``; the single-process loops (comparison extension,
fine-tuning, the plain reference trainer) build theirs with ``adamw`` and step with ``clipped_step`` at the LR
``msg_ray.train.lr`` gives, so every loop shares one optimizer rule and one LR module. Pure torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from msg_ray.architecture import Architecture, default_no_decay
from msg_ray.optim_carry import carry_adam_state

BETAS = (0.9, 0.95)


def _no_decay_rule(model: torch.nn.Module) -> Callable[[str, torch.Tensor], bool]:
    """The architecture's no-decay rule for a msg_ray model; the default rule (1-D params, norms) otherwise."""
    spec = getattr(getattr(model, "config", None), "spec", None)
    return spec.no_decay if isinstance(spec, Architecture) else default_no_decay


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay for matrices, none for 1-D params and norm parameters. Each group has "names"."""
    decay: dict[str, Any] = {"params": [], "names": [], "weight_decay": weight_decay}
    plain: dict[str, Any] = {"params": [], "names": [], "weight_decay": 0.0}
    no_decay = _no_decay_rule(model)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        group = plain if no_decay(name, p) else decay
        group["params"].append(p)
        group["names"].append(name)
    return [g for g in (decay, plain) if g["params"]]


def adamw(
    model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float] = BETAS, eps: float = 1e-8
) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps)


def load_moments(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    moments: Mapping[str, Mapping[str, torch.Tensor]],
    step: int,
    layout: Mapping[str, Any] | None = None,
) -> None:
    """Put AdamW moments (by parameter name, where a growth's ``layout`` puts them, default the leading slice) and the step
    count into ``opt``'s state for every parameter of ``model``; coordinates and parameters without moments get
    zeros, so the whole model shares one step count (Adam's bias correction)."""
    params = dict(model.named_parameters())
    carried = carry_adam_state(dict(moments), {n: p.shape for n, p in params.items()}, layout=layout)
    for name, mom in carried.items():
        p = params[name]
        opt.state[p] = {
            "step": torch.tensor(float(step)),
            "exp_avg": mom["exp_avg"].to(p.device).clone(),
            "exp_avg_sq": mom["exp_avg_sq"].to(p.device).clone(),
        }


def moments(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, dict[str, torch.Tensor]]:
    """AdamW moments by parameter name (parameters that have state), on the CPU."""
    out = {}
    for name, p in model.named_parameters():
        s = opt.state.get(p)
        if s:
            out[name] = {"exp_avg": s["exp_avg"].detach().cpu(), "exp_avg_sq": s["exp_avg_sq"].detach().cpu()}
    return out


def apply_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """The learning rate of the next step, for every parameter group."""
    for group in opt.param_groups:
        group["lr"] = lr


def clipped_step(model: torch.nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor, grad_clip: float) -> None:
    """zero_grad -> backward -> clip the global grad norm (0: no clipping) -> step, the engine's order."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
