"""The operator registry and the operator zoo: every operator that claims preservation is exact in float64 for every
dimension it grows (GPT, BERT, Llama where supported); the others visibly change the function; the optimizer carry
puts old moments where each operator's layout says, scaled as declared, and the declared scales are the gradient
ratios they claim to be."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import msg_ray.growth as G
from msg_ray import Structure, build_model
from msg_ray.operators import get_operator, operator_names
from msg_ray.optim_carry import carry_adam_state

V, S, D = 53, 16, 8
BASE = Structure(32, 48, 2, 2)
TOL = 1e-10
# integer factors, so every operator (HyperCloning clones by whole multiples) can grow each dimension
SINGLE = {
    "hidden_dim": Structure(64, 48, 2, 2),
    "ffn_dim": Structure(32, 96, 2, 2),
    "head_num": Structure(32, 48, 4, 2),
    "layer_num": Structure(32, 48, 2, 4),
}
ALL = Structure(64, 96, 4, 4)
ARCH_OF = {"gpt": 1, "bert": 1, "llama": 2}  # arch -> kv_group_size used here (llama: grouped-query)


def make(arch: str, seed: int = 0, s: Structure = BASE, kv: int | None = None):
    # ε = 1e-14 in the norms: LEMON is exact up to the ε it does not rescale (its module docstring)
    kv = ARCH_OF[arch] if kv is None else kv
    model = build_model(arch, s, vocab_size=V, max_seq_len=S, head_dim=D, seed=seed, ln_eps=1e-14, kv_group_size=kv)
    model = model.double().eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # non-default values everywhere (norm gains, biases)
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def inputs(seed: int = 3) -> torch.Tensor:
    return torch.randint(0, V, (3, S), generator=torch.Generator().manual_seed(seed))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def supported(op: str, arch: str) -> bool:
    archs = get_operator(op).archs
    return archs is None or arch in archs


PRESERVING = [o for o in operator_names() if get_operator(o).preserving]
CASES = [(o, a, d) for o in PRESERVING for a in ARCH_OF for d in (*SINGLE, "all") if supported(o, a)]


@pytest.mark.parametrize("op,arch,dims", CASES, ids=[f"{o}-{a}-{d}" for o, a, d in CASES])
def test_preserving_operators_are_exact(op, arch, dims):
    model, x = make(arch), inputs()
    before = model(x)
    growth = G.expand(model, ALL if dims == "all" else SINGLE[dims], op, seed=5)
    assert growth.preserving
    assert rel(growth.model(x), before) <= TOL


def test_the_zoo_is_registered_and_claims_are_as_documented():
    assert set(operator_names()) >= {"msg", "net2net", "nomask", "gstack", "hypercloning", "lemon", "bert2bert-aki"}
    assert set(PRESERVING) == {"msg", "hypercloning", "hypercloning-noise", "lemon"}
    assert get_operator("gstack").dims == ("layer_num",) and not get_operator("gstack").masks


@pytest.mark.parametrize("arch", ["gpt", "llama"])
def test_hypercloning_noise_breaks_the_clones_symmetry_and_stays_exact(arch):
    """Plain HyperCloning leaves copies with equal weights (equal gradients: they never separate); the noise variant
    makes consumer columns of copies differ, by zero-sum noise of the init scale, with the function unchanged."""
    model, x = make(arch), inputs()
    plain = G.expand(model, ALL, "hypercloning", seed=5).model
    noisy = G.expand(model, ALL, "hypercloning-noise", seed=5).model
    assert rel(noisy(x), model(x)) <= TOL
    fc1 = next(
        n
        for n, _ in noisy.named_parameters()
        if n.startswith("blocks.0.") and "weight" in n and n.rsplit(".", 2)[-2] in ("fc1", "gate", "up", "w1")
    )
    a, b = plain.get_parameter(fc1), noisy.get_parameter(fc1)  # [F, H]: H copied twice (columns j and j + 32)
    torch.testing.assert_close(a[:, :32], a[:, 32:], rtol=0, atol=0)
    diff = b[:, :32] - b[:, 32:]
    assert 0.5 * 0.02 < diff.std().item() < 4 * 0.02  # copies differ by noise of the init scale (x sqrt 2 for a pair)
    torch.testing.assert_close(b[:, :32] + b[:, 32:], a[:, :32] + a[:, 32:], rtol=0, atol=1e-12)  # zero-sum


@pytest.mark.parametrize(
    "op,dims",
    [("gstack", "layer_num"), ("bert2bert-aki", "ffn_dim"), ("nomask", "hidden_dim"), ("net2net", "hidden_dim")],
)
def test_non_preserving_operators_change_the_function(op, dims):
    model, x = make("gpt"), inputs()
    growth = G.expand(model, SINGLE[dims], op, seed=5)
    assert not growth.preserving and rel(growth.model(x), model(x)) > 1e-4


def test_partial_operators_leave_other_dimensions_to_msg():
    model, x = make("gpt"), inputs()
    width = G.expand(model, Structure(64, 96, 4, 2), "gstack", seed=1)  # G_stack grows layers only: all MSG here
    assert width.preserving and width.model.hidden_mask is not None and rel(width.model(x), model(x)) <= TOL
    both = G.expand(model, ALL, "gstack", seed=1)
    assert not both.preserving and both.model.hidden_mask is not None  # MSG masks for width, stacked layers
    assert all(b.layer_mask is None for b in both.model.blocks)
    depth = G.expand(model, ALL, "hypercloning", seed=1)  # width cloned, layers by MSG: exact, with layer masks
    assert depth.preserving and depth.model.hidden_mask is None and depth.model.blocks[3].layer_mask is not None
    assert rel(depth.model(x), model(x)) <= TOL


def test_operator_errors_name_the_problem():
    with pytest.raises(ValueError, match="integer factors; 32 -> 48"):
        G.grow(make("gpt"), Structure(48, 48, 2, 2), "hypercloning")
    with pytest.raises(ValueError, match="operator 'lemon' supports arch"):
        G.grow(make("bert"), Structure(64, 48, 2, 2), "lemon")
    with pytest.raises(ValueError, match="unknown operator 'stacking'"):
        G.grow(make("gpt"), ALL, "stacking")


def _random_moments(model, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {
        n: {
            "exp_avg": torch.randn(p.shape, generator=gen, dtype=torch.float64),
            "exp_avg_sq": torch.rand(p.shape, generator=gen, dtype=torch.float64),
        }
        for n, p in model.named_parameters()
    }


@pytest.mark.parametrize("op", ["hypercloning", "net2net", "lemon", "msg"])
def test_carry_puts_moments_where_the_layout_says(op):
    model = make("gpt")
    growth = G.expand(model, ALL, op, seed=2)
    old = _random_moments(model, 0)
    shapes = {n: p.shape for n, p in growth.model.named_parameters()}
    carried = carry_adam_state(old, shapes, layout=growth.layout)
    gen = torch.Generator().manual_seed(9)
    for name, shape in shapes.items():
        entry = growth.layout.get(name)
        for _ in range(20):  # random coordinates of every parameter
            coord = tuple(int(torch.randint(n, (1,), generator=gen)) for n in shape)
            if entry is None or entry.source is None:  # default: same name, leading slice, or a new parameter
                src = old.get(name)
                inside = src is not None and all(c < n for c, n in zip(coord, src["exp_avg"].shape, strict=True))
                want_m = src["exp_avg"][coord] if inside else 0.0
                want_v = src["exp_avg_sq"][coord] if inside else 0.0
            else:
                src_coord, s = list(coord), 1.0
                for axis, idx in entry.index.items():
                    src_coord[axis] = int(idx[coord[axis]])
                    s *= float(entry.scale[axis][coord[axis]]) if src_coord[axis] >= 0 else 0.0
                src_coord = tuple(max(c, 0) for c in src_coord)
                want_m = s * old[entry.source]["exp_avg"][src_coord]
                want_v = s * s * old[entry.source]["exp_avg_sq"][src_coord]
            assert float(carried[name]["exp_avg"][coord]) == pytest.approx(float(want_m), abs=1e-12), (name, coord)
            assert float(carried[name]["exp_avg_sq"][coord]) == pytest.approx(float(want_v), abs=1e-12), (name, coord)
    if op == "hypercloning":  # the layout itself: fc1 rows tile the old neurons (i, i + F) and split the gradient
        e = growth.layout["blocks.0.mlp.fc1.weight"]
        assert torch.equal(e.index[0], torch.arange(96) % 48) and torch.allclose(
            e.scale[0], torch.full((96,), 0.5, dtype=torch.float64)
        )
        assert torch.equal(e.index[1], torch.arange(64) % 32) and torch.allclose(
            e.scale[1], torch.ones(64, dtype=torch.float64)
        )


def _grads(model, x) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model.loss(model(x), x).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _carried_grads(model, growth, x) -> dict[str, torch.Tensor]:
    """The old model's gradients carried as exp_avg through the growth's layout."""
    old_g = {n: {"exp_avg": g, "exp_avg_sq": g * g} for n, g in _grads(model, x).items()}
    shapes = {n: p.shape for n, p in growth.model.named_parameters()}
    return {n: m["exp_avg"] for n, m in carry_adam_state(old_g, shapes, layout=growth.layout).items()}


@pytest.mark.parametrize(
    "op,arch,kv,target",
    [
        ("net2net", "gpt", 1, Structure(32, 80, 5, 2)),
        ("hypercloning", "gpt", 1, Structure(32, 96, 4, 2)),
        ("lemon", "gpt", 1, Structure(32, 96, 4, 2)),
        ("net2net", "llama", 2, Structure(32, 80, 6, 2)),
        ("lemon", "llama", 1, Structure(32, 96, 6, 2)),
        ("lemon", "llama", 2, Structure(32, 96, 6, 2)),  # groups: one share per key/value head and its query heads
    ],
)
def test_declared_moment_scales_are_the_gradient_ratios(op, arch, kv, target):
    """Right after a function-preserving FFN/head growth, each carried block parameter's gradient equals its
    source's gradient gathered and scaled by the layout (so moments carried that way are the ones the grown model
    would have accumulated)."""
    model, x = make(arch, kv=kv), inputs()
    growth = G.expand(model, target, op, seed=4)
    carried, grads = _carried_grads(model, growth, x), _grads(growth.model, x)
    for name, g in grads.items():
        if name.startswith("blocks.") and ".ln" not in name:
            torch.testing.assert_close(carried[name], g, rtol=1e-9, atol=1e-12, msg=name)


def _aki_rows(name: str, arch: str) -> int | None:
    """Axis along which ``name``'s new units are AKI copies of the layer above (producers of FFN neurons/heads)."""
    producers = ("q", "k", "v", "fc1") if arch == "gpt" else ("q", "k", "v", "gate", "up")
    return 0 if name.rsplit(".", 2)[-2] in producers else None


