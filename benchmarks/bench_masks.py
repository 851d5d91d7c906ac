"""Benchmark the cost of MSG growth masks: training throughput mid-ramp vs a plain model vs the folded model.

For each structure S and each growth (one dimension alone, or all four at once, from a structure with that
dimension halved) it measures forward+backward tokens/s (fp32, CPU, a fixed thread count) of

  (a) ramp:   ``grow(small, S, "msg")`` with masks at c = 0.5 (the model during the ramp),
  (b) plain:  ``build_model(S)`` (what a run without growth trains),
  (c) folded: the grown model after ``set_mask_value(model, 1.0)`` (masks removed),

all in one process, interleaved round by round in shuffled order, so machine noise hits every variant alike.
Each variant's rate is its best round (other processes only ever slow a round down, so the best round is the
least disturbed one); the median/best spread is printed as a noise gauge. It also reports the worst function-preservation error of MSG per grown dimension
(float64, random weights and inputs, GPT and BERT): max |logits_after - logits_before| / max |logits_before|.

    python -m benchmarks.bench_masks            # mini target + a larger one (~1 min on 1 thread)
    python -m benchmarks.bench_masks --quick    # mini target only, fewer rounds (~20 s)
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass

import torch

from msg_ray.growth import grow, set_mask_value
from msg_ray.masked_layers import GrowthMask, MaskedLayerNorm
from msg_ray.model import ARCHS, GrowableModel, build_model
from msg_ray.structure import DIMENSIONS, Structure
from msg_ray.train.hostmem import keep_freed_memory

GROWTHS = (*DIMENSIONS, "all")


@dataclass(frozen=True, kw_only=True)
class Setting:
    structure: Structure
    head_dim: int
    vocab: int = 4096
    seq: int = 64
    batch: int = 16


SETTINGS = {
    "mini": Setting(structure=Structure(128, 512, 4, 4), head_dim=32),
    "large": Setting(structure=Structure(256, 1024, 4, 4), head_dim=64),
}


def source(target: Structure, growth: str) -> Structure:
    """``target`` with the grown dimension(s) halved: the structure a growth to ``target`` starts from."""
    dims = DIMENSIONS if growth == "all" else (growth,)
    return Structure(**{d: getattr(target, d) // (2 if d in dims else 1) for d in DIMENSIONS})


def _build(arch: str, s: Setting, structure: Structure, seed: int) -> GrowableModel:
    return build_model(arch, structure, vocab_size=s.vocab, max_seq_len=s.seq, head_dim=s.head_dim, seed=seed)


def variants(arch: str, s: Setting, growths: tuple[str, ...]) -> dict[tuple[str, str], GrowableModel]:
    """(growth, kind) -> model; kind in ramp/folded, plus ("-", "plain") and a second plain copy as a noise control."""
    out = {
        ("-", "plain"): _build(arch, s, s.structure, seed=0),
        ("-", "control"): _build(arch, s, s.structure, seed=99),
    }
    for i, g in enumerate(growths):
        small = _build(arch, s, source(s.structure, g), seed=i + 1)
        ramp, folded = grow(small, s.structure, "msg", seed=i + 100), grow(small, s.structure, "msg", seed=i + 100)
        set_mask_value(ramp, 0.5)
        set_mask_value(folded, 1.0)
        out[(g, "ramp")], out[(g, "folded")] = ramp, folded
    for m in out.values():
        m.train()
    return out


def train_step(model: GrowableModel, ids: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    model.loss(model(ids), ids).backward()


def measure(models: dict, ids: torch.Tensor, rounds: int, steps: int, seed: int = 0) -> dict[tuple, list[float]]:
    """Tokens/s samples per model: ``rounds`` rounds of ``steps`` steps, models shuffled in each round."""
    for m in models.values():  # warm-up: allocator, autograd graph caches
        train_step(m, ids)
    rng, samples = random.Random(seed), {k: [] for k in models}
    for _ in range(rounds):
        order = list(models)
        rng.shuffle(order)
        for key in order:
            t0 = time.perf_counter()
            for _ in range(steps):
                train_step(models[key], ids)
            samples[key].append(ids.numel() * steps / (time.perf_counter() - t0))
    return samples


def throughput_rows(
    arch: str, name: str, s: Setting, growths: tuple[str, ...], rounds: int, steps: int
) -> tuple[list[str], float]:
    """Table rows and the plain model's tokens/s."""
    ids = torch.randint(0, s.vocab, (s.batch, s.seq), generator=torch.Generator().manual_seed(0))
    models = variants(arch, s, growths)
    samples = measure(models, ids, rounds, steps)
    tps = {k: max(v) for k, v in samples.items()}
    spread = [statistics.median(v) / max(v) for v in samples.values()]
    plain = tps[("-", "plain")]
    rows = []
    for g in growths:
        ramp, folded = tps[(g, "ramp")], tps[(g, "folded")]
        rows.append(
            f"| {name} {s.structure} | {g} | {source(s.structure, g)} | {ramp:,.0f} | {plain:,.0f} | {folded:,.0f} "
            f"| {ramp / plain:.3f} | {folded / plain:.3f} |"
        )
    control = tps[("-", "control")]
    rows.append(
        f"| {name} {s.structure} | none (2nd plain copy: noise control) | - | - | {plain:,.0f} | {control:,.0f} "
        f"| - | {control / plain:.3f} |"
    )
    rows.append(f"| {name} noise | median/best per variant {min(spread):.2f}-{max(spread):.2f} | | | | | | |")
    return rows, plain


