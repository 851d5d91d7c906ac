"""Exports: Hugging Face checkpoints reproduce our logits; plain exports round-trip; invalid cases are refused."""

from __future__ import annotations

import pytest
import torch

from msg_ray.export import export_hf, export_plain, hf_config, load_exported
from msg_ray.growth import grow, set_mask_value
from msg_ray.model import GrowableTransformer, build_model
from msg_ray.structure import Structure

pytest.importorskip("transformers")

VOCAB, SEQ, HEAD_DIM = 97, 16, 16
TARGET = Structure(64, 96, 4, 3)  # 4 heads * 16 = 64: HF-compatible; ffn != hidden so transposes cannot hide


def _perturb(model: GrowableTransformer, seed: int) -> GrowableTransformer:
    """Random values in every parameter (biases and LN gains are 0/1 at init, which would hide mapping bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _model(arch: str, grown: bool) -> GrowableTransformer:
    if not grown:
        return _perturb(build_model(arch, TARGET, vocab_size=VOCAB, max_seq_len=SEQ, head_dim=HEAD_DIM, seed=1), 2)
    small = _perturb(build_model(arch, (32, 48, 2, 2), vocab_size=VOCAB, max_seq_len=SEQ, head_dim=HEAD_DIM, seed=3), 4)
    model = grow(small, TARGET, "msg", seed=5)  # all four dimensions at once
    set_mask_value(model, 1.0)  # fold
    return _perturb(model, 6)


def _load_hf(arch: str, path):
    from transformers import BertForMaskedLM, GPT2LMHeadModel

    cls = GPT2LMHeadModel if arch == "gpt" else BertForMaskedLM
    return cls.from_pretrained(path).float().eval()


@pytest.mark.parametrize("arch", ["gpt", "bert"])
@pytest.mark.parametrize("grown", [False, True], ids=["plain", "grown"])
def test_hf_export_matches_logits(arch: str, grown: bool, tmp_path) -> None:
    model = _model(arch, grown)
    out = export_hf(model.state_dict(), model.config, tmp_path / "hf")
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    hf = _load_hf(arch, out)
    ids = torch.randint(0, VOCAB, (3, SEQ), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model(ids), hf(input_ids=ids).logits
    assert theirs.shape == ours.shape == (3, SEQ, VOCAB)
    assert (ours - theirs).abs().max().item() < 1e-5
    assert ours.abs().max().item() > 0.1  # logits are not trivially equal (e.g. all zero)


def test_hf_bert_padding_mask_matches(tmp_path) -> None:
    model = _model("bert", grown=False)
    hf = _load_hf("bert", export_hf(model.state_dict(), model.config, tmp_path / "hf"))
    ids = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, SEQ, dtype=torch.long)
    mask[1, 10:] = 0
    with torch.no_grad():
        ours, theirs = model(ids, attention_mask=mask), hf(input_ids=ids, attention_mask=mask).logits
    assert (ours[0] - theirs[0]).abs().max().item() < 1e-5
    assert (ours[1, :10] - theirs[1, :10]).abs().max().item() < 1e-5


def test_hf_gelu_is_exact_not_tanh() -> None:
    model = build_model("gpt", TARGET, vocab_size=VOCAB, max_seq_len=SEQ, head_dim=HEAD_DIM)
    assert hf_config(model.config).activation_function == "gelu"


def test_hf_export_refuses_decoupled_heads(tmp_path) -> None:
    model = build_model("gpt", (64, 96, 2, 1), vocab_size=VOCAB, max_seq_len=SEQ, head_dim=HEAD_DIM)
    with pytest.raises(ValueError, match="head_num.*head_dim.*hidden_dim"):
        export_hf(model.state_dict(), model.config, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_export_refuses_mid_ramp(tmp_path) -> None:
    small = build_model("gpt", (32, 48, 2, 2), vocab_size=VOCAB, max_seq_len=SEQ, head_dim=HEAD_DIM, seed=0)
    model = grow(small, TARGET, "msg", seed=1)
    set_mask_value(model, 0.5)
    with pytest.raises(ValueError, match="still ramping"):
        export_hf(model.state_dict(), model.config, tmp_path / "hf")
    with pytest.raises(ValueError, match="still ramping"):
        export_plain(model, tmp_path / "plain")


@pytest.mark.parametrize("arch", ["gpt", "bert"])
def test_plain_export_round_trip(arch: str, tmp_path) -> None:
    model = _model(arch, grown=True)
    export_plain(model, tmp_path / "plain")
    loaded = load_exported(tmp_path / "plain")
    assert loaded.config == model.config and not loaded.mask_modules() and not loaded.training
    ids = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


def test_load_exported_missing_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="model.pt"):
        load_exported(tmp_path)


@pytest.mark.parametrize("arch", ["gpt", "bert", "llama"])
def test_hf_export_carries_tokenizer_and_card_and_runs_in_a_pipeline(arch: str, tmp_path) -> None:
    """The export folder works like a hub model: AutoTokenizer, pipeline(...), and a README model card."""
    from transformers import AutoTokenizer, pipeline

    from msg_ray.data.tokenizer import MASK, train_bpe
    from msg_ray.presets import get_schedule

    texts = ["the cat sat on the mat and the dog sat on the log"] * 50 + ["a growing model keeps its function"] * 50
    tok = train_bpe(texts, 300)
    model = build_model(arch, TARGET, vocab_size=tok.get_vocab_size(), max_seq_len=SEQ, head_dim=HEAD_DIM, seed=0)
    sched = get_schedule("mini-llama-fast").to_dict()
    card = {"schedule": sched, "growth_steps": [7, 8, 9, 10], "final_val_loss": 4.25, "data": {"source": "wikitext2"}}
    out = export_hf(model.state_dict(), model.config, tmp_path / "hf", tokenizer=tok, card=card)
    hf_tok = AutoTokenizer.from_pretrained(out)
    assert hf_tok.decode(hf_tok("the cat sat")["input_ids"], skip_special_tokens=True) == "the cat sat"
    assert hf_tok.pad_token == "[PAD]" and hf_tok.model_max_length == SEQ
    readme = (out / "README.md").read_text()
    assert (
        "mini-llama-fast" in readme
        and "final validation loss: 4.25" in readme
        and "| 4 | (128, 512, 4, 4) | 10 |" in readme
    )
    if arch == "bert":
        filled = pipeline("fill-mask", model=str(out))(f"the cat {MASK} on the mat")
        assert len(filled) == 5 and all("token_str" in f for f in filled)
    else:
        text = pipeline("text-generation", model=str(out))("the cat", max_new_tokens=5, do_sample=False)
        assert text[0]["generated_text"].startswith("the cat")
