"""DeepSpeed edge of msg_ray: build an engine for a model and rebuild it at a growth, carrying AdamW state.

At a growth the model is replaced by a bigger one, so the engine is destroyed and built again. What must
survive is the optimizer's view of training: full fp32 master weights, Adam moments and the step count, all
paired by parameter NAME. ``gather_state`` reads them (a collective on every rank), ``msg_ray.optim_carry``
maps them onto the grown shapes (``carry_train_state``), ``rebuild`` builds the new engine and
``restore_state`` writes them back. ZeRO stages 0-3, fp32 and bf16, any data-parallel world size.

DeepSpeed is imported inside functions only, so importing this module stays cheap and Ray drivers that never
train do not need it. Private DeepSpeed API relied on (pinned by tests/test_engine.py's identical-rebuild
test; re-check on a DeepSpeed upgrade):
- ZeRO-1/2 create Adam state lazily and link per-parameter fragments to it after the first step
  (``_lazy_init_hp_params_optimizer_state`` guarded by ``_hp_optimizer_states_linked``); we create the
  state ourselves and call that re-link so ``safe_set_full_optimizer_state`` has somewhere to write.
- The flat fp32 partitions the inner torch optimizer steps on: ``single_partition_of_fp32_groups`` (ZeRO-1/2),
  ``fp32_partitioned_groups_flat`` (ZeRO-3), ``fp32_groups``/``fp16_groups`` (stage 0 + bf16, unfused).
- ``deepspeed.ops.__compatible_ops__``: marking the shm comm op incompatible skips a 30-45 s compile on CPU.
"""

from __future__ import annotations

import gc
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch

from msg_ray.optim_carry import AdamState, carry_adam_state
from msg_ray.train.collectives import backend_name
from msg_ray.train.optim import apply_lr, param_groups
from msg_ray.validate import check_types

MOMENT_KEYS = ("exp_avg", "exp_avg_sq")
PRECISIONS = ("auto", "fp32", "bf16")
# |loss after - loss before| a function-preserving growth may show on the probe batch before the run warns. fp32:
# far above fp32 rounding of a mean loss, far below what a broken operator does. bf16: logits round to 2^-8
# relative, so a growth that changes any rounding path (the hidden growth's masked norms) may flip roundings; 1e-3
# is still a fraction of one bf16 ulp of a loss of ~5.
GROWTH_CHECK_TOL = {"fp32": 1e-4, "bf16": 1e-3}


def growth_check_tol(precision: str) -> float:
    """The growth loss check's default tolerance for a resolved ``precision`` ("fp32" or "bf16")."""
    return GROWTH_CHECK_TOL[precision]


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    zero_stage: int = 2
    # "auto" | "fp32" | "bf16": auto is bf16 on GPUs (RunConfig.use_gpu; CUDA present for an EngineConfig used on
    # its own) and fp32 on CPU. fp16 is refused on CPU, and bf16 needs no loss scaling.
    precision: str = "auto"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # 0 disables clipping
    micro_batch_size: int = 8
    grad_accum: int = 1

    def __post_init__(self) -> None:
        check_types(self)
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two values in [0, 1), got {self.betas!r}")
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0 (0 disables), got {self.grad_clip!r}")
        if self.micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {self.micro_batch_size!r}")
        if self.grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, got {self.grad_accum!r}")

    def resolved(self, use_gpu: bool | None = None) -> EngineConfig:
        """This config with ``precision`` "auto" made concrete: bf16 when ``use_gpu`` (None: when CUDA is
        available here), else fp32."""
        if self.precision != "auto":
            return self
        gpu = torch.cuda.is_available() if use_gpu is None else use_gpu
        return replace(self, precision="bf16" if gpu else "fp32")


@dataclass
class TrainState:
    """Optimizer view of training, full (unpartitioned) fp32 CPU tensors keyed by parameter name."""

    params: dict[str, torch.Tensor]
    exp_avg: dict[str, torch.Tensor]
    exp_avg_sq: dict[str, torch.Tensor]
    step: int  # optimizer steps taken (Adam bias correction uses it for every parameter, old or new)

    def adam_state(self) -> dict[str, AdamState]:
        return {n: {"exp_avg": self.exp_avg[n], "exp_avg_sq": self.exp_avg_sq[n]} for n in self.params}


