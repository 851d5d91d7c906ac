"""Transformer building blocks that accept MSG growth masks (pure torch).

Every mask is optional: ``None`` means "no growth is ramping here" and the block runs the plain computation
with zero overhead. A mask is a :class:`GrowthMask` holding a value vector ``c`` whose first ``n_old`` entries
are 1 (existing neurons/heads) and whose remaining entries ramp 0 → 1 (paper eq. 10/16).

Shapes: B batch, T sequence, H hidden_dim, F ffn_dim, n head_num, d head_dim.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class GrowthMask(nn.Module):
    """External mask of one growth: ``value`` [N], entries ``>= n_old`` are the new ones that ramp to 1.

    Both tensors are buffers, so a checkpoint taken mid-ramp restores the exact mask. ``value`` never drops below
    fp32: casting the model to bf16/fp16 (``model.bfloat16()``, or DeepSpeed with a ``buffer_dtype``) leaves it fp32,
    so a ramp's c (k/φ) stays exact and the norms' mask-weighted statistics see the exact weights; the layers cast
    it where they apply it. fp64 (the function-preservation checks) is kept.
    """

    def __init__(self, size: int, n_old: int, c: float = 0.0) -> None:
        super().__init__()
        if not 0 <= n_old < size:
            raise ValueError(f"GrowthMask: n_old must be in [0, {size}), got {n_old}")
        value = torch.ones(size)
        value[n_old:] = c
        self.register_buffer("value", value)
        self.register_buffer("n_old", torch.tensor(n_old, dtype=torch.long))
        # host copies, so the per-step ramp (set) and reading c touch no device tensor: no host sync per step
        self._n_old, self._c = n_old, float(c)

    def _apply(self, fn, recurse=True):
        value = self.value  # the exact c, before a cast to bf16 would round it
        super()._apply(fn, recurse)
        if self.value.dtype in (torch.bfloat16, torch.float16):
            self.value = value.to(self.value.device, torch.promote_types(value.dtype, torch.float32))
        return self

    def set(self, c: float) -> None:
        self.value[self._n_old :].fill_(c)
        self._c = float(c)

    @property
    def c(self) -> float:
        return self._c

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._n_old = int(self.n_old)  # read back once per load (a restore), not per step
        self._c = float(self.value[self._n_old])


class GrowableModel(nn.Module):
    """Base of every growable model: ``config`` (a ModelConfig), the shared mask attributes (``hidden_mask`` on the
    model; ``ffn_mask``/``head_mask``/``layer_mask`` on each of ``blocks``), masks in the state_dict, and the loss.

    Subclasses build their layers in ``__init__`` and define ``hidden`` (final hidden states) and ``forward``.
    """

    config: Any
    blocks: nn.ModuleList
    hidden_mask: GrowthMask | None

    @property
    def structure(self) -> Any:
        return self.config.structure

    @property
    def arch(self) -> str:
        return self.config.arch

    @property
    def causal(self) -> bool:
        return self.config.spec.objective == "clm"

    def check_input_ids(self, input_ids: torch.Tensor) -> None:
        """A clear error for ids the embedding cannot take: not a 2-d integer tensor, longer than max_seq_len, or
        (checked where it costs no device sync: CPU tensors) outside [0, vocab_size)."""
        if input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"input_ids: expected an int64/int32 tensor [batch, seq], got {input_ids.dtype} "
                f"{tuple(input_ids.shape)}"
            )
        if input_ids.size(1) > self.config.max_seq_len:
            raise ValueError(
                f"input_ids: sequence length {input_ids.size(1)} exceeds max_seq_len {self.config.max_seq_len}"
            )
        if input_ids.device.type == "cpu" and input_ids.numel():
            lo, hi = int(input_ids.min()), int(input_ids.max())
            if lo < 0 or hi >= self.config.vocab_size:
                bad = lo if lo < 0 else hi
                raise ValueError(f"input_ids: token id {bad} outside the vocabulary [0, {self.config.vocab_size})")

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean token cross-entropy. Causal LM: next-token (labels = input_ids, shifted here); MLM: -100 ignored.

        ``logits`` [B, T, V], or [M, V] for the M positions whose label is not -100 (what an MLM ``forward`` given
        ``labels`` returns); ``labels`` [B, T]. bf16/fp16 logits are reduced in fp32 without an fp32 copy of them
        (:func:`cross_entropy`); fp32 and fp64 logits go to ``F.cross_entropy`` as they are.
        """
        if logits.dim() == 2:  # already the labelled positions, in labels' row-major order
            return cross_entropy(logits, labels[labels != -100])
        if self.causal:  # shift the labels, not the logits: slicing [B, T, V] logits costs a zero-filled [B, T, V]
            # gradient and two copies per step (~20 % of a mini step on CPU, none of it shrinking with the model)
            labels = F.pad(labels[:, 1:], (0, 1), value=-100)  # [B, T]: the last position predicts nothing
        return cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1))

    # -- masks in state_dict: a checkpoint taken mid-ramp carries its masks; loading recreates them ------------
    def mask_modules(self) -> dict[str, GrowthMask]:
        return {n: m for n, m in self.named_modules() if isinstance(m, GrowthMask)}

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False):
        rows = padded_vocab(self.config.vocab_size)
        state_dict = {  # unpadded vocabulary tables (checkpoints from before the padding) get zero rows
            k: F.pad(v, (0, 0) * (v.dim() - 1) + (0, rows - v.shape[0])) if k in VOCAB_KEYS and v.shape[0] < rows else v
            for k, v in state_dict.items()
        }
        for key, value in state_dict.items():
            if not key.endswith(".value") or key.split(".")[-2] not in MASK_NAMES:
                continue
            path = key[: -len(".value")].split(".")
            owner: nn.Module = self
            for part in path[:-1]:
                owner = owner[int(part)] if part.isdigit() else getattr(owner, part)
            if getattr(owner, path[-1]) is None:
                n_old = int(state_dict[key[: -len("value")] + "n_old"])
                setattr(owner, path[-1], GrowthMask(value.numel(), n_old).to(value.device, value.dtype))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


