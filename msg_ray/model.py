"""The growable Transformer: one code base for GPT (pre-LN causal LM) and BERT (post-LN masked LM). Pure torch.

Output embedding is *tied* to the token embedding (GPT-2 and BERT do the same, and it keeps the Hugging Face
export exact); BERT's MLM head adds its transform (dense, GELU, LN) and a decoder bias [V].
Parameter names are stable across growths (new layers are appended), which the optimizer-state carry relies on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from msg_ray.components import Block, GrowthMask, MaskedLayerNorm, _mask, attention_bias, init_weights
from msg_ray.structure import Structure

ARCHS = ("gpt", "bert")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    arch: str
    structure: Structure
    vocab_size: int
    max_seq_len: int = 1024
    head_dim: int = 64
    dropout: float = 0.0
    ln_eps: float = 1e-5
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"ModelConfig.arch must be one of {ARCHS}, got {self.arch!r}")
        if not isinstance(self.structure, Structure):
            object.__setattr__(self, "structure", Structure.parse(self.structure))
        for name in ("vocab_size", "max_seq_len", "head_dim"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {v!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.init_std <= 0:
            raise ValueError(f"ModelConfig.init_std must be > 0, got {self.init_std}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["structure"] = self.structure.as_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        d["structure"] = Structure.parse(d["structure"])
        return cls(**d)


class GrowableTransformer(nn.Module):
    """GPT or BERT whose structure can grow with MSG masks (see ``msg_ray.growth``)."""

    def __init__(self, config: ModelConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = config
        s, gpt = config.structure, config.arch == "gpt"
        H = s.hidden_dim
        self.tok_emb = nn.Embedding(config.vocab_size, H)  # [V, H], also the (tied) output projection
        self.pos_emb = nn.Embedding(config.max_seq_len, H)  # [S, H]
        self.emb_ln = None if gpt else MaskedLayerNorm(H, config.ln_eps)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            Block(H, s.ffn_dim, s.head_num, config.head_dim, pre_ln=gpt, causal=gpt,
                  dropout=config.dropout, ln_eps=config.ln_eps)
            for _ in range(s.layer_num)
        )  # fmt: skip
        if gpt:
            self.ln_f = MaskedLayerNorm(H, config.ln_eps)
        else:  # BERT MLM head: transform (dense, GELU, LN) then tied decoder + bias
            self.mlm_dense = nn.Linear(H, H)
            self.mlm_ln = MaskedLayerNorm(H, config.ln_eps)
            self.mlm_bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.hidden_mask: GrowthMask | None = None
        init_weights(self, config.init_std, generator)

    @property
    def structure(self) -> Structure:
        return self.config.structure

    @property
    def arch(self) -> str:
        return self.config.arch

    def hidden(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:  # [B, T] -> final hidden states [B, T, H] (after GPT's ln_f / BERT's last block)
        B, T = input_ids.shape
        if T > self.config.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds max_seq_len {self.config.max_seq_len}")
        hm = self.hidden_mask
        pos = torch.arange(T, device=input_ids.device)
        x = self.tok_emb(input_ids) + self.pos_emb(pos)  # [B, T, H]
        bias = None
        if self.arch == "bert":
            x = self.emb_ln(x, hm)  # eq. 17/19 mask inside LN
            if attention_mask is not None:
                bias = attention_bias(attention_mask, x.dtype)
        elif attention_mask is not None:
            raise ValueError("attention_mask is only supported for arch='bert' (GPT is causal)")
        else:
            x = _mask(x, hm)  # eq. 12 on the embedding output: new hidden features start at 0
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, hm, bias)
        return self.ln_f(x, hm) if self.arch == "gpt" else x

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:  # [B, T] -> logits [B, T, V]
        x = self.hidden(input_ids, attention_mask)
        if self.arch == "gpt":
            return x @ self.tok_emb.weight.t()  # tied output embedding
        x = self.mlm_ln(F.gelu(self.mlm_dense(x)), self.hidden_mask)  # new features re-masked by the LN (eq. 19)
        return x @ self.tok_emb.weight.t() + self.mlm_bias

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean token cross-entropy. GPT: next-token (labels = input_ids, shifted here); BERT: labels -100 ignored."""
        if self.arch == "gpt":
            logits, labels = logits[:, :-1], labels[:, 1:]
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1), ignore_index=-100)

    # -- masks in state_dict: a checkpoint taken mid-ramp carries its masks; loading recreates them ------------
    def mask_modules(self) -> dict[str, GrowthMask]:
        return {n: m for n, m in self.named_modules() if isinstance(m, GrowthMask)}

    def load_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True, assign: bool = False):
        for key, value in state_dict.items():
            if not key.endswith(".value") or key.split(".")[-2] not in _MASK_NAMES:
                continue
            path = key[: -len(".value")].split(".")
            owner: nn.Module = self
            for part in path[:-1]:
                owner = owner[int(part)] if part.isdigit() else getattr(owner, part)
            if getattr(owner, path[-1]) is None:
                n_old = int(state_dict[key[: -len("value")] + "n_old"])
                setattr(owner, path[-1], GrowthMask(value.numel(), n_old).to(value.device, value.dtype))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


_MASK_NAMES = ("hidden_mask", "ffn_mask", "head_mask", "layer_mask")


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
    seed: int | None = None,
) -> GrowableTransformer:
    """Build a GPT (``arch="gpt"``) or BERT (``arch="bert"``) model of the given structure."""
    config = ModelConfig(
        arch=arch, structure=structure, vocab_size=vocab_size, max_seq_len=max_seq_len, head_dim=head_dim,
        dropout=dropout, ln_eps=ln_eps, init_std=init_std,
    )  # fmt: skip
    return build_from_config(config, seed=seed)


def build_from_config(config: ModelConfig, seed: int | None = None) -> GrowableTransformer:
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return GrowableTransformer(config, generator=gen)


def with_structure(config: ModelConfig, structure: Structure) -> ModelConfig:
    return replace(config, structure=structure)
