"""What a growth operator declares, the layout map that carries optimizer state, and the fills operators share.

An :class:`Operator` fills a freshly built model of the target structure from the old model and returns a
:data:`Layout`: for each new parameter, the old parameter it comes from and, per axis, which old coordinate each
new coordinate's Adam moments come from and how they are scaled (``exp_avg`` by s, ``exp_avg_sq`` by s²). The
rule every operator here follows: moments follow the gradient. A coordinate whose gradient, right after the growth,
equals its source's gradient times s carries the source's moments times s (s = 1: copied; 1/k: a neuron replicated
k times whose consumers split its output, eq. 6; 0 / index -1: new, moments zero). Parameters missing from a
layout keep the default: same name, old values in the leading slice (``msg_ray.optim_carry``). A
:class:`Patch` gives some coordinates of one axis another source (bert2BERT-AKI's new units copy the layer
above, and carry that layer's moments).

Shared here: the target model builder, the leading-slice fill (MSG, No-Mask) and the replication fill (Net2Net,
bert2BERT-AKI, HyperCloning) driven by each architecture's Net2Net roles. Pure torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from msg_ray.architecture import get_arch, with_structure
from msg_ray.masked_layers import GrowableModel
from msg_ray.registry import Registry
from msg_ray.structure import DIMENSIONS, Structure


@dataclass(frozen=True)
class ParamLayout:
    """Where a new parameter's optimizer state comes from: ``source`` (an old parameter name; None: a new
    parameter, zero moments) and, per axis, ``index`` [new size] (old coordinate, -1 for none) and ``scale``
    [new size] (factor on exp_avg; exp_avg_sq gets its square). Axes not listed: leading slice, scale 1.
    ``patches``: coordinates whose moments come from elsewhere, written over the result in order."""

    source: str | None
    index: dict[int, Tensor] = field(default_factory=dict)
    scale: dict[int, Tensor] = field(default_factory=dict)
    patches: tuple[Patch, ...] = ()


@dataclass(frozen=True)
class Patch:
    """Coordinates ``at`` [m] along ``axis`` of a new parameter whose moments come from ``layout`` (another
    source): ``layout`` describes the sub-tensor of those coordinates, so its index/scale along ``axis`` have
    length m."""

    axis: int
    at: Tensor
    layout: ParamLayout


Layout = dict[str, ParamLayout]


@dataclass(frozen=True)
class GrowOptions:
    depth_init: str = "stack"  # new layers copy old ones ("stack") or keep their fresh init ("random")
    gen: torch.Generator = field(default_factory=torch.Generator)  # for operators that draw (symmetry breaking)


# fill(old model, new model of the target (fresh init, on old's device/dtype), options) -> layout; writes new's
# parameters (and, for MSG, attaches its masks)
Fill = Callable[[GrowableModel, GrowableModel, GrowOptions], Layout]


@dataclass(frozen=True, kw_only=True)
class Operator:
    """A growth operator. ``dims``: the dimensions it grows itself (the others are grown by MSG in the same
    event). ``masks``: it attaches MSG masks (a ramp runs). ``preserving``: it claims the function is unchanged
    for its dims (tests verify it in float64). ``archs``: architectures it supports (None: all)."""

    name: str
    fill: Fill
    dims: tuple[str, ...] = DIMENSIONS
    masks: bool = False
    preserving: bool = False
    archs: tuple[str, ...] | None = None
    needs_integer_factors: bool = False  # width dims must grow by whole multiples (cloning)
    paper: str = ""


# -- fills shared by several operators -------------------------------------------------------------------------
def source_name(name: str, old_layers: int, stack: bool) -> str | None:
    """Old parameter that initialises new parameter ``name`` (None: keep the fresh init). New layers (index >=
    ``old_layers``) copy layer ``(i - old_layers) % old_layers`` when ``stack`` (G_stack / Gong et al. order)."""
    if not name.startswith("blocks."):
        return name
    _, idx, rest = name.split(".", 2)
    i = int(idx)
    if i < old_layers:
        return name
    return f"blocks.{(i - old_layers) % old_layers}.{rest}" if stack else None


def copy_leading(old: GrowableModel, new: GrowableModel, stack: bool) -> None:
    """Eq. 11/14/22/25: old weights into the leading slice; everything else keeps its fresh init."""
    old_sd = old.state_dict()
    with torch.no_grad():
        for name, p in new.named_parameters():
            src = source_name(name, old.structure.layer_num, stack)
            if src is not None:
                w = old_sd[src]
                p[tuple(slice(0, s) for s in w.shape)] = w


def replica_map(old: int, new: int) -> Tensor:
    """Net2Net mapping g: new unit j copies old unit g(j); round-robin, so an integer factor k tiles the old units
    k times (HyperCloning's layout) and every unit gets the same count."""
    return torch.cat([torch.arange(old), torch.arange(new - old) % old])


def unit_maps(old: Structure, new: Structure, head_dim: int, kv_group_size: int) -> dict[str, Tensor]:
    """Replica maps per role dimension: "H", "F", whole query heads and whole key/value heads (rows of d)."""

    def head_rows(old_n: int, new_n: int) -> Tensor:  # [new_n * d]
        return (replica_map(old_n, new_n)[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)

    return {
        "H": replica_map(old.hidden_dim, new.hidden_dim),
        "F": replica_map(old.ffn_dim, new.ffn_dim),
        "heads": head_rows(old.head_num, new.head_num),
        # GQA: query head j copies old head g(j), whose key/value head is g(j) // g; round-robin replication over
        # key/value heads gives new key/value head j // g exactly that source, so groups stay consistent
        "kv_heads": head_rows(old.head_num // kv_group_size, new.head_num // kv_group_size),
    }


def counts(g: Tensor) -> Tensor:
    """[new] how many new units share each one's source (the k of eq. 6)."""
    return torch.bincount(g)[g].to(torch.float64)


def replicate(
    old: GrowableModel,
    new: GrowableModel,
    factors: dict[str, Tensor] | None = None,
    noise: float = 0.0,
    gen: torch.Generator | None = None,
) -> Layout:
    """Fill ``new`` by replication: producer axes copy (eq. 5), consumer axes multiply by the unit's split factor
    (default 1/count, eq. 6; ``factors[dim]`` [new units] may replace it, e.g. LEMON's unequal split: the
    factors of one old unit's copies must sum to 1); new layers stack copies of old ones. ``noise`` > 0 adds
    symmetry-breaking N(0, noise) noise to consumer weights that sums to zero over the copies of each unit (see
    :func:`zero_sum_noise`), so the function stays exact. Returns the layout: a copied producer's gradient is its
    split factor times its source's (with noise: in expectation), a consumer's is its source's."""
    cfg = new.config
    maps = unit_maps(old.structure, new.structure, cfg.head_dim, cfg.kv_group_size)
    factors = {d: (factors or {}).get(d, 1.0 / counts(g)) for d, g in maps.items()}
    roles = get_arch(cfg.arch).net2net_roles
    old_sd, layout = old.state_dict(), {}
    with torch.no_grad():
        for name, p in new.named_parameters():
            src = source_name(name, old.structure.layer_num, stack=True)
            w, index, scale = old_sd[src], {}, {}
            for axis, dim, is_consumer in roles(name):
                g, f = maps[dim], factors[dim]
                w = w.index_select(axis, g.to(w.device))
                if is_consumer:
                    shape = [1] * w.dim()
                    shape[axis] = -1
                    w = w * f.to(w).view(shape)
                index[axis], scale[axis] = g, torch.ones_like(f) if is_consumer else f
            if noise > 0 and any(c for _, _, c in roles(name)):
                w = w + zero_sum_noise(w.shape, roles(name), maps, noise, gen).to(w)
            p.copy_(w)
            layout[name] = ParamLayout(source=src if src == name else None, index=index, scale=scale)
    return layout


def zero_sum_noise(
    shape: torch.Size,
    roles: list[tuple[int, str, bool]],
    maps: dict[str, Tensor],
    std: float,
    gen: torch.Generator | None,
) -> Tensor:
    """Noise for a replicated consumer weight that leaves the function unchanged: along each consumer axis it sums
    to zero over the copies of every unit (their inputs are equal, so Σ_k (W/n + ε_k)·x = W·x), and it is the
    same for all copies along producer axes (the copies' outputs stay equal for the next consumer). Units with
    one copy get none. [shape]"""
    draw = list(shape)
    for axis, dim, is_consumer in roles:
        if not is_consumer:
            draw[axis] = int(maps[dim].max()) + 1  # one draw per old unit, shared by its copies
    eps = torch.randn(draw, generator=gen, dtype=torch.float64) * std
    for axis, dim, is_consumer in roles:
        g = maps[dim]
        if is_consumer:  # subtract each copy group's mean along this axis
            sums = torch.zeros_like(eps.movedim(axis, 0)[: int(g.max()) + 1]).index_add_(0, g, eps.movedim(axis, 0))
            mean = (sums / torch.bincount(g).to(eps).view(-1, *[1] * (eps.dim() - 1))).index_select(0, g)
            eps = eps - mean.movedim(0, axis)
    for axis, dim, is_consumer in roles:
        if not is_consumer:
            eps = eps.index_select(axis, maps[dim])
    return eps


def resolve(entry: ParamLayout | None, name: str, shape: torch.Size, old_shapes: dict[str, torch.Size]) -> ParamLayout:
    """The explicit form of a layout entry: every axis with its index and scale (defaults filled in)."""
    entry = entry or ParamLayout(source=name if name in old_shapes else None)
    if entry.source is None:
        return ParamLayout(source=None)
    src_shape = old_shapes[entry.source]
    index, scale = {}, {}
    for axis, n in enumerate(shape):
        default = torch.cat([torch.arange(src_shape[axis]), torch.full((n - src_shape[axis],), -1)])
        index[axis] = entry.index.get(axis, default)
        scale[axis] = entry.scale.get(axis, torch.ones(n, dtype=torch.float64))
    return ParamLayout(source=entry.source, index=index, scale=scale)


def compose(first: Layout, second: Layout, old_shapes: dict, mid_shapes: dict, new_shapes: dict) -> Layout:
    """Layout of two growths in a row (old -> mid by ``first``, mid -> new by ``second``). Patched layouts are
    not composed (only bert2BERT-AKI patches, and it grows every dimension itself: it is never staged)."""
    if any(e.patches for e in (*first.values(), *second.values())):
        raise ValueError("compose: layouts with patches (bert2BERT-AKI's) cannot be composed")
    out = {}
    for name, shape in new_shapes.items():
        b = resolve(second.get(name), name, shape, mid_shapes)
        if b.source is None:
            out[name] = b
            continue
        a = resolve(first.get(b.source), b.source, mid_shapes[b.source], old_shapes)
        if a.source is None:
            out[name] = ParamLayout(source=None)
            continue
        index, scale = {}, {}
        for axis in b.index:
            j = b.index[axis]
            hit = j >= 0
            index[axis] = torch.where(hit, a.index[axis][j.clamp(min=0)], -1)
            scale[axis] = torch.where(hit, a.scale[axis][j.clamp(min=0)] * b.scale[axis], 0.0)
        out[name] = ParamLayout(source=a.source, index=index, scale=scale)
    return out


def staged(
    old: GrowableModel, new: GrowableModel, parts: list[tuple[tuple[str, ...], Fill]], opts: GrowOptions
) -> Layout:
    """Grow in parts (each fill grows only its dimensions, in order) through intermediate models, composing the
    layouts; the last part fills ``new`` itself."""
    layout: Layout | None = None
    cur, done = old, {d: getattr(old.structure, d) for d in DIMENSIONS}
    todo = [(dims, fill) for dims, fill in parts if any(getattr(new.structure, d) > done[d] for d in dims)]
    for i, (dims, fill) in enumerate(todo):
        done.update({d: getattr(new.structure, d) for d in dims})
        nxt = new if i == len(todo) - 1 else build_like(new, Structure(**done), opts.gen)
        part = fill(cur, nxt, opts)
        shapes = {n: p.shape for n, p in nxt.named_parameters()}
        old_shapes = {n: p.shape for n, p in old.named_parameters()}
        cur_shapes = {n: p.shape for n, p in cur.named_parameters()}
        layout = part if layout is None else compose(layout, part, old_shapes, cur_shapes, shapes)
        cur = nxt
    return layout or {}


def build_like(model: GrowableModel, structure: Structure, gen: torch.Generator) -> GrowableModel:
    """A fresh model of ``structure`` with ``model``'s config, device and dtype, initialised from ``gen`` (every
    rank draws the same weights)."""
    ref = next(model.parameters())
    return get_arch(model.config.arch).build(with_structure(model.config, structure), gen).to(ref.device, ref.dtype)


_OPERATORS: Registry[Operator] = Registry("operator", "unknown operator {name!r}; expected one of {names}")
register = _OPERATORS.register
operator_names = _OPERATORS.names
get_operator = _OPERATORS.get
