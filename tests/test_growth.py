"""Function preservation of the growth operators, numerically in float64 (paper sections 3.1.1-3.1.4)."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

import msg_ray.growth as G
from msg_ray import Structure, build_model, grow
from msg_ray.optim_carry import carry_adam_state

V, S, D = 97, 24, 8  # vocab, max_seq_len, head_dim (small so the float64 checks are quick)
BASE = Structure(32, 48, 2, 2)
TOL = 1e-9


def make(arch: str, s: Structure = BASE, seed: int = 0):
    return build_model(arch, s, vocab_size=V, max_seq_len=S, head_dim=D, seed=seed).double().eval()


def inputs(seed: int = 1, B: int = 3, T: int = S) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def grown(s: Structure, **kw) -> Structure:
    return Structure(**{**s.as_dict(), **kw})


SINGLE = {
    "hidden_dim": grown(BASE, hidden_dim=44),  # non-doubling, LN inside (the eq. 7 dilemma case)
    "ffn_dim": grown(BASE, ffn_dim=112),
    "head_num": grown(BASE, head_num=5),
    "layer_num": grown(BASE, layer_num=5),
}
COMBINED = {
    "hidden+ffn": grown(BASE, hidden_dim=40, ffn_dim=64),
    "heads+layers": grown(BASE, head_num=3, layer_num=3),
    "all four": Structure(48, 96, 3, 4),
}


@pytest.mark.parametrize("arch", ["gpt", "bert"])
@pytest.mark.parametrize("depth_init", ["stack", "random"])
@pytest.mark.parametrize("name,target", list({**SINGLE, **COMBINED}.items()))
def test_msg_preserves_function(arch, depth_init, name, target):
    model, x = make(arch), inputs()
    before = model(x)
    bigger = grow(model, target, "msg", depth_init=depth_init, seed=3)
    assert bigger.structure == target
    assert rel_err(bigger(x), before) <= TOL, name


@pytest.mark.parametrize("arch", ["gpt", "bert"])
def test_msg_preserves_with_large_random_init_and_padding(arch):
    """Any init must preserve (the masks do the work): new weights N(0, 1) instead of N(0, 0.02)."""
    model = build_model(arch, BASE, vocab_size=V, max_seq_len=S, head_dim=D, init_std=1.0, seed=5).double().eval()
    x = inputs()
    pad = torch.ones_like(x)
    pad[:, -5:] = 0
    kw = {"attention_mask": pad} if arch == "bert" else {}
    before = model(x, **kw)
    bigger = grow(model, Structure(64, 96, 4, 4), "msg", seed=9)
    assert rel_err(bigger(x, **kw), before) <= TOL


def _train_steps(model, x, steps: int, c: float | None) -> None:
    """A few SGD steps at partial mask c, so old and new weights both move away from their init."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    # GPT: next-token prediction, labels = inputs (the model shifts). BERT: masked LM, as the data pipeline's
    # "mlm" objective: every third input replaced by a [MASK] stand-in (id 0), labels the original token there
    # and -100 (ignored) elsewhere.
    mlm = torch.arange(x.shape[1]) % 3 == 0
    inputs = x if model.arch == "gpt" else x.masked_fill(mlm, 0)
    labels = x if model.arch == "gpt" else x.masked_fill(~mlm, -100)
    model.train()
    for _ in range(steps):
        if c is not None:
            G.set_mask_value(model, c)
        loss = model.loss(model(inputs), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


MINI_SCH1_B = [  # the shape of Sch1-B (table 2), scaled down
    Structure(32, 48, 2, 2),
    Structure(32, 96, 2, 2),
    Structure(32, 96, 2, 4),
    Structure(48, 96, 2, 4),
    Structure(48, 96, 3, 4),
    Structure(48, 96, 3, 6),
]


@pytest.mark.parametrize("arch", ["gpt", "bert"])
def test_chained_growths_with_training_at_partial_mask(arch):
    model, x = make(arch, MINI_SCH1_B[0]), inputs()
    worst = 0.0
    for target in MINI_SCH1_B[1:]:
        before = model(x)
        model = grow(model, target, "msg", seed=len(model.blocks))
        worst = max(worst, rel_err(model(x), before))
        for c in (0.2, 0.6):  # train mid-ramp; the next growth must still preserve the trained function
            _train_steps(model, x, 2, c)
        G.set_mask_value(model, 1.0)
        assert not G.is_ramping(model)
    assert model.structure == MINI_SCH1_B[-1]
    assert worst <= TOL


@pytest.mark.parametrize("arch", ["gpt", "bert"])
def test_partial_mask_changes_function_and_fold_is_exact(arch):
    model, x = make(arch), inputs()
    target = Structure(48, 96, 3, 3)
    bigger = grow(model, target, "msg", seed=1)
    out0 = bigger(x)
    G.set_mask_value(bigger, 0.5)
    assert G.mask_value(bigger) == 0.5
    assert rel_err(bigger(x), out0) > 1e-3  # new structure now contributes
    sd_mid = bigger.state_dict()
    restored = make(arch, target, seed=42)
    restored.load_state_dict(sd_mid)  # a checkpoint mid-ramp restores the exact masks
    assert torch.equal(restored(x), bigger(x))
    G.set_mask_value(bigger, 1.0)  # c = 1: masks folded away
    assert not G.is_ramping(bigger) and not any("mask" in k for k in bigger.state_dict())
    plain = make(arch, target, seed=7)
    plain.load_state_dict(bigger.state_dict())
    assert torch.equal(plain(x), bigger(x))


def test_mask_ramp_is_linear_and_folds():
    model = grow(make("gpt"), Structure(32, 96, 2, 2), "msg")
    ramp = G.MaskRamp(start_step=100, phi=50)
    assert ramp.apply(model, 100) == 0.0 and G.mask_value(model) == 0.0
    assert ramp.apply(model, 125) == 0.5 and G.mask_value(model) == 0.5
    assert ramp.apply(model, 150) == 1.0 and not G.is_ramping(model)
    assert G.MaskRamp(start_step=0, phi=0).value(0) == 1.0


def test_nomask_uses_same_init_but_does_not_preserve():
    model, x = make("gpt"), inputs()
    target = Structure(48, 96, 3, 3)
    msg, nomask = grow(model, target, "msg", seed=4), grow(model, target, "nomask", seed=4)
    assert not G.is_ramping(nomask)
    for (n1, p1), (n2, p2) in zip(msg.named_parameters(), nomask.named_parameters(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2)
    assert rel_err(nomask(x), model(x)) > 1e-2


@pytest.mark.parametrize("arch", ["gpt", "bert"])
def test_net2net_preserves_ffn_and_heads_but_not_layernormed_hidden(arch):
    model, x = make(arch), inputs()
    before = model(x)
    for target in (grown(BASE, ffn_dim=96), grown(BASE, ffn_dim=80), grown(BASE, head_num=4)):
        assert rel_err(grow(model, target, "net2net")(x), before) <= TOL  # no LN involved: exact
    # non-doubling hidden growth: LN statistics over [x; copies] differ from x (eq. 7 dilemma): a visible break
    broken = rel_err(grow(model, grown(BASE, hidden_dim=44), "net2net")(x), before)
    assert broken > 0.05
    # doubling: every feature copied once, so LN mean/var are preserved; only the tied output embedding
    # counts each feature twice, which doubles the logits (up to BERT's decoder bias) - exactly
    doubled = grow(model, grown(BASE, hidden_dim=64), "net2net")(x)
    bias = model.mlm_bias[:V] if arch == "bert" else 0.0  # the padded vocabulary rows are sliced off the logits
    assert rel_err(doubled - bias, 2 * (before - bias)) <= TOL


def test_invalid_growths_raise_clear_errors():
    model = make("gpt")
    with pytest.raises(ValueError, match="shrink ffn_dim"):
        grow(model, grown(BASE, ffn_dim=32, hidden_dim=64))
    with pytest.raises(ValueError, match="unknown operator"):
        grow(model, grown(BASE, ffn_dim=64), operator="lico")
    with pytest.raises(ValueError, match="nothing to grow"):
        grow(model, BASE)
    with pytest.raises(ValueError, match="depth_init"):
        grow(model, grown(BASE, layer_num=3), depth_init="interleave")
    with pytest.raises(ValueError, match="GrowableModel"):
        grow(torch.nn.Linear(2, 2), BASE)
    ramping = grow(model, grown(BASE, ffn_dim=64))
    with pytest.raises(ValueError, match="still ramping"):
        grow(ramping, grown(BASE, ffn_dim=96))
    with pytest.raises(ValueError, match="Structure.head_num"):
        Structure(32, 48, 0, 2)
    with pytest.raises(ValueError, match="ModelConfig.arch"):
        build_model("t5", BASE, vocab_size=V)
    with pytest.raises(ValueError, match=r"c must be in \[0, 1\]"):
        G.set_mask_value(ramping, 1.5)


def test_bert_padding_mask_hides_pad_tokens_and_gpt_is_causal():
    bert, gpt = make("bert"), make("gpt")
    x = inputs()
    pad = torch.ones_like(x)
    pad[:, -4:] = 0
    y = x.clone()
    y[:, -4:] = (y[:, -4:] + 1) % V  # change only padded positions
    a, b = bert(x, attention_mask=pad), bert(y, attention_mask=pad)
    assert torch.allclose(a[:, :-4], b[:, :-4], atol=1e-12)
    a, b = gpt(x), gpt(y)  # GPT: changing the future does not change the past
    assert torch.allclose(a[:, :-4], b[:, :-4], atol=1e-12) and not torch.allclose(a[:, -1], b[:, -1])


def test_optimizer_state_carry_by_name():
    model = make("gpt")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.loss(model(inputs()), inputs()).backward()
    opt.step()
    names = {p: n for n, p in model.named_parameters()}
    old_state = {names[p]: {k: opt.state[p][k] for k in ("exp_avg", "exp_avg_sq")} for p in opt.state}
    bigger = grow(model, Structure(48, 96, 3, 3), "msg")
    new_shapes = {n: p.shape for n, p in bigger.named_parameters()}
    # module reordering: present the new parameters in a shuffled order, old state in reversed order
    order = list(new_shapes)
    random.Random(0).shuffle(order)  # seeded: the same order in every process (hash() of str is randomised)
    shuffled = {name: new_shapes[name] for name in order}
    assert list(shuffled) != list(new_shapes)
    carried = carry_adam_state(dict(reversed(list(old_state.items()))), shuffled)
    assert set(carried) == set(new_shapes)
    for name, shape in new_shapes.items():
        for k in ("exp_avg", "exp_avg_sq"):
            t = carried[name][k]
            assert t.shape == shape
            if name in old_state:
                o = old_state[name][k]
                lead = tuple(slice(0, s) for s in o.shape)
                assert torch.equal(t[lead], o)
                assert t.sum().item() == pytest.approx(o.sum().item())  # everything else is 0
            else:  # a new layer's parameter
                assert name.startswith("blocks.2.") and not t.any()
    renamed = carry_adam_state(
        old_state, {"moved.weight": old_state["ln_f.weight"]["exp_avg"].shape}, renames={"moved.weight": "ln_f.weight"}
    )
    assert torch.equal(renamed["moved.weight"]["exp_avg"], old_state["ln_f.weight"]["exp_avg"])
    with pytest.raises(ValueError, match="cannot embed"):
        carry_adam_state(old_state, {"ln_f.weight": (4,)})


def test_every_dimension_alone_and_in_pairs_for_both_archs():
    """Exhaustive small sweep: all 15 non-empty subsets of dimensions grow at once, both archs."""
    deltas = {"hidden_dim": 8, "ffn_dim": 16, "head_num": 1, "layer_num": 1}
    x = inputs(B=2, T=12)
    for arch in ("gpt", "bert"):
        model = make(arch)
        before = model(x)
        for r in range(1, 5):
            for dims in itertools.combinations(deltas, r):
                target = grown(BASE, **{d: getattr(BASE, d) + deltas[d] for d in dims})
                assert rel_err(grow(model, target, "msg")(x), before) <= TOL, (arch, dims)


@pytest.mark.parametrize("c", [0.0, 0.37, 1.0])
def test_masked_layernorm_gradient_is_that_of_eq17_statistics(c):
    """The masked LayerNorm's hand-written backward equals autograd through eq. 17's c-weighted mean/variance and
    eq. 19's re-masking (float64, mid-ramp and at both ends of the ramp), and passes gradcheck."""
    from msg_ray.masked_layers import GrowthMask, MaskedLayerNorm, _MaskedLayerNormFn

    torch.manual_seed(0)
    ln = MaskedLayerNorm(12).double()
    with torch.no_grad():
        ln.weight.normal_(), ln.bias.normal_()
    mask = GrowthMask(12, 7, c).double()
    x = torch.randn(2, 5, 12, dtype=torch.float64, requires_grad=True)

    def reference(x):  # eq. 17 statistics over the features weighted by c, eq. 19 output re-masked
        cv = mask.value
        mu = (x * cv).sum(-1, keepdim=True) / cv.sum()
        var = ((x - mu) ** 2 * cv).sum(-1, keepdim=True) / cv.sum()
        return ((x - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias) * cv

    gy = torch.randn(2, 5, 12, dtype=torch.float64)
    grads = []
    for f in (lambda x: ln(x, mask), reference):
        out = f(x)
        grads.append((out.detach(), *torch.autograd.grad(out, (x, ln.weight, ln.bias), gy)))
    for mine, ref in zip(*grads, strict=True):
        assert torch.allclose(mine, ref, atol=1e-12, rtol=1e-10)
    fn = lambda x, w, b: _MaskedLayerNormFn.apply(x, w, b, mask.value, ln.eps)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, ln.weight.detach().requires_grad_(), ln.bias.detach().requires_grad_()))


@pytest.mark.parametrize("arch", ["gpt", "llama"])
def test_causal_loss_is_the_mean_next_token_cross_entropy(arch):
    """The loss shifts labels (not logits): the value is the mean CE of position t predicting token t+1 over the
    labels that are not -100, and the last position's logits get no gradient."""
    model = build_model(arch, Structure(32, 64, 2, 1), vocab_size=50, max_seq_len=8, head_dim=16, seed=0)
    ids = torch.randint(0, 50, (3, 8), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[0, 5:] = -100  # padding: ignored targets
    logits = torch.randn(3, 8, 50, dtype=torch.float64, requires_grad=True)
    loss = model.loss(logits, labels)
    logp = torch.log_softmax(logits[:, :-1], -1)
    keep = [(b, t) for b in range(3) for t in range(7) if labels[b, t + 1] != -100]
    expected = -torch.stack([logp[b, t, labels[b, t + 1]] for b, t in keep]).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    loss.backward()
    assert logits.grad[:, -1].abs().max() == 0 and logits.grad[:, :-1].abs().max() > 0