def model_params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters of a plain (not ZeRO-3-partitioned) module as fp32 CPU clones, by name."""
    return {n: p.detach().float().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def carry_train_state(
    old: TrainState,
    new_params: Mapping[str, torch.Tensor],
    renames: Mapping[str, str] | None = None,
    layout: Mapping[str, Any] | None = None,
) -> TrainState:
    """State for a grown model: its parameter values, old moments where the growth's ``layout`` puts them
    (default: leading slices), zeros elsewhere."""
    shapes = {n: tuple(t.shape) for n, t in new_params.items()}
    moments = carry_adam_state(old.adam_state(), shapes, renames, layout)
    return TrainState(
        params={n: t.detach().float().cpu().clone() for n, t in new_params.items()},
        exp_avg={n: m["exp_avg"] for n, m in moments.items()},
        exp_avg_sq={n: m["exp_avg_sq"] for n, m in moments.items()},
        step=old.step,
    )


def ds_config(cfg: EngineConfig, world_size: int) -> dict[str, Any]:
    """DeepSpeed JSON config. The optimizer is a client torch AdamW (no op compile), so none is named here."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size!r}")
    cfg = cfg.resolved()
    return {
        "train_batch_size": cfg.micro_batch_size * cfg.grad_accum * world_size,
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": cfg.precision == "bf16"},
        "steps_per_print": 10**9,  # the training loop logs; DeepSpeed's own step log is noise
        "wall_clock_breakdown": False,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_distributed() -> None:
    """Join the process group (Ray Train / a launcher already made one), or make a one-process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return
    if "RANK" not in os.environ:  # outside any launcher DeepSpeed would otherwise try MPI discovery
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    import deepspeed

    deepspeed.init_distributed(dist_backend=backend_name())  # the accelerator's backend, not cuda.is_available()


def _skip_shm_comm_op() -> None:
    # CPU DeepSpeed compiles its shared-memory comm op at init (30-45 s); gloo does the collectives anyway.
    import deepspeed.ops

    ops = vars(deepspeed.ops)
    if "__compatible_ops__" not in ops:  # reading the attribute would probe (compile-check) every op
        ops["__compatible_ops__"] = {}
    ops["__compatible_ops__"]["deepspeed_shm_comm"] = False


_HEAP_FROZEN = False


def freeze_import_heap() -> None:
    """Import what every engine build pulls in, then move all objects alive now out of the garbage collector's
    reach (``gc.freeze``). Call once per training process, before the first model is built.

    Why: ``release`` must run a full ``gc.collect()`` at each growth (DeepSpeed engines sit in reference cycles).
    With torch, DeepSpeed, torch._dynamo (imported by the first ``torch.optim`` constructor) and Ray loaded, that
    walks ~550k import-time objects: ~0.9 s per growth on a CPU core. Frozen, the walk covers only what was made
    afterwards (data, models, engines): ~1 ms. Frozen objects are never collected, which is why models and
    engines must be created after this call, not before it. Later calls in the same process do nothing."""
    global _HEAP_FROZEN
    if _HEAP_FROZEN:
        return
    _HEAP_FROZEN = True
    _skip_shm_comm_op()
    import deepspeed  # noqa: F401
    import torch._dynamo  # noqa: F401

    try:  # imported by deepspeed.initialize's optimizer check (DeepSpeed 0.19); absent elsewhere
        import deepspeed.runtime.zero.muon.muon_optimizer  # noqa: F401
    except ImportError:
        pass
    gc.collect()
    gc.freeze()


def build_engine(model: torch.nn.Module, cfg: EngineConfig):
    """A DeepSpeed engine around ``model`` with a torch AdamW at ``cfg.lr``. The engine holds no LR schedule: the
    training loop sets each step's LR (``set_lr``) from ``msg_ray.train.lr``, so a rebuild never has to restore one."""
    _skip_shm_comm_op()
    ensure_distributed()
    import deepspeed

    cfg = cfg.resolved()
    originals = model_params(model)  # exact fp32 init: bf16 engines would otherwise start from rounded masters
    groups = param_groups(model, cfg.weight_decay)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    world = torch.distributed.get_world_size()
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=opt, config=ds_config(cfg, world), dist_init_required=False
    )
    if _mode(engine) == "unfused":
        # Stage 0 + bf16 (FP16_UnfusedOptimizer) takes a dummy zero-grad step at creation, which applies
        # weight decay and sets step=1; undo it so a fresh engine starts like torch AdamW would.
        engine.basic_optimizer.state.clear()
    if torch.device(engine.device).type == "cuda":  # TF32 for fp32 matmuls (fp32 runs, fp32 parts of bf16 ones)
        torch.set_float32_matmul_precision("high")
    if cfg.precision != "fp32":
        _write_params(engine, originals)
    return engine


