"""Export a trained msg_ray model: a plain folded checkpoint (state_dict + config.json) and Hugging Face checkpoints.

``export_hf`` writes the Hugging Face model the architecture's adapter names (``GPT2LMHeadModel``,
``BertForMaskedLM``, ``LlamaForCausalLM``; see ``msg_ray.archs``) with ``save_pretrained`` (safetensors), whose
logits equal ours. The layout mapping (fused/transposed GPT-2 weights, BERT's token-type table, Llama's names)
lives with each architecture; this module only strips masks, checks coverage and writes.

transformers is imported only by the Hugging Face export and load paths (an optional, slow import). Layering: this
module reads weight files with ``msg_ray.train.checkpoint.read`` (the checkpoint format sits below it) and is
called by the training run's ``msg_ray.train.snapshot`` at the end of a run (above it); ``tests/test_layering.py``
keeps that order.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import Tensor

from msg_ray.architecture import get_arch
from msg_ray.data.tokenizer import CLS, EOS, MASK, PAD, SEP
from msg_ray.masked_layers import MASK_NAMES, GrowableModel
from msg_ray.model import ModelConfig, build_from_config
from msg_ray.train import checkpoint

PLAIN_WEIGHTS = "model.pt"
PLAIN_CONFIG = "config.json"


def _is_mask_key(key: str) -> bool:
    parts = key.split(".")
    return len(parts) >= 2 and parts[-1] in ("value", "n_old") and parts[-2] in MASK_NAMES


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


def hf_config(config: ModelConfig) -> Any:
    """The Hugging Face config matching ``config`` (``GPT2Config`` / ``BertConfig`` / ``LlamaConfig``, from the
    architecture's adapter; ValueError if the architecture cannot be expressed, e.g. heads not tiling hidden)."""
    return get_arch(config.arch).hf.config(config)


def to_hf_model(state_dict: dict[str, Tensor], config: ModelConfig) -> torch.nn.Module:
    """An in-memory Hugging Face model (the architecture's ``hf.model_class``, fp32, eval mode) with our weights."""
    import transformers  # optional, slow import

    adapter = get_arch(config.arch).hf
    hf_cfg = adapter.config(config)
    sd = {k: v.detach().float().cpu() for k, v in strip_masks(state_dict).items()}
    model, mapped = getattr(transformers, adapter.model_class)(hf_cfg), adapter.state(sd, config)
    expected = {k for k, _ in model.named_parameters(remove_duplicate=False)}
    if expected - set(mapped):  # a new transformers layout would otherwise keep silent random weights
        raise ValueError(
            f"Hugging Face model has parameters this export does not fill: {sorted(expected - set(mapped))}"
        )
    model.load_state_dict(mapped, strict=False)
    return model.float().eval()


def export_hf(
    state_dict: dict[str, Tensor],
    config: ModelConfig,
    out_dir: str | Path,
    *,
    tokenizer: Tokenizer | None = None,
    card: dict[str, Any] | None = None,
) -> Path:
    """Write a Hugging Face checkpoint of a folded model (config.json + model.safetensors); returns ``out_dir``.

    With ``tokenizer`` (the run's ``tokenizers.Tokenizer``) the folder also holds a fast tokenizer with our special
    tokens and the model config names their ids, so ``AutoTokenizer.from_pretrained`` and ``pipeline(...)`` work
    on the folder as on a hub model; ``card`` (see :func:`model_card`) becomes its README.md.
    """
    out = Path(out_dir)
    model = to_hf_model(state_dict, config)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer is not None:
        hf_tok = hf_tokenizer(tokenizer, config)
        hf_tok.save_pretrained(out)
        ids = {k: getattr(hf_tok, f"{k}_token_id") for k in ("bos", "eos", "pad")}
        targets = [model.config] + ([model.generation_config] if hasattr(model, "generation_config") else [])
        for target, (key, value) in itertools.product(targets, ids.items()):  # encoders have no generation config
            setattr(target, f"{key}_token_id", value)
    model.save_pretrained(out)
    (out / "README.md").write_text(model_card(config, card or {}))
    return out


def hf_tokenizer(tokenizer: Tokenizer, config: ModelConfig) -> Any:
    """``PreTrainedTokenizerFast`` around our tokenizer: EOS doubles as BOS for causal LMs, BERT's [CLS]/[SEP]/
    [MASK] for masked LMs, [PAD] for both (``msg_ray.data.tokenizer.SPECIAL_TOKENS``)."""
    from transformers import PreTrainedTokenizerFast  # optional, slow import

    causal = get_arch(config.arch).objective == "clm"
    specials = {"pad_token": PAD, "eos_token": EOS}
    specials.update({"bos_token": EOS} if causal else {"cls_token": CLS, "sep_token": SEP, "mask_token": MASK})
    tok = PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=config.max_seq_len, **specials)
    if len(tok) > config.vocab_size:
        raise ValueError(f"tokenizer has {len(tok)} tokens, more than the model's vocab_size {config.vocab_size}")
    return tok


