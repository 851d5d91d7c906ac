"""Carry AdamW state across a growth (paper section 3.2.2): old coordinates keep their moments, new ones start at 0.

Pure torch. Parameters are paired by *name* (never by position), so a growth that inserts or reorders modules
still finds each old parameter's moments. By default an old parameter's moments go to the *leading* slice of the
grown tensor (MSG and No-Mask keep old values there); an operator that replicates, splits or rescales (Net2Net,
HyperCloning, LEMON) passes a layout (``msg_ray.operators.base.ParamLayout`` per parameter: source name, and per
axis the old coordinate of every new one and the factor s on exp_avg, s² on exp_avg_sq; its patches give some
coordinates of one axis another source).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

AdamState = dict[str, torch.Tensor]  # {"exp_avg": T, "exp_avg_sq": T} full (unpartitioned) shapes


def embed_leading(old: torch.Tensor, new_shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Zeros of ``new_shape`` with ``old`` written into the leading slice ``[:o0, :o1, ...]``."""
    if old.dim() != len(new_shape) or any(o > n for o, n in zip(old.shape, new_shape, strict=True)):
        raise ValueError(f"cannot embed a tensor of shape {tuple(old.shape)} into {tuple(new_shape)}")
    out = torch.zeros(new_shape, dtype=old.dtype, device=old.device)
    out[tuple(slice(0, s) for s in old.shape)] = old
    return out


def gather_moments(moments: AdamState, index: dict[int, torch.Tensor], scale: dict[int, torch.Tensor]) -> AdamState:
    """Moments of a new parameter from its source's: along each listed axis, new coordinate j takes old coordinate
    ``index[axis][j]`` (-1: zero) times ``scale[axis][j]`` (exp_avg) or its square (exp_avg_sq)."""
    out = dict(moments)
    for axis, idx in index.items():
        s = scale.get(axis, torch.ones(len(idx), dtype=torch.float64)) * (idx >= 0)
        shape = [1] * out["exp_avg"].dim()
        shape[axis] = -1
        for k, power in (("exp_avg", 1), ("exp_avg_sq", 2)):
            t = out[k].index_select(axis, idx.clamp(min=0).to(out[k].device))
            out[k] = t * (s**power).to(t).view(shape)
    return out


def carry_adam_state(
    old_state: Mapping[str, AdamState],
    new_shapes: Mapping[str, torch.Size | tuple[int, ...]],
    renames: Mapping[str, str] | None = None,
    layout: Mapping[str, Any] | None = None,
) -> dict[str, AdamState]:
    """Map per-parameter Adam moments onto the grown model.

    old_state:  name -> {"exp_avg", "exp_avg_sq"} of the model before growth (full shapes).
    new_shapes: name -> shape for every parameter of the grown model.
    renames:    optional new_name -> old_name for parameters that moved (default: same name).
    layout:     optional new_name -> ParamLayout (an operator's map; parameters without an entry: leading slice).
    Returns name -> moments for every new parameter: old values in the leading slice, zeros elsewhere,
    all-zero moments for parameters that did not exist before.
    """
    renames = dict(renames or {})
    out: dict[str, AdamState] = {}
    for name, shape in new_shapes.items():
        entry = (layout or {}).get(name)
        if entry is not None and entry.source is not None and entry.source in old_state:
            moved = gather_moments(old_state[entry.source], entry.index, entry.scale)
            out[name] = {k: embed_leading(v, shape) for k, v in moved.items()}
            for patch in entry.patches:  # [.., m, ..] sub-tensors written over coordinates patch.at of patch.axis
                sub_shape = list(shape)
                sub_shape[patch.axis] = len(patch.at)
                sub = gather_moments(old_state[patch.layout.source], patch.layout.index, patch.layout.scale)
                for k, v in sub.items():
                    out[name][k].index_copy_(patch.axis, patch.at.to(v.device), embed_leading(v, sub_shape))
            continue
        src = None if entry is not None else old_state.get(renames.get(name, name))
        if src is None:
            ref = next(iter(old_state.values()), {}).get("exp_avg") if old_state else None
            dtype = ref.dtype if ref is not None else torch.float32
            out[name] = {k: torch.zeros(shape, dtype=dtype) for k in ("exp_avg", "exp_avg_sq")}
        else:
            out[name] = {k: embed_leading(src[k], shape) for k in ("exp_avg", "exp_avg_sq")}
    return out
