"""The sweep's headline figure: the loss each label's ranking rests on, against training FLOPs.

One curve per label at its chosen LR/warm-up point (seed 0, or the lowest seed that ran; a dot per evaluation), the
full-training reference drawn black and dashed, each growth a dotted vertical in its label's colour at the FLOPs
where the stage began.
Validation loss under compute 'flops' (what is ranked), the smoothed training loss otherwise. Drawn off-screen
(an Agg canvas, no pyplot), like `msg_ray.plots`.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from msg_ray.tune.results import REFERENCES, Choice, TrialSeries


def _curve(t: TrialSeries, key: str) -> tuple[np.ndarray, np.ndarray]:
    s = t.series
    pts = [(f, v) for f, v in zip(s.get("flops", []), s.get(key, []), strict=False) if not math.isnan(v)]
    if key == "val_loss":  # a report repeats the last evaluation until the next one
        pts = [p for i, p in enumerate(pts) if i == 0 or p[1] != pts[i - 1][1]]
    return np.array([p[0] for p in pts], dtype=float), np.array([p[1] for p in pts], dtype=float)


def loss_vs_flops(trials: list[TrialSeries], chosen: dict[str, Choice], *, key: str = "val_loss") -> Figure:
    """Loss (``key``: ``val_loss`` or ``loss_avg``) against training FLOPs for every label at its chosen point."""
    fig = Figure(figsize=(8.0, 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    drawn, curves = 0, []
    for label, c in chosen.items():
        runs = [
            t
            for t in trials
            if t.base == label
            and t.full_budget
            and (t.spec.meta.get("lr"), t.spec.meta.get("warmup")) == (c.lr, c.warmup)
            and t.series.get("flops")
        ]
        if not runs:
            continue
        t = min(runs, key=lambda r: r.spec.seed)
        x, y = _curve(t, key)
        if len(x) == 0:
            continue
        ref = label in REFERENCES
        lr = "" if c.lr is None else f" lr {c.lr:.3g}" + (" (edge)" if c.edge else "")
        style = {"color": "black", "ls": "--", "lw": 1.8} if ref else {"color": f"C{drawn % 10}", "lw": 1.3}
        ax.plot(x, y, marker=".", ms=5, label=f"{label}{lr}", **style)
        curves.append(y)
        growths = t.trained.growth_steps()
        if growths and t.series.get("step"):  # growth steps onto the FLOPs axis of this run
            for gx in np.interp(growths, t.series["step"], t.series["flops"]):
                ax.axvline(gx, color=style["color"], ls=":", lw=0.9, alpha=0.7)
        drawn += not ref
    if not curves:
        ax.text(0.5, 0.5, "no finished trial", ha="center", transform=ax.transAxes)
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("validation loss" if key == "val_loss" else "training loss (smoothed)")
    ax.set_title("each label at its chosen LR; dotted verticals: its growths; dashed: full training")
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=8)
        lo, top = min(float(y.min()) for y in curves), max(float(y[-1]) for y in curves)
        ax.set_ylim(lo - 0.05, top + 1.0)  # the end is what is ranked: do not let the first evals flatten it
    return fig
