"""bf16 numerics: masked norms computed in fp32, mask values kept fp32, growths that leave a bf16 ZeRO-2 run's loss
where it was, exports of the fp32 masters, and how a run's precision and growth tolerance are resolved.

The DeepSpeed part runs in one spawned process (world size 1, gloo, bf16 ZeRO-2), so its start-up is paid once.
"""

from __future__ import annotations

import logging
import os

import pytest
import torch
import torch.multiprocessing as mp
from netutil import free_port

from msg_ray.archs.llama import MaskedRMSNorm
from msg_ray.masked_layers import GrowthMask, MaskedLayerNorm
from msg_ray.model import ModelConfig, build_from_config, build_model
from msg_ray.structure import Structure
from msg_ray.train.config import RunConfig
from msg_ray.train.engine import GROWTH_CHECK_TOL, EngineConfig

BF16_ULP = 2.0**-8  # bf16's spacing relative to a value: 7 stored mantissa bits


def _norm_run(norm: torch.nn.Module, x: torch.Tensor, gy: torch.Tensor, mask: GrowthMask):
    x = x.detach().requires_grad_(True)
    y = norm(x, mask)
    y.backward(gy)
    return y.detach(), x.grad, [p.grad for p in norm.parameters()]


@pytest.mark.parametrize("kind", [MaskedLayerNorm, MaskedRMSNorm])
def test_masked_norms_in_bf16_stay_within_one_rounding_of_fp32_through_a_ramp(kind):
    """bf16 output and gradients (input, gain, bias) = the fp32 computation on the same bf16 inputs, rounded once."""
    H, n_old = 48, 32
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(4, 16, H, generator=g) * 3 + 1).bfloat16()  # an offset mean: LayerNorm's centring matters
    gy = torch.randn(4, 16, H, generator=g).bfloat16()
    ref_norm = kind(H)
    with torch.no_grad():
        for p in ref_norm.parameters():
            p.copy_(torch.randn(H, generator=g).bfloat16().float())  # gains/biases exactly representable in bf16
    low_norm = kind(H).bfloat16()
    low_norm.load_state_dict(ref_norm.state_dict())
    for c in torch.linspace(0, 1, 11).tolist():
        ref = _norm_run(ref_norm, x.float(), gy.float(), GrowthMask(H, n_old, c))
        for p in list(ref_norm.parameters()) + list(low_norm.parameters()):
            p.grad = None
        low = _norm_run(low_norm, x, gy, GrowthMask(H, n_old, c).bfloat16())
        for p in list(ref_norm.parameters()) + list(low_norm.parameters()):
            p.grad = None
        for name, r, lo in zip(["y", "dx"], ref[:2], low[:2], strict=True):
            assert lo.dtype == torch.bfloat16
            err = ((lo.float() - r).abs() - BF16_ULP * r.abs()).max().item()
            assert err <= 1e-6, (kind.__name__, c, name, err)
        for r, lo in zip(ref[2], low[2], strict=True):  # parameter grads: an fp32 sum over 64 rows, rounded once
            assert lo.dtype == torch.bfloat16
            err = ((lo.float() - r).abs() - BF16_ULP * r.abs()).max().item()
            assert err <= 1e-5, (kind.__name__, c, "dparam", err)


def test_mask_values_stay_fp32_when_the_model_is_cast():
    model = build_model("gpt", Structure(32, 64, 2, 1), vocab_size=64, max_seq_len=16, head_dim=16)
    model.hidden_mask = GrowthMask(32, 16, 1 / 3)
    model.bfloat16()
    assert model.tok_emb.weight.dtype == torch.bfloat16
    assert model.hidden_mask.value.dtype == torch.float32 and model.hidden_mask.c == pytest.approx(1 / 3, abs=1e-7)
    model.double()  # the function-preservation checks run in fp64: masks follow
    assert model.hidden_mask.value.dtype == torch.float64


def _tiny_run(**kw) -> RunConfig:
    d = {
        "schedule": {
            "arch": "gpt",
            "name": "tiny",
            "total_steps": 10,
            "phi": 2,
            "head_dim": 16,
            "stages": [{"structure": [32, 64, 2, 1], "start": 0}],
        },
        "data": {"source": "wikitext2", "tokenizer": "bpe:1024", "seq_len": 32},
        **kw,
    }
    return RunConfig.from_dict(d)


def test_precision_and_growth_tolerance_follow_the_hardware():
    cpu, gpu = _tiny_run(), _tiny_run(use_gpu=True)
    assert (cpu.engine.precision, cpu.growth_check_tol) == ("fp32", GROWTH_CHECK_TOL["fp32"])
    assert (gpu.engine.precision, gpu.growth_check_tol) == ("bf16", GROWTH_CHECK_TOL["bf16"])
    assert GROWTH_CHECK_TOL["bf16"] > GROWTH_CHECK_TOL["fp32"]
    explicit = _tiny_run(use_gpu=True, engine={"precision": "fp32"}, growth_check_tol=5e-5)
    assert (explicit.engine.precision, explicit.growth_check_tol) == ("fp32", 5e-5)  # fp32 stays available
    assert RunConfig.from_dict(gpu.to_dict()) == gpu  # the saved config holds the resolved values
    assert EngineConfig().resolved().precision == ("bf16" if torch.cuda.is_available() else "fp32")


# -- bf16 ZeRO-2 through real DeepSpeed --------------------------------------------------------------------------
STAGES = [(32, 64, 2, 1), (48, 64, 2, 1), (48, 96, 2, 1), (48, 96, 3, 1), (48, 96, 3, 2)]  # hidden, ffn, heads, layers
V, T, B, PHI = 256, 32, 4, 2


