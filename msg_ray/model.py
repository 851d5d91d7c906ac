"""Building models: ``build_model(arch, structure, ...)`` for any registered architecture. Pure torch.

The architectures themselves live in ``msg_ray.archs`` (GPT/BERT in ``archs.transformer``, llama in
``archs.llama``) and are looked up in the registry of ``msg_ray.architecture``; importing this module registers
the built-in ones.
"""

from __future__ import annotations

import torch

import msg_ray.archs  # noqa: F401  (registers gpt, bert, llama)
from msg_ray.architecture import ModelConfig, arch_names, get_arch, with_structure
from msg_ray.archs.llama import LlamaTransformer
from msg_ray.archs.transformer import GrowableTransformer
from msg_ray.masked_layers import GrowableModel
from msg_ray.structure import Structure

ARCHS = arch_names()

__all__ = [
    "ARCHS",
    "GrowableModel",
    "GrowableTransformer",
    "LlamaTransformer",
    "ModelConfig",
    "build_from_config",
    "build_model",
    "with_structure",
]


def build_model(
    arch: str,
    structure: Structure,
    *,
    vocab_size: int,
    max_seq_len: int = 1024,
    head_dim: int = 64,
    dropout: float = 0.0,
    ln_eps: float = 1e-5,
    init_std: float = 0.02,
    kv_group_size: int = 1,
    rope_theta: float = 10000.0,
    seed: int | None = None,
) -> GrowableModel:
    """Build a model of a registered architecture (``"gpt"``, ``"bert"``, ``"llama"``) of the given structure."""
    config = ModelConfig(
        arch=arch,
        structure=structure,
        vocab_size=vocab_size,
        max_seq_len=max_seq_len,
        head_dim=head_dim,
        dropout=dropout,
        ln_eps=ln_eps,
        init_std=init_std,
        kv_group_size=kv_group_size,
        rope_theta=rope_theta,
    )
    return build_from_config(config, seed=seed)


def build_from_config(config: ModelConfig, seed: int | None = None) -> GrowableModel:
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return get_arch(config.arch).build(config, gen)
