"""Carry AdamW state across a growth (paper section 3.2.2): old coordinates keep their moments, new ones start at 0.

Pure torch. Parameters are paired by *name* (never by position), so a growth that inserts or reorders modules
still finds each old parameter's moments. Every growth operator in ``msg_ray.growth`` keeps an old parameter's
values in the *leading* slice of the grown tensor (new neurons, heads and layers are appended), which is what
the slice copy below relies on.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

AdamState = dict[str, torch.Tensor]  # {"exp_avg": T, "exp_avg_sq": T} full (unpartitioned) shapes


def embed_leading(old: torch.Tensor, new_shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Zeros of ``new_shape`` with ``old`` written into the leading slice ``[:o0, :o1, ...]``."""
    if old.dim() != len(new_shape) or any(o > n for o, n in zip(old.shape, new_shape, strict=True)):
        raise ValueError(f"cannot embed a tensor of shape {tuple(old.shape)} into {tuple(new_shape)}")
    out = torch.zeros(new_shape, dtype=old.dtype, device=old.device)
    out[tuple(slice(0, s) for s in old.shape)] = old
    return out


def carry_adam_state(
    old_state: Mapping[str, AdamState],
    new_shapes: Mapping[str, torch.Size | tuple[int, ...]],
    renames: Mapping[str, str] | None = None,
) -> dict[str, AdamState]:
    """Map per-parameter Adam moments onto the grown model.

    old_state:  name -> {"exp_avg", "exp_avg_sq"} of the model before growth (full shapes).
    new_shapes: name -> shape for every parameter of the grown model.
    renames:    optional new_name -> old_name for parameters that moved (default: same name).
    Returns name -> moments for every new parameter: old values in the leading slice, zeros elsewhere,
    all-zero moments for parameters that did not exist before.
    """
    renames = dict(renames or {})
    out: dict[str, AdamState] = {}
    for name, shape in new_shapes.items():
        src = old_state.get(renames.get(name, name))
        if src is None:
            ref = next(iter(old_state.values()), {}).get("exp_avg") if old_state else None
            dtype = ref.dtype if ref is not None else torch.float32
            out[name] = {k: torch.zeros(shape, dtype=dtype) for k in ("exp_avg", "exp_avg_sq")}
        else:
            out[name] = {k: embed_leading(src[k], shape) for k in ("exp_avg", "exp_avg_sq")}
    return out
