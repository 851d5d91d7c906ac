"""msg_ray.train.engine on real DeepSpeed (CPU, gloo): identical rebuild, Adam-state carry at a growth, memory.

All configurations run inside two spawned process groups (world size 1 and 2), started once per module, so
DeepSpeed's start-up is paid twice rather than per case; the tests then assert on what each rank reported.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import time

import pytest
import torch
import torch.multiprocessing as mp
from netutil import free_port
from torch import nn

from msg_ray.train.engine import (
    EngineConfig,
    build_engine,
    carry_train_state,
    ds_config,
    freeze_import_heap,
    gather_state,
    model_params,
    param_groups,
    rebuild,
    release,
    set_lr,
)

D_IN, D_OUT, K = 8, 4, 4  # K steps before and after the rebuild
STAGES = (0, 1, 2, 3)
IDENTICAL = [(s, p) for s in STAGES for p in ("fp32", "bf16")]
GROW = [(s, "fp32") for s in STAGES] + [(2, "bf16"), (3, "bf16")]
MEMORY = {1: [2, 3], 2: [3]}  # world size -> ZeRO stages given 20 rebuilds in a row
N_REBUILDS = 20


def lr_at(step: int, base: float) -> float:
    return base * min(1.0, (step + 1) / 3)  # a warm-up, so a wrong step position after restore changes the losses


class Net(nn.Module):
    """MLP with a LayerNorm, biases and a residual FFN; ``reverse`` registers modules in another order."""

    def __init__(self, hidden: int = 16, ffn: int = 32, *, extra: bool = False, reverse: bool = False):
        super().__init__()
        mods = {
            "embed": nn.Linear(D_IN, hidden),
            "norm": nn.LayerNorm(hidden),
            "up": nn.Linear(hidden, ffn),
            "down": nn.Linear(ffn, hidden),
            "head": nn.Linear(hidden, D_OUT),
        }
        if extra:  # a parameter with no pre-growth counterpart: its moments must start at zero
            mods["gate"] = nn.Linear(hidden, hidden)
        for name in reversed(mods) if reverse else mods:  # pairing by position would then mis-pair
            self.add_module(name, mods[name])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.embed(x.to(self.embed.weight.dtype)))
        h = h + self.down(torch.relu(self.up(h)))
        if hasattr(self, "gate"):
            h = h * torch.sigmoid(self.gate(h))
        return self.head(h).float()


def batch(step: int, rank: int, mb: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(mb, D_IN, generator=g), torch.randn(mb, D_OUT, generator=g)


def train(engine, start: int, steps: int, rank: int, base_lr: float = EngineConfig().lr) -> list[float]:
    """Steps as the training loop takes them: the LR set per step (``set_lr``), the engine holds no schedule."""
    losses = []
    for step in range(start, start + steps):
        set_lr(engine, lr_at(step, base_lr))
        x, y = batch(step, rank)
        loss = nn.functional.mse_loss(engine(x), y)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    return losses


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b)
    return max((a[n] - b[n]).abs().max().item() for n in a)


def job_identical(rank: int, stage: int, precision: str) -> dict:
    cfg = EngineConfig(zero_stage=stage, precision=precision)
    torch.manual_seed(0)
    net = Net()
    init = model_params(net)
    eng = build_engine(net, cfg)
    fresh = gather_state(eng)  # a fresh engine: exact fp32 init (not bf16-rounded), no steps, zero moments
    straight = train(eng, 0, 2 * K, rank)
    straight_end = gather_state(eng)
    release(eng)

    torch.manual_seed(0)
    eng = build_engine(Net(), cfg)
    first = train(eng, 0, K, rank)
    t0 = time.perf_counter()
    state = gather_state(eng)
    release(eng)
    torch.manual_seed(99)  # different init: only restore_state can make the second half identical
    eng = rebuild(Net(), cfg, state)
    seconds = time.perf_counter() - t0
    second = train(eng, K, K, rank)
    end = gather_state(eng)
    release(eng)
    return {
        "straight": straight,
        "rebuilt": first + second,
        "seconds": seconds,
        "param_diff": max_diff(straight_end.params, end.params),
        "moment_diff": max(
            max_diff(straight_end.exp_avg, end.exp_avg), max_diff(straight_end.exp_avg_sq, end.exp_avg_sq)
        ),
        "steps": (straight_end.step, end.step),
        "fresh": (
            max_diff(fresh.params, init),
            fresh.step,
            sum(t.abs().sum().item() for t in fresh.exp_avg_sq.values()),
        ),
    }


def _grown_values(old_params: dict[str, torch.Tensor], big: nn.Module) -> dict[str, torch.Tensor]:
    vals = model_params(big)  # new coordinates keep the big model's random init
    for n, t in old_params.items():
        vals[n][tuple(slice(0, s) for s in t.shape)] = t
    return vals


def _reference_step(carried, cfg: EngineConfig, world: int) -> dict[str, torch.Tensor]:
    """One torch AdamW step from the carried state on the global batch (all ranks' micro-batches)."""
    ref = Net(24, 48, extra=True, reverse=True)
    ref.load_state_dict(carried.params)
    opt = torch.optim.AdamW(param_groups(ref, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    for g in opt.param_groups:
        g["lr"] = lr_at(carried.step, cfg.lr)
    for n, p in ref.named_parameters():
        opt.state[p] = {
            "step": torch.tensor(float(carried.step)),
            "exp_avg": carried.exp_avg[n].clone(),
            "exp_avg_sq": carried.exp_avg_sq[n].clone(),
        }
    losses = [nn.functional.mse_loss(ref(x), y) for x, y in (batch(carried.step, r) for r in range(world))]
    (sum(losses) / world).backward()  # DeepSpeed averages the ranks' gradients
    torch.nn.utils.clip_grad_norm_(ref.parameters(), cfg.grad_clip)
    opt.step()
    return model_params(ref)


def _module_weights(eng, stage: int) -> dict[str, torch.Tensor]:
    import deepspeed

    params = list(eng.module.named_parameters())
    with deepspeed.zero.GatheredParameters([p for _, p in params], enabled=stage == 3):
        return {n: p.detach().float().clone() for n, p in params}


def job_grow(rank: int, stage: int, precision: str) -> dict:
    cfg = EngineConfig(zero_stage=stage, precision=precision, grad_clip=0.5)
    torch.manual_seed(0)
    eng = build_engine(Net(16, 32), cfg)
    train(eng, 0, 3, rank)
    old = gather_state(eng)
    release(eng)
    torch.manual_seed(1)
    big = Net(24, 48, extra=True, reverse=True)
    carried = carry_train_state(old, _grown_values(old.params, big))
    eng = rebuild(big, cfg, carried)
    got = gather_state(eng)
    weights = _module_weights(eng, stage)
    lp_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    out = {
        "old": old,
        "carried": carried,
        "got": got,
        "lp_diff": max_diff(weights, {n: t.to(lp_dtype).float() for n, t in carried.params.items()}),
    }
    train(eng, carried.step, 1, rank)
    out["after"] = gather_state(eng).params
    release(eng)
    if precision == "fp32":
        out["ref_after"] = _reference_step(carried, cfg, int(os.environ["WORLD_SIZE"]))
    return out


def job_ramp(rank: int, stage: int) -> dict:
    """A GPT mid-ramp (all four dimensions grown, c = 0.5) through an engine: its masked projections fold the
    masks into weights, which ZeRO-3 must have gathered (they are used in the layer's own forward)."""
    import copy

    from msg_ray.growth import grow, set_mask_value
    from msg_ray.model import build_model
    from msg_ray.structure import Structure

    small = build_model("gpt", Structure(16, 32, 1, 1), vocab_size=64, max_seq_len=8, head_dim=8, seed=0)
    model = grow(small, Structure(32, 64, 2, 2), "msg", seed=1)
    set_mask_value(model, 0.5)
    ref = copy.deepcopy(model)
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(rank))
    eng = build_engine(model, EngineConfig(zero_stage=stage))
    loss = eng.module.loss(eng(ids), ids)
    eng.backward(loss)
    eng.step()
    out = {
        "engine": loss.item(),
        "plain": ref.loss(ref(ids), ids).item(),
        "after": eng.module.loss(eng(ids), ids).item(),
    }
    release(eng)
    return out


def _live_engines() -> int:
    from deepspeed.runtime.engine import DeepSpeedEngine

    gc.collect()
    return sum(isinstance(o, DeepSpeedEngine) for o in gc.get_objects())


def job_memory(rank: int, stage: int) -> dict:
    live_before = _live_engines()  # engines earlier jobs in this process still hold are not this job's leak
    cfg = EngineConfig(zero_stage=stage)
    torch.manual_seed(0)
    eng = build_engine(Net(64, 256), cfg)
    train(eng, 0, 1, rank)
    rss, secs = [rss_mb()], []
    for i in range(N_REBUILDS):
        t0 = time.perf_counter()
        state = gather_state(eng)
        release(eng)
        del eng
        eng = rebuild(Net(64, 256), cfg, state)
        secs.append(time.perf_counter() - t0)
        train(eng, 1 + i, 1, rank)
        rss.append(rss_mb())
    release(eng)
    del eng
    return {"rss": rss, "seconds": secs, "leaked_engines": _live_engines() - live_before}


def job_collectives(rank: int, world: int) -> dict:
    """msg_ray.train.collectives in this group, on a ZeRO-2 engine's device (tests/test_gpu_path.py asserts)."""
    from msg_ray.train import collectives
    from msg_ray.train.budget import Budget
    from msg_ray.train.divergence import Diverged, agree

    torch.manual_seed(0)
    eng = build_engine(Net(), EngineConfig(zero_stage=2))
    train(eng, 0, 2, rank)
    dev = eng.device
    found = Diverged(7, math.nan, "not finite") if rank == 1 else None
    out = {
        "backend": torch.distributed.get_backend(),
        "accelerator_backend": collectives.backend_name(),
        "device": str(dev),
        "agree_one": agree(found, dev),
        "agree_none": agree(None, dev),
        "max": collectives.max_over_ranks(10.0 + rank, dev),
        # rank 0 alone (10 s) has not spent 10.5 s; the slowest rank (11 s) has, so every rank stops
        "spent": Budget(total_steps=100, wall_budget_s=10.5, world=world).spent(3, 10.0 + rank, dev),
        "mean": collectives.mean_over_ranks(torch.tensor([float(rank)], device=dev)).item(),
        "full": {k: v.tolist() for k, v in gather_state(eng).params.items()},
        "kept": sorted(gather_state(eng, keep=rank == 0).params),
    }
    release(eng)
    return out


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        OMP_NUM_THREADS="1",
        DS_ACCELERATOR="cpu",
    )
    torch.set_num_threads(1)
    import deepspeed

    deepspeed.utils.logger.setLevel(logging.WARNING)
    freeze_import_heap()  # as the training worker does: release()'s gc.collect() then skips the import heap
    res: dict = {"identical": {}, "grow": {}, "memory": {}, "ramp": {}}
    for stage, prec in IDENTICAL:
        res["identical"][stage, prec] = job_identical(rank, stage, prec)
    for stage, prec in GROW:
        res["grow"][stage, prec] = job_grow(rank, stage, prec)
    for stage in MEMORY[world]:
        res["memory"][stage] = job_memory(rank, stage)
    for stage in (0, 3):
        res["ramp"][stage] = job_ramp(rank, stage)
    res["collectives"] = job_collectives(rank, world)
    torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[int, list[dict]]:
    """world size -> per-rank results."""
    out = {}
    for world in (1, 2):
        d = tmp_path_factory.mktemp(f"ws{world}")
        t0 = time.perf_counter()
        mp.spawn(_worker, args=(world, free_port(), str(d)), nprocs=world, join=True)
        print(f"\nworld size {world}: {time.perf_counter() - t0:.1f} s for all configurations")
        out[world] = [torch.load(d / f"rank{r}.pt", weights_only=False) for r in range(world)]
    return out


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize(("stage", "precision"), IDENTICAL)
def test_identical_rebuild_reproduces_uninterrupted_run(runs, world, stage, precision):
    for rank, res in enumerate(runs[world]):
        r = res["identical"][stage, precision]
        diff = max(abs(a - b) for a, b in zip(r["straight"], r["rebuilt"], strict=True))
        print(f"ws={world} stage={stage} {precision} rank={rank}: rebuild {r['seconds']:.3f} s, loss diff {diff}")
        assert diff <= 1e-7, (r["straight"], r["rebuilt"])
        assert r["param_diff"] <= 1e-7 and r["moment_diff"] <= 1e-7
        assert r["steps"] == (2 * K, 2 * K)
        assert r["fresh"] == (0.0, 0, 0.0)
    # the two ranks saw different data, so identical losses across ranks would mean a broken data split
    if world == 2:
        assert (
            runs[2][0]["identical"][stage, precision]["straight"]
            != runs[2][1]["identical"][stage, precision]["straight"]
        )


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize(("stage", "precision"), GROW)
def test_grow_carries_moments_and_matches_torch_adamw(runs, world, stage, precision):
    for res in runs[world]:
        r = res["grow"][stage, precision]
        old, carried, got = r["old"], r["carried"], r["got"]
        assert got.step == old.step == 3
        assert max_diff(got.params, carried.params) == 0.0
        assert max_diff(got.exp_avg, carried.exp_avg) == 0.0
        assert max_diff(got.exp_avg_sq, carried.exp_avg_sq) == 0.0
        for n, m in old.exp_avg.items():  # old coordinates hold the pre-growth moments, new ones are zero
            lead = tuple(slice(0, s) for s in m.shape)
            assert torch.equal(got.exp_avg[n][lead], m) and m.abs().sum() > 0
            rest = got.exp_avg[n].clone()
            rest[lead] = 0
            assert rest.abs().sum() == 0
        assert got.exp_avg["gate.weight"].abs().sum() == 0 and got.exp_avg_sq["gate.bias"].abs().sum() == 0
        assert r["lp_diff"] == 0.0  # module weights are the restored masters (rounded to bf16 under bf16)
        if precision == "fp32":
            diff = max_diff(r["after"], r["ref_after"])
            moved = max_diff(r["after"], carried.params)
            assert diff < 1e-6 and moved > 1e-4, (diff, moved)
    if world == 2:  # every rank gathered the same full state
        a, b = (res["grow"][stage, precision]["after"] for res in runs[2])
        assert max_diff(a, b) == 0.0


@pytest.mark.parametrize(("world", "stage"), [(w, s) for w, ss in MEMORY.items() for s in ss])
def test_many_rebuilds_do_not_grow_memory(runs, world, stage):
    for rank, res in enumerate(runs[world]):
        r = res["memory"][stage]
        growth = r["rss"][-1] - r["rss"][1]
        secs = sorted(r["seconds"])[len(r["seconds"]) // 2]
        print(
            f"ws={world} stage={stage} rank={rank}: RSS {r['rss'][0]:.0f} -> {r['rss'][-1]:.0f} MB, median rebuild {secs:.3f} s"
        )
        assert growth < 150, r["rss"]
        assert r["leaked_engines"] == 0  # a leak keeps released engines reachable


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("stage", [0, 3])
def test_mid_ramp_model_trains_under_zero(runs, world, stage):
    for rank, res in enumerate(runs[world]):
        r = res["ramp"][stage]
        assert abs(r["engine"] - r["plain"]) < 1e-5, (rank, r)  # same function as the module outside the engine
        assert math.isfinite(r["after"]) and r["after"] < r["engine"], (rank, r)  # the step trained it


def test_config_validation_and_ds_config():
    with pytest.raises(ValueError, match="zero_stage"):
        EngineConfig(zero_stage=4)
    with pytest.raises(ValueError, match="precision"):
        EngineConfig(precision="fp16")
    with pytest.raises(ValueError, match="grad_accum"):
        EngineConfig(grad_accum=0)
    c = ds_config(EngineConfig(zero_stage=3, precision="bf16", micro_batch_size=4, grad_accum=2), world_size=2)
    assert c["train_batch_size"] == 16 and c["zero_optimization"]["stage"] == 3 and c["bf16"]["enabled"]
    assert "optimizer" not in c  # a client torch AdamW: no FusedAdam / CPUAdam compile


def test_param_groups_exclude_biases_and_norms_from_decay():
    groups = param_groups(Net(), 0.1)
    by_decay = {g["weight_decay"]: set(g["names"]) for g in groups}
    assert by_decay[0.1] == {"embed.weight", "up.weight", "down.weight", "head.weight"}
    assert {"norm.weight", "norm.bias", "embed.bias"} <= by_decay[0.0]
    assert all(len(g["names"]) == len(g["params"]) for g in groups)


@pytest.mark.parametrize("world", [1, 2])
def test_collectives_run_on_the_engines_device_in_the_accelerators_backend(runs, world):
    for rank, r in enumerate(x["collectives"] for x in runs[world]):
        assert r["backend"] == r["accelerator_backend"] == "gloo"  # the group follows DeepSpeed's CPU accelerator
        assert r["device"] == "cpu"
        assert r["agree_one"] is (world == 2) and r["agree_none"] is False  # rank 1 diverged -> every rank acts
        assert r["max"] == 10.0 + world - 1 and r["mean"] == (0.5 if world == 2 else float(rank))
        assert r["spent"] is (world == 2)  # Budget.spent agrees on the slowest rank's wall clock


def test_a_checkpoint_gather_keeps_the_state_on_rank_0_only(runs):
    r0, r1 = (x["collectives"] for x in runs[2])
    assert r0["kept"] == sorted(r0["full"]) and len(r0["kept"]) == 10
    assert r1["kept"] == []  # took part in every collective, copied nothing
    assert r0["full"] == r1["full"]  # the full gather is the same on both ranks
