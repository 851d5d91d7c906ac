"""The llama architecture: MSG strictly preserving in float64 (every dimension subset, chained, odd sizes, random
parameters, GQA groups 1 and 2), masked RMS statistics during a ramp, folding, Net2Net, Hugging Face export, and
FLOPs against torch's flop counter (all architectures)."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import msg_ray.growth as G
from msg_ray import Structure, build_model, grow
from msg_ray.archs.llama import MaskedRMSNorm
from msg_ray.flops import flops_per_token, param_count
from msg_ray.masked_layers import VOCAB_KEYS, GrowthMask, padded_vocab
from msg_ray.structure import DIMENSIONS

V, S, D = 61, 20, 6  # vocab, max_seq_len, head_dim (even: rotary pairs)
TOL = 1e-12


def base(g: int) -> Structure:
    return Structure(21, 37, 2 * g, 2)  # odd hidden and ffn sizes


def make(s: Structure, g: int, seed: int = 0, **kw):
    model = build_model("llama", s, vocab_size=V, max_seq_len=S, head_dim=D, kv_group_size=g, seed=seed, **kw)
    return model.double().eval()


def randomize(model, seed: int) -> None:
    """Non-default values everywhere (RMSNorm gains included), so preservation cannot lean on the init."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)


def inputs(seed: int = 1, T: int = S) -> torch.Tensor:
    return torch.randint(0, V, (3, T), generator=torch.Generator().manual_seed(seed))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def target_of(s: Structure, dims: tuple[str, ...], g: int) -> Structure:
    # odd growth amounts; heads grow by whole groups (g query heads per key/value head)
    step = {"hidden_dim": 8, "ffn_dim": 13, "head_num": 2 * g, "layer_num": 3}
    return Structure(**{d: getattr(s, d) + (step[d] if d in dims else 0) for d in DIMENSIONS})


SUBSETS = [c for r in range(1, 5) for c in itertools.combinations(DIMENSIONS, r)]  # all 15


@pytest.mark.parametrize("g", [1, 2])
@pytest.mark.parametrize("dims", SUBSETS, ids=["+".join(d.split("_")[0] for d in c) for c in SUBSETS])
def test_msg_is_exact_for_every_dimension_subset(g, dims):
    model, x = make(base(g), g), inputs()
    randomize(model, seed=len(dims))
    before = model(x)
    bigger = grow(model, target_of(base(g), dims, g), "msg", seed=7)
    assert rel_err(bigger(x), before) <= TOL
    G.set_mask_value(bigger, 0.5)  # the ramp is not a no-op (new N(0, 0.02) weights: a small, real change)
    assert rel_err(bigger(x), before) > 1e-6


@pytest.mark.parametrize("g", [1, 2])
def test_chained_five_stage_schedule_is_exact_at_every_growth(g):
    s, x = base(g), inputs(seed=3)
    model = make(s, g, init_std=0.5)  # a non-default init for the new weights too
    randomize(model, seed=11)
    for i, dims in enumerate([("ffn_dim",), ("hidden_dim",), ("head_num",), ("layer_num",)]):
        before = model(x)
        model = grow(model, target_of(model.structure, dims, g), "msg", seed=i)
        assert rel_err(model(x), before) <= TOL, dims
        G.set_mask_value(model, 0.3)
        randomize(model, seed=100 + i)  # train "mid-ramp": old and new weights move
        G.set_mask_value(model, 1.0)  # folded: an ordinary model of the grown structure
        assert not model.mask_modules()
    assert model.structure == Structure(29, 50, 4 * g, 5)


def test_folded_state_dict_loads_into_a_fresh_target_model():
    model = make(base(2), 2)
    bigger = grow(model, Structure(29, 50, 8, 3), "msg", seed=1)
    G.set_mask_value(bigger, 1.0)
    fresh = make(Structure(29, 50, 8, 3), 2, seed=5)
    fresh.load_state_dict(bigger.state_dict())
    x = inputs()
    assert torch.equal(fresh(x), bigger(x))