def _grow_all_four(arch: str, export_dir: str) -> dict:
    from msg_ray.export import PLAIN_WEIGHTS, export_plain
    from msg_ray.train.engine import build_engine, gather_state
    from msg_ray.train.growth_event import grow_engine

    def config(s):
        return ModelConfig(arch=arch, structure=Structure(*s), vocab_size=V, max_seq_len=T, head_dim=16)

    ecfg = EngineConfig(zero_stage=2, precision="bf16", micro_batch_size=B, lr=3e-3)
    engine = build_engine(build_from_config(config(STAGES[0]), seed=0), ecfg)
    g = torch.Generator().manual_seed(1)

    def batch():
        x = torch.randint(0, V, (B, T), generator=g)
        labels = x.clone()
        if arch == "bert":
            labels[torch.rand(B, T, generator=g) > 0.15] = -100
        return x, labels

    probe = batch()

    @torch.no_grad()
    def probe_loss():
        engine.module.eval()
        loss = engine.module.loss(engine(probe[0]), probe[1]).float().item()
        engine.module.train()
        return loss

    step, ramp, jumps, mask_dtypes = 0, None, [], set()
    for k, s in enumerate(STAGES):
        if k:
            before = probe_loss()
            grown = grow_engine(engine, config(STAGES[k - 1]), Structure(*s), ecfg, step=step, phi=PHI, seed=k)
            engine, ramp = grown.engine, grown.ramp
            jumps.append(abs(probe_loss() - before))
            mask_dtypes |= {m.value.dtype for m in engine.module.mask_modules().values()}
        for _ in range(PHI + 1):  # through the ramp: the masks fold before the next growth
            if ramp is not None:
                ramp.apply(engine.module, step)
            x, labels = batch()
            engine.backward(engine.module.loss(engine(x), labels))
            engine.step()
            step += 1
    state = gather_state(engine)
    export_plain(engine.module, export_dir, state.params)
    written = torch.load(os.path.join(export_dir, PLAIN_WEIGHTS))
    module = {n: p.detach().float() for n, p in engine.module.named_parameters()}
    return {
        "jumps": jumps,
        "mask_dtypes": mask_dtypes,
        "param_dtypes": {p.dtype for p in engine.module.parameters()},
        "export_vs_masters": max((written[n] - state.params[n]).abs().max().item() for n in state.params),
        "module_vs_masters": max((module[n] - state.params[n]).abs().max().item() for n in state.params),
    }


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK="0",
        LOCAL_RANK="0",
        WORLD_SIZE="1",
        OMP_NUM_THREADS="1",
        DS_ACCELERATOR="cpu",
    )
    torch.set_num_threads(1)
    import deepspeed

    from msg_ray.train.engine import freeze_import_heap

    deepspeed.utils.logger.setLevel(logging.WARNING)
    freeze_import_heap()
    res = {arch: _grow_all_four(arch, os.path.join(out_dir, arch)) for arch in ("bert", "llama")}
    torch.save(res, os.path.join(out_dir, "res.pt"))


@pytest.fixture(scope="module")
def bf16_runs(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("bf16")
    mp.spawn(_worker, args=(free_port(), str(d)), nprocs=1, join=True)
    return torch.load(d / "res.pt", weights_only=False)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_bf16_zero2_growths_of_all_four_dimensions_keep_the_loss(bf16_runs, arch):
    """fp32 norm statistics: the hidden growth leaves the bf16 loss where it was, as the FFN/head/layer growths do
    (with bf16 statistics BERT's hidden growth moved it by more than the fp32 tolerance, and the run warned)."""
    r = bf16_runs[arch]
    assert r["param_dtypes"] == {torch.bfloat16} and r["mask_dtypes"] == {torch.float32}
    assert len(r["jumps"]) == 4
    assert max(r["jumps"]) <= 5e-5, r["jumps"]
    assert max(r["jumps"]) <= GROWTH_CHECK_TOL["bf16"]  # the loop's check: no warning


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_bf16_export_writes_the_fp32_masters(bf16_runs, arch):
    r = bf16_runs[arch]
    assert r["export_vs_masters"] == 0.0
    assert r["module_vs_masters"] > 0.0  # the bf16 module weights are the masters rounded: exporting them differs


def _cuda_worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    from msg_ray.train.engine import build_engine, gather_state

    config = ModelConfig(arch="llama", structure=Structure(*STAGES[0]), vocab_size=V, max_seq_len=T, head_dim=16)
    engine = build_engine(build_from_config(config, seed=0), EngineConfig(zero_stage=2, micro_batch_size=B))
    x = torch.randint(0, V, (B, T), device=engine.device)
    engine.backward(engine.module.loss(engine(x), x))
    engine.step()
    res = {
        "matmul": torch.get_float32_matmul_precision(),
        "dtypes": {p.dtype for p in engine.module.parameters()},
        "masters": {t.dtype for t in gather_state(engine).params.values()},
    }
    torch.save(res, os.path.join(out_dir, "cuda.pt"))


@pytest.mark.gpu
def test_a_cuda_engine_defaults_to_bf16_and_tf32(tmp_path):
    mp.spawn(_cuda_worker, args=(free_port(), str(tmp_path)), nprocs=1, join=True)
    res = torch.load(tmp_path / "cuda.pt", weights_only=False)
    assert res["matmul"] == "high"  # TF32 for fp32 matmuls
    assert res["dtypes"] == {torch.bfloat16} and res["masters"] == {torch.float32}