def _mode(engine) -> str:
    stage = engine.zero_optimization_stage()
    if stage == 3:
        return "z3"
    if stage in (1, 2):
        return "mapped"
    return "unfused" if hasattr(engine.optimizer, "fp32_groups") else "plain"


def _flat_masters(engine) -> list[torch.Tensor]:
    """The tensors the inner torch AdamW keeps state for (flat partitions or per-parameter masters)."""
    opt, mode = engine.optimizer, _mode(engine)
    if mode == "z3":
        return list(opt.fp32_partitioned_groups_flat)
    if mode == "mapped":  # DeepSpeedZeroOptimizer, or BF16_Optimizer if fp32 grad accumulation is configured
        flats = getattr(opt, "single_partition_of_fp32_groups", None)
        return list(flats if flats is not None else opt.fp32_groups_flat_partition)
    if mode == "unfused":
        return [m for g in opt.fp32_groups for m in g]
    return [p for g in engine.basic_optimizer.param_groups for p in g["params"]]


def _masters_by_param(engine) -> dict[torch.Tensor, torch.Tensor]:
    # Stage 0 only: fp32 master of each module parameter (itself in fp32, its fp32 copy under bf16).
    if _mode(engine) == "unfused":
        opt = engine.optimizer
        pairs = zip(opt.fp16_groups, opt.fp32_groups, strict=True)
        return {lp: m for lg, mg in pairs for lp, m in zip(lg, mg, strict=True)}
    return {p: p for _, p in _named_params(engine)}


def _named_params(engine) -> list[tuple[str, torch.nn.Parameter]]:
    out = []
    for name, p in engine.module.named_parameters():
        if p.requires_grad:
            out.append((name.removeprefix("module."), p))
    return out


def _scalar_dtype() -> torch.dtype:
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32  # as torch AdamW


def _ensure_optimizer_state(engine, step: int | None = None) -> None:
    """Create zero Adam state where it is still lazy, optionally set its step, and re-link ZeRO-1/2 fragments."""
    state = engine.basic_optimizer.state
    for flat in _flat_masters(engine):
        st = state[flat]
        if not st:
            st["step"] = torch.tensor(0.0, dtype=_scalar_dtype())
            for k in MOMENT_KEYS:
                st[k] = torch.zeros_like(flat, memory_format=torch.preserve_format)
        if step is not None:
            st["step"] = torch.tensor(float(step), dtype=_scalar_dtype())
    relink = getattr(engine.optimizer, "_lazy_init_hp_params_optimizer_state", None)
    if relink is not None:  # private: ZeRO-1/2 (and BF16_Optimizer) point fragments at state after step 1
        engine.optimizer._hp_optimizer_states_linked = False
        relink()


def _optimizer_step(engine) -> int:
    for flat in _flat_masters(engine):
        st = engine.basic_optimizer.state.get(flat)
        if st and "step" in st:
            return int(st["step"])
    return 0


def _full_shape(p: torch.nn.Parameter) -> tuple[int, ...]:
    return tuple(p.ds_shape) if hasattr(p, "ds_shape") else tuple(p.shape)


