"""Parameter counts and training FLOPs of msg_ray's GPT/BERT models, per structure and per schedule, and MFU.

The parameter layout mirrors ``msg_ray.model`` (head_dim decoupled from hidden_dim, attention width n*d):

- ``tok_emb`` [V, H], ``pos_emb`` [S, H]; BERT also an embedding LayerNorm (w, b [H]).
- per layer: ln1 (w, b); q, k, v: Linear(H -> n*d) + bias; out: Linear(n*d -> H) + bias; ln2 (w, b);
  fc1: Linear(H -> F) + bias; fc2: Linear(F -> H) + bias.
- GPT: final LayerNorm ``ln_f``; LM head tied to ``tok_emb``, no bias.
- BERT: MLM transform Linear(H -> H) + bias, GELU, LayerNorm; decoder tied to ``tok_emb`` + bias [V].

FLOP accounting (matmuls only, 2 FLOPs per multiply-add; LayerNorm, softmax, biases, GELU and embedding
lookups are ignored as they are small and memory-bound):

- forward per token and layer: 2*H*3A (q, k, v) + 2*A*H (out) + 2*2*H*F (FFN) + 2*T*A (scores q.k)
  + 2*T*A (weights . v), with A = n*d and T = the sequence length;
- the LM head (2*H*V) on every position; BERT adds its MLM transform (2*H*H). Our models compute the head on
  all positions, so this is what they spend, not the 15 % of masked positions a sparse head would;
- training = 3 x forward (backward = 2 x forward).

Causal attention is *not* halved for GPT: like PaLM's MFU accounting, the full T x T score matrix is counted,
because that is what dense attention kernels compute. This makes MFU comparable across GPT and BERT.
"""

from __future__ import annotations

import math

from msg_ray.schedule import ARCHS, Schedule
from msg_ray.structure import Structure

# Dense (non-sparse) bf16 tensor-core peaks per GPU, from NVIDIA datasheets; V100 has no bf16, fp16 listed.
PEAK_FLOPS: dict[str, float] = {
    "a100": 312e12,
    "h100-sxm": 989e12,
    "h100-pcie": 756e12,
    "h200": 989e12,
    "l40s": 362e12,
    "l4": 121e12,
    "a10": 125e12,
    "v100": 125e12,
}


def _check(arch: str, structure: Structure, head_dim: int) -> Structure:
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 1:
        raise ValueError(f"head_dim must be an int >= 1, got {head_dim!r}")
    return Structure.parse(structure)


def param_count(
    arch: str,
    structure: Structure,
    vocab_size: int,
    max_seq_len: int,
    head_dim: int = 64,
    include_embeddings: bool = True,
) -> int:
    """Number of parameters (tied LM head counted once).

    ``include_embeddings=False`` leaves out only the two embedding tables (``tok_emb``, ``pos_emb``);
    LayerNorms and BERT's decoder bias stay in.
    """
    s = _check(arch, structure, head_dim)
    h, f, n, layers = s.as_tuple()
    a = n * head_dim
    per_layer = (
        2 * h  # ln1
        + 3 * (h * a + a)  # q, k, v
        + (a * h + h)  # out
        + 2 * h  # ln2
        + (h * f + f)  # fc1
        + (f * h + h)  # fc2
    )
    total = layers * per_layer
    if arch == "gpt":
        total += 2 * h  # ln_f
    else:
        total += 2 * h  # embedding LayerNorm
        total += h * h + h + 2 * h + vocab_size  # MLM transform, its LayerNorm, decoder bias
    if include_embeddings:
        total += vocab_size * h + max_seq_len * h
    return total


def flops_per_token(arch: str, structure: Structure, vocab_size: int, seq_len: int, head_dim: int = 64) -> float:
    """Training (forward + backward = 3 x forward) matmul FLOPs per token, attention and LM head included."""
    s = _check(arch, structure, head_dim)
    h, f, n, layers = s.as_tuple()
    a = n * head_dim
    per_layer = 2 * h * 3 * a + 2 * a * h + 2 * 2 * h * f + 2 * 2 * seq_len * a
    head = 2 * h * vocab_size + (2 * h * h if arch == "bert" else 0)
    return 3.0 * (layers * per_layer + head)


def schedule_flops(schedule: Schedule, vocab_size: int, seq_len: int, tokens_per_step: int) -> float:
    """Total training FLOPs of a run: sum over stages of steps x tokens x FLOPs per token.

    During a mask ramp the grown model is computed in full (masks multiply, they do not skip work), so
    ramps count at the grown size.
    """
    total = 0.0
    for stage, steps in zip(schedule.stages, schedule.stage_lengths(), strict=True):
        fpt = flops_per_token(schedule.arch, stage.structure, vocab_size, seq_len, schedule.head_dim)
        total += steps * tokens_per_step * fpt
    return total


