"""G_stack (Du et al., NeurIPS 2024, "Stacking Your Transformers"): depth growth by stacking the whole current
model on top of itself - new layer L + i copies layer i, so a growth factor g = target layers / current layers
repeats the layer sequence g times (the paper's direct stacking). No masks: the function changes at the growth.
Width is not G_stack's: schedules that also grow width grow it with MSG in the same event. Pure torch.
"""

from __future__ import annotations

from msg_ray.masked_layers import GrowableModel
from msg_ray.operators.base import GrowOptions, Layout, Operator, copy_leading


def _stack(old: GrowableModel, new: GrowableModel, opts: GrowOptions) -> Layout:
    copy_leading(old, new, stack=True)  # blocks.{L + i} <- blocks.{i mod L}
    return {}  # stacked layers start with zero moments (a fresh optimizer state for new parameters)


GSTACK = Operator(name="gstack", fill=_stack, dims=("layer_num",), paper="Du et al. 2024, arXiv 2405.15319")