def model_card(config: ModelConfig, info: dict[str, Any]) -> str:
    """A short Hugging Face model card: front matter, what the model is, how it grew, its data and final loss.

    ``info`` keys (all optional): ``schedule`` (a ``Schedule.to_dict()``), ``growth_steps``, ``data`` (source,
    tokenizer, seq_len), ``final_val_loss``, ``steps``, ``run_id``.
    """
    spec = get_arch(config.arch)
    sched = info.get("schedule") or {}
    tag = "text-generation" if spec.objective == "clm" else "fill-mask"
    groups = f", {config.kv_group_size} query heads per key/value head" if config.kv_group_size > 1 else ""
    lines = [
        "---",
        "library_name: transformers",
        f"pipeline_tag: {tag}",
        "tags: [msg_ray, masked-structural-growth]",
        "---",
        "",
        f"# {sched.get('name') or config.arch} ({spec.hf.model_class})",
        "",
        f"{spec.summary}. Structure (hidden_dim, ffn_dim, head_num, layer_num) = {config.structure}, head_dim "
        f"{config.head_dim}{groups}, vocabulary {config.vocab_size}, context {config.max_seq_len}.",
        "",
    ]
    stages = sched.get("stages", [])
    if len(stages) > 1:
        # the steps the run really grew at (an adaptive run moves them); the schedule's starts otherwise
        starts = [0, *info["growth_steps"]] if info.get("growth_steps") else [st["start"] for st in stages]
        lines += [
            f"Pretrained with Masked Structural Growth (Yao et al., arXiv 2305.02869) by msg_ray: operator "
            f"{sched.get('operator')}, mask ramp phi = {sched.get('phi')} steps, {sched.get('total_steps')} steps.",
            "",
            "| stage | structure | starts at step |",
            "|---|---|---|",
            *(
                f"| {i} | {tuple(st['structure'])} | {b} |"
                for i, (st, b) in enumerate(zip(stages, starts, strict=False))
            ),
            "",
        ]
    facts = {
        "data": info.get("data"),
        "final validation loss": info.get("final_val_loss"),
        "trained steps": info.get("steps"),
        "MLflow run": info.get("run_id"),
    }
    lines += [f"- {k}: {v}" for k, v in facts.items() if v is not None]
    return "\n".join(lines) + "\n"


def export_plain(model: GrowableModel, out_dir: str | Path) -> Path:
    """Write ``model.pt`` (fp32 state_dict without mask buffers) and ``config.json`` (``ModelConfig.to_dict``)."""
    out = Path(out_dir)
    sd = strip_masks({k: v.detach().float().cpu() for k, v in model.state_dict().items()})
    out.mkdir(parents=True, exist_ok=True)
    torch.save(sd, out / PLAIN_WEIGHTS)
    (out / PLAIN_CONFIG).write_text(json.dumps(model.config.to_dict(), indent=1) + "\n")
    return out


def load_exported(out_dir: str | Path) -> GrowableModel:
    """Rebuild a model written by :func:`export_plain` (or the training loop's export folder), in eval mode."""
    out = Path(out_dir)
    for name in (PLAIN_WEIGHTS, PLAIN_CONFIG):
        if not (out / name).is_file():
            raise FileNotFoundError(f"load_exported: {out / name} is missing")
    config = ModelConfig.from_dict(json.loads((out / PLAIN_CONFIG).read_text()))
    model = build_from_config(config)
    model.load_state_dict(checkpoint.read(out / PLAIN_WEIGHTS))
    return model.eval()
