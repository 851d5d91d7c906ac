"""Figures for MSG runs (loss curves with growth markers, post-growth zooms, γ over time), drawn off-screen.

Figures are built as `matplotlib.figure.Figure` on an Agg canvas, never through pyplot: no global backend
switch, no display needed, nothing to leak in pyplot's figure registry (safe in Ray workers and threads).
A history is a dict {"step", "wall_s", "flops", "train_loss": lists of equal length, optional "val_step",
"val_loss"}; validation points are placed on the wall/FLOPs axes by interpolating from the step axis.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

XAxis = Literal["step", "wall", "flops"]
_X_KEYS = {"step": "step", "wall": "wall_s", "flops": "flops"}
_X_LABELS = {"step": "optimizer step", "wall": "wall time (s)", "flops": "training FLOPs"}


def _figure(n_panels: int, width: float = 6.0, height: float = 4.2) -> tuple[Figure, list]:
    fig = Figure(figsize=(width * n_panels, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    return fig, list(axes)


def _series(history: Mapping, key: str, label: str) -> np.ndarray:
    if key not in history:
        raise ValueError(f"history {label!r}: missing {key!r} (has {sorted(history)})")
    return np.asarray(history[key], dtype=float)


def _to_x(history: Mapping, steps: Sequence[float], x: XAxis, label: str) -> np.ndarray:
    """Map step numbers onto the chosen x axis (interpolated from the logged step -> wall/FLOPs pairs)."""
    steps = np.asarray(steps, dtype=float)
    if x == "step":
        return steps
    step = _series(history, "step", label)
    return np.interp(steps, step, _series(history, _X_KEYS[x], label))


def smooth(values: np.ndarray, points: int = 60) -> np.ndarray:
    """Bias-corrected exponential moving average with a span of ~len/points samples (no look-ahead)."""
    values = np.asarray(values, dtype=float)
    beta = 1.0 - 1.0 / max(1.0, len(values) / points)
    out, avg = np.empty_like(values), 0.0
    for i, v in enumerate(values):
        avg = beta * avg + (1.0 - beta) * v
        out[i] = avg / (1.0 - beta ** (i + 1)) if beta > 0 else v
    return out


def _draw_run(ax, history: Mapping, label: str, x: XAxis, growths: Sequence[int], color) -> None:
    step = _series(history, "step", label)
    loss = _series(history, "train_loss", label)
    if len(step) != len(loss):
        raise ValueError(f"history {label!r}: {len(step)} steps but {len(loss)} train_loss values")
    xs = _to_x(history, step, x, label)
    # raw per-step loss is noisy at small batch sizes: draw it faint, and its running mean on top
    ax.plot(xs, loss, lw=0.5, alpha=0.2, color=color)
    (line,) = ax.plot(xs, smooth(loss), lw=1.2, label=f"{label} train (EMA)", color=color)
    if history.get("val_step") and history.get("val_loss"):
        vx = _to_x(history, history["val_step"], x, label)
        ax.plot(vx, history["val_loss"], "o--", ms=3.5, lw=1.6, color=line.get_color(), label=f"{label} val")
    for gx in _to_x(history, list(growths), x, label) if len(growths) else []:
        ax.axvline(gx, ls="--", lw=0.8, alpha=0.7, color=line.get_color())


def loss_curves(
    histories: Mapping[str, Mapping],
    *,
    growth_steps: Mapping[str, Sequence[int]] | None = None,
    x: XAxis = "step",
    log_x: bool = False,
    title: str | None = None,
) -> Figure:
    """Training (and validation) loss of several runs against step, wall time or FLOPs (paper figure 5).

    Dashed vertical lines in each run's colour mark its growth steps.
    """
    if not histories:
        raise ValueError("histories: need at least one run")
    if x not in _X_KEYS:
        raise ValueError(f"x: must be one of {sorted(_X_KEYS)}, got {x!r}")
    fig, (ax,) = _figure(1, width=7.5)
    for i, (label, history) in enumerate(histories.items()):
        growths = (growth_steps or {}).get(label, [])
        _draw_run(ax, history, label, x, growths, color=f"C{i % 10}")
    _finish_axes(ax, _X_LABELS[x], "loss", log_x)
    ax.set_title(title or f"loss vs {_X_LABELS[x]} (dashed: growths)")
    return fig


def _finish_axes(ax, xlabel: str, ylabel: str, log_x: bool = False) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if log_x:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def loss_figure(history: Mapping, growth_steps: Sequence[int] = (), *, label: str = "run") -> Figure:
    """One run's loss vs step and vs wall time, side by side, growths dashed (the training run's artifact)."""
    fig, axes = _figure(2)
    for ax, x in zip(axes, ("step", "wall"), strict=True):
        _draw_run(ax, history, label, x, list(growth_steps), color="C0")
        _finish_axes(ax, _X_LABELS[x], "loss")
        ax.set_title(f"loss vs {_X_LABELS[x]}")
    return fig


def growth_zoom(
    histories: Mapping[str, Mapping], growth_steps: Mapping[str, Sequence[int]], window: int = 200
) -> Figure:
    """Training loss over the first `window` steps after each growth, one panel per growth (paper figure 3).

    Runs are aligned on their k-th growth, so operators on the same schedule (MSG vs No-Mask) overlay.
    """
    if not histories:
        raise ValueError("histories: need at least one run")
    if window < 1:
        raise ValueError(f"window: must be >= 1, got {window}")
    n_growths = max((len(growth_steps.get(label, [])) for label in histories), default=0)
    if n_growths == 0:
        raise ValueError("growth_steps: no run has a growth to zoom on")
    fig, axes = _figure(n_growths, width=4.5)
    for k, ax in enumerate(axes):
        for i, (label, history) in enumerate(histories.items()):
            growths = list(growth_steps.get(label, []))
            if k >= len(growths):
                continue
            step, loss = _series(history, "step", label), _series(history, "train_loss", label)
            keep = (step >= growths[k] - 1) & (step < growths[k] + window)
            ax.plot(step[keep] - growths[k], loss[keep], lw=1.2, label=label, color=f"C{i % 10}")
        ax.axvline(0, ls="--", lw=0.8, color="gray")
        _finish_axes(ax, "steps after growth", "train loss")
        ax.set_title(f"growth {k + 1}")
    return fig


def gamma_vs_time(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, log_y: bool = False) -> Figure:
    """γ = Δloss/Δt against wall time for each trial (paper figure 2); curves map label -> (times, gammas)."""
    if not curves:
        raise ValueError("curves: need at least one trial")
    fig, (ax,) = _figure(1, width=7.5)
    for i, (label, (times, gammas)) in enumerate(curves.items()):
        if len(times) != len(gammas):
            raise ValueError(f"curve {label!r}: {len(times)} times but {len(gammas)} gamma values")
        values = np.abs(np.asarray(gammas, dtype=float)) if log_y else np.asarray(gammas, dtype=float)
        ax.plot(np.asarray(times, dtype=float), values, lw=1.2, label=label, color=f"C{i % 10}")
    _finish_axes(ax, "wall time (s)", "|γ| (loss/s)" if log_y else "γ = Δloss/Δt (loss/s)")
    if log_y:
        ax.set_yscale("log")
    ax.set_title("growth rate γ over time")
    return fig


def save(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write `fig` as PNG (parent folders created) and release its contents; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    fig.clear()  # not a pyplot figure: clearing drops the artists, garbage collection does the rest
    return path
