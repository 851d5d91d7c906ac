"""One-command check of msg_ray on a GPU (issue 26, item 8): correctness through the real training loop, then the
performance of a ~1B-parameter final-stage growth. JSON out; exit status 1 on a hard failure.

    python -m benchmarks.gpu_check                      # parts a and b on the first GPU (<= 8 min on one H100/H200)
    python -m benchmarks.gpu_check --cpu                # part a on CPU (gloo), the CI form (tests/test_gpu_check.py)
    python -m benchmarks.gpu_check --out gpu_check.json --parts a

(a) Correctness. GPT bf16 ZeRO-2 and Llama bf16 ZeRO-3 (GQA), each through a 5-stage MSG schedule that grows
    ffn, hidden, heads and layers in turn, trained by the real worker loop (``msg_ray.train.worker.run_local``:
    ``WorkerRun`` in this process as one rank, no Ray). Per run: the loss jump of every growth (probe before/after
    on a fixed batch), the device and dtype of every parameter and mask after each growth, the exported model's
    logits against the engine's, a resume from the stage-3 boundary checkpoint that must reproduce the next steps'
    losses, and a NaN injected into one step's loss (``RunConfig.inject_nan_at_step``) that must stop the run.
(b) Performance. A Llama-style growth into ~1B parameters (2048, 5632, 16, 16), head_dim 128, seq 2048, bf16
    ZeRO-2, all four dimensions growing at once (every mask ramps): tokens/s and MFU before the growth, mid-ramp and
    folded, the growth event's seconds, peak memory, host syncs inside one steady-state step
    (``torch.cuda.set_sync_debug_mode``) and the top kernels of three folded steps (``torch.profiler``).
    ``--perf-tiny`` runs the same code on a tiny model (any device): the test keeps it from rotting.

The data is a synthetic word corpus written into the work folder (a GPU node may have no network), with a BPE
tokenizer trained on it; MLflow tracks into a sqlite file there. Nothing is written outside ``--work``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from msg_ray.export import load_exported
from msg_ray.train.config import RunConfig
from msg_ray.train.loop import WorkerRun
from msg_ray.train.reporting import TrainingDiverged
from msg_ray.train.worker import run_local

# A preserving growth may move a bf16 run's probe loss by this much (fp32 norm statistics keep it at ~0; the loop's
# own bf16 tolerance); beyond it the operator or the precision path is broken.
BF16_JUMP_TOL = 1e-3


# -- data -------------------------------------------------------------------------------------------------------------
def write_corpus(folder: Path, n_chars: int, seed: int = 0) -> Path:  # -> folder/corpus-<seed>.txt
    """A deterministic text file of pseudo-words with Zipf-like frequencies (learnable, so losses fall)."""
    rng = random.Random(seed)
    letters = "etaoinshrdlucmfwypvbgkqjxz"
    words = ["".join(rng.choice(letters[: 8 + i % 18]) for _ in range(2 + i % 7)) for i in range(3000)]
    weights = [1.0 / (i + 1) for i in range(len(words))]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"corpus-{seed}.txt"
    with open(path, "w") as f:
        written = 0
        while written < n_chars:
            line = " ".join(rng.choices(words, weights, k=rng.randint(8, 24))) + ".\n"
            f.write(line)
            written += len(line)
    return path


# -- part a -----------------------------------------------------------------------------------------------------------
def correctness_config(arch: str, zero: int, work: Path, corpus: Path, *, use_gpu: bool, **kw: Any) -> RunConfig:
    """5 stages over 25 steps: ffn, hidden, heads, layers grow in turn (head_dim 16; Llama with 2 query heads per
    key/value head)."""
    stages = [[32, 64, 2, 1], [32, 128, 2, 1], [64, 128, 2, 1], [64, 128, 4, 1], [64, 128, 4, 2]]
    schedule = {
        "arch": arch,
        "name": f"gpu-check-{arch}",
        "total_steps": 25,
        "phi": 2,
        "head_dim": 16,
        **({"kv_group_size": 2} if arch == "llama" else {}),
        "stages": [{"structure": s, "start": 5 * i} for i, s in enumerate(stages)],
    }
    return RunConfig.from_dict(
        {
            "name": f"{arch}-z{zero}",
            "schedule": schedule,
            "data": {"source": str(corpus), "tokenizer": "bpe:512", "seq_len": 32, "cache_dir": str(work / "cache")},
            "engine": {"zero_stage": zero, "precision": "bf16", "micro_batch_size": 4, "lr": 3e-3},
            "use_gpu": use_gpu,
            "storage_path": str(work / "ray"),
            "tracking_uri": f"sqlite:///{work / 'mlruns.db'}",
            "experiment": "gpu-check",
            "warmup_steps": 2,
            "log_every": 5,
            "eval_every": 1000,
            "eval_batches": 2,
            "export_hf": False,
            "growth_check_tol": BF16_JUMP_TOL,
            **kw,
        }
    )


class ObservedRun(WorkerRun):
    """The real loop, plus a record of every parameter's and mask's device and dtype after each growth."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.placement: list[dict[str, Any]] = []

    def _grow(self, stage: int):
        state = super()._grow(stage)
        module, want = self.engine.module, torch.device(self.engine.device)
        wrong = []
        for name, p in module.named_parameters():
            if p.device.type != want.type or p.dtype != torch.bfloat16:
                wrong.append(f"{name}: {p.device} {p.dtype}")
        for name, m in module.mask_modules().items():
            if m.value.device.type != want.type or m.value.dtype != torch.float32:
                wrong.append(f"{name}: {m.value.device} {m.value.dtype} (masks stay fp32)")
        self.placement.append({"stage": stage, "masks": sorted(module.mask_modules()), "wrong": wrong})
        return state