MASK_NAMES = ("hidden_mask", "ffn_mask", "head_mask", "layer_mask")
VOCAB_MULTIPLE = 64  # vocabulary tables padded to this many rows: GEMM tiles of the [V, H] head on accelerators
VOCAB_KEYS = ("tok_emb.weight", "lm_head.weight", "mlm_bias")  # parameters whose dim 0 is the (padded) vocabulary


def padded_vocab(vocab_size: int) -> int:
    """Rows of the vocabulary tables: ``vocab_size`` rounded up to a multiple of ``VOCAB_MULTIPLE``. The extra rows
    are never read (ids < vocab_size; their logits are sliced off before any loss) and are not counted as
    parameters (``msg_ray.flops``), nor exported to Hugging Face."""
    return -(-vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def unpad_logits(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[..., padded V] -> [..., vocab_size], a view (strides stay aligned). No slice when nothing is padded: a slice
    costs its backward a zero-filled gradient of the whole logits tensor."""
    return logits if logits.size(-1) == vocab_size else logits[..., :vocab_size]


CE_CHUNK_ELEMENTS = 1 << 22  # logits upcast to fp32 at a time by the bf16 cross-entropy: 16 MiB per chunk


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` [N, V] against ``labels`` [N] over the rows whose label is not -100.

    fp32/fp64 logits: ``F.cross_entropy``. bf16/fp16 logits: the same loss reduced in fp32 by
    :class:`_ChunkedCrossEntropy`, which never holds an fp32 copy of the whole [N, V] tensor (upcasting it would
    double the largest activation of a bf16 step and add an fp32 log-softmax and gradient of the same size).
    """
    if logits.dtype in (torch.float32, torch.float64):
        return F.cross_entropy(logits, labels, ignore_index=-100)
    return _ChunkedCrossEntropy.apply(logits, labels, max(1, CE_CHUNK_ELEMENTS // logits.size(-1)))


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Mean over valid rows of logsumexp(z) - z[label], in fp32 over chunks of rows; keeps the low-precision logits
    and an fp32 logsumexp per row [N], and recomputes softmax(z) - onehot(label) chunk by chunk in the backward."""

    @staticmethod
    def forward(ctx, logits, labels, chunk):  # logits [N, V] bf16/fp16, labels [N] int64 with -100 = ignore
        valid = labels != -100  # [N]
        target = labels.masked_fill(~valid, 0)
        lse = torch.empty(logits.size(0), dtype=torch.float32, device=logits.device)  # [N]
        for i in range(0, logits.size(0), chunk):
            lse[i : i + chunk] = torch.logsumexp(logits[i : i + chunk].float(), dim=-1)
        picked = logits.gather(1, target[:, None]).squeeze(1).float()  # [N]
        count = valid.sum()
        ctx.save_for_backward(logits, lse, target, valid, count)
        ctx.chunk = chunk
        return ((lse - picked) * valid).sum() / count  # nan for no valid row, as F.cross_entropy

    @staticmethod
    def backward(ctx, grad):
        logits, lse, target, valid, count = ctx.saved_tensors
        scale = valid * (grad.float() / count)  # [N]: d loss / d row
        out = torch.empty_like(logits)
        for i in range(0, logits.size(0), ctx.chunk):
            p = torch.exp(logits[i : i + ctx.chunk].float() - lse[i : i + ctx.chunk, None])  # softmax, [n, V]
            p.scatter_add_(1, target[i : i + ctx.chunk, None], torch.full_like(p[:, :1], -1.0))  # - onehot
            out[i : i + ctx.chunk] = p.mul_(scale[i : i + ctx.chunk, None])
        return out, None, None


def _mask(x: torch.Tensor, mask: GrowthMask | None) -> torch.Tensor:
    """Eq. 12: zero (then ramp) the new output neurons of an FC layer. mask [N] broadcasts over [..., N]."""
    return x if mask is None else x * mask.value.to(x.dtype)


class MaskedLinear(nn.Linear):
    """``nn.Linear`` whose output neurons (eq. 12) and/or input features can be masked, the masks folded into the
    weight: (x·c_in) W^T ·c_out + b·c_out = x (c_out W c_in)^T + b·c_out. Same values and gradients as masking the
    activations, at the cost of an O x I weight op instead of a B x T x (I or O) activation pass per mask. A module
    (not a function on ``.weight``) so that ZeRO-3 gathers its parameters in its own forward hook."""

    def forward(
        self, x: torch.Tensor, c_out: torch.Tensor | None = None, c_in: torch.Tensor | None = None
    ) -> torch.Tensor:  # [..., I] -> [..., O]; c_out [O], c_in [I]
        if c_out is None and c_in is None:
            return super().forward(x)
        w, b = self.weight, self.bias  # [O, I], [O]
        if c_out is not None:
            c_out = c_out.to(w.dtype)
            w, b = w * c_out[:, None], (None if b is None else b * c_out)
        if c_in is not None:
            w = w * c_in.to(w.dtype)
        return F.linear(x, w, b)


def _c(mask: GrowthMask | None) -> torch.Tensor | None:
    return None if mask is None else mask.value


class _MaskedLayerNormFn(torch.autograd.Function):
    """y = ((x - mu) * rstd) * (ω·c) + β·c with mu, var the c-weighted mean and variance over the last dim (eq. 17)
    and the output re-masked (eq. 19) through the affine vectors.

    The backward is written out because autograd's version of the weighted statistics keeps four activations and
    runs about twice the elementwise passes; this one keeps x̂ and rstd and costs ~2/3 of it (the hidden ramp's
    main cost, ``benchmarks/bench_masks.py``). With w = c / Σc, g = dy·ω·c:
    dx = rstd · (g - w · (Σg + x̂ · Σ(g·x̂))) (LayerNorm's gradient, the uniform 1/H replaced by w).
    Statistics, output and gradients are computed in fp32 (fp64 stays fp64) and cast back to each tensor's
    dtype, as ``F.layer_norm`` does for bf16: bf16 statistics make a hidden growth move the loss. A
    reduced-precision input is saved as it is, with mu, and x̂ recomputed in the backward (an fp32 x̂ would take
    twice the bf16 activation's memory). The mask is a constant (no gradient); double backward is not supported.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, c, eps):  # x [..., H]; weight, bias, c [H]
        ct = torch.promote_types(x.dtype, torch.float32)  # compute dtype: fp32, or fp64 for fp64 inputs
        xf, c = x.to(ct), c.to(ct)
        w = c / c.sum()  # [H]: eq. 17's mask-weighted average as a mat-vec
        mu = (xf @ w).unsqueeze(-1)  # [..., 1]
        xc = xf - mu  # x - mu, [..., H]
        rstd = torch.rsqrt((xc * xc) @ w + eps).unsqueeze(-1)  # [..., 1]
        xhat = xc.mul_(rstd)  # [..., H]
        wc = weight.to(ct) * c  # eq. 19's re-masking folded into the affine vectors: (x̂·ω + β)·c = x̂·(ω·c) + β·c
        low = x.dtype != ct
        ctx.save_for_backward(x if low else xhat, mu if low else None, rstd, wc, w, c)
        ctx.dtypes = x.dtype, weight.dtype, bias.dtype
        return torch.addcmul(bias.to(ct) * c, xhat, wc).to(x.dtype)

    @staticmethod
    def backward(ctx, gy):  # gy [..., H]
        saved, mu, rstd, wc, w, c = ctx.saved_tensors
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        xhat = saved if mu is None else (saved.to(rstd.dtype) - mu).mul_(rstd)  # [..., H] in the compute dtype
        gy = gy.to(rstd.dtype)
        g = gy * wc  # d loss / d x̂
        stats = torch.addcmul(g.sum(-1, keepdim=True), xhat, (g * xhat).sum(-1, keepdim=True))  # Σg + x̂·Σ(g·x̂)
        gx = torch.addcmul(g, stats, w, value=-1).mul_(rstd)
        gy2, xhat2 = gy.reshape(-1, gy.shape[-1]), xhat.reshape(-1, gy.shape[-1])  # [N, H]
        gw, gb = (gy2 * xhat2).sum(0) * c, gy2.sum(0) * c
        return gx.to(x_dtype), gw.to(w_dtype), gb.to(b_dtype), None, None


class MaskedLayerNorm(nn.Module):
    """LayerNorm over the last dim whose mean/variance ignore masked features (eq. 17) and whose output is
    re-masked (eq. 19), so new hidden features neither change nor leak into existing ones."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor, mask: GrowthMask | None = None) -> torch.Tensor:  # [..., H]
        if mask is None:
            return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        return _MaskedLayerNormFn.apply(x, self.weight, self.bias, mask.value, self.eps)  # fp32 inside


class Attention(nn.Module):
    """Multi-head self-attention with head size ``d`` decoupled from H (appendix A):
    Q/K/V: H -> n*d, output projection n*d -> H. New heads are silenced by masking their values (eq. 23)."""

    def __init__(self, hidden_dim: int, head_num: int, head_dim: int, dropout: float, causal: bool) -> None:
        super().__init__()
        inner = head_num * head_dim
        self.q = nn.Linear(hidden_dim, inner)
        self.k = nn.Linear(hidden_dim, inner)
        self.v = MaskedLinear(hidden_dim, inner)
        self.proj = MaskedLinear(inner, hidden_dim)
        self.head_num, self.head_dim, self.causal, self.dropout = head_num, head_dim, causal, dropout

    def forward(
        self,
        x: torch.Tensor,
        head_mask: GrowthMask | None,
        attn_mask: torch.Tensor | None,
        out_mask: GrowthMask | None = None,
    ) -> torch.Tensor:
        """[B, T, H] -> [B, T, H]; ``out_mask`` [H] masks the output projection's neurons (the hidden mask)."""
        B, T, _ = x.shape
        n, d = self.head_num, self.head_dim
        q = self.q(x).view(B, T, n, d).transpose(1, 2)  # [B, n, T, d]
        k = self.k(x).view(B, T, n, d).transpose(1, 2)
        # eq. 23: new heads' values -> 0, on V's rows (each head's c repeated over its d rows, [n*d])
        v = self.v(x, None if head_mask is None else head_mask.value.repeat_interleave(d))
        v = v.view(B, T, n, d).transpose(1, 2)  # [B, n, T, d]
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=self.causal and attn_mask is None,
        )  # [B, n, T, d]; new heads output 0 (eq. 24)
        return self.proj(y.transpose(1, 2).reshape(B, T, n * d), _c(out_mask))  # eq. 25-26, [B, T, H]


class MLP(nn.Module):
    """GELU feed-forward H -> F -> H; new intermediate neurons are masked *after* the activation (eq. 12)."""

    def __init__(self, hidden_dim: int, ffn_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_dim, ffn_dim)
        self.fc2 = MaskedLinear(ffn_dim, hidden_dim)

    def forward(self, x: torch.Tensor, ffn_mask: GrowthMask | None, out_mask: GrowthMask | None = None) -> torch.Tensor:
        # eq. 12 after the activation, folded into fc2's input columns; out_mask [H]: the hidden mask on fc2's rows
        return self.fc2(F.gelu(self.fc1(x)), _c(out_mask), _c(ffn_mask))  # [B, T, F] -> [B, T, H]


class Block(nn.Module):
    """One Transformer layer; ``pre_ln`` selects GPT's form (eq. 9) or BERT's post-LN form (eq. 8).

    Optional per-layer masks: ``ffn_mask`` [F], ``head_mask`` [n], and ``layer_mask`` [1] for a newly inserted
    layer, which mixes output and input as x_n = c·Layer(x) + (1−c)·x (eq. 20).
    """

    def __init__(
        self,
        hidden_dim: int,
        ffn_dim: int,
        head_num: int,
        head_dim: int,
        *,
        pre_ln: bool,
        causal: bool,
        dropout: float,
        ln_eps: float,
    ) -> None:
        super().__init__()
        self.pre_ln = pre_ln
        self.ln1 = MaskedLayerNorm(hidden_dim, ln_eps)
        self.attn = Attention(hidden_dim, head_num, head_dim, dropout, causal)
        self.ln2 = MaskedLayerNorm(hidden_dim, ln_eps)
        self.mlp = MLP(hidden_dim, ffn_dim)
        self.drop = nn.Dropout(dropout)
        self.ffn_mask: GrowthMask | None = None
        self.head_mask: GrowthMask | None = None
        self.layer_mask: GrowthMask | None = None

    def _layer(self, x: torch.Tensor, hm: GrowthMask | None, attn_mask: torch.Tensor | None) -> torch.Tensor:
        # Residual additions masked (hm on the output projections' rows) so new hidden dims stay 0; dropout is
        # elementwise, so masking before it equals masking after it.
        if self.pre_ln:  # x + Attn(LN(x)), then + FFN(LN(.))
            x = x + self.drop(self.attn(self.ln1(x, hm), self.head_mask, attn_mask, hm))
            return x + self.drop(self.mlp(self.ln2(x, hm), self.ffn_mask, hm))
        x = self.ln1(x + self.drop(self.attn(x, self.head_mask, attn_mask, hm)), hm)
        return self.ln2(x + self.drop(self.mlp(x, self.ffn_mask, hm)), hm)

    def forward(
        self, x: torch.Tensor, hidden_mask: GrowthMask | None, attn_mask: torch.Tensor | None
    ) -> torch.Tensor:  # [B, T, H] -> [B, T, H]
        out = self._layer(x, hidden_mask, attn_mask)
        if self.layer_mask is None:
            return out
        c = self.layer_mask.value.to(x.dtype)  # [1]
        return c * out + (1 - c) * x  # eq. 20


def init_weights(module: nn.Module, std: float, generator: torch.Generator | None = None) -> None:
    """Default init (GPT-2/BERT style): Linear/Embedding weights N(0, std), biases 0, LayerNorm gain 1, bias 0."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            with torch.no_grad():
                m.weight.normal_(0.0, std, generator=generator)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    m.bias.zero_()
        elif isinstance(m, MaskedLayerNorm):
            with torch.no_grad():
                m.weight.fill_(1.0)
                m.bias.zero_()


def attention_bias(padding_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, T] padding mask (1 = token, 0 = pad) -> additive key bias [B, 1, 1, T] for SDPA."""
    if padding_mask.dim() != 2:
        raise ValueError(f"attention_mask must be [B, T], got shape {tuple(padding_mask.shape)}")
    neg = torch.finfo(dtype).min if dtype.is_floating_point else -math.inf
    bias = torch.zeros(padding_mask.shape, dtype=dtype, device=padding_mask.device)
    bias = bias.masked_fill(padding_mask == 0, neg)
    return bias[:, None, None, :]
