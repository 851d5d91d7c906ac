"""A growable Llama-style decoder: RMSNorm, SwiGLU, rotary positions, no biases, untied head, grouped-query
attention. Pure torch.

MSG on this architecture (the paper's rules carried over to Llama's pieces):

- RMSNorm statistics are masked like LayerNorm's (eq. 17): the mean square runs over the active features,
  weighted by the hidden mask c, sum_i c_i x_i^2 / sum_i c_i, and the normalised output is re-masked (eq. 19) - at
  every c, not only at c = 0, so the ramp is smooth and the old features never see the new ones' statistics;
- the FFN mask multiplies the SwiGLU product silu(gate x) * (up x) (eq. 12 after the non-linearity), folded into
  ``down``'s input columns;
- head masks silence each new *query* head's output (eq. 23-24, folded into ``o``'s input columns); with
  grouped-query attention head growth adds whole groups (kv_group_size query heads and their key/value head), so
  a new key/value head only ever feeds new query heads;
- depth masks mix a new layer with the identity (eq. 20); the untied ``lm_head`` reads the final RMSNorm's
  re-masked output, so its new columns contribute nothing at c = 0.

Rotary embeddings use the rotate-half convention of Hugging Face's Llama on a fixed head_dim (heads grow in
number, not size), so positions mean the same before and after a growth and the export needs no permutation.

Shapes: B batch, T sequence, H hidden_dim, F ffn_dim, n query heads, g kv_group_size, d head_dim, V vocab.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.backends.cuda import SDPAParams, can_use_flash_attention

from msg_ray.architecture import ModelConfig
from msg_ray.masked_layers import GrowableModel, GrowthMask, MaskedLinear, _c, _mask, padded_vocab, unpad_logits


class MaskedRMSNorm(nn.Module):
    """RMSNorm (learned gain, no bias) whose mean square is mask-weighted (eq. 17) and whose output is re-masked
    (eq. 19)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))  # [H]
        self.eps = eps

    def forward(self, x: torch.Tensor, mask: GrowthMask | None = None) -> torch.Tensor:  # [..., H]
        if mask is None:
            return F.rms_norm(x, x.shape[-1:], self.weight, self.eps)
        # in fp32 (fp64 stays fp64) whatever x's dtype, as F.rms_norm does for bf16; autograd's backward follows
        ct = torch.promote_types(x.dtype, torch.float32)
        xf, c = x.to(ct), mask.value.to(ct)  # [..., H], [H]
        rstd = torch.rsqrt((xf * xf) @ (c / c.sum()) + self.eps).unsqueeze(-1)  # [..., 1]: eq. 17's weighted mean
        return (xf * rstd * (self.weight.to(ct) * c)).to(x.dtype)  # re-masked output (eq. 19) folded into the gain


def rotary_tables(
    seq_len: int, head_dim: int, theta: float, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [T, d] of rotary embeddings (frequencies as Hugging Face computes them, in float32)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.int64).float() / head_dim)
    freqs = torch.outer(torch.arange(seq_len, device=device).float(), inv_freq)  # [T, d/2]
    emb = torch.cat([freqs, freqs], dim=-1)  # [T, d]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:  # [B, n, T, d]
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)  # rotate_half
    return x * cos + rotated * sin


def _sdpa_takes_gqa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float) -> bool:
    """Whether SDPA's kernel broadcasts key/value heads itself (``enable_gqa``) for these inputs: on the CPU, and
    on CUDA when the flash kernel takes them (bf16/fp16, sm80+, head_dim <= 256). The other CUDA kernels do not
    support it, and SDPA would silently fall back to its math kernel (a [T, T] score matrix per head)."""
    if q.device.type != "cuda":
        return True
    params = SDPAParams(q, k, v, None, dropout, True, True)
    return torch.backends.cuda.flash_sdp_enabled() and can_use_flash_attention(params)


