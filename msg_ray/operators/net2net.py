"""Net2Net as bert2BERT uses it (Chen et al. ACL 2022, "bert2BERT": function-preserving initialisation, FPI), and
bert2BERT's advanced knowledge initialisation (AKI). Pure torch.

FPI: a new neuron/head copies an old one (round-robin, eq. 5) and every consumer of the copied unit divides its
weights by the number of copies (eq. 6); new layers stack copies of the old ones. Exact for FFN and head growth;
for hidden growth only up to LayerNorm's statistics (eq. 7's dilemma) and a tied output embedding.
AKI: as FPI, but the producer weights of a layer's new FFN neurons and heads come from the layer *above*
(bert2BERT section 4.2: "new neurons also take the next layer's weights"; the top layer uses its own), which
breaks exact preservation in exchange for more diverse new units.
"""

from __future__ import annotations

import torch

from msg_ray.architecture import get_arch
from msg_ray.masked_layers import GrowableModel
from msg_ray.operators.base import GrowOptions, Layout, Operator, replicate, unit_maps


def _fpi(old: GrowableModel, new: GrowableModel, opts: GrowOptions) -> Layout:
    return replicate(old, new)


def _aki(old: GrowableModel, new: GrowableModel, opts: GrowOptions) -> Layout:
    layout = replicate(old, new)
    cfg, s_old = new.config, old.structure
    n_old = {
        "F": s_old.ffn_dim,
        "heads": s_old.head_num * cfg.head_dim,
        "kv_heads": s_old.head_num // cfg.kv_group_size * cfg.head_dim,
    }
    sizes = unit_maps(s_old, new.structure, cfg.head_dim, cfg.kv_group_size)
    roles = get_arch(cfg.arch).net2net_roles
    params = dict(new.named_parameters())
    with torch.no_grad():
        for name, p in params.items():
            parts = name.split(".")
            if parts[0] != "blocks" or int(parts[1]) >= s_old.layer_num - 1:
                continue  # only old layers with an old layer above them
            upper = params[".".join(["blocks", str(int(parts[1]) + 1), *parts[2:]])]
            for axis, dim, is_consumer in roles(name):
                if is_consumer or dim not in n_old or len(sizes[dim]) == n_old[dim]:
                    continue
                new_units = torch.arange(n_old[dim], p.shape[axis], device=p.device)
                p.index_copy_(axis, new_units, upper.index_select(axis, new_units))
    return layout


NET2NET = Operator(name="net2net", fill=_fpi, paper="Chen et al. 2022 (bert2BERT FPI), after Chen et al. 2016")
BERT2BERT_AKI = Operator(name="bert2bert-aki", fill=_aki, paper="Chen et al. 2022, bert2BERT AKI (section 4.2)")