def _to_host(v: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A full fp32 CPU copy of ``v``: from a CUDA tensor into pinned memory with a non-blocking copy (the caller
    synchronizes once for all of them), from a CPU tensor a plain clone."""
    out = torch.empty(shape, dtype=torch.float32, pin_memory=v.is_cuda)
    return out.copy_(v.detach().reshape(shape), non_blocking=v.is_cuda)


def gather_state(engine, keep: bool = True) -> TrainState:
    """Full fp32 masters, moments and step by name. A collective under ZeRO 1-3 (DeepSpeed's ``safe_get_full_*``
    all-reduce or all-gather every parameter over the data-parallel group): call on every rank, same order.

    ``keep=False`` (a checkpoint on ranks other than 0): take part in the collectives, then drop each gathered
    tensor at once, so only the rank that writes copies the state to the host; without ZeRO partitions (stage 0)
    there is no collective and such a rank does nothing."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    _ensure_optimizer_state(engine)  # a never-stepped engine has no state yet; zeros are what it would use
    mode, state = _mode(engine), engine.basic_optimizer.state
    masters = _masters_by_param(engine) if mode in ("plain", "unfused") else {}
    out = TrainState(params={}, exp_avg={}, exp_avg_sq={}, step=_optimizer_step(engine))
    if masters and not keep:
        return out
    on_cuda = False
    for name, p in _named_params(engine):
        if masters:
            m = masters[p]
            vals = [m, state[m]["exp_avg"], state[m]["exp_avg_sq"]]
        else:
            vals = [safe_get_full_fp32_param(p)] + [safe_get_full_optimizer_state(p, k) for k in MOMENT_KEYS]
        if not keep:
            continue
        on_cuda = on_cuda or vals[0].is_cuda
        full = [_to_host(v, _full_shape(p)) for v in vals]
        out.params[name], out.exp_avg[name], out.exp_avg_sq[name] = full
    if on_cuda:
        torch.cuda.synchronize()  # one wait for every non-blocking copy above, not one per tensor
    return out


def _check_names(engine, state: TrainState) -> None:
    named = dict(_named_params(engine))
    for field_name in ("params", "exp_avg", "exp_avg_sq"):
        tensors = getattr(state, field_name)
        if set(tensors) != set(named):
            missing, extra = sorted(set(named) - set(tensors)), sorted(set(tensors) - set(named))
            raise ValueError(f"state.{field_name} names differ from the model: missing {missing}, extra {extra}")
        for n, t in tensors.items():
            if tuple(t.shape) != _full_shape(named[n]):
                raise ValueError(f"state.{field_name}[{n!r}] has shape {tuple(t.shape)}, model {_full_shape(named[n])}")


def _write_params(engine, values: Mapping[str, torch.Tensor], moments: TrainState | None = None) -> None:
    """Write fp32 masters (and moments) by name, then make module weights equal to the masters."""
    import deepspeed
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    mode, state = _mode(engine), engine.basic_optimizer.state
    masters = _masters_by_param(engine) if mode in ("plain", "unfused") else {}
    for name, p in _named_params(engine):
        v = values[name]
        moms = {k: getattr(moments, k)[name] for k in MOMENT_KEYS} if moments is not None else {}
        if masters:
            m = masters[p]
            m.data.copy_(v.reshape(m.shape))
            for k, t in moms.items():
                state[m][k].copy_(t.reshape(m.shape))
        else:
            dev = p.device
            safe_set_full_fp32_param(p, v.to(dev))
            for k, t in moms.items():
                safe_set_full_optimizer_state(p, t.to(dev), k)
        if mode == "z3":  # module weights are partitioned (and bf16 ones are a separate copy): gather, write
            with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
                p.data.copy_(v.to(p.device, p.dtype).reshape(p.shape))
        elif mode != "plain":  # ZeRO-1/2 masters are clones; bf16 weights are the masters rounded
            p.data.copy_(v.to(p.device, p.dtype).reshape(p.shape))


def restore_state(engine, state: TrainState) -> None:
    """Write masters, moments and step (shapes must match the engine's model). Every rank."""
    _check_names(engine, state)
    _ensure_optimizer_state(engine, step=state.step)
    _write_params(engine, state.params, state)
    engine.global_steps = state.step


def set_lr(engine, lr: float) -> None:
    """The learning rate of the next optimizer step, for every parameter group."""
    apply_lr(engine.optimizer, lr)


def release(engine) -> None:
    """Destroy the engine and drop its optimizer, partitions and hooks so repeated rebuilds do not grow memory."""
    module = engine.module
    engine.destroy()
    try:  # ZeRO-3 (DeepSpeed 0.19.8) keeps every wrapped module in a module-level list destroy() never clears
        from deepspeed.runtime.zero import parameter_offload as po

        po.FWD_MODULE_STACK[:] = [m for m in po.FWD_MODULE_STACK if m is not module]
    except (ImportError, AttributeError):
        pass
    del module
    for attr in ("optimizer", "basic_optimizer", "lr_scheduler", "client_optimizer", "client_lr_scheduler"):
        if hasattr(engine, attr):
            setattr(engine, attr, None)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def rebuild(new_model: torch.nn.Module, cfg: EngineConfig, carried: TrainState):
    """A new engine for ``new_model`` holding ``carried`` (the caller has released the old one)."""
    engine = build_engine(new_model, cfg)
    restore_state(engine, carried)
    return engine
