"""Growing a model: ``grow``/``expand`` dispatch to the registered growth operators, and MSG's masks (value, ramp,
fold). Pure torch.

``grow(model, target, operator)`` returns a *new* model of the target structure; the old one is untouched.
Operators live in ``msg_ray.operators`` (MSG, Net2Net, No-Mask, G_stack, HyperCloning, LEMON, bert2BERT-AKI); an
operator that grows only some dimensions (G_stack: layers; HyperCloning: width) has the others grown by MSG in the
same event. ``expand`` also returns the layout that tells the optimizer carry where each old coordinate went
(``msg_ray.optim_carry``).

MSG masks (``GrowthMask`` buffers) start at c = 0 and are ramped with :func:`set_mask_value` /
:class:`MaskRamp`; at c = 1 they are folded away and the model is an ordinary model of the target structure.
Growing again while masks still ramp is refused (``ValueError``): finish the ramp (c = 1) first. Schedules
enforce this by requiring every stage to last at least φ steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from msg_ray.architecture import with_structure
from msg_ray.masked_layers import GrowableModel
from msg_ray.model import build_from_config
from msg_ray.operators import get_operator, operator_names
from msg_ray.operators.base import GrowOptions, Layout, staged
from msg_ray.operators.msg import MSG
from msg_ray.structure import Structure

OPERATORS = operator_names()
DEPTH_INITS = ("stack", "random")


@dataclass(frozen=True)
class Growth:
    """A grown model, the optimizer-state layout of the growth, and whether it claims to preserve the function."""

    model: GrowableModel
    layout: Layout
    preserving: bool


def grow(
    model: GrowableModel,
    target: Structure,
    operator: str = "msg",
    *,
    depth_init: str = "stack",
    seed: int | None = None,
) -> GrowableModel:
    """Grow ``model`` to ``target``; any subset of the four dimensions may grow at once.

    operator: a registered operator (``msg_ray.operators.operator_names()``): "msg" (masked, function-preserving,
    new weights N(0, init_std)), "nomask" (the paper's ablation), "net2net" (bert2BERT FPI), "bert2bert-aki",
    "hypercloning", "lemon", "gstack". depth_init: new layers copy existing ones ("stack", the paper's choice) or
    keep a fresh init ("random"), for the operators that take it (MSG, No-Mask, LEMON).
    """
    return expand(model, target, operator, depth_init=depth_init, seed=seed).model


def expand(
    model: GrowableModel,
    target: Structure,
    operator: str = "msg",
    *,
    depth_init: str = "stack",
    seed: int | None = None,
) -> Growth:
    """:func:`grow`, also returning the optimizer-state layout and the preservation claim."""
    op = get_operator(operator)  # ValueError naming the known operators
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
    own = tuple(d for d in dims if d in op.dims)
    if own and op.archs is not None and model.arch not in op.archs:
        raise ValueError(f"grow: operator {operator!r} supports arch {op.archs}, not {model.arch!r}")
    for d in own if op.needs_integer_factors else ():
        if getattr(target, d) % getattr(old, d):
            raise ValueError(
                f"grow: operator {operator!r} grows {d} by integer factors; "
                f"{getattr(old, d)} -> {getattr(target, d)} is not one"
            )
    ref = next(model.parameters())
    new = build_from_config(with_structure(model.config, target), seed=seed).to(ref.device, ref.dtype)
    gen = torch.Generator().manual_seed(seed if seed is not None else int(torch.randint(2**62, ()).item()))
    rest = tuple(d for d in dims if d not in op.dims)  # grown by MSG in the same event
    parts = ([(own, op.fill)] if own else []) + ([(rest, MSG.fill)] if rest else [])
    layout = staged(model, new, parts, GrowOptions(depth_init=depth_init, gen=gen))
    new.train(model.training)
    return Growth(model=new, layout=layout, preserving=op.preserving or not own)


# -- masks: value, ramp, fold -----------------------------------------------------------------------------------
def _is_mask_key(key: str) -> bool:
    return key.endswith((".value", ".n_old")) and key.split(".")[-2].endswith("_mask")


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