class LlamaAttention(nn.Module):
    """Causal grouped-query attention: q H -> n*d, k/v H -> (n/g)*d, o n*d -> H, no biases."""

    def __init__(self, hidden_dim: int, head_num: int, head_dim: int, kv_group_size: int, dropout: float) -> None:
        super().__init__()
        kv = head_num // kv_group_size
        self.q = nn.Linear(hidden_dim, head_num * head_dim, bias=False)
        self.k = nn.Linear(hidden_dim, kv * head_dim, bias=False)
        self.v = nn.Linear(hidden_dim, kv * head_dim, bias=False)
        self.o = MaskedLinear(head_num * head_dim, hidden_dim, bias=False)
        self.head_num, self.head_dim, self.group, self.dropout = head_num, head_dim, kv_group_size, dropout

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        head_mask: GrowthMask | None,
        out_mask: GrowthMask | None,
    ) -> torch.Tensor:
        """[B, T, H] -> [B, T, H]; ``out_mask`` [H] (the hidden mask) masks ``o``'s output neurons."""
        B, T, _ = x.shape
        n, d, g = self.head_num, self.head_dim, self.group
        q = apply_rotary(self.q(x).view(B, T, n, d).transpose(1, 2), *rope)  # [B, n, T, d]
        k = apply_rotary(self.k(x).view(B, T, n // g, d).transpose(1, 2), *rope)  # [B, n/g, T, d]
        v = self.v(x).view(B, T, n // g, d).transpose(1, 2)
        # query head i reads key/value head i // g (Hugging Face's repeat_kv): inside SDPA (no [B, n, T, d] copies of k
        # and v) where its kernel takes it, else by repeating them
        p = self.dropout if self.training else 0.0
        gqa = g > 1 and _sdpa_takes_gqa(q, k, v, p)
        if g > 1 and not gqa:
            k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)  # [B, n, T, d]
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True, enable_gqa=gqa)  # [B, n, T, d]
        # eq. 23-24 per query head: c_i * softmax(.) v = softmax(.) (c_i v); folded into o's input columns [n*d]
        c_heads = None if head_mask is None else head_mask.value.repeat_interleave(d)
        return self.o(y.transpose(1, 2).reshape(B, T, n * d), _c(out_mask), c_heads)


class SwiGLU(nn.Module):
    """down(silu(gate x) * up x): gate/up H -> F, down F -> H, no biases; the FFN mask acts on the product."""

    def __init__(self, hidden_dim: int, ffn_dim: int) -> None:
        super().__init__()
        self.gate = nn.Linear(hidden_dim, ffn_dim, bias=False)
        self.up = nn.Linear(hidden_dim, ffn_dim, bias=False)
        self.down = MaskedLinear(ffn_dim, hidden_dim, bias=False)

    def forward(self, x: torch.Tensor, ffn_mask: GrowthMask | None, out_mask: GrowthMask | None) -> torch.Tensor:
        # [B, T, H] -> [B, T, F] -> [B, T, H]; eq. 12 after the gated product, folded into down's columns
        return self.down(F.silu(self.gate(x)) * self.up(x), _c(out_mask), _c(ffn_mask))


class LlamaBlock(nn.Module):
    """Pre-norm layer x + Attn(RMSNorm x), then + SwiGLU(RMSNorm .); masks as in :class:`msg_ray.masked_layers.Block`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        s = config.structure
        self.attn_norm = MaskedRMSNorm(s.hidden_dim, config.ln_eps)
        self.attn = LlamaAttention(s.hidden_dim, s.head_num, config.head_dim, config.kv_group_size, config.dropout)
        self.mlp_norm = MaskedRMSNorm(s.hidden_dim, config.ln_eps)
        self.mlp = SwiGLU(s.hidden_dim, s.ffn_dim)
        self.drop = nn.Dropout(config.dropout)
        self.ffn_mask: GrowthMask | None = None
        self.head_mask: GrowthMask | None = None
        self.layer_mask: GrowthMask | None = None

    def forward(
        self, x: torch.Tensor, hm: GrowthMask | None, rope: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:  # [B, T, H] -> [B, T, H]
        out = x + self.drop(self.attn(self.attn_norm(x, hm), rope, self.head_mask, hm))
        out = out + self.drop(self.mlp(self.mlp_norm(out, hm), self.ffn_mask, hm))
        if self.layer_mask is None:
            return out
        c = self.layer_mask.value.to(x.dtype)  # [1]
        return c * out + (1 - c) * x  # eq. 20


class LlamaTransformer(GrowableModel):
    """Llama-style causal LM whose structure grows with MSG masks (see ``msg_ray.growth``)."""

    def __init__(self, config: ModelConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if config.head_dim % 2:
            raise ValueError(
                f"ModelConfig.head_dim must be even for arch 'llama' (rotary pairs), got {config.head_dim}"
            )
        self.config = config
        s = config.structure
        V = padded_vocab(config.vocab_size)  # rows beyond vocab_size: alignment only, sliced off the logits
        self.tok_emb = nn.Embedding(V, s.hidden_dim)  # [V, H]
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(LlamaBlock(config) for _ in range(s.layer_num))
        self.norm_f = MaskedRMSNorm(s.hidden_dim, config.ln_eps)
        self.lm_head = nn.Linear(s.hidden_dim, V, bias=False)  # [V, H], untied
        self.hidden_mask: GrowthMask | None = None
        self._rope_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # see _rope
        for m in self.modules():  # N(0, init_std) for every matrix; RMSNorm gains stay 1
            if isinstance(m, (nn.Linear, nn.Embedding)):
                with torch.no_grad():
                    m.weight.normal_(0.0, config.init_std, generator=generator)

    def _rope(self, seq_len: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [T, d], sliced from tables for max_seq_len made once per (device, dtype). A plain attribute, not
        a buffer: not in the state_dict, never cast by DeepSpeed, and a grown model (a new module) makes its own;
        the key carries head_dim and theta so a config that changed them could not read stale tables."""
        cfg = self.config
        key = (cfg.head_dim, cfg.rope_theta, device, dtype)
        if key not in self._rope_cache:
            with torch.inference_mode(False):  # made in an inference_mode forward, they could not serve training
                self._rope_cache[key] = rotary_tables(cfg.max_seq_len, cfg.head_dim, cfg.rope_theta, device, dtype)
        cos, sin = self._rope_cache[key]
        return cos[:seq_len], sin[:seq_len]

    def hidden(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:  # [B, T] -> final normalised hidden states [B, T, H]
        self.check_input_ids(input_ids)
        B, T = input_ids.shape
        if attention_mask is not None:
            raise ValueError("attention_mask is not supported for arch='llama' (causal)")
        hm = self.hidden_mask
        x = self.drop(_mask(self.tok_emb(input_ids), hm))  # eq. 12: new hidden features start at 0, [B, T, H]
        rope = self._rope(T, x.device, x.dtype)
        for block in self.blocks:
            x = block(x, hm, rope)
        return self.norm_f(x, hm)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None
    ) -> torch.Tensor:  # [B, T] -> logits [B, T, V]; ``labels`` is accepted and ignored (every position predicts)
        return unpad_logits(self.lm_head(self.hidden(input_ids, attention_mask)), self.config.vocab_size)
