"""LEMON (Wang et al., ICLR 2024, "LEMON: Lossless model expansion"): lossless width and depth growth of pre-norm
Transformers with symmetry breaking. Pure torch.

- FFN neurons and heads are replicated, and each old unit's consumers are split *unequally* among its copies
  (random shares summing to 1, LEMON's symmetry breaking: the copies get different gradients from the start);
  with grouped-query attention a share is drawn per key/value head and shared by the query heads of its group, so
  the key/value copies' gradients are exactly their share times the source's (their moments are scaled so);
- hidden features: LayerNorm models get LEMON's *average expansion* - every producer onto the residual stream
  (embeddings, output projections) writes the mean of the old features into each new one, so the mean is unchanged
  and the variance shrinks by H_old/H_new, which the norm gains undo (x sqrt(H_old/H_new)); new features normalise
  to 0 and new norm biases are 0, so new consumer weights keep their random init. RMSNorm models get the zero
  expansion (new features 0, gains x sqrt(H_old/H_new)), the same argument for the mean square;
- new layers copy old ones with their output projections (attention out, FFN down) set to zero: in a pre-norm
  residual stream such a block is the identity.
Exact up to the ε inside the norms (ε is not rescaled: a relative change of order ε/σ²). Pre-norm architectures
only (GPT, Llama). Parts are applied one after the other (``base.staged``).
"""

from __future__ import annotations

import math

import torch

from msg_ray.architecture import get_arch
from msg_ray.masked_layers import GrowableModel, MaskedLayerNorm
from msg_ray.operators.base import (
    GrowOptions,
    Layout,
    Operator,
    ParamLayout,
    copy_leading,
    counts,
    replicate,
    staged,
    unit_maps,
)


def _shares(g: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """[new units] random shares in [0.25, 0.75] before normalising, summing to 1 over each old unit's copies."""
    raw = 0.25 + 0.5 * torch.rand(len(g), generator=gen, dtype=torch.float64)
    raw = torch.where(counts(g) > 1, raw, torch.ones_like(raw))
    return raw / torch.zeros(int(g.max()) + 1, dtype=torch.float64).index_add_(0, g, raw)[g]


def _width_units(old: GrowableModel, new: GrowableModel, opts: GrowOptions) -> Layout:
    cfg = new.config
    d, group = cfg.head_dim, cfg.kv_group_size
    maps = unit_maps(old.structure, new.structure, d, group)
    # one share per new key/value head, inherited by the `group` query heads that read it: new kv head j's
    # gradient is the sum of its query heads' (each scaled by its share), so equal shares within a group make it
    # exactly share x the source's (kv_group_size 1: one share per head; the query heads of one group copy
    # different old heads, so the copies of any old head still get different shares)
    kv = _shares(maps["kv_heads"][::d] // d, opts.gen)  # [new kv heads]
    heads = kv.repeat_interleave(group)  # [new query heads]
    factors = {
        "F": _shares(maps["F"], opts.gen),
        "heads": heads.repeat_interleave(d),
        "kv_heads": kv.repeat_interleave(d),
    }
    return replicate(old, new, factors)


def _is_norm(module: torch.nn.Module) -> bool:
    return "norm" in type(module).__name__.lower()


def _hidden(old: GrowableModel, new: GrowableModel, opts: GrowOptions) -> Layout:
    h_old, h_new = old.structure.hidden_dim, new.structure.hidden_dim
    ratio = math.sqrt(h_old / h_new)
    average = any(isinstance(m, MaskedLayerNorm) for m in new.modules())  # LayerNorm: mean; RMSNorm: zero
    copy_leading(old, new, stack=False)
    roles, layout = get_arch(new.config.arch).net2net_roles, {}
    with torch.no_grad():
        for name, p in new.named_parameters():
            owner, kind = name.rsplit(".", 1)
            for axis, dim, is_consumer in roles(name):
                if dim != "H" or is_consumer:
                    continue  # consumers of new features read 0: their new weights keep the random init
                new_part = p.narrow(axis, h_old, h_new - h_old)
                if _is_norm(new.get_submodule(owner)):
                    if kind == "weight":
                        p.narrow(axis, 0, h_old).mul_(ratio)  # undo the variance (mean square) shrink
                        scale = torch.cat([torch.full((h_old,), 1 / ratio), torch.zeros(h_new - h_old)])
                        layout[name] = ParamLayout(source=name, scale={axis: scale.double()})
                    else:
                        new_part.zero_()
                elif average:  # producer onto the residual stream: each new feature = the mean of the old ones
                    new_part.copy_(p.narrow(axis, 0, h_old).mean(axis, keepdim=True).expand_as(new_part))
                else:
                    new_part.zero_()
    return layout


def _depth(old: GrowableModel, new: GrowableModel, opts: GrowOptions) -> Layout:
    copy_leading(old, new, stack=opts.depth_init == "stack")
    roles = get_arch(new.config.arch).net2net_roles
    with torch.no_grad():
        for name, p in new.named_parameters():
            parts = name.split(".")
            if parts[0] != "blocks" or int(parts[1]) < old.structure.layer_num:
                continue
            owner = name.rsplit(".", 1)[0]
            if not _is_norm(new.get_submodule(owner)) and (0, "H", False) in roles(name):
                p.zero_()  # the block's writes to the residual stream: the new block is the identity
    return {}


def _lemon(old: GrowableModel, new: GrowableModel, opts: GrowOptions) -> Layout:
    if not get_arch(new.config.arch).pre_norm:
        raise ValueError(f"operator 'lemon' needs a pre-norm architecture (gpt, llama), got {new.config.arch!r}")
    parts = [(("ffn_dim", "head_num"), _width_units), (("hidden_dim",), _hidden), (("layer_num",), _depth)]
    return staged(old, new, parts, opts)


LEMON = Operator(
    name="lemon", fill=_lemon, preserving=True, archs=("gpt", "llama"), paper="Wang et al. 2024, ICLR, arXiv 2310.07999"
)
