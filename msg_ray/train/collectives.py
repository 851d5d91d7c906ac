"""Every collective the training loop runs, on the device its process group's backend can use.

A process group made with ``backend="nccl"`` has no CPU backend: an ``all_reduce`` of a CPU tensor raises there.
So each helper allocates its tensor on the engine's device (``engine.device``: ``cuda:<local rank>`` under NCCL,
``cpu`` under gloo) and never on the CPU by default, and refuses (one clear line) a CPU tensor on an NCCL-only
group. Which backend a group gets follows DeepSpeed's accelerator (``backend_name``), not
``torch.cuda.is_available()``: the CPU accelerator (``DS_ACCELERATOR=cpu``, set by ``reporting.worker_env`` for
CPU runs) talks gloo even on a machine that has GPUs.

Outside a process group, or with one rank, every helper returns its input unchanged and runs no collective.
"""

from __future__ import annotations

import torch

ReduceOp = torch.distributed.ReduceOp


def backend_name() -> str:
    """The backend DeepSpeed's accelerator asks for (``nccl`` on CUDA; ``gloo``, or ``ccl`` with oneCCL, on CPU)."""
    from deepspeed.accelerator import get_accelerator  # heavy; picks the accelerator on first use

    return get_accelerator().communication_backend_name()


def ray_backend(use_gpu: bool) -> str:
    """The backend Ray Train creates the workers' group with. It is chosen on the driver, where the workers'
    accelerator cannot be asked; it equals what DeepSpeed's accelerator picks in the worker: CUDA -> nccl, and CPU
    runs force the CPU accelerator (``reporting.worker_env``), whose backend without oneCCL is gloo."""
    return "nccl" if use_gpu else "gloo"


def world_size() -> int:
    """Ranks in the default group (1 outside one)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def check_device(backend: str, device: torch.device | str) -> None:
    """Refuse a tensor the group's backend cannot reduce: an NCCL-only group (no ``cpu:`` part) reduces CUDA
    tensors only."""
    dev = torch.device(device)
    nccl_only = "nccl" in backend and "cpu:" not in backend
    if nccl_only and dev.type != "cuda":
        raise RuntimeError(
            f"collective on a {dev.type} tensor in an NCCL-only process group ({backend!r}): allocate it on the "
            "engine's CUDA device (msg_ray.train.collectives)"
        )


def _reduce(t: torch.Tensor, op: ReduceOp) -> torch.Tensor:
    check_device(torch.distributed.get_backend(), t.device)
    torch.distributed.all_reduce(t, op=op)
    return t


def max_over_ranks(value: float, device: torch.device | str) -> float:
    """The largest ``value`` of any rank (float64 on ``device``; one all-reduce, one host read)."""
    if world_size() == 1:
        return float(value)
    t = torch.tensor([value], dtype=torch.float64, device=device)
    return float(_reduce(t, ReduceOp.MAX).item())


def any_rank(flag: bool, device: torch.device | str) -> bool:
    """Whether ``flag`` is set on any rank (so every rank takes the same branch)."""
    if world_size() == 1:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    return bool(_reduce(t, ReduceOp.MAX).item() > 0)


def mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """The mean of ``t`` over ranks, in place (``t`` already lives on the engine's device)."""
    n = world_size()
    if n == 1:
        return t
    return _reduce(t, ReduceOp.SUM).div_(n)