@pytest.mark.parametrize("arch,kv", [("gpt", 1), ("llama", 1), ("llama", 2)])
def test_aki_new_units_carry_the_moments_of_the_weights_they_copy(arch, kv):
    """With every old layer equal, AKI's copies from the layer above equal FPI's, so the growth is exact and the
    gradients are checkable: each coordinate carries its declared source gradient x scale, and a new unit of
    layer l (its producer weights copied from layer l + 1's copy of the same unit) carries exactly what that
    copy in layer l + 1 carries, the gradient of the layer above, not of its own layer."""
    model, x = make(arch, s=Structure(32, 48, 2, 3), kv=kv), inputs()
    with torch.no_grad():  # blocks 1, 2 := block 0 (their inputs still differ, so their gradients do)
        for name, p in model.named_parameters():
            if name.startswith("blocks.0."):
                for i in (1, 2):
                    model.get_parameter(name.replace("blocks.0.", f"blocks.{i}.")).copy_(p)
    growth = G.expand(model, Structure(32, 80, 6, 3), "bert2bert-aki", seed=4)
    assert rel(growth.model(x), model(x)) <= TOL
    carried, grads = _carried_grads(model, growth, x), _grads(growth.model, x)
    n_old = {"F": 48, "heads": 16, "kv_heads": 16 // kv}
    checked = 0
    for name, g in grads.items():
        if not name.startswith("blocks.") or _aki_rows(name, arch) is None:
            torch.testing.assert_close(carried[name], g, rtol=1e-9, atol=1e-12, msg=name)
            continue
        layer, kind = int(name.split(".")[1]), name.rsplit(".", 2)[-2]
        first_new = n_old["kv_heads" if kind in ("k", "v") and arch == "llama" else "heads" if kind in "qkv" else "F"]
        torch.testing.assert_close(carried[name][:first_new], g[:first_new], rtol=1e-9, atol=1e-12, msg=name)
        upper = name.replace(f"blocks.{layer}.", f"blocks.{layer + 1}.") if layer < 2 else name
        torch.testing.assert_close(carried[name][first_new:], grads[upper][first_new:], rtol=1e-9, atol=1e-12)
        if layer < 2:  # the layer above's gradient differs from this layer's, so the source is what is tested
            assert rel(grads[upper][first_new:], g[first_new:]) > 1e-3, name
            checked += 1
    assert checked >= (6 if arch == "gpt" else 5) * 2


@pytest.mark.parametrize("arch", ["gpt", "llama"])
def test_aki_stacks_the_widened_model(arch):
    """Width and depth in one AKI event equal widening, then stacking (bert2BERT's order): the same function in
    float64, and every new layer is a copy of its widened source layer, AKI units included."""
    model, x = make(arch), inputs()
    both = G.expand(model, ALL, "bert2bert-aki", seed=5).model
    widened = G.expand(model, Structure(64, 96, 4, 2), "bert2bert-aki", seed=5).model
    stacked = G.expand(widened, ALL, "bert2bert-aki", seed=5).model
    assert rel(both(x), stacked(x)) <= TOL
    new = dict(both.named_parameters())
    for name, p in widened.named_parameters():
        if name.startswith("blocks."):
            _, layer, rest = name.split(".", 2)
            torch.testing.assert_close(new[name], p, rtol=0, atol=0)
            torch.testing.assert_close(new[f"blocks.{int(layer) + 2}.{rest}"], p, rtol=0, atol=0)  # stacked copy
    q = new["blocks.2.attn.q.weight"]  # [4 heads x 8, 64]: heads 2, 3 copied from layer 1, not FPI copies of 0, 1
    assert not torch.equal(q[16:], q[:16])


def test_the_training_code_names_no_operator():
    """The loop, the growth event and the engine dispatch through the registry: no operator name in them."""
    names = "|".join(re.escape(n) for n in operator_names())
    for path in (Path(__file__).parents[1] / "msg_ray" / "train").glob("*.py"):
        literals = re.findall(r"[\"']([^\"']+)[\"']", path.read_text())
        assert not [s for s in literals if re.fullmatch(names, s)], path.name