def _autograd_masked_ln(x, weight, bias, c, eps):
    """The masked LayerNorm as it was before its hand-written backward (autograd through eq. 17/19): the reference
    this benchmark compares against, side by side."""
    w = c / c.sum()
    xc = x - (x @ w).unsqueeze(-1)
    rstd = torch.rsqrt((xc * xc) @ w + eps).unsqueeze(-1)
    return torch.addcmul(bias * c, xc * rstd, weight * c)


def layernorm_rows(arch: str, name: str, s: Setting, plain_tps: float, rounds: int) -> list[str]:
    """Forward+backward µs of one LayerNorm on a [batch, seq, H] activation: plain, masked mid-ramp (hand-written
    backward, what the model runs) and masked through autograd (before); and what the masked ones add to a plain
    training step (x the model's number of LayerNorms, over the step time of ``plain_tps``)."""
    H = s.structure.hidden_dim
    ln = MaskedLayerNorm(H)
    mask = GrowthMask(H, H // 2, 0.5)
    x = torch.randn(s.batch, s.seq, H, requires_grad=True)
    gy = torch.randn(s.batch, s.seq, H)
    fns = {
        "plain": lambda: ln(x),
        "masked": lambda: ln(x, mask),
        "autograd": lambda: _autograd_masked_ln(x, ln.weight, ln.bias, mask.value, ln.eps),
    }
    best = {k: math.inf for k in fns}
    order = list(fns)
    for r in range(rounds):
        random.Random(r).shuffle(order)
        for k in order:
            t0 = time.perf_counter()
            for _ in range(20):
                fns[k]().backward(gy)
            best[k] = min(best[k], (time.perf_counter() - t0) / 20)
    n_ln = sum(isinstance(m, MaskedLayerNorm) for m in _build(arch, s, s.structure, seed=0).modules())
    step_s = s.batch * s.seq / plain_tps
    share = {k: (best[k] - best["plain"]) * n_ln / step_s for k in ("masked", "autograd")}
    us = {k: v * 1e6 for k, v in best.items()}
    return [
        f"| {name} {s.structure} | {us['plain']:.0f} | {us['masked']:.0f} | {us['autograd']:.0f} | {n_ln} "
        f"| {share['masked']:.1%} | {share['autograd']:.1%} |"
    ]


def preservation_error(arch: str, s: Setting, growth: str, seed: int) -> float:
    """Relative max logit change of an MSG growth at c = 0, float64, random (perturbed) weights and inputs."""
    small = _build(arch, s, source(s.structure, growth), seed=seed).double().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in small.parameters():  # biases/LN are 0/1 at init: randomise so every path carries signal
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    big = grow(small, s.structure, "msg", seed=seed + 1).eval()
    ids = torch.randint(0, s.vocab, (4, s.seq), generator=gen)
    with torch.no_grad():
        before, after = small(ids), big(ids)
    return ((after - before).abs().max() / before.abs().max()).item()


def preservation_rows(s: Setting, growths: tuple[str, ...], seeds: int) -> list[str]:
    rows = []
    for g in growths:
        worst = [max(preservation_error(a, s, g, seed) for seed in range(seeds)) for a in ARCHS]
        rows.append(
            f"| {g} | {source(s.structure, g)} -> {s.structure} | " + " | ".join(f"{w:.2e}" for w in worst) + " |"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="mini structure only, fewer rounds")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 or 2 on this machine)")
    p.add_argument("--arch", choices=ARCHS, default="gpt", help="architecture for the throughput table")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per model (default 8, quick 4)")
    p.add_argument("--steps", type=int, default=1, help="fwd+bwd steps per model per round")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # no per-step page faults on the logits: they made variants differ by allocator luck
    rounds = args.rounds or (4 if args.quick else 8)
    names = ("mini",) if args.quick else ("mini", "large")
    t0 = time.perf_counter()
    print(
        f"## Mask overhead: {args.arch}, fp32 CPU, {args.threads} thread(s), forward+backward, "
        f"best of {rounds} interleaved rounds x {args.steps} step(s), torch {torch.__version__}\n"
    )
    print("| structure S | growth | from | ramp c=0.5 tok/s | plain tok/s | folded tok/s | ramp/plain | folded/plain |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    plain = {}
    for name in names:
        rows, plain[name] = throughput_rows(args.arch, name, SETTINGS[name], GROWTHS, rounds, args.steps)
        print("\n".join(rows), flush=True)
    print(
        f"\n(batch {SETTINGS['mini'].batch} x seq {SETTINGS['mini'].seq}, vocab {SETTINGS['mini'].vocab}; "
        "head_dim: mini 32, large 64)\n"
    )
    print(
        "## Masked LayerNorm mid-ramp (c = 0.5 on half the features): µs per forward+backward, and what the "
        "model's LayerNorms add to a plain training step\n"
    )
    print(
        "| structure S | plain µs | masked µs | masked via autograd (before) µs | LayerNorms | masked adds "
        "| via autograd added |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in names:
        print("\n".join(layernorm_rows(args.arch, name, SETTINGS[name], plain[name], rounds)), flush=True)
    print()
    print("## MSG function preservation at c = 0 (float64, worst of 3 seeds, max|Δlogits| / max|logits|)\n")
    print("| growth | structures | " + " | ".join(ARCHS) + " |")
    print("|---|---|" + "---:|" * len(ARCHS))
    for row in preservation_rows(SETTINGS["mini"], GROWTHS, seeds=3):
        print(row, flush=True)
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
