"""GPT (pre-LN causal LM) and BERT (post-LN masked LM): one growable Transformer for both. Pure torch.

Output embedding is *tied* to the token embedding (GPT-2 and BERT do the same, and it keeps the Hugging Face
export exact); BERT's MLM head adds its transform (dense, GELU, LN) and a decoder bias [V].
Parameter names are stable across growths (new layers are appended), which the optimizer-state carry relies on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from msg_ray.architecture import ModelConfig
from msg_ray.masked_layers import (
    Block,
    GrowableModel,
    GrowthMask,
    MaskedLayerNorm,
    _mask,
    attention_bias,
    init_weights,
    padded_vocab,
    unpad_logits,
)


class GrowableTransformer(GrowableModel):
    """GPT or BERT whose structure can grow with MSG masks (see ``msg_ray.growth``)."""

    def __init__(self, config: ModelConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = config
        s, gpt = config.structure, config.spec.objective == "clm"  # causal: GPT's pre-LN decoder; else BERT
        H = s.hidden_dim
        V = padded_vocab(config.vocab_size)  # rows beyond vocab_size: alignment only, sliced off the logits
        self.tok_emb = nn.Embedding(V, H)  # [V, H], also the (tied) output projection
        self.pos_emb = nn.Embedding(config.max_seq_len, H)  # [S, H]
        self.emb_ln = None if gpt else MaskedLayerNorm(H, config.ln_eps)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            Block(
                H,
                s.ffn_dim,
                s.head_num,
                config.head_dim,
                pre_ln=gpt,
                causal=gpt,
                dropout=config.dropout,
                ln_eps=config.ln_eps,
            )
            for _ in range(s.layer_num)
        )
        if gpt:
            self.ln_f = MaskedLayerNorm(H, config.ln_eps)
        else:  # BERT MLM head: transform (dense, GELU, LN) then tied decoder + bias
            self.mlm_dense = nn.Linear(H, H)
            self.mlm_ln = MaskedLayerNorm(H, config.ln_eps)
            self.mlm_bias = nn.Parameter(torch.zeros(V))
        self.hidden_mask: GrowthMask | None = None
        init_weights(self, config.init_std, generator)

    def hidden(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:  # [B, T] -> final hidden states [B, T, H] (after GPT's ln_f / BERT's last block)
        self.check_input_ids(input_ids)
        B, T = input_ids.shape
        hm = self.hidden_mask
        pos = torch.arange(T, device=input_ids.device)
        x = self.tok_emb(input_ids) + self.pos_emb(pos)  # [B, T, H]
        bias = None
        if not self.causal:
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
        return self.ln_f(x, hm) if self.causal else x

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """[B, T] -> logits [B, T, V]. BERT given MLM ``labels`` [B, T]: logits [M, V] of the M positions whose label
        is not -100 only, in row-major order (what ``loss`` takes): the MLM head and the [V]-wide decoder are most
        of a small BERT's step and ~85 % of their rows would be thrown away. GPT ignores ``labels``."""
        x = self.hidden(input_ids, attention_mask)
        V = self.config.vocab_size
        if self.causal:
            return unpad_logits(x @ self.tok_emb.weight.t(), V)  # tied output embedding
        if labels is not None:
            x = x[labels != -100]  # [M, H]
        x = self.mlm_ln(F.gelu(self.mlm_dense(x)), self.hidden_mask)  # new features re-masked by the LN (eq. 19)
        return unpad_logits(x @ self.tok_emb.weight.t() + self.mlm_bias, V)
