"""Parameter counts and training FLOPs of msg_ray's models, per structure and per schedule, and MFU.

Each architecture declares its own formulas (``msg_ray.archs``: GPT/BERT in ``gpt_bert``, llama in
``llama_spec``, each documenting its parameter layout); this module dispatches on the arch name and adds the
schedule-level sums, the equal-FLOPs solver and MFU. Conventions shared by every formula:

- matmuls only, 2 FLOPs per multiply-add; norms, softmax, biases, activations, rotary rotations and embedding
  lookups are ignored as they are small and memory-bound;
- the LM head runs on every position (BERT too: our models compute the head on all positions, so this is what
  they spend, not the 15 % of masked positions a sparse head would);
- training = 3 x forward (backward = 2 x forward).

Causal attention is *not* halved for GPT: like PaLM's MFU accounting, the full T x T score matrix is counted,
because that is what dense attention kernels compute. This makes MFU comparable across GPT and BERT.
"""

from __future__ import annotations

import math

from msg_ray.architecture import get_arch
from msg_ray.schedule import Schedule
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
    get_arch(arch)  # ValueError naming the registered architectures
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
    kv_group_size: int = 1,
) -> int:
    """Number of parameters (a tied LM head counted once), by the architecture's formula (``msg_ray.archs``).

    ``include_embeddings=False`` leaves out the embedding tables (GPT/BERT: ``tok_emb``, ``pos_emb``; llama:
    ``tok_emb``; its untied ``lm_head`` stays).
    """
    s = _check(arch, structure, head_dim)
    return get_arch(arch).param_count(s, vocab_size, max_seq_len, head_dim, kv_group_size, include_embeddings)


def flops_per_token(
    arch: str, structure: Structure, vocab_size: int, seq_len: int, head_dim: int = 64, kv_group_size: int = 1
) -> float:
    """Training (forward + backward = 3 x forward) matmul FLOPs per token, attention and LM head included."""
    s = _check(arch, structure, head_dim)
    return get_arch(arch).flops_per_token(s, vocab_size, seq_len, head_dim, kv_group_size)


def _fpt(schedule: Schedule, structure: Structure, vocab_size: int, seq_len: int) -> float:
    return flops_per_token(schedule.arch, structure, vocab_size, seq_len, schedule.head_dim, schedule.kv_group_size)


def flops_per_step(
    schedule: Schedule, structure: Structure, vocab_size: int, seq_len: int, tokens_per_step: int
) -> float:
    """Training FLOPs of one optimizer step of ``structure`` (``schedule``'s architecture, head_dim and key/value
    groups) over ``tokens_per_step`` tokens: what every training loop adds to its FLOPs axis per step."""
    return _fpt(schedule, structure, vocab_size, seq_len) * tokens_per_step


def schedule_flops(schedule: Schedule, vocab_size: int, seq_len: int, tokens_per_step: int) -> float:
    """Total training FLOPs of a run: sum over stages of steps x tokens x FLOPs per token.

    During a mask ramp the grown model is computed in full (masks multiply, they do not skip work), so
    ramps count at the grown size.
    """
    total = 0.0
    for stage, steps in zip(schedule.stages, schedule.stage_lengths(), strict=True):
        fpt = _fpt(schedule, stage.structure, vocab_size, seq_len)
        total += steps * tokens_per_step * fpt
    return total


def flops_ratio(schedule: Schedule, vocab_size: int, seq_len: int) -> float:
    """FLOPs of training the target for the same steps / FLOPs of ``schedule``: the speed-up limit."""
    full = schedule.total_steps * _fpt(schedule, schedule.target, vocab_size, seq_len)
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
    fpt = _fpt(schedule, schedule.target, vocab_size, seq_len)
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
    budget = full_steps * _fpt(schedule, ref, vocab_size, seq_len)
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
