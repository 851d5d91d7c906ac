"""What an architecture declares, the registry that holds them, and the model config they are built from. Pure torch.

An :class:`Architecture` is everything the rest of msg_ray needs to know about a model family: how to build it,
what it trains on (causal or masked LM), its parameter-count and FLOPs formulas, how Net2Net splits each of its
parameters, how it maps onto a Hugging Face model, and which parameters skip weight decay. Growth (masks, ramp,
fold) is shared: every architecture's model is a :class:`msg_ray.masked_layers.GrowableModel` using the same mask
attribute names, so ``msg_ray.growth`` needs no per-architecture code beyond the Net2Net roles.

The built-in architectures register in ``msg_ray/archs/__init__.py`` (one line each); adding one is a module
under ``msg_ray/archs/`` plus that line.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from msg_ray.registry import Registry
from msg_ray.structure import Structure

OBJECTIVES = ("clm", "mlm")

# (axis, dimension, split): dimension is "H", "F", "heads" (query heads x head_dim) or "kv_heads" (key/value
# heads x head_dim); split = the consumer side of Net2Net (eq. 6: divide by the replica count).
Roles = list[tuple[int, str, bool]]


@dataclass(frozen=True, kw_only=True)
class HFAdapter:
    """How a folded model maps onto a Hugging Face model: ``model_class`` in ``transformers``, its config, and
    our state_dict -> theirs. ``config``/``state`` import transformers lazily (a slow, optional import)."""

    model_class: str
    config: Callable[[ModelConfig], Any]
    state: Callable[[dict[str, torch.Tensor], ModelConfig], dict[str, torch.Tensor]]


def default_no_decay(name: str, p: torch.Tensor) -> bool:
    """Biases and norm gains (1-D) skip weight decay; the name test also catches norm weights stored 2-D."""
    parts = name.lower().split(".")
    return p.ndim < 2 or any("norm" in s or s.startswith("ln") for s in parts)


@dataclass(frozen=True, kw_only=True)
class Architecture:
    """One model family. Formulas take ``(structure, vocab_size, seq_len, head_dim, kv_group_size)``."""

    name: str
    objective: str  # "clm" (next-token) or "mlm" (masked tokens)
    build: Callable[[ModelConfig, torch.Generator | None], nn.Module]
    param_count: Callable[[Structure, int, int, int, int, bool], int]  # (..., max_seq_len, ..., include_embeddings)
    flops_per_token: Callable[[Structure, int, int, int, int], float]
    net2net_roles: Callable[[str], Roles]
    hf: HFAdapter
    no_decay: Callable[[str, torch.Tensor], bool] = default_no_decay
    grouped_query: bool = False  # accepts kv_group_size > 1
    # the norm whose output a *tied* output embedding reads (None: untied head). Width cloning scales it by 1/n so
    # the n copies of each feature sum to the old logit (HyperCloning).
    tied_head_norm: str | None = None
    # the pre-LN residual stream: every block adds to it, so a zero output projection makes a block the identity
    # (LEMON's lossless depth growth); post-LN (BERT) does not have this property.
    pre_norm: bool = True
    summary: str = ""

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"Architecture {self.name!r}: objective must be one of {OBJECTIVES}")


_ARCHS: Registry[Architecture] = Registry("architecture", "arch must be one of {names}, got {name!r}")
register = _ARCHS.register
arch_names = _ARCHS.names
get_arch = _ARCHS.get


def check_kv_groups(arch: str, head_num: int, kv_group_size: int, where: str = "structure") -> None:
    """Grouped-query attention: ``kv_group_size`` query heads share one key/value head, so it must divide
    head_num (head growth then adds whole groups); only architectures declaring ``grouped_query`` accept > 1."""
    if isinstance(kv_group_size, bool) or not isinstance(kv_group_size, int) or kv_group_size < 1:
        raise ValueError(f"kv_group_size must be an int >= 1, got {kv_group_size!r}")
    if kv_group_size > 1 and not get_arch(arch).grouped_query:
        raise ValueError(f"kv_group_size={kv_group_size}: arch {arch!r} has no grouped-query attention (use 1)")
    if head_num % kv_group_size:
        raise ValueError(f"{where}.head_num={head_num} must be a multiple of kv_group_size={kv_group_size}")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    arch: str
    structure: Structure
    vocab_size: int
    max_seq_len: int = 1024
    head_dim: int = 64
    dropout: float = 0.0
    ln_eps: float = 1e-5  # LayerNorm / RMSNorm epsilon
    init_std: float = 0.02
    kv_group_size: int = 1  # query heads per key/value head (llama's grouped-query attention)
    rope_theta: float = 10000.0  # rotary base (llama)

    def __post_init__(self) -> None:
        if self.arch not in _ARCHS:
            raise ValueError(f"ModelConfig.arch must be one of {arch_names()}, got {self.arch!r}")
        if not isinstance(self.structure, Structure):
            object.__setattr__(self, "structure", Structure.parse(self.structure))
        for name in ("vocab_size", "max_seq_len", "head_dim"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {v!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.ln_eps < 1e-2:
            raise ValueError(f"ModelConfig.ln_eps must be in (0, 1e-2), got {self.ln_eps!r}")
        if not (math.isfinite(self.init_std) and self.init_std > 0):
            raise ValueError(f"ModelConfig.init_std must be a finite number > 0, got {self.init_std}")
        if not (math.isfinite(self.rope_theta) and self.rope_theta > 0):
            raise ValueError(f"ModelConfig.rope_theta must be a finite number > 0, got {self.rope_theta}")
        try:
            check_kv_groups(self.arch, self.structure.head_num, self.kv_group_size)
        except ValueError as e:
            raise ValueError(f"ModelConfig.{e}") from e

    @property
    def spec(self) -> Architecture:
        return get_arch(self.arch)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["structure"] = self.structure.as_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        d["structure"] = Structure.parse(d["structure"])
        return cls(**d)


def with_structure(config: ModelConfig, structure: Structure) -> ModelConfig:
    return replace(config, structure=structure)
