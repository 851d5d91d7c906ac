"""Sweep results: γ/α/τ over matching wall-time windows, the ranked table, the best schedule, the γ-vs-time plot.

Every trial's reported series (step, wall_s, flops, loss_avg, gamma) is read on common axes:

- horizon ``T``: the wall budget when there is one, else the shortest wall time among trials that were not
  stopped early. Windows: early = [0.1T, 0.4T], medium = [0.4T, 0.7T]. γ = (L(a) − L(b))/(b − a) from the
  smoothed loss, α per step, τ steps/s over the same window (eq. 21). Ranking uses γ over [0.1T, 0.7T] only:
  the paper's footnote 4 warns that γ is meaningless once the loss levels off, which is what late windows of
  short probes show. A trial that never reached 0.7T (stopped early by ASHA) ranks after those that did;
- loss at equal wall time (``T``) and at equal FLOPs (the smallest final FLOPs among completed trials);
- projected speed-up vs the full target (when the sweep has one): the full run's wall time at its horizon
  divided by the time this trial needed to reach the full run's loss there (time-to-target; NaN: never did).

Spaces with ``compute: flops`` (every trial solved to the same FLOPs, run to its end) rank by *final validation
loss* instead: per trial the best LR of the shared grid is "chosen", and each row gets its loss difference to the
chosen full reference and its FLOPs-to-target speed-up (the reference's FLOPs / the FLOPs at which this trial first
reached the reference's final loss). γ columns stay as the second view.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from msg_ray.flops import schedule_flops
from msg_ray.schedule import Schedule, full, paper_stage_starts, schedule_from_structures
from msg_ray.structure import DIMENSIONS, Structure
from msg_ray.train.metrics import first_reach
from msg_ray.tune.space import FULL, SearchSpace, TrialSpec

EARLY, MID = (0.1, 0.4), (0.4, 0.7)
COLUMNS = (
    "rank",
    "label",
    "status",
    "schedule",
    "steps",
    "wall_s",
    "gamma_rank",
    "gamma_early",
    "gamma_mid",
    "alpha_mid",
    "tau_mid",
    "loss_at_T",
    "loss_at_F",
    "speedup_vs_full",
    "flops_limit",
    "lr",
    "final_val",
    "val_vs_full",
    "flops_to_target",
    "chosen",
)


@dataclass
class TrialSeries:
    """What one trial reported (each a list over its Tune reports) and how it ended."""

    spec: TrialSpec
    status: str  # completed | stopped_early | budget | error | pending
    series: dict[str, list[float]]


def _interp(x: float, xs: list[float], ys: list[float]) -> float:
    if not xs or x > xs[-1] or x < xs[0]:
        return math.nan
    return float(np.interp(x, xs, ys))


def _first_time_below(level: float, ts: list[float], ls: list[float]) -> float:
    for i, (t, v) in enumerate(zip(ts, ls, strict=True)):
        if v <= level:
            if i == 0:
                return t
            t0, v0 = ts[i - 1], ls[i - 1]
            return t0 + (t - t0) * (v0 - level) / (v0 - v) if v0 != v else t
    return math.nan


def horizon(trials: list[TrialSeries], space: SearchSpace) -> float:
    if "wall_s" in space.budget:
        return float(space.budget["wall_s"])
    ends = [t.series["wall_s"][-1] for t in trials if t.status in ("completed", "budget") and t.series["wall_s"]]
    ends = ends or [t.series["wall_s"][-1] for t in trials if t.series.get("wall_s")]
    return min(ends) if ends else math.nan


def _window(s: dict[str, list[float]], a: float, b: float) -> tuple[float, float, float]:
    ts, ls, st = s["wall_s"], s["loss_avg"], s["step"]
    la, lb = _interp(a, ts, ls), _interp(b, ts, ls)
    sa, sb = _interp(a, ts, st), _interp(b, ts, st)
    gamma = (la - lb) / (b - a)
    alpha = (la - lb) / (sb - sa) if sb > sa else math.nan
    return gamma, alpha, (sb - sa) / (b - a)


def table(trials: list[TrialSeries], space: SearchSpace, vocab_size: int, seq_len: int) -> list[dict[str, Any]]:
    """One row per trial, ranked (rank 1 = largest γ over the early+medium windows)."""
    T = horizon(trials, space)
    done = [t for t in trials if t.status in ("completed", "budget") and t.series.get("flops")]
    F = min(t.series["flops"][-1] for t in done) if done else math.nan
    ref = next((t for t in trials if t.spec.label in ("target", FULL) and t.series.get("wall_s")), None)
    ref_loss = _interp(T, ref.series["wall_s"], ref.series["loss_avg"]) if ref else math.nan
    target = _space_target(trials)
    rows = []
    for t in trials:
        s = t.series
        row = {
            "label": t.spec.label,
            "status": t.status,
            "schedule": _describe(t.spec.schedule),
            "steps": int(s["step"][-1]) if s.get("step") else 0,
            "wall_s": s["wall_s"][-1] if s.get("wall_s") else 0.0,
        }
        if s.get("wall_s") and not math.isnan(T):
            row["gamma_rank"] = _window(s, EARLY[0] * T, MID[1] * T)[0]
            row["gamma_early"] = _window(s, *(x * T for x in EARLY))[0]
            row["gamma_mid"], row["alpha_mid"], row["tau_mid"] = _window(s, *(x * T for x in MID))
            row["loss_at_T"] = _interp(T, s["wall_s"], s["loss_avg"])
            row["loss_at_F"] = _interp(F, s["flops"], s["loss_avg"])
            hit = _first_time_below(ref_loss, s["wall_s"], s["loss_avg"])
            row["speedup_vs_full"] = T / hit if hit and hit > 0 else math.nan
            if t is ref:
                row["speedup_vs_full"] = 1.0
        own = schedule_flops(t.spec.schedule, vocab_size, seq_len, 1)
        base = t.spec.schedule.full_baseline(target=target)
        row["flops_limit"] = schedule_flops(base, vocab_size, seq_len, 1) / own
        rows.append({c: row.get(c, math.nan) for c in COLUMNS})

    def key(r: dict[str, Any]) -> tuple:
        g, ge = r["gamma_rank"], r["gamma_early"]
        return (math.isnan(g), -g if not math.isnan(g) else 0.0, math.isnan(ge), -ge if not math.isnan(ge) else 0.0)

    if space.compute == "flops":
        _equal_compute_columns(rows, trials)
        rows.sort(key=lambda r: (r["chosen"] != "yes", math.isnan(r["final_val"]), r["final_val"]))
    else:
        rows.sort(key=key)
    for i, r in enumerate(rows):
        r["rank"] = i + 1
    return rows


def _equal_compute_columns(rows: list[dict[str, Any]], trials: list[TrialSeries]) -> None:
    """Final validation loss at equal FLOPs; per trial (and seed) the best LR of the shared grid is "chosen";
    FLOPs-to-target against the chosen full reference (its final loss is the target, its FLOPs the budget)."""
    by_label = {t.spec.label: t for t in trials}
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        spec = by_label[r["label"]].spec
        vals = [v for v in by_label[r["label"]].series.get("val_loss", []) if not math.isnan(v)]
        r["final_val"] = vals[-1] if vals and r["status"] == "completed" else math.nan
        r["lr"] = spec.meta.get("lr", math.nan)
        groups.setdefault((spec.meta.get("base_label", spec.label), spec.seed), []).append(r)
    for members in groups.values():
        best = min(members, key=lambda r: (math.isnan(r["final_val"]), r["final_val"]))
        for r in members:
            r["chosen"] = "yes" if r is best else ""
    refs = [r for (base, _), ms in groups.items() if base in ("target", FULL) for r in ms if r["chosen"] == "yes"]
    ref = min(refs, key=lambda r: r["final_val"]) if refs else None
    for r in rows:
        s = by_label[r["label"]].series
        if ref is None or math.isnan(ref["final_val"]) or not s.get("val_loss"):
            continue
        r["val_vs_full"] = r["final_val"] - ref["final_val"]
        pts = [
            (f, v)
            for i, (f, v) in enumerate(zip(s["flops"], s["val_loss"], strict=False))
            if i == 0 or v != s["val_loss"][i - 1]
        ]  # a report repeats the last evaluation until the next one
        hit = first_reach([f for f, _ in pts], [v for _, v in pts], ref["final_val"])
        ref_flops = by_label[ref["label"]].series["flops"][-1]
        r["flops_to_target"] = ref_flops / hit if hit else math.nan


def _space_target(trials: list[TrialSeries]) -> Structure:
    targets = {t.spec.schedule.target for t in trials}
    return max(targets, key=lambda s: s.as_tuple())


def _describe(s: Schedule) -> str:
    if s.is_full:
        return str(s.target)
    stages = " > ".join(f"{st.structure}@{b}" for st, b in zip(s.stages, s.boundaries(), strict=True))
    return f"{s.operator} phi={s.phi}: {stages}"


def best_schedule(rows: list[dict[str, Any]], trials: list[TrialSeries], space: SearchSpace) -> Schedule:
    """The schedule to train next.

    ``structures``: start from the target with every dimension whose smaller value learned faster (γ above the
    target's) set to its best value; grow the dimensions back one per stage, the least helpful reduction first
    (the most helpful stays small longest), stage starts by the paper's rule over ``best.total_steps`` steps.
    Other kinds: the best-ranked trial's schedule as is.
    """
    by_label = {t.spec.label: t.spec for t in trials}
    if space.kind != "structures":
        return by_label[rows[0]["label"]].schedule.replace(name=f"{space.name}-best")
    gamma = {r["label"]: r["gamma_rank"] for r in rows}
    target_spec = next(t.spec for t in trials if t.spec.meta.get("dim") is None)
    target, g_target = target_spec.schedule.target, gamma.get(target_spec.label, math.nan)
    best: dict[str, tuple[int, float]] = {}
    for r in rows:
        spec = by_label[r["label"]]
        dim, g = spec.meta.get("dim"), r["gamma_rank"]
        if dim is None or math.isnan(g) or not (math.isnan(g_target) or g > g_target):
            continue
        if dim not in best or g > best[dim][1]:
            best[dim] = (spec.meta["value"], g)
    total = int(space.best.get("total_steps", target_spec.schedule.total_steps))
    phi = int(space.best.get("phi", 0))
    name = f"{space.name}-best"
    order = sorted(best, key=lambda d: (best[d][1], DIMENSIONS.index(d)))  # least helpful grows first
    dims = target.as_dict()
    for d in order:
        dims[d] = best[d][0]
    structs = [Structure(**dims)]
    for d in order:
        dims[d] = getattr(target, d)
        structs.append(Structure(**dims))
    common = {"head_dim": target_spec.schedule.head_dim, "phi": phi, "name": name}
    if len(structs) == 1:
        return full(space.arch, target, total, **common)
    paper_stage_starts(total, len(structs))  # raises a clear error when the budget is too small
    return schedule_from_structures(space.arch, structs, total, **common)


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(COLUMNS))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return path


def markdown(rows: list[dict[str, Any]], title: str = "") -> str:
    cols = (
        "rank",
        "label",
        "status",
        "steps",
        "wall_s",
        "lr",
        "chosen",
        "final_val",
        "val_vs_full",
        "flops_to_target",
        "gamma_rank",
        "gamma_early",
        "gamma_mid",
        "alpha_mid",
        "tau_mid",
        "loss_at_T",
        "loss_at_F",
        "speedup_vs_full",
        "flops_limit",
        "schedule",
    )
    lines = [f"### {title}", ""] if title else []
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c])) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def gamma_curves(trials: list[TrialSeries]) -> dict[str, tuple[list[float], list[float]]]:
    """label -> (wall_s, γ) from each trial's reports (the loop's sliding-window γ), for plots.gamma_vs_time."""
    out = {}
    for t in trials:
        s = t.series
        pts = [(w, g) for w, g in zip(s.get("wall_s", []), s.get("gamma", []), strict=False) if not math.isnan(g)]
        if pts:
            out[t.spec.label] = ([p[0] for p in pts], [p[1] for p in pts])
    return out
