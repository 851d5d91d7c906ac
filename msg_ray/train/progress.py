"""What a training worker reports: rank-0 MLflow metrics/artifacts (via ``msg_ray.tracking``) and one-line step logs.

Metric names (per optimizer step): ``train/loss``, ``val/loss``, ``growth/gamma|alpha|tau`` (eq. 21),
``growth/mask`` (c), ``perf/tokens_per_s``, ``perf/wall_s``, ``perf/flops``, ``perf/mfu`` (GPU only),
``model/n_params``, ``model/hidden_dim|ffn_dim|head_num|layer_num``; at each growth ``growth/stage``,
``growth/loss_before``, ``growth/loss_after``, ``growth/loss_jump``, ``growth/seconds`` and a ``growth.<k>`` tag.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from msg_ray import plots
from msg_ray.flops import peak_flops_per_gpu
from msg_ray.structure import Structure
from msg_ray.tracking import load_run_metrics, make_tracker

_LOGGED = ("train/loss", "val/loss", "growth/stage")  # one key per kind of point the loop logs


def spool_dir(cfg, run_id: str | None) -> Path | None:
    """Where rank 0 spools its tracking calls (``msg_ray.tracking.Spool``): in the run's storage, one folder per
    MLflow run (``unassigned`` when MLflow was down when the run started; ``msg-ray sync NAME`` ships it later).
    None for remote storage (``s3://``...): the spool needs a local or mounted file system."""
    if "://" in cfg.storage_path:
        return None
    return Path(cfg.storage_path) / cfg.name / "tracking-spool" / (run_id or "unassigned")


class WorkerTracker:
    def __init__(self, cfg, run_id: str | None, enabled: bool) -> None:
        self.cfg, self.enabled = cfg, enabled
        self.t = make_tracker(
            cfg.tracking,
            uri=cfg.tracking_uri,
            experiment=cfg.experiment,
            run_name=cfg.name,
            run_id=run_id,
            enabled=enabled,
            spool_dir=spool_dir(cfg, run_id) if enabled else None,
            retry_after_s=60.0,
        )
        self.run_id = run_id
        self._logged: dict[str, int] = {}  # metric key -> last step the run already holds (after a resume)
        self.c: float | None = None
        self._last: tuple[int, float] | None = None
        self.peak = 0.0
        if cfg.use_gpu and torch.cuda.is_available():
            self.peak = peak_flops_per_gpu(torch.cuda.get_device_name()) * cfg.workers

    def start(self, n_params: int, structure: Structure, resumed: bool = False) -> None:
        """Open (or reopen) the run. ``resumed``: the loop restarted from a checkpoint, so steps after it that the
        interrupted attempt already logged will be trained again (bit-identically); they are not logged twice."""
        if not self.enabled:
            return
        self.run_id = self.t.start() or self.run_id
        if not self.t.healthy:
            print(f"msg_ray: training continues WITHOUT MLflow tracking ({self.t.error})", file=sys.stderr, flush=True)
        elif resumed and self.run_id:
            try:
                hist = load_run_metrics(self.cfg.tracking_uri, self.run_id, list(_LOGGED))
                self._logged = {k: max((s for s, _ in v), default=0) for k, v in hist.items()}
            except Exception as exc:  # a query failure must not stop training; at worst a point is logged twice
                print(f"msg_ray: could not read the run's logged steps ({exc})", file=sys.stderr, flush=True)

    def _done(self, key: str, step: int) -> bool:
        """Whether ``key`` at ``step`` is already in the run (logged by an attempt interrupted after it)."""
        return step <= self._logged.get(key, 0)

    def mask(self, c: float, step: int) -> None:
        self.c = c

    def step(self, step: int, loss: float, wall: float, flops: float, rates: dict, s: Structure) -> None:
        if not self.enabled or self._done("train/loss", step):
            return
        m = {"train/loss": loss, "perf/wall_s": wall, "perf/flops": flops, **rates}
        m.update({f"model/{k}": v for k, v in s.as_dict().items()})
        if self.c is not None:
            m["growth/mask"] = self.c
            self.c = None if self.c >= 1.0 else self.c
        if self._last is not None and wall > self._last[1]:
            dsteps, dt = step - self._last[0], wall - self._last[1]
            m["perf/tokens_per_s"] = dsteps * self.cfg.tokens_per_step / dt
            if self.peak:
                m["perf/mfu"] = (flops - self._last_flops) / dt / self.peak
        self._last, self._last_flops = (step, wall), flops
        self.t.log_metrics(m, step)

    def metric(self, key: str, value: float, step: int) -> None:
        if self.enabled and not self._done(key, step):
            self.t.log_metrics({key: value}, step)

    def growth(self, event: dict[str, Any], n_params: int) -> None:
        if not self.enabled or self._done("growth/stage", event["step"]):
            return
        jump = abs(event["loss_after"] - event["loss_before"])
        self.t.log_metrics(
            {
                "growth/stage": event["stage"],
                "growth/loss_before": event["loss_before"],
                "growth/loss_after": event["loss_after"],
                "growth/loss_jump": jump,
                "growth/seconds": event["seconds"],
                "model/n_params": n_params,
            },
            event["step"],
        )
        self.t.set_tags({f"growth.{event['stage']}": json.dumps(event)})

    def finish(self, history: dict[str, list]) -> None:
        if not self.enabled:
            return
        with tempfile.TemporaryDirectory() as tmp:
            fig = plots.loss_figure(history, history.get("growth_steps", []), label=self.cfg.schedule.operator)
            self.t.log_figure(fig, "loss_curve.png")
            (Path(tmp) / "history.json").write_text(json.dumps(history))
            self.t.log_artifact(str(Path(tmp) / "history.json"))
        self.t.log_dict(self.cfg.to_dict(), "resolved_config.yaml")
        self.t.finish("FINISHED")

    def flush(self) -> None:
        if self.enabled:
            self.t.flush()


class StepLog:
    """One line per ``log_every`` steps on rank 0: stage k/K, structure, loss, γ, tokens/s, ETA."""

    def __init__(self, cfg, enabled: bool) -> None:
        self.cfg, self.enabled = cfg, enabled
        self.n_stages = len(cfg.schedule.stages)
        self.t0 = time.perf_counter()
        self.last: tuple[int, float] | None = None

    def line(self, text: str) -> None:
        if self.enabled:  # sys.stdout, not print: Ray Train V2 patches print() and the line would show twice
            sys.stdout.write(f"[msg_ray {self.cfg.name}] {text}\n")
            sys.stdout.flush()

    def step(self, step: int, stage: int, s: Structure, loss: float, rates: dict, wall: float) -> None:
        if not self.enabled:
            return
        total = self.cfg.total_steps
        tps = ""
        if self.last and wall > self.last[1]:
            rate = (step - self.last[0]) / (wall - self.last[1])
            tps = f" tok/s {rate * self.cfg.tokens_per_step:,.0f} ETA {_fmt((total - step) / rate)}"
        self.last = (step, wall)
        gamma = f" γ {rates['growth/gamma']:.4f}/s" if "growth/gamma" in rates else ""
        self.line(f"stage {stage + 1}/{self.n_stages} {s} step {step}/{total} loss {loss:.4f}{gamma}{tps}")


def _fmt(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m < 60 else f"{m // 60}h{m % 60:02d}m"
