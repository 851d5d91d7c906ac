"""Export a trained msg_ray model: a plain folded checkpoint (state_dict + config.json) and Hugging Face checkpoints.

``export_hf`` writes ``GPT2LMHeadModel`` (arch gpt) or ``BertForMaskedLM`` (arch bert) with ``save_pretrained``
(safetensors) whose logits equal ours. It is only defined when ``head_num * head_dim == hidden_dim``: Hugging
Face's GPT-2/BERT derive the head size from the hidden size, while ours is decoupled (paper appendix A).
Layout differences handled here: GPT-2's ``Conv1D`` stores weights as [in, out] (transposed) and fuses q, k, v
into one ``c_attn``; BERT gets a single all-zero token-type embedding (we have no segments); activations are the
exact erf GELU (``"gelu"``, not GPT-2's default tanh ``"gelu_new"``). ``transformers`` is imported lazily.

transformers is imported only by the Hugging Face export and load paths (an optional, slow import).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from msg_ray.model import GrowableTransformer, ModelConfig, build_from_config
from msg_ray.train import checkpoint

_MASK_NAMES = ("hidden_mask", "ffn_mask", "head_mask", "layer_mask")
PLAIN_WEIGHTS = "model.pt"
PLAIN_CONFIG = "config.json"


def _is_mask_key(key: str) -> bool:
    parts = key.split(".")
    return len(parts) >= 2 and parts[-1] in ("value", "n_old") and parts[-2] in _MASK_NAMES


def strip_masks(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop MSG mask buffers that are fully ramped (c = 1, identities); a mask still ramping cannot be exported."""
    out = {}
    for key, value in state_dict.items():
        if not _is_mask_key(key):
            out[key] = value
        elif key.endswith(".value") and not bool(torch.all(value == 1)):
            raise ValueError(
                f"cannot export a model whose growth mask {key[: -len('.value')]} is still ramping "
                f"(c={float(value.min()):.3f}); finish the ramp (set_mask_value(model, 1.0)) first"
            )
    return out


def _check_hf_shapes(config: ModelConfig) -> None:
    s = config.structure
    if s.head_num * config.head_dim != s.hidden_dim:
        raise ValueError(
            f"Hugging Face export needs structure.head_num * head_dim == structure.hidden_dim, got "
            f"head_num={s.head_num} * head_dim={config.head_dim} = {s.head_num * config.head_dim} "
            f"!= hidden_dim={s.hidden_dim}"
        )


def _gpt2_state(sd: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    out = {"transformer.wte.weight": sd["tok_emb.weight"], "transformer.wpe.weight": sd["pos_emb.weight"]}
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
    out["lm_head.weight"] = sd["tok_emb.weight"]  # tied
    return out


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
    tok = sd["tok_emb.weight"]
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
    out[p + "bias"] = out[p + "decoder.bias"] = sd["mlm_bias"]
    out[p + "decoder.weight"] = tok  # tied
    return out


def hf_config(config: ModelConfig) -> Any:
    """The ``GPT2Config`` / ``BertConfig`` matching ``config`` (raises ValueError if heads do not tile hidden)."""
    _check_hf_shapes(config)
    s = config.structure
    if config.arch == "gpt":
        from transformers import GPT2Config

        return GPT2Config(
            vocab_size=config.vocab_size, n_positions=config.max_seq_len, n_embd=s.hidden_dim,
            n_layer=s.layer_num, n_head=s.head_num, n_inner=s.ffn_dim, activation_function="gelu",
            resid_pdrop=config.dropout, embd_pdrop=config.dropout, attn_pdrop=config.dropout,
            layer_norm_epsilon=config.ln_eps, initializer_range=config.init_std, tie_word_embeddings=True,
            bos_token_id=None, eos_token_id=None,
        )  # fmt: skip
    from transformers import BertConfig

    return BertConfig(
        vocab_size=config.vocab_size, hidden_size=s.hidden_dim, num_hidden_layers=s.layer_num,
        num_attention_heads=s.head_num, intermediate_size=s.ffn_dim, hidden_act="gelu",
        hidden_dropout_prob=config.dropout, attention_probs_dropout_prob=config.dropout,
        max_position_embeddings=config.max_seq_len, type_vocab_size=1, layer_norm_eps=config.ln_eps,
        initializer_range=config.init_std, tie_word_embeddings=True,
    )  # fmt: skip


def to_hf_model(state_dict: dict[str, Tensor], config: ModelConfig) -> torch.nn.Module:
    """An in-memory ``GPT2LMHeadModel`` / ``BertForMaskedLM`` (fp32, eval mode) holding our weights."""
    hf_cfg = hf_config(config)
    sd = {k: v.detach().float().cpu() for k, v in strip_masks(state_dict).items()}
    if config.arch == "gpt":
        from transformers import GPT2LMHeadModel

        model, mapped = GPT2LMHeadModel(hf_cfg), _gpt2_state(sd, config)
    else:
        from transformers import BertForMaskedLM

        model, mapped = BertForMaskedLM(hf_cfg), _bert_state(sd, config)
    expected = {k for k, _ in model.named_parameters(remove_duplicate=False)}
    if expected - set(mapped):  # a new transformers layout would otherwise keep silent random weights
        raise ValueError(
            f"Hugging Face model has parameters this export does not fill: {sorted(expected - set(mapped))}"
        )
    model.load_state_dict(mapped, strict=False)
    return model.float().eval()


def export_hf(state_dict: dict[str, Tensor], config: ModelConfig, out_dir: str | Path) -> Path:
    """Write a Hugging Face checkpoint (config.json + model.safetensors) of a folded model; returns ``out_dir``."""
    out = Path(out_dir)
    model = to_hf_model(state_dict, config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    return out


def export_plain(model: GrowableTransformer, out_dir: str | Path) -> Path:
    """Write ``model.pt`` (fp32 state_dict without mask buffers) and ``config.json`` (``ModelConfig.to_dict``)."""
    out = Path(out_dir)
    sd = strip_masks({k: v.detach().float().cpu() for k, v in model.state_dict().items()})
    out.mkdir(parents=True, exist_ok=True)
    torch.save(sd, out / PLAIN_WEIGHTS)
    (out / PLAIN_CONFIG).write_text(json.dumps(model.config.to_dict(), indent=1) + "\n")
    return out


def load_exported(out_dir: str | Path) -> GrowableTransformer:
    """Rebuild a model written by :func:`export_plain` (or the training loop's export folder), in eval mode."""
    out = Path(out_dir)
    for name in (PLAIN_WEIGHTS, PLAIN_CONFIG):
        if not (out / name).is_file():
            raise FileNotFoundError(f"load_exported: {out / name} is missing")
    config = ModelConfig.from_dict(json.loads((out / PLAIN_CONFIG).read_text()))
    model = build_from_config(config)
    model.load_state_dict(checkpoint.read(out / PLAIN_WEIGHTS))
    return model.eval()
