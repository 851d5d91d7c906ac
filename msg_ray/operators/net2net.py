"""Net2Net as bert2BERT uses it (Chen et al. ACL 2022, "bert2BERT": function-preserving initialisation, FPI), and
bert2BERT's advanced knowledge initialisation (AKI). Pure torch.

FPI: a new neuron/head copies an old one (round-robin, eq. 5) and every consumer of the copied unit divides its
weights by the number of copies (eq. 6); new layers stack copies of the old ones. Exact for FFN and head growth;
for hidden growth only up to LayerNorm's statistics (eq. 7's dilemma) and a tied output embedding.
AKI: as FPI, but the producer weights of a layer's new FFN neurons and heads come from the layer *above*
(bert2BERT section 4.2: "new neurons also take the next layer's weights"; the top layer uses its own), which
breaks exact preservation in exchange for more diverse new units. Their Adam moments are those of the weights they
were copied from: the layer above's source unit's, times 1/k as for that layer's own copies (a layout patch).
When width and depth grow in one event, the new layers stack the *widened* model (AKI units included), as
bert2BERT stacks after widening. bert2BERT's two-stage pre-training (training sub-models first) is not part of
the operator.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from msg_ray.architecture import get_arch
from msg_ray.masked_layers import GrowableModel
from msg_ray.operators.base import (
    GrowOptions,
    Layout,
    Operator,
    ParamLayout,
    Patch,
    replicate,
    source_name,
    unit_maps,
)


def _fpi(old: GrowableModel, new: GrowableModel, opts: GrowOptions) -> Layout:
    return replicate(old, new)


def _aki(old: GrowableModel, new: GrowableModel, opts: GrowOptions) -> Layout:
    layout = replicate(old, new)  # FPI everywhere; new layers stack copies of FPI-widened old layers (fixed below)
    cfg, n_layers = new.config, old.structure.layer_num
    maps = unit_maps(old.structure, new.structure, cfg.head_dim, cfg.kv_group_size)
    n_old = {dim: int(g.max()) + 1 for dim, g in maps.items()}  # old units (rows) per dimension
    roles = get_arch(cfg.arch).net2net_roles
    params = dict(new.named_parameters())
    old_blocks = [n for n in params if n.startswith("blocks.") and int(n.split(".")[1]) < n_layers - 1]
    with torch.no_grad():
        # ascending layers: layer l reads layer l + 1 before l + 1's own new units are replaced, i.e. the FPI
        # copies of the old layer l + 1
        for name in sorted(old_blocks, key=lambda n: int(n.split(".")[1])):
            p = params[name]
            _, idx, rest = name.split(".", 2)
            upper = f"blocks.{int(idx) + 1}.{rest}"
            for axis, dim, is_consumer in roles(name):
                if is_consumer or dim not in ("F", "heads", "kv_heads") or len(maps[dim]) == n_old[dim]:
                    continue
                new_units = torch.arange(n_old[dim], p.shape[axis])  # [m]
                p.index_copy_(axis, new_units.to(p.device), params[upper].index_select(axis, new_units.to(p.device)))
                # moments of the copied weights: the layer above's layout for those coordinates (source, 1/k)
                up = layout[upper]
                sub = ParamLayout(
                    source=up.source,
                    index={a: i[new_units] if a == axis else i for a, i in up.index.items()},
                    scale={a: s[new_units] if a == axis else s for a, s in up.scale.items()},
                )
                layout[name] = replace(layout[name], patches=(*layout[name].patches, Patch(axis, new_units, sub)))
        # bert2BERT stacks the widened model: new layer i is a copy of the finished layer (i - L) mod L
        for name, p in params.items():
            src = source_name(name, n_layers, stack=True)
            if src != name:
                p.copy_(params[src])
    return layout


NET2NET = Operator(name="net2net", fill=_fpi, paper="Chen et al. 2022 (bert2BERT FPI), after Chen et al. 2016")
BERT2BERT_AKI = Operator(name="bert2bert-aki", fill=_aki, paper="Chen et al. 2022, bert2BERT AKI (section 4.2)")