def _losses(history: dict[str, list]) -> dict[int, float]:
    return dict(zip(history["step"], history["train_loss"], strict=True))


@torch.no_grad()
def _export_vs_engine(worker: WorkerRun, export_dir: Path) -> dict[str, float]:
    """Logits of the exported model against the engine's on one validation batch: the export cast to the engine's
    dtype must equal the engine (same weights), and the fp32 export stays within bf16 rounding of it."""
    engine = worker.engine
    ids = worker.valid[0]["input_ids"].to(engine.device)
    engine.module.eval()
    ref = engine(ids).float()
    exported = load_exported(export_dir)
    fp32 = exported.to(engine.device)(ids).float()
    same = exported.to(engine.device, torch.bfloat16)(ids).float()
    return {
        "max_abs_logit": ref.abs().max().item(),
        "max_diff_same_dtype": (same - ref).abs().max().item(),
        "max_diff_fp32_export": (fp32 - ref).abs().max().item(),
    }


def check_arch(arch: str, zero: int, work: Path, corpus: Path, use_gpu: bool) -> dict[str, Any]:
    cfg = correctness_config(arch, zero, work, corpus, use_gpu=use_gpu)
    t0 = time.perf_counter()
    worker, session = run_local(cfg, work / "ckpt" / cfg.name, loop=ObservedRun)
    main_s = time.perf_counter() - t0
    h = worker.pos.history
    jumps = [abs(e["loss_after"] - e["loss_before"]) for e in h["growth_events"]]
    final = next(p for p in session.checkpoints if p.name.startswith("final-"))
    export = _export_vs_engine(worker, final / "export")
    boundary = next(p for p in session.checkpoints if p.name.startswith("stage3-"))
    resumed_cfg = correctness_config(arch, zero, work, corpus, use_gpu=use_gpu, name=f"{cfg.name}-resumed")
    again, _ = run_local(resumed_cfg, work / "ckpt" / resumed_cfg.name, resume_from=boundary)
    a, b = _losses(h), _losses(again.pos.history)
    resumed_steps = sorted(s for s in b if s > 15)
    resume_diff = max(abs(a[s] - b[s]) for s in resumed_steps)
    nan_cfg = correctness_config(
        arch, zero, work, corpus, use_gpu=use_gpu, name=f"{cfg.name}-nan", inject_nan_at_step=3
    )
    try:
        run_local(nan_cfg, work / "ckpt" / nan_cfg.name)
        nan = "not caught"
    except TrainingDiverged as e:
        nan = str(e).splitlines()[0]
    failures = []
    for e, jump in zip(h["growth_events"], jumps, strict=True):
        if not jump <= BF16_JUMP_TOL:
            failures.append(f"growth at step {e['step']} moved the loss by {jump:.3g} (> {BF16_JUMP_TOL})")
    if len(h["growth_events"]) != 4 or worker.pos.step != 25:
        failures.append(f"expected 4 growths and 25 steps, got {len(h['growth_events'])} and {worker.pos.step}")
    failures += [f"after growth {p['stage']}: {w}" for p in worker.placement for w in p["wrong"]]
    if not export["max_diff_same_dtype"] <= 1e-3 * max(1.0, export["max_abs_logit"]):
        failures.append(f"exported logits differ from the engine's by {export['max_diff_same_dtype']:.3g}")
    if not export["max_diff_fp32_export"] <= 0.05 * max(1.0, export["max_abs_logit"]):  # bf16 rounding of logits
        failures.append(f"fp32 export's logits differ from the engine's by {export['max_diff_fp32_export']:.3g}")
    resume_tol = 0.0 if not use_gpu else 2e-2  # GPU kernels may reduce in another order from run to run
    if resumed_steps != list(range(16, 26)) or not resume_diff <= resume_tol:
        failures.append(f"resume from {boundary.name}: steps {resumed_steps}, max loss diff {resume_diff:.3g}")
    if "not finite" not in nan or "step 3" not in nan:
        failures.append(f"injected NaN at step 3: {nan}")
    return {
        "arch": arch,
        "zero_stage": zero,
        "precision": "bf16",
        "seconds": round(main_s, 2),
        "growths": [
            {"step": e["step"], "structure": e["structure"], "loss_jump": j, "seconds": round(e["seconds"], 3)}
            for e, j in zip(h["growth_events"], jumps, strict=True)
        ],
        "placement_checked": [{"stage": p["stage"], "masks": len(p["masks"])} for p in worker.placement],
        "export": export,
        "resume": {"from": boundary.name, "steps": resumed_steps, "max_loss_diff": resume_diff},
        "injected_nan": nan,
        "final_loss": h["train_loss"][-1],
        "failures": failures,
    }


