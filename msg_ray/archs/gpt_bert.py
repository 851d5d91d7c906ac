"""The GPT and BERT architecture declarations: parameter/FLOPs formulas, Net2Net roles, Hugging Face mapping.

Parameter layout (``msg_ray.archs.transformer``; head_dim decoupled from hidden_dim, attention width A = n*d):
``tok_emb`` [V, H], ``pos_emb`` [S, H]; per layer ln1, q/k/v Linear(H -> A) + bias, proj Linear(A -> H) + bias,
ln2, fc1 Linear(H -> F) + bias, fc2 Linear(F -> H) + bias. GPT adds ``ln_f``, LM head tied to ``tok_emb``; BERT
adds an embedding LayerNorm, an MLM transform Linear(H -> H) + LN and a decoder bias [V] (decoder tied).

FLOPs (matmuls only, 2 per multiply-add; see ``msg_ray.flops`` for the conventions): per token and layer
2*H*3A (q, k, v) + 2*A*H (proj) + 2*2*H*F (FFN) + 2*2*T*A (scores and weights.v); head 2*H*V (+ 2*H*H for
BERT's transform); training = 3 x forward.

Hugging Face: ``GPT2LMHeadModel`` / ``BertForMaskedLM``, only when ``head_num * head_dim == hidden_dim`` (their
head size is derived from the hidden size). GPT-2's ``Conv1D`` stores [in, out] and fuses q, k, v into
``c_attn``; BERT gets one all-zero token-type embedding; activations are the exact erf GELU (``"gelu"``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from msg_ray.architecture import Architecture, HFAdapter, ModelConfig, Roles
from msg_ray.archs.transformer import GrowableTransformer
from msg_ray.structure import Structure


def _param_count(arch: str):
    def count(
        s: Structure,
        vocab: int,
        max_seq_len: int,
        head_dim: int,
        kv_group_size: int = 1,
        include_embeddings: bool = True,
    ) -> int:
        h, f, n, layers = s.as_tuple()
        a = n * head_dim
        per_layer = 2 * h + 3 * (h * a + a) + (a * h + h) + 2 * h + (h * f + f) + (f * h + h)
        total = layers * per_layer + 2 * h  # + GPT's ln_f / BERT's embedding LayerNorm
        if arch == "bert":
            total += h * h + h + 2 * h + vocab  # MLM transform, its LayerNorm, decoder bias
        return total + ((vocab * h + max_seq_len * h) if include_embeddings else 0)

    return count


def _flops_per_token(arch: str):
    def fpt(s: Structure, vocab: int, seq_len: int, head_dim: int, kv_group_size: int = 1) -> float:
        h, f, n, layers = s.as_tuple()
        a = n * head_dim
        per_layer = 2 * h * 3 * a + 2 * a * h + 2 * 2 * h * f + 2 * 2 * seq_len * a
        head = 2 * h * vocab + (2 * h * h if arch == "bert" else 0)
        return 3.0 * (layers * per_layer + head)

    return fpt


def net2net_roles(name: str) -> Roles:
    """(axis, dimension, split) for each grown axis of a GPT/BERT parameter, by its name."""
    if name == "mlm_bias":  # [V]: the vocabulary does not grow
        return []
    owner, kind = name.split(".")[-2:]
    if owner in ("tok_emb", "pos_emb"):
        return [(1, "H", False)]
    producer = {"q": "heads", "k": "heads", "v": "heads", "proj": "H", "fc1": "F", "fc2": "H", "mlm_dense": "H"}
    consumer = {"q": "H", "k": "H", "v": "H", "proj": "heads", "fc1": "H", "fc2": "F", "mlm_dense": "H"}
    if owner in producer:
        return [(0, producer[owner], False)] + ([(1, consumer[owner], True)] if kind == "weight" else [])
    return [(0, "H", False)]  # LayerNorm weight/bias


def check_hf_shapes(config: ModelConfig) -> None:
    s = config.structure
    if s.head_num * config.head_dim != s.hidden_dim:
        raise ValueError(
            f"Hugging Face export needs structure.head_num * head_dim == structure.hidden_dim, got "
            f"head_num={s.head_num} * head_dim={config.head_dim} = {s.head_num * config.head_dim} "
            f"!= hidden_dim={s.hidden_dim}"
        )


def _gpt2_config(config: ModelConfig) -> Any:
    from transformers import GPT2Config  # optional, slow import

    check_hf_shapes(config)
    s = config.structure
    return GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.max_seq_len,
        n_embd=s.hidden_dim,
        n_layer=s.layer_num,
        n_head=s.head_num,
        n_inner=s.ffn_dim,
        activation_function="gelu",
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        layer_norm_epsilon=config.ln_eps,
        initializer_range=config.init_std,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=None,
    )


def _gpt2_state(sd: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    tok = sd["tok_emb.weight"][: config.vocab_size]  # [V, H]: our padded rows stay out
    out = {"transformer.wte.weight": tok, "transformer.wpe.weight": sd["pos_emb.weight"]}
    for i in range(config.structure.layer_num):
        b, h = f"blocks.{i}.", f"transformer.h.{i}."
        for ours, theirs in (("ln1", "ln_1"), ("ln2", "ln_2")):
            out[h + theirs + ".weight"] = sd[b + ours + ".weight"]
            out[h + theirs + ".bias"] = sd[b + ours + ".bias"]
        # Conv1D is x @ W + b with W [in, out]: transpose nn.Linear's [out, in]; c_attn = [q | k | v] on out.
        qkv = [sd[f"{b}attn.{n}.weight"] for n in ("q", "k", "v")]
        out[h + "attn.c_attn.weight"] = torch.cat(qkv, dim=0).t()
        out[h + "attn.c_attn.bias"] = torch.cat([sd[f"{b}attn.{n}.bias"] for n in ("q", "k", "v")])
        for ours, theirs in (("attn.proj", "attn.c_proj"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
            out[h + theirs + ".weight"] = sd[b + ours + ".weight"].t()
            out[h + theirs + ".bias"] = sd[b + ours + ".bias"]
    out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = sd["ln_f.weight"], sd["ln_f.bias"]
    out["lm_head.weight"] = tok  # tied
    return out


def _bert_config(config: ModelConfig) -> Any:
    from transformers import BertConfig  # optional, slow import

    check_hf_shapes(config)
    s = config.structure
    return BertConfig(
        vocab_size=config.vocab_size,
        hidden_size=s.hidden_dim,
        num_hidden_layers=s.layer_num,
        num_attention_heads=s.head_num,
        intermediate_size=s.ffn_dim,
        hidden_act="gelu",
        hidden_dropout_prob=config.dropout,
        attention_probs_dropout_prob=config.dropout,
        max_position_embeddings=config.max_seq_len,
        type_vocab_size=1,
        layer_norm_eps=config.ln_eps,
        initializer_range=config.init_std,
        tie_word_embeddings=True,
    )


_BERT_LAYER = (
    ("attn.q", "attention.self.query"),
    ("attn.k", "attention.self.key"),
    ("attn.v", "attention.self.value"),
    ("attn.proj", "attention.output.dense"),
    ("ln1", "attention.output.LayerNorm"),  # post-LN: LN(x + Attn(x))
    ("mlp.fc1", "intermediate.dense"),
    ("mlp.fc2", "output.dense"),
    ("ln2", "output.LayerNorm"),  # LN(x + FFN(x))
)


def _bert_state(sd: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    e = "bert.embeddings."
    tok = sd["tok_emb.weight"][: config.vocab_size]  # [V, H]: our padded rows stay out
    out = {
        e + "word_embeddings.weight": tok,
        e + "position_embeddings.weight": sd["pos_emb.weight"],
        e + "token_type_embeddings.weight": torch.zeros(1, tok.shape[1], dtype=tok.dtype),  # no segments
        e + "LayerNorm.weight": sd["emb_ln.weight"],
        e + "LayerNorm.bias": sd["emb_ln.bias"],
    }
    for i in range(config.structure.layer_num):
        for ours, theirs in _BERT_LAYER:
            for kind in ("weight", "bias"):
                out[f"bert.encoder.layer.{i}.{theirs}.{kind}"] = sd[f"blocks.{i}.{ours}.{kind}"]
    p = "cls.predictions."
    for ours, theirs in (("mlm_dense", "transform.dense"), ("mlm_ln", "transform.LayerNorm")):
        out[f"{p}{theirs}.weight"], out[f"{p}{theirs}.bias"] = sd[f"{ours}.weight"], sd[f"{ours}.bias"]
    out[p + "bias"] = out[p + "decoder.bias"] = sd["mlm_bias"][: config.vocab_size]
    out[p + "decoder.weight"] = tok  # tied
    return out


GPT = Architecture(
    name="gpt",
    objective="clm",
    build=GrowableTransformer,
    param_count=_param_count("gpt"),
    flops_per_token=_flops_per_token("gpt"),
    net2net_roles=net2net_roles,
    hf=HFAdapter(model_class="GPT2LMHeadModel", config=_gpt2_config, state=_gpt2_state),
    tied_head_norm="ln_f",
    summary="GPT-2: pre-LN causal decoder, learned positions, GELU FFN, tied output embedding",
)
BERT = Architecture(
    name="bert",
    objective="mlm",
    build=GrowableTransformer,
    param_count=_param_count("bert"),
    flops_per_token=_flops_per_token("bert"),
    net2net_roles=net2net_roles,
    hf=HFAdapter(model_class="BertForMaskedLM", config=_bert_config, state=_bert_state),
    tied_head_norm="mlm_ln",
    pre_norm=False,
    summary="BERT: post-LN encoder, masked-LM head (dense, GELU, LN), tied decoder",
)
