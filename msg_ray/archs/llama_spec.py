"""The llama architecture declaration: parameter/FLOPs formulas, Net2Net roles, Hugging Face ``LlamaForCausalLM``.

Parameter layout (``msg_ray.archs.llama``, A = n*d query width, A/g key/value width): ``tok_emb`` [V, H]; per
layer ``attn_norm`` [H], q [A, H], k, v [A/g, H], o [H, A], ``mlp_norm`` [H], gate, up [F, H], down [H, F];
``norm_f`` [H]; ``lm_head`` [V, H] (untied). No biases, no position table (rotary).

FLOPs (matmuls only, 2 per multiply-add, training = 3 x forward, as ``msg_ray.flops``): per token and layer
2*H*A (q) + 2*2*H*A/g (k, v) + 2*A*H (o) + 3*2*H*F (SwiGLU's three matrices) + 2*2*T*A (scores, weights.v:
every query head attends, grouped or not); head 2*H*V.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from msg_ray.architecture import Architecture, HFAdapter, ModelConfig, Roles
from msg_ray.archs.llama import LlamaTransformer
from msg_ray.structure import Structure


def param_count(
    s: Structure, vocab: int, max_seq_len: int, head_dim: int, kv_group_size: int = 1, include_embeddings: bool = True
) -> int:
    """Parameters; ``include_embeddings=False`` leaves out the input table ``tok_emb`` only (``lm_head`` is a
    matmul every token pays for, so it stays)."""
    h, f, n, layers = s.as_tuple()
    a = n * head_dim
    per_layer = 2 * h + h * a + 2 * h * (a // kv_group_size) + a * h + 3 * h * f
    return layers * per_layer + h + vocab * h + (vocab * h if include_embeddings else 0)


def flops_per_token(s: Structure, vocab: int, seq_len: int, head_dim: int, kv_group_size: int = 1) -> float:
    h, f, n, layers = s.as_tuple()
    a = n * head_dim
    per_layer = 2 * h * a + 2 * 2 * h * (a // kv_group_size) + 2 * a * h + 3 * 2 * h * f + 2 * 2 * seq_len * a
    return 3.0 * (layers * per_layer + 2 * h * vocab)


_PRODUCER = {"q": "heads", "k": "kv_heads", "v": "kv_heads", "o": "H", "gate": "F", "up": "F", "down": "H"}
_CONSUMER = {"q": "H", "k": "H", "v": "H", "o": "heads", "gate": "H", "up": "H", "down": "F"}


def net2net_roles(name: str) -> Roles:
    """(axis, dimension, split) per grown axis: producers copy (eq. 5), consumers split (eq. 6)."""
    owner = name.split(".")[-2]
    if owner == "tok_emb":
        return [(1, "H", False)]
    if owner == "lm_head":
        return [(1, "H", True)]
    if owner in _PRODUCER:
        return [(0, _PRODUCER[owner], False), (1, _CONSUMER[owner], True)]
    return [(0, "H", False)]  # RMSNorm gains


def hf_config(config: ModelConfig) -> Any:
    from transformers import LlamaConfig  # optional, slow import

    s = config.structure
    if s.hidden_dim % s.head_num:  # LlamaConfig validates this even when head_dim is given explicitly
        raise ValueError(
            f"Hugging Face export of llama needs structure.hidden_dim={s.hidden_dim} divisible by "
            f"head_num={s.head_num} (transformers' LlamaConfig checks it; head_dim={config.head_dim} is kept as is)"
        )
    return LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=s.hidden_dim,
        intermediate_size=s.ffn_dim,
        num_hidden_layers=s.layer_num,
        num_attention_heads=s.head_num,
        num_key_value_heads=s.head_num // config.kv_group_size,
        head_dim=config.head_dim,
        hidden_act="silu",
        max_position_embeddings=config.max_seq_len,
        rms_norm_eps=config.ln_eps,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        initializer_range=config.init_std,
        attention_dropout=config.dropout,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=None,
        eos_token_id=None,
    )


_LAYER = (
    ("attn_norm", "input_layernorm"),
    ("attn.q", "self_attn.q_proj"),
    ("attn.k", "self_attn.k_proj"),
    ("attn.v", "self_attn.v_proj"),
    ("attn.o", "self_attn.o_proj"),
    ("mlp_norm", "post_attention_layernorm"),
    ("mlp.gate", "mlp.gate_proj"),
    ("mlp.up", "mlp.up_proj"),
    ("mlp.down", "mlp.down_proj"),
)


def hf_state(sd: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    out = {
        "model.embed_tokens.weight": sd["tok_emb.weight"][: config.vocab_size],  # our padded rows stay out
        "model.norm.weight": sd["norm_f.weight"],
        "lm_head.weight": sd["lm_head.weight"][: config.vocab_size],
    }
    for i in range(config.structure.layer_num):
        for ours, theirs in _LAYER:
            out[f"model.layers.{i}.{theirs}.weight"] = sd[f"blocks.{i}.{ours}.weight"]
    return out


LLAMA = Architecture(
    name="llama",
    objective="clm",
    build=LlamaTransformer,
    param_count=param_count,
    flops_per_token=flops_per_token,
    net2net_roles=net2net_roles,
    hf=HFAdapter(model_class="LlamaForCausalLM", config=hf_config, state=hf_state),
    grouped_query=True,
    summary="Llama: pre-norm decoder, RMSNorm, SwiGLU, rotary positions, no biases, untied head, GQA",
)
