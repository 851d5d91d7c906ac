"""Parameter counts and FLOPs against hand counts, the real model and torch's FLOP counter; ratios; MFU."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from msg_ray.flops import (
    PEAK_FLOPS,
    equal_flops,
    flops_per_token,
    flops_ratio,
    full_flops,
    mfu,
    param_count,
    peak_flops_per_gpu,
    schedule_flops,
    solve_total_steps,
)
from msg_ray.model import build_model
from msg_ray.presets import PRESETS
from msg_ray.schedule import Schedule, Stage
from msg_ray.structure import DIMENSIONS, Structure

SMALL = Structure(24, 40, 3, 2)  # attention width 3*8 = 24 with head_dim 8
V, S, D = 50, 16, 8


def test_param_count_by_hand():
    # GPT (H=24, F=40, n=3, L=2, d=8 -> A=24), V=50, S=16, written out term by term.
    per_layer = (2 * 24) + 3 * (24 * 24 + 24) + (24 * 24 + 24) + (2 * 24) + (24 * 40 + 40) + (40 * 24 + 24)
    assert per_layer == 4480
    gpt = 50 * 24 + 16 * 24 + 2 * per_layer + 2 * 24  # tok, pos, layers, ln_f; head tied
    assert param_count("gpt", SMALL, V, S, head_dim=D) == gpt == 10_592
    bert = 50 * 24 + 16 * 24 + 2 * 24 + 2 * per_layer + (24 * 24 + 24) + 2 * 24 + 50  # + emb LN, MLM head, bias
    assert param_count("bert", SMALL, V, S, head_dim=D) == bert == 11_290
    assert param_count("gpt", SMALL, V, S, head_dim=D, include_embeddings=False) == gpt - 66 * 24


@pytest.mark.parametrize("arch", ["gpt", "bert"])
@pytest.mark.parametrize(
    "structure, head_dim", [(SMALL, D), (Structure(20, 36, 2, 3), 16), (Structure(64, 128, 1, 2), 64)]
)
def test_param_count_matches_model(arch, structure, head_dim):
    model = build_model(arch, structure, vocab_size=V, max_seq_len=S, head_dim=head_dim, seed=0)
    n_model = sum(p.numel() for p in model.parameters())  # parameters() yields the tied weight once
    assert param_count(arch, structure, V, S, head_dim=head_dim) == n_model


@pytest.mark.parametrize("arch", ["gpt", "bert"])
def test_flops_match_torch_flop_counter(arch):
    """One forward+backward of the real model, counted by torch (math SDPA so attention matmuls are seen)."""
    model = build_model(arch, SMALL, vocab_size=V, max_seq_len=S, head_dim=D, seed=0)
    batch, seq = 2, 12
    ids = torch.randint(0, V, (batch, seq), generator=torch.Generator().manual_seed(0))
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH):
        model(ids).sum().backward()
    assert counter.get_total_flops() == flops_per_token(arch, SMALL, V, seq, head_dim=D) * batch * seq


def test_flops_per_token_by_hand():
    h, f, a, layers, t = 24, 40, 24, 2, 16
    forward = layers * (2 * h * 3 * a + 2 * a * h + 4 * h * f + 4 * t * a) + 2 * h * V
    assert flops_per_token("gpt", SMALL, V, t, head_dim=D) == 3 * forward
    assert flops_per_token("bert", SMALL, V, t, head_dim=D) == 3 * (forward + 2 * h * h)
    # attention products grow linearly with the sequence length, not halved for causal GPT
    diff = flops_per_token("gpt", SMALL, V, 2 * t, head_dim=D) - flops_per_token("gpt", SMALL, V, t, head_dim=D)
    assert diff == 3 * layers * 4 * t * a


@pytest.mark.parametrize("arch", ["gpt", "bert"])
@pytest.mark.parametrize("dim", DIMENSIONS)
def test_monotone_in_every_dimension(arch, dim):
    base = Structure(64, 128, 2, 2)
    bigger = Structure(**{**base.as_dict(), dim: getattr(base, dim) * 2})
    for include in (True, False):
        assert param_count(arch, bigger, V, S, include_embeddings=include) > param_count(
            arch, base, V, S, include_embeddings=include
        )
    assert flops_per_token(arch, bigger, V, S) > flops_per_token(arch, base, V, S)
    assert param_count(arch, base, V + 1, S) > param_count(arch, base, V, S)
    assert param_count(arch, base, V, S + 1) > param_count(arch, base, V, S)
    assert flops_per_token(arch, base, V, S + 1) > flops_per_token(arch, base, V, S)
    assert flops_per_token(arch, base, V, S, head_dim=128) > flops_per_token(arch, base, V, S, head_dim=64)


def test_known_model_sizes():
    # Our layout (no token-type embeddings, no pooler) lands next to the published sizes.
    assert 108e6 < param_count("bert", Structure(768, 3072, 12, 12), 30522, 512) < 111e6  # Bert-base ~110M
    assert param_count("gpt", Structure(768, 3072, 12, 12), 50257, 1024) == 124_439_808  # GPT-2 small


def test_schedule_flops_sums_stages():
    stages = (Stage(structure=SMALL, start=0), Stage(structure=Structure(24, 80, 3, 4), start=30))
    s = Schedule(arch="gpt", stages=stages, total_steps=100, phi=10, head_dim=D)
    fpt = [flops_per_token("gpt", st.structure, V, S, head_dim=D) for st in stages]
    assert schedule_flops(s, V, S, tokens_per_step=64) == pytest.approx(64 * (30 * fpt[0] + 70 * fpt[1]))
    assert flops_ratio(s, V, S) == pytest.approx(100 * fpt[1] / (30 * fpt[0] + 70 * fpt[1]))
    assert 1.0 < flops_ratio(s, V, S) < 100 / 70


def test_flops_ratio_presets():
    bert, gpt = (30522, 128), (50257, 1024)
    sch1_b = flops_ratio(PRESETS["sch1-b"], *bert)
    assert 1.8 <= sch1_b < 3.0  # the paper's 1.8x wall-time speed-up at equal steps must fit under the limit
    assert 2.2 * 0.95 <= flops_ratio(PRESETS["sch1-l"], *bert) < 3.0  # paper: 2.2x
    assert 1.4 <= flops_ratio(PRESETS["sch1-g"], *gpt) < 2.5  # paper: 1.4x
    assert 1.38 <= flops_ratio(PRESETS["sch-gpt-new"], *gpt) < 2.0  # appendix J: 38 % faster
    for name, s in PRESETS.items():
        vocab, seq = (4096, 64) if name.startswith("mini") else (bert if s.arch == "bert" else gpt)
        ratio = flops_ratio(s, vocab, seq)
        assert ratio == 1.0 if s.is_full else 1.2 < ratio < 3.0, name


def test_mfu_and_peaks():
    assert mfu(494.5e12, peak_flops_per_gpu("h100")) == pytest.approx(0.5)
    assert peak_flops_per_gpu("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops_per_gpu("NVIDIA H100 PCIe") == 756e12
    assert peak_flops_per_gpu("NVIDIA H200") == 989e12
    assert peak_flops_per_gpu("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops_per_gpu("NVIDIA L40S") == PEAK_FLOPS["l40s"] != PEAK_FLOPS["l4"]
    with pytest.raises(ValueError, match="unknown GPU"):
        peak_flops_per_gpu("NVIDIA A10G")
    with pytest.raises(ValueError, match="peak_flops"):
        mfu(1.0, 0.0)
    with pytest.raises(ValueError, match="arch"):
        param_count("t5", SMALL, V, S)


@pytest.mark.parametrize("name", ["mini-gpt-fast", "mini-bert-fast", "mini-sch1-g", "mini-sch1-b", "mini-rapid-l"])
@pytest.mark.parametrize(("vocab", "seq", "steps"), [(4096, 64, 1500), (8192, 128, 911), (50257, 64, 3000)])
def test_solved_schedule_spends_full_flops_within_one_step(name, vocab, seq, steps):
    s = PRESETS[name]
    solved = equal_flops(s, steps, vocab, seq)
    one_step = full_flops(s, 1, vocab, seq)
    assert abs(schedule_flops(solved, vocab, seq, 1) - full_flops(s, steps, vocab, seq)) <= one_step
    assert solved.total_steps == solve_total_steps(s, steps, vocab, seq) > steps  # growth is cheaper per step
    # stage boundaries keep their fractions (to the step) and φ is unchanged
    for a, b in zip(s.boundaries(), solved.boundaries(), strict=True):
        assert abs(b - a * solved.total_steps / s.total_steps) <= 1
    assert solved.phi == s.phi and [x.structure for x in solved.stages] == [x.structure for x in s.stages]


def test_solver_full_schedule_and_bad_budget():
    full = PRESETS["mini-full-gpt"]
    assert solve_total_steps(full, 777, 4096, 64) == 777
    with pytest.raises(ValueError, match="full_steps"):
        solve_total_steps(PRESETS["mini-gpt-fast"], 0, 4096, 64)
    with pytest.raises(ValueError, match="full_steps"):
        solve_total_steps(PRESETS["mini-gpt-fast"], 10.5, 4096, 64)


def test_fast_presets_hold_their_stated_budget():
    """Each fast preset's total_steps is the solved length for the data its docstring names."""
    from msg_ray.presets import FAST

    data = {
        "mini-gpt-fast": (4096, 64),
        "mini-bert-fast": (4096, 64),
        "gpt-fast": (50257, 1024),
        "bert-fast": (30522, 512),
        "mini-llama-fast": (4096, 64),
        "llama-1b-fast": (32000, 2048),
    }
    for name, (vocab, seq) in data.items():
        s = PRESETS[name]
        assert s.total_steps == solve_total_steps(s, FAST[name]["full_steps"], vocab, seq), name
        assert s.growth_steps()[-1] <= 0.5 * s.total_steps  # growth done before half of training