def test_rms_statistics_are_mask_weighted_during_the_ramp():
    norm = MaskedRMSNorm(4, eps=1e-6).double()
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.5, -0.5, 2.0, 0.25]))
    mask = GrowthMask(4, n_old=2, c=0.25).double()  # c = [1, 1, .25, .25]
    x = torch.tensor([[1.0, 2.0, 3.0, -4.0]], dtype=torch.float64)
    ms = (1 * 1 + 1 * 4 + 0.25 * 9 + 0.25 * 16) / (1 + 1 + 0.25 + 0.25)  # eq. 17 on the mean square
    expected = x / (ms + 1e-6) ** 0.5 * norm.weight * torch.tensor([1, 1, 0.25, 0.25])
    assert torch.allclose(norm(x, mask), expected, rtol=0, atol=1e-14)
    full = norm(x)  # no mask: plain RMSNorm over all 4 features
    assert torch.allclose(full, x / (x.pow(2).mean() + 1e-6) ** 0.5 * norm.weight, rtol=0, atol=1e-14)


@pytest.mark.parametrize("g", [1, 2])
def test_net2net_is_exact_for_heads_and_ffn(g):
    """Net2Net's copies/splits are exact where no norm statistic changes (heads with their GQA groups, FFN)."""
    model, x = make(base(g), g), inputs()
    randomize(model, seed=4)
    before = model(x)
    for dims in [("head_num",), ("ffn_dim",), ("head_num", "ffn_dim")]:
        assert rel_err(grow(model, target_of(base(g), dims, g), "net2net")(x), before) <= TOL
    assert rel_err(grow(model, target_of(base(g), ("hidden_dim",), g), "nomask")(x), before) > 1e-3


def test_bad_llama_configs_are_refused():
    with pytest.raises(ValueError, match="head_num=3 must be a multiple of kv_group_size=2"):
        make(Structure(16, 32, 3, 1), 2)
    with pytest.raises(ValueError, match="head_dim must be even"):
        build_model("llama", Structure(16, 32, 2, 1), vocab_size=V, head_dim=5)
    with pytest.raises(ValueError, match="grouped-query"):
        build_model("gpt", Structure(16, 32, 2, 1), vocab_size=V, kv_group_size=2)
    with pytest.raises(ValueError, match="multiple of kv_group_size"):
        grow(make(base(2), 2), Structure(21, 37, 5, 2))
    with pytest.raises(ValueError, match="hidden_dim=21 divisible by head_num=4"):
        from msg_ray.export import hf_config

        hf_config(make(Structure(21, 32, 4, 1), 2).config)
    with pytest.raises(ValueError, match="attention_mask"):
        make(base(1), 1)(inputs(), attention_mask=torch.ones(3, S))


@pytest.mark.parametrize("g", [1, 2])
def test_hugging_face_llama_has_identical_logits_after_growth(g, tmp_path):
    transformers = pytest.importorskip("transformers")
    from msg_ray.export import export_hf

    model = build_model("llama", base(g), vocab_size=V, max_seq_len=S, head_dim=D, kv_group_size=g, seed=2)
    bigger = grow(model, Structure(32, 50, 4 * g, 3), "msg", seed=3)  # HF needs hidden % heads == 0
    G.set_mask_value(bigger, 1.0)
    randomize(bigger, seed=9)  # non-default RMSNorm gains and weights
    out = export_hf(bigger.state_dict(), bigger.config, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).float().eval()
    assert type(hf).__name__ == "LlamaForCausalLM" and hf.config.num_key_value_heads == 4
    x = inputs()
    with torch.no_grad():
        ours, theirs = bigger.eval()(x), hf(x).logits
    assert (ours - theirs).abs().max().item() <= 1e-5


@pytest.mark.parametrize("arch,g", [("gpt", 1), ("bert", 1), ("llama", 1), ("llama", 2)])
def test_flops_formula_matches_torch_flop_counter(arch, g):
    """Forward matmul FLOPs counted by torch on the real model = flops_per_token / 3 per token."""
    s, T = Structure(24, 40, 4, 3), 16
    model = build_model(arch, s, vocab_size=V, max_seq_len=S, head_dim=D, kv_group_size=g, seed=0).eval()
    counter = FlopCounterMode(display=False)
    # the math SDPA backend runs attention as bmm's the counter sees (the fused CPU kernel is not counted)
    with counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model(inputs(T=T))
    pad = 2 * s.hidden_dim * (padded_vocab(V) - V)  # the head's padded rows, not counted by the formula
    expected = (flops_per_token(arch, s, V, T, D, kv_group_size=g) / 3 + pad) * 3 * T  # batch 3
    assert counter.get_total_flops() == pytest.approx(expected, rel=1e-12)
    padding = sum(t[V:].numel() for k, t in model.state_dict().items() if k in VOCAB_KEYS)
    assert param_count(arch, s, V, S, D, kv_group_size=g) == sum(p.numel() for p in model.parameters()) - padding
