"""Growth operators: MSG (strictly function-preserving, masked), Net2Net (bert2BERT-style) and No-Mask. Pure torch.

``grow(model, target, operator)`` returns a *new* model of the target structure; the old one is untouched.
Layout rule shared by all operators: an old parameter's values land in the leading slice of the grown tensor
(new neurons/heads/layers are appended and names are kept), so optimizer state carries by name
(``msg_ray.optim_carry``).

MSG masks (``GrowthMask`` buffers) start at c = 0 and are ramped with :func:`set_mask_value` /
:class:`MaskRamp`; at c = 1 they are folded away and the model is an ordinary model of the target structure.
Growing again while masks still ramp is refused (``ValueError``): finish the ramp (c = 1) first. Schedules
enforce this by requiring every stage to last at least φ steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from msg_ray.architecture import get_arch, with_structure
from msg_ray.components import GrowableModel, GrowthMask
from msg_ray.model import build_from_config
from msg_ray.structure import Structure

OPERATORS = ("msg", "net2net", "nomask")
# Operators whose growth leaves the function exactly unchanged in every dimension (training checks the loss).
STRICTLY_PRESERVING = ("msg",)
DEPTH_INITS = ("stack", "random")


def grow(
    model: GrowableModel,
    target: Structure,
    operator: str = "msg",
    *,
    depth_init: str = "stack",
    seed: int | None = None,
) -> GrowableModel:
    """Grow ``model`` to ``target``; any subset of the four dimensions may grow at once.

    operator: "msg" (masked, function-preserving, new weights N(0, init_std)), "nomask" (same init, no masks:
    the paper's ablation) or "net2net" (neuron/head replication with split output weights, stacked layers).
    depth_init: new layers copy existing ones ("stack", the paper's choice) or keep a fresh init ("random").
    """
    if operator not in OPERATORS:
        raise ValueError(f"grow: unknown operator {operator!r}; expected one of {OPERATORS}")
    if depth_init not in DEPTH_INITS:
        raise ValueError(f"grow: unknown depth_init {depth_init!r}; expected one of {DEPTH_INITS}")
    if not isinstance(model, GrowableModel):
        raise ValueError(f"grow: expected a GrowableModel, got {type(model).__name__}")
    target = Structure.parse(target)
    if is_ramping(model):
        raise ValueError(
            f"grow: the previous growth is still ramping (mask c={mask_value(model):.3f}); growths may not overlap "
            "- ramp masks to 1 (set_mask_value(model, 1.0)) before growing again"
        )
    old = model.structure
    dims = old.grown_dims(target)  # raises ValueError naming the shrinking dimension
    if not dims:
        raise ValueError(f"grow: target {target} equals the current structure; nothing to grow")
    ref = next(model.parameters())
    new = build_from_config(with_structure(model.config, target), seed=seed).to(ref.device, ref.dtype)
    old_sd = {k: v for k, v in model.state_dict().items() if not _is_mask_key(k)}
    with torch.no_grad():
        if operator == "net2net":
            _net2net_fill(old_sd, new, old, target)
        else:
            _copy_leading_fill(old_sd, new, old.layer_num, depth_init)
    if operator == "msg":
        _attach_masks(new, old, target)
    new.train(model.training)
    return new


def _is_mask_key(key: str) -> bool:
    return key.endswith((".value", ".n_old")) and key.split(".")[-2].endswith("_mask")


def _source_name(name: str, old_layers: int, stack: bool) -> str | None:
    """Old parameter that initialises new parameter ``name`` (None: keep the fresh N(0, std) init)."""
    if not name.startswith("blocks."):
        return name
    _, idx, rest = name.split(".", 2)
    i = int(idx)
    if i < old_layers:
        return name
    return f"blocks.{(i - old_layers) % old_layers}.{rest}" if stack else None


def _copy_leading_fill(old_sd: dict, new: GrowableModel, old_layers: int, depth_init: str) -> None:
    """Eq. 11/14/22/25: existing weights copied into the leading slice, everything else keeps its fresh init."""
    for name, p in new.named_parameters():
        src = _source_name(name, old_layers, depth_init == "stack")
        if src is None:
            continue
        w = old_sd[src]
        p[tuple(slice(0, s) for s in w.shape)] = w


def _attach_masks(new: GrowableModel, old: Structure, target: Structure, c: float = 0.0) -> None:
    ref = next(new.parameters())

    def mk(size: int, n_old: int) -> GrowthMask:
        return GrowthMask(size, n_old, c).to(ref.device, ref.dtype)

    if target.hidden_dim > old.hidden_dim:  # eq. 16: one mask for the whole residual stream
        new.hidden_mask = mk(target.hidden_dim, old.hidden_dim)
    for i, block in enumerate(new.blocks):
        if target.ffn_dim > old.ffn_dim:  # eq. 10/12, every layer's FFN intermediate
            block.ffn_mask = mk(target.ffn_dim, old.ffn_dim)
        if target.head_num > old.head_num:  # eq. 23, per head
            block.head_mask = mk(target.head_num, old.head_num)
        if i >= old.layer_num:  # eq. 20, new layers start skipped
            block.layer_mask = mk(1, 0)


# -- Net2Net (bert2BERT, appendix C) ---------------------------------------------------------------------------
def _replica_map(old: int, new: int) -> torch.Tensor:
    """Net2Net mapping g: new unit j copies old unit g(j); round-robin so doubling copies each unit once."""
    return torch.cat([torch.arange(old), torch.arange(new - old) % old])


def _expand(t: torch.Tensor, axis: int, g: torch.Tensor, split: bool) -> torch.Tensor:
    """Copy (producer side, eq. 5) or copy-and-divide-by-replica-count (consumer side, eq. 6) along ``axis``."""
    out = t.index_select(axis, g.to(t.device))
    if split:
        counts = torch.bincount(g, minlength=t.shape[axis]).to(t)[g]  # [new]
        shape = [1] * t.dim()
        shape[axis] = -1
        out = out / counts.view(shape)
    return out


def _net2net_fill(old_sd: dict, new: GrowableModel, old: Structure, target: Structure) -> None:
    d, g = new.config.head_dim, new.config.kv_group_size

    def head_rows(old_n: int, new_n: int) -> torch.Tensor:  # whole heads copied (eq. 27): [new_n * d]
        return (_replica_map(old_n, new_n)[:, None] * d + torch.arange(d)).reshape(-1)

    maps = {
        "H": _replica_map(old.hidden_dim, target.hidden_dim),
        "F": _replica_map(old.ffn_dim, target.ffn_dim),
        "heads": head_rows(old.head_num, target.head_num),
        # GQA: query head j copies old head g(j), whose key/value head is g(j) // g; round-robin replication
        # over kv heads gives new kv head j // g exactly that source, so groups stay consistent
        "kv_heads": head_rows(old.head_num // g, target.head_num // g),
    }
    roles = get_arch(new.config.arch).net2net_roles
    for name, p in new.named_parameters():
        src = _source_name(name, old.layer_num, stack=True)  # depth: stacking (Gong et al.), no mask
        w = old_sd[src]
        for axis, dim, split in roles(name):
            w = _expand(w, axis, maps[dim], split)
        p.copy_(w)


# -- masks: value, ramp, fold -----------------------------------------------------------------------------------
def is_ramping(model: GrowableModel) -> bool:
    return bool(model.mask_modules())


def mask_state(model: GrowableModel) -> dict[str, torch.Tensor]:
    """The mask buffers of a ramping model by state_dict key (``value`` float32, ``n_old`` int64, on the CPU):
    what a checkpoint needs, with the parameters, to rebuild the model mid-ramp."""
    out = {}
    for key, v in model.state_dict().items():
        if _is_mask_key(key):
            out[key] = v.detach().cpu().long() if key.endswith(".n_old") else v.detach().float().cpu()
    return out


def mask_value(model: GrowableModel) -> float | None:
    """Current c of the ramping growth, or None when no mask is present."""
    masks = list(model.mask_modules().values())
    return masks[0].c if masks else None


def set_mask_value(model: GrowableModel, c: float) -> None:
    """Set every ramping mask of ``model`` to ``c``; at ``c >= 1`` the masks are folded away."""
    if not 0.0 <= c <= 1.0:
        raise ValueError(f"set_mask_value: c must be in [0, 1], got {c}")
    if c >= 1.0:
        fold_masks(model)
        return
    for m in model.mask_modules().values():
        m.set(c)


def fold_masks(model: GrowableModel) -> None:
    """Drop all masks: with c = 1 they are identities (eq. 17 reduces to plain LN, eq. 20 to the layer)."""
    for name in list(model.mask_modules()):
        owner_path, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_path) if owner_path else model
        setattr(owner, attr, None)


@dataclass(frozen=True, kw_only=True)
class MaskRamp:
    """Linear ramp of c from 0 at ``start_step`` to 1 at ``start_step + phi`` (paper 3.2.1; φ = 0: no ramp)."""

    start_step: int
    phi: int = 5000

    def __post_init__(self) -> None:
        if self.phi < 0:
            raise ValueError(f"MaskRamp.phi must be >= 0, got {self.phi}")

    def value(self, step: int) -> float:
        if self.phi == 0:
            return 1.0
        return min(1.0, max(0.0, (step - self.start_step) / self.phi))

    def apply(self, model: GrowableModel, step: int) -> float:
        """Set the model's masks for ``step`` (folding them at the end of the ramp); returns c."""
        c = self.value(step)
        if is_ramping(model):
            set_mask_value(model, c)
        return c
