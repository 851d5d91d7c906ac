"""MSG (Yao et al., arXiv 2305.02869) and its No-Mask ablation: old weights in the leading slices, new weights
keep their fresh N(0, init_std) init; MSG then switches everything new off with external masks (c = 0) that ramp
to 1 over φ steps, which makes it strictly function-preserving in every dimension and for every architecture
(LayerNorm/RMSNorm statistics included, eq. 17). Pure torch.
"""

from __future__ import annotations

from msg_ray.masked_layers import GrowableModel, GrowthMask
from msg_ray.operators.base import GrowOptions, Layout, Operator, copy_leading
from msg_ray.structure import Structure


def attach_masks(new: GrowableModel, old: Structure, target: Structure, c: float = 0.0) -> None:
    """The masks of one growth from ``old`` to ``target``, at value ``c`` for the new entries."""
    ref = next(new.parameters())

    def mk(size: int, n_old: int) -> GrowthMask:
        return GrowthMask(size, n_old, c).to(ref.device, ref.dtype)

    if target.hidden_dim > old.hidden_dim:  # eq. 16: one mask for the whole residual stream
        new.hidden_mask = mk(target.hidden_dim, old.hidden_dim)
    for i, block in enumerate(new.blocks):
        if target.ffn_dim > old.ffn_dim:  # eq. 10/12, every layer's FFN intermediate
            block.ffn_mask = mk(target.ffn_dim, old.ffn_dim)
        if target.head_num > old.head_num:  # eq. 23, per (query) head
            block.head_mask = mk(target.head_num, old.head_num)
        if i >= old.layer_num:  # eq. 20, new layers start skipped
            block.layer_mask = mk(1, 0)


def _msg(old: GrowableModel, new: GrowableModel, opts: GrowOptions) -> Layout:
    copy_leading(old, new, stack=opts.depth_init == "stack")
    attach_masks(new, old.structure, new.structure)
    return {}  # moments: leading slices by name, new coordinates and new layers start at zero


def _nomask(old: GrowableModel, new: GrowableModel, opts: GrowOptions) -> Layout:
    copy_leading(old, new, stack=opts.depth_init == "stack")
    return {}


MSG = Operator(name="msg", fill=_msg, masks=True, preserving=True, paper="Yao et al. 2023, arXiv 2305.02869")
NOMASK = Operator(name="nomask", fill=_nomask, paper="Yao et al. 2023, the No-Mask ablation (section 4.3)")
