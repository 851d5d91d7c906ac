"""HyperCloning (Samragh et al. 2024, "Scaling Smart: Accelerating Large Language Model Pre-training with Small
Model Initialization"): width growth by integer factors, exactly function-preserving. Pure torch.

Every hidden feature, FFN neuron and head is cloned n times (tiled, so the copies of unit i are i, i + old,
i + 2·old, ...); producers copy, consumers divide by n. A vector of n identical copies has the same mean and
variance (mean square) as the original, so LayerNorm and RMSNorm stay exact at any integer factor - the case in
which the LayerNorm dilemma of eq. 7 disappears. A *tied* output embedding would count every copied feature n
times; the norm it reads (GPT's ``ln_f``, BERT's ``mlm_ln``) is scaled by 1/n so the copies sum to the old logit.
Depth is not HyperCloning's: schedules that also grow layers grow them with MSG in the same event.

``hypercloning-noise`` breaks the clones' symmetry (identical copies get identical gradients and stay identical
under Adam): consumer weights get N(0, init_std) noise that sums to zero over each unit's copies, so the function
is still exact (``msg_ray.operators.base.zero_sum_noise``).
"""

from __future__ import annotations

import torch

from msg_ray.masked_layers import GrowableModel
from msg_ray.operators.base import GrowOptions, Layout, Operator, replicate


def _clone(old: GrowableModel, new: GrowableModel, opts: GrowOptions, noise: float = 0.0) -> Layout:
    layout = replicate(old, new, noise=noise, gen=opts.gen)
    norm = new.config.spec.tied_head_norm
    n = new.structure.hidden_dim // old.structure.hidden_dim
    if norm is not None and n > 1:
        module = new.get_submodule(norm)
        with torch.no_grad():
            for p in module.parameters():  # gain and bias [H]: its output feeds the tied embedding
                p.div_(n)
        for kind, _ in module.named_parameters():  # the tied head reads copies: gradient = the source's
            entry = layout[f"{norm}.{kind}"]
            entry.scale[0] = torch.ones_like(entry.scale[0])
    return layout


HYPERCLONING = Operator(
    name="hypercloning",
    fill=_clone,
    dims=("hidden_dim", "ffn_dim", "head_num"),
    preserving=True,
    needs_integer_factors=True,
    paper="Samragh et al. 2024, arXiv 2409.12903",
)
HYPERCLONING_NOISE = Operator(
    name="hypercloning-noise",
    fill=lambda old, new, opts: _clone(old, new, opts, noise=new.config.init_std),
    dims=HYPERCLONING.dims,
    preserving=True,
    needs_integer_factors=True,
    paper=HYPERCLONING.paper,
)