def flops_ratio(schedule: Schedule, vocab_size: int, seq_len: int) -> float:
    """FLOPs of training the target for the same steps / FLOPs of ``schedule``: the speed-up limit."""
    full = schedule.total_steps * flops_per_token(
        schedule.arch, schedule.target, vocab_size, seq_len, schedule.head_dim
    )
    return full / schedule_flops(schedule, vocab_size, seq_len, tokens_per_step=1)


def mfu(flops_per_s: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved training FLOP/s over the hardware peak (same dtype)."""
    if not peak_flops > 0:
        raise ValueError(f"peak_flops must be > 0, got {peak_flops!r}")
    return flops_per_s / peak_flops


def peak_flops_per_gpu(name: str) -> float:
    """Dense bf16 peak FLOP/s of one GPU, from a short name ("h100") or ``torch.cuda.get_device_name()``.

    A plain H100 is taken as the SXM part unless the name says PCIe; raises ValueError for unknown GPUs.
    """
    key = name.lower().replace("nvidia", "").replace("tesla", "").replace("_", "-").strip()
    if key in PEAK_FLOPS:
        return PEAK_FLOPS[key]
    tokens = key.replace("-", " ").split()  # "a100-sxm4-80gb" -> ["a100", "sxm4", "80gb"]
    if "h200" in tokens or "gh200" in tokens:
        return PEAK_FLOPS["h200"]
    if "h100" in tokens:
        return PEAK_FLOPS["h100-pcie" if "pcie" in tokens else "h100-sxm"]
    for short in PEAK_FLOPS:
        if short in tokens:
            return PEAK_FLOPS[short]
    raise ValueError(f"unknown GPU {name!r}; known: {', '.join(sorted(PEAK_FLOPS))} (pass peak_flops explicitly)")


def full_flops(schedule: Schedule, steps: int, vocab_size: int, seq_len: int, tokens_per_step: int = 1) -> float:
    """FLOPs of training ``schedule``'s target from scratch for ``steps`` steps (the full baseline's budget)."""
    fpt = flops_per_token(schedule.arch, schedule.target, vocab_size, seq_len, schedule.head_dim)
    return steps * tokens_per_step * fpt


def solve_total_steps(
    schedule: Schedule, full_steps: int, vocab_size: int, seq_len: int, target: Structure | None = None
) -> int:
    """Total steps at which ``schedule`` (same stage fractions) spends the FLOPs of ``full_steps`` steps of
    ``target`` (default: the schedule's own target; a sweep over smaller structures passes the space's target).

    The equal-compute protocol (Kaddour et al., "No Train No Gain"): a growth schedule is cheaper per step, so at
    equal FLOPs it trains for more steps. Stage starts keep their fractions of the run (:meth:`Schedule.scaled`);
    among the step counts around the closed-form answer ``full_steps * fpt(target) / mean fpt`` the one whose
    rounded boundaries come closest to the full budget is returned, so the two differ by less than one full step.
    """
    if isinstance(full_steps, bool) or not isinstance(full_steps, int) or full_steps < 1:
        raise ValueError(f"full_steps must be an int >= 1, got {full_steps!r}")
    ref = Structure.parse(target) if target is not None else schedule.target
    budget = full_steps * flops_per_token(schedule.arch, ref, vocab_size, seq_len, schedule.head_dim)
    mean_fpt = schedule_flops(schedule, vocab_size, seq_len, 1) / schedule.total_steps
    guess = max(1, int(budget / mean_fpt))
    best, best_gap = guess, math.inf
    for total in range(max(1, guess - 3), guess + 4):
        try:
            candidate = schedule.scaled(total_steps=total)
        except ValueError:  # too short for φ or the stages: not a valid run of that length
            continue
        gap = abs(schedule_flops(candidate, vocab_size, seq_len, 1) - budget)
        if gap < best_gap:
            best, best_gap = total, gap
    if math.isinf(best_gap):
        raise ValueError(f"solve_total_steps: no valid length of {schedule.name or 'the schedule'} near {guess} steps")
    return best


def equal_flops(
    schedule: Schedule, full_steps: int, vocab_size: int, seq_len: int, target: Structure | None = None
) -> Schedule:
    """``schedule`` rescaled (same stage fractions, same φ) to the FLOPs of ``full_steps`` steps of ``target``
    (default: its own target)."""
    return schedule.scaled(total_steps=solve_total_steps(schedule, full_steps, vocab_size, seq_len, target))