# -- part b -----------------------------------------------------------------------------------------------------------
PERF_SIZES = {  # (stage 0, final) structures, head_dim, kv group, seq_len, micro-batch, steps before growth, phi, after
    "1b": ([1536, 4096, 12, 12], [2048, 5632, 16, 16], 128, 1, 2048, 4, 10, 20, 20),
    "tiny": ([32, 64, 2, 1], [64, 128, 4, 2], 16, 2, 64, 2, 6, 6, 12),
}


class MeasuredRun(WorkerRun):
    """The real loop, plus host-sync counting and a profile of a few steps after the ramp (CUDA only)."""

    def __init__(self, *args: Any, sync_steps: tuple[int, ...] = (), profile_steps: tuple[int, ...] = (), **kw: Any):
        super().__init__(*args, **kw)
        self.sync_steps, self.profile_steps = sync_steps, profile_steps
        self.syncs: dict[int, int] = {}
        self.kernels: list[dict[str, Any]] = []
        self._prof = None

    def _train_step(self) -> torch.Tensor:
        step, cuda = self.pos.step, torch.device(self.engine.device).type == "cuda"
        if cuda and self.profile_steps and step == self.profile_steps[0]:
            self._prof = torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
            )
            self._prof.__enter__()
        if cuda and step in self.sync_steps:
            torch.cuda.set_sync_debug_mode("warn")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                loss = super()._train_step()
            torch.cuda.set_sync_debug_mode("default")
            self.syncs[step] = sum("synchroniz" in str(w.message).lower() for w in caught)
        else:
            loss = super()._train_step()
        if self._prof is not None and step == self.profile_steps[-1]:
            torch.cuda.synchronize()
            self._prof.__exit__(None, None, None)
            self.kernels = _top_kernels(self._prof)
            self._prof = None
        return loss


def _top_kernels(prof: Any, n: int = 10) -> list[dict[str, Any]]:
    rows = []
    for evt in prof.key_averages():
        t = getattr(evt, "self_device_time_total", None)
        if t is None:
            t = getattr(evt, "self_cuda_time_total", 0.0)
        if t > 0:
            rows.append({"name": evt.key[:120], "device_ms": round(t / 1e3, 3), "calls": evt.count})
    return sorted(rows, key=lambda r: -r["device_ms"])[:n]


def _rate(h: dict[str, list], lo: int, hi: int, tokens_per_step: int, peak: float) -> dict[str, float]:
    """tokens/s and MFU between the (synchronised) log points at steps ``lo`` and ``hi``."""
    i, j = h["step"].index(lo), h["step"].index(hi)
    dt = h["wall_s"][j] - h["wall_s"][i]
    out = {"steps": f"{lo}-{hi}", "tokens_per_s": (hi - lo) * tokens_per_step / dt}
    out["mfu"] = (h["flops"][j] - h["flops"][i]) / dt / peak if peak > 0 else math.nan
    return out


def check_perf(size: str, work: Path, corpus: Path, use_gpu: bool) -> dict[str, Any]:
    from msg_ray.flops import device_peak_flops, param_count

    s0, s1, head_dim, kv, seq, mb, before, phi, after = PERF_SIZES[size]
    total = before + phi + after
    log = 5 if size == "1b" else 2
    cfg = RunConfig.from_dict(
        {
            "name": f"perf-{size}",
            "schedule": {
                "arch": "llama",
                "name": f"gpu-check-perf-{size}",
                "total_steps": total,
                "phi": phi,
                "head_dim": head_dim,
                "kv_group_size": kv,
                "stages": [{"structure": s0, "start": 0}, {"structure": s1, "start": before}],
            },
            "data": {
                "source": str(corpus),
                "tokenizer": "bpe:8192" if size == "1b" else "bpe:512",
                "seq_len": seq,
                "cache_dir": str(work / "cache"),
            },
            "engine": {"zero_stage": 2, "precision": "bf16", "micro_batch_size": mb, "lr": 3e-4},
            "use_gpu": use_gpu,
            # threads for the CPU side of the growth event and for writing the two ~12 GB checkpoints (boundary, end)
            "cpus_per_worker": float(min(8, os.cpu_count() or 1)) if size == "1b" else 1.0,
            "storage_path": str(work / "ray"),
            "tracking_uri": f"sqlite:///{work / 'mlruns.db'}",
            "experiment": "gpu-check",
            "warmup_steps": 2,
            "log_every": log,
            "eval_every": 10**6,
            "eval_batches": 1,
            "export_hf": False,
        }
    )
    cuda = use_gpu and torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    folded_end = before + phi + (after // 2 // log) * log  # the folded rate is read before the probes below
    profile = (folded_end + 2, folded_end + 3, folded_end + 4)
    sync_steps = (folded_end + 6, folded_end + 7)

    def loop(*args: Any, **kw: Any) -> MeasuredRun:
        return MeasuredRun(*args, sync_steps=sync_steps, profile_steps=profile, **kw)

    t0 = time.perf_counter()
    worker, _ = run_local(cfg, work / "ckpt" / cfg.name, loop=loop, keep_checkpoints=False)
    seconds = time.perf_counter() - t0
    h, tps = worker.pos.history, cfg.tokens_per_step
    peak = device_peak_flops(torch.cuda.get_device_name(), cfg.peak_flops) if cuda else math.nan
    event = h["growth_events"][0]
    vocab = worker.data.vocab_size
    return {
        "size": size,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "params_final": param_count("llama", s1, vocab, seq, head_dim, kv_group_size=kv),
        "structure": {"before": s0, "after": s1},
        "seq_len": seq,
        "micro_batch": mb,
        "vocab": vocab,
        "before_growth": _rate(h, log, (before // log) * log, tps, peak),
        "mid_ramp": _rate(h, before + log, before + (phi // log) * log, tps, peak),
        "folded": _rate(h, before + phi + log, folded_end, tps, peak),
        "growth_seconds": event["seconds"],
        "growth_loss_jump": abs(event["loss_after"] - event["loss_before"]),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else math.nan,
        "host_syncs_per_step": {str(k): v for k, v in worker.syncs.items()} if cuda else "not measured (no CUDA)",
        "top_kernels": worker.kernels,
        "seconds": round(seconds, 1),
        "failures": [] if math.isfinite(h["train_loss"][-1]) else ["the loss is not finite"],
    }


# -- entry --------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", action="store_true", help="part a on CPU (gloo), the CI form")
    p.add_argument("--parts", default=None, help="comma list of a,b (default: a,b on a GPU, a with --cpu)")
    p.add_argument("--perf-tiny", action="store_true", help="part b on a tiny model (checks the code, any device)")
    p.add_argument("--out", default="gpu_check.json", help="where the JSON result goes")
    p.add_argument("--work", default=None, help="work folder (default: a temporary one, removed afterwards)")
    args = p.parse_args(argv)
    use_gpu = not args.cpu
    if use_gpu and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run with --cpu for the CPU form", file=sys.stderr)
        return 2
    parts = set((args.parts or ("a" if args.cpu else "a,b")).split(","))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="msg-gpu-check-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        result: dict[str, Any] = {"device": torch.cuda.get_device_name() if use_gpu else "cpu", "parts": {}}
        if "a" in parts:
            corpus = write_corpus(work, 400_000)
            result["parts"]["a"] = [check_arch(a, z, work, corpus, use_gpu) for a, z in (("gpt", 2), ("llama", 3))]
        if "b" in parts:
            size = "tiny" if args.perf_tiny else "1b"
            corpus = write_corpus(work, 6_000_000 if size == "1b" else 400_000, seed=1)
            result["parts"]["b"] = check_perf(size, work / "perf", corpus, use_gpu)
    failures = [f for r in result["parts"].get("a", []) for f in r["failures"]]
    failures += result["parts"].get("b", {}).get("failures", [])
    result.update(seconds=round(time.perf_counter() - t0, 1), failures=failures, ok=not failures)
    Path(args.out).write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps({"ok": result["ok"], "failures": failures, "seconds": result["seconds"], "out": args.out}))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
