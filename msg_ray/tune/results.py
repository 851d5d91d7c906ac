"""Sweep results: the chosen LR per label and its bracketing, the ranked table, the winner's claim, the best schedule.

Every trial's reported series (step, wall_s, flops, loss_avg, gamma, val_loss) is read on common axes:

- horizon ``T``: the wall budget when there is one, else the shortest wall time among trials that were not
  stopped early. Windows: early = [0.1T, 0.4T], medium = [0.4T, 0.7T]. γ = (L(a) − L(b))/(b − a) from the
  smoothed loss, α per step, τ steps/s over the same window (eq. 21). Ranking uses γ over [0.1T, 0.7T] only:
  the paper's footnote 4 warns that γ is meaningless once the loss levels off, which is what late windows of
  short probes show. A trial that never reached 0.7T (stopped early by ASHA) ranks after those that did;
- loss at equal wall time (``T``) and at equal FLOPs (the smallest final FLOPs among completed trials);
- ``speedup_vs_full`` (wall time): the reference's wall time at ``T`` over the time this trial needed to reach the
  reference's loss there (the reference: the chosen full-target trial).

**Chosen LR and bracketing** (`choices`). Per label (a trial of the kind's grid, over its LR/warm-up points) the
point with the lowest mean score over seeds is chosen: final validation loss under compute 'flops', the last
smoothed training loss otherwise (a trial that did not finish scores NaN: worse than any). A choice at the lowest
or highest LR tried is *at an edge*: the sweep adds the next point (``lr_step``) until it is inside or
``lr_extend`` points were added (`extensions`); the table marks what stays at an edge and withholds its speed-up.

Spaces with ``compute: flops`` (every trial solved to the same FLOPs, run to its end) rank by the chosen points'
mean final validation loss; each chosen row gets its difference to the full reference and its FLOPs-to-target
speed-up: the reference's FLOPs over the FLOPs at which this label reaches the reference's final loss, from runs
each decayed at its own end when the space has ``budget_fracs`` (`msg_ray.train.metrics.decayed_reach`), else read
off the label's own validation curve (its LR not yet decayed there, which understates the speed-up).
"""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from msg_ray.flops import schedule_flops
from msg_ray.schedule import Schedule, full, paper_stage_starts, schedule_from_structures
from msg_ray.structure import DIMENSIONS, Structure
from msg_ray.train.metrics import decayed_reach, first_reach
from msg_ray.tune.space import FULL, SearchSpace, TrialSpec

EARLY, MID = (0.1, 0.4), (0.4, 0.7)
REFERENCES = ("target", FULL)  # base labels that train the target from scratch
COLUMNS = (
    "rank",
    "label",
    "status",
    "seed",
    "schedule",
    "steps",
    "wall_s",
    "lr",
    "warmup",
    "budget_frac",
    "chosen",
    "edge",
    "final_val",
    "val_mean",
    "val_std",
    "n_seeds",
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
)
MD_COLUMNS = tuple(c for c in COLUMNS if c not in ("seed", "schedule"))  # the Markdown table: seeds are aggregated


@dataclass
class TrialSeries:
    """What one trial reported (each a list over its Tune reports), how it ended, and what it trained."""

    spec: TrialSpec
    status: str  # completed | stopped_early | budget | error | pending
    series: dict[str, list[float]]
    schedule: Schedule | None = None  # the schedule it trained (solved for equal FLOPs); None: spec.schedule
    probes: dict[str, float] = field(default_factory=dict)  # "<task>/probe_<metric>" -> score

    @property
    def trained(self) -> Schedule:
        return self.schedule or self.spec.schedule

    @property
    def base(self) -> str:
        return self.spec.meta.get("base_label", self.spec.label)

    @property
    def full_budget(self) -> bool:
        return self.spec.meta.get("budget_frac", 1.0) == 1.0


@dataclass
class Choice:
    """The chosen grid point of one label: its LR/warm-up, score over seeds, and whether the LR is bracketed."""

    label: str
    lr: float | None
    warmup: int | None
    scores: list[float]  # per seed, NaN for a seed that did not finish
    seeds: list[int]
    lrs_tried: list[float]  # at the chosen warm-up
    added: int  # LR points the sweep added beyond the space's grid for this label
    edge: str  # "": bracketed (or no LR grid); "low" / "high": the best LR tried is the lowest / highest

    @property
    def mean(self) -> float:
        return statistics.fmean(self.scores) if self.scores else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.scores) if len(self.scores) > 1 else 0.0

    @property
    def reference(self) -> bool:
        return self.label in REFERENCES


def final_val(t: TrialSeries) -> float:
    vals = [v for v in t.series.get("val_loss", []) if not math.isnan(v)]
    return vals[-1] if vals and t.status == "completed" else math.nan


def score(t: TrialSeries, space: SearchSpace) -> float:
    """What picks a label's LR: final validation loss (compute 'flops') or the last smoothed training loss of a
    trial that ran its whole budget; NaN (worse than any) for one that did not finish."""
    if space.compute == "flops":
        return final_val(t)
    ok = t.status in ("completed", "budget") and t.series.get("loss_avg")
    return t.series["loss_avg"][-1] if ok else math.nan


def _nan_last(x: float) -> tuple[bool, float]:
    return (math.isnan(x), 0.0 if math.isnan(x) else x)


def choices(trials: list[TrialSeries], space: SearchSpace) -> dict[str, Choice]:
    """The chosen LR/warm-up point of every label (at the full budget), with its bracketing."""
    grid = set(space.lrs or [])
    points: dict[str, dict[tuple, list[TrialSeries]]] = {}
    for t in trials:
        if t.full_budget:
            key = (t.spec.meta.get("lr"), t.spec.meta.get("warmup"))
            points.setdefault(t.base, {}).setdefault(key, []).append(t)
    out = {}
    for label, by_point in points.items():

        def mean(ts: list[TrialSeries]) -> float:
            s = [score(t, space) for t in ts]
            return math.nan if any(math.isnan(x) for x in s) else statistics.fmean(s)

        (lr, warmup), ts = min(by_point.items(), key=lambda kv: _nan_last(mean(kv[1])))
        if math.isnan(mean(ts)):
            continue  # no trial of this label finished its budget (ASHA stopped them all): nothing to choose
        tried = sorted({k[0] for k in by_point if k[1] == warmup and k[0] is not None})
        edge = ""
        if lr is not None:
            edge = "low" if lr == tried[0] else "high" if lr == tried[-1] else ""
            if len(tried) == 1:
                edge = "high"  # one point brackets nothing; the sweep tries above it first
        ts = sorted(ts, key=lambda t: t.spec.seed)
        added = sum(1 for k in by_point if k[0] is not None and k[0] not in grid)
        out[label] = Choice(
            label=label,
            lr=lr,
            warmup=warmup,
            scores=[score(t, space) for t in ts],
            seeds=[t.spec.seed for t in ts],
            lrs_tried=tried,
            added=added,
            edge=edge,
        )
    return out


def extensions(chosen: dict[str, Choice], space: SearchSpace) -> list[dict[str, Any]]:
    """The LR points to add next: one step beyond the edge of every label still at one, within ``lr_extend``."""
    out = []
    for c in chosen.values():
        if not c.edge or c.lr is None or c.added >= space.lr_extend:
            continue
        lr = c.lr * space.lr_step if c.edge == "high" else c.lr / space.lr_step
        if not any(math.isclose(lr, x, rel_tol=1e-6) for x in c.lrs_tried):
            out.append({"base": c.label, "lr": float(f"{lr:.4g}"), "warmup": c.warmup})
    return out


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


def _chosen_trials(t: TrialSeries, c: Choice | None) -> bool:
    return c is not None and (t.spec.meta.get("lr"), t.spec.meta.get("warmup")) == (c.lr, c.warmup)


def table(trials: list[TrialSeries], space: SearchSpace, vocab_size: int, seq_len: int) -> list[dict[str, Any]]:
    """One row per trial, ranked: compute 'flops' by the chosen points' mean final validation loss, otherwise by γ
    over the early+medium windows (rank 1 = largest)."""
    chosen = choices(trials, space)
    T = horizon(trials, space)
    done = [t for t in trials if t.status in ("completed", "budget") and t.series.get("flops")]
    F = min(t.series["flops"][-1] for t in done) if done else math.nan
    refs = [t for t in trials if t.base in REFERENCES and t.series.get("wall_s") and t.full_budget]
    ref = next((t for t in refs if _chosen_trials(t, chosen.get(t.base))), refs[0] if refs else None)
    ref_loss = _interp(T, ref.series["wall_s"], ref.series["loss_avg"]) if ref else math.nan
    target = _space_target(trials)
    rows = []
    for t in trials:
        s, c = t.series, chosen.get(t.base)
        is_chosen = t.full_budget and _chosen_trials(t, c)
        row = {
            "label": t.spec.label,
            "status": t.status,
            "seed": t.spec.seed,
            "schedule": _describe(t.trained),
            "steps": int(s["step"][-1]) if s.get("step") else 0,
            "wall_s": s["wall_s"][-1] if s.get("wall_s") else 0.0,
            "lr": t.spec.meta.get("lr", math.nan),
            "warmup": t.spec.meta.get("warmup", math.nan),
            "budget_frac": t.spec.meta.get("budget_frac", math.nan),
            "chosen": "yes" if is_chosen else "",
            "edge": c.edge if is_chosen else "",
            "final_val": final_val(t) if space.compute == "flops" else math.nan,
            **({"val_mean": c.mean, "val_std": c.std, "n_seeds": len(c.scores)} if is_chosen else {}),
            **t.probes,
        }
        if s.get("wall_s") and not math.isnan(T):
            row["gamma_rank"] = _window(s, EARLY[0] * T, MID[1] * T)[0]
            row["gamma_early"] = _window(s, *(x * T for x in EARLY))[0]
            row["gamma_mid"], row["alpha_mid"], row["tau_mid"] = _window(s, *(x * T for x in MID))
            row["loss_at_T"] = _interp(T, s["wall_s"], s["loss_avg"])
            row["loss_at_F"] = _interp(F, s["flops"], s["loss_avg"])
            hit = _first_time_below(ref_loss, s["wall_s"], s["loss_avg"])
            row["speedup_vs_full"] = 1.0 if t is ref else (T / hit if hit and hit > 0 else math.nan)
        own = schedule_flops(t.spec.schedule, vocab_size, seq_len, 1)
        base = t.spec.schedule.full_baseline(target=target)
        row["flops_limit"] = schedule_flops(base, vocab_size, seq_len, 1) / own
        rows.append({**{c: math.nan for c in COLUMNS}, **row})
    if space.compute == "flops":
        _equal_compute_columns(rows, trials, chosen, space)
        rows.sort(key=lambda r: (r["chosen"] != "yes", *_nan_last(r["val_mean"]), *_nan_last(r["final_val"])))
    else:
        rows.sort(key=lambda r: (*_nan_last(-r["gamma_rank"]), *_nan_last(-r["gamma_early"])))
    for i, r in enumerate(rows):
        r["rank"] = i + 1
    return rows


def _equal_compute_columns(
    rows: list[dict[str, Any]], trials: list[TrialSeries], chosen: dict[str, Choice], space: SearchSpace
) -> None:
    """Chosen rows: final loss against the chosen full reference (its mean over seeds is the target, its FLOPs the
    budget) and FLOPs-to-target, withheld (NaN) when the row's or the reference's LR is at an edge."""
    ref = next((chosen[x] for x in REFERENCES if x in chosen), None)
    if ref is None or math.isnan(ref.mean):
        return
    by_label = {t.spec.label: t for t in trials}
    ref_runs = [t for t in trials if t.base == ref.label and t.full_budget and _chosen_trials(t, ref)]
    ref_flops = statistics.fmean(t.series["flops"][-1] for t in ref_runs)
    reach = flops_to_target(trials, chosen, space, ref.mean, ref_flops)
    for r in rows:
        c = chosen.get(by_label[r["label"]].base)
        if r["chosen"] != "yes" or c is None:
            continue
        r["val_vs_full"] = c.mean - ref.mean
        if not (c.edge or ref.edge):
            r["flops_to_target"] = reach.get(c.label, math.nan)


def flops_to_target(
    trials: list[TrialSeries], chosen: dict[str, Choice], space: SearchSpace, target: float, ref_flops: float
) -> dict[str, float]:
    """label -> the reference's FLOPs / the FLOPs this label needs to reach ``target`` at its chosen point: from
    runs decayed at their own end (``budget_fracs``, mean over seeds per budget), else off its validation curve
    (mean over seeds of each seed's ratio)."""
    out = {}
    for label, c in chosen.items():
        runs = [t for t in trials if t.base == label and _chosen_trials(t, c)]
        if space.budget_fracs:
            by_frac: dict[float, list[TrialSeries]] = {}
            for t in runs:
                by_frac.setdefault(t.spec.meta.get("budget_frac", 1.0), []).append(t)
            pts = []
            for ts in by_frac.values():
                vals = [final_val(t) for t in ts]
                if ts and not any(math.isnan(v) for v in vals):
                    pts.append((statistics.fmean(t.series["flops"][-1] for t in ts), statistics.fmean(vals)))
            hit, _ = decayed_reach(pts, target) if pts else (math.nan, False)
            out[label] = ref_flops / hit if hit and not math.isnan(hit) else math.nan
            continue
        ratios = []
        for t in (t for t in runs if t.full_budget):
            s = t.series
            pts = [  # a report repeats the last evaluation until the next one
                (f, v)
                for i, (f, v) in enumerate(zip(s.get("flops", []), s.get("val_loss", []), strict=False))
                if not math.isnan(v) and (i == 0 or v != s["val_loss"][i - 1])
            ]
            hit = first_reach([f for f, _ in pts], [v for _, v in pts], target) if pts else None
            ratios.append(ref_flops / hit if hit else math.nan)
        out[label] = statistics.fmean(ratios) if ratios else math.nan
    return out


def claim(rows: list[dict[str, Any]], trials: list[TrialSeries], space: SearchSpace, reference: str) -> str:
    """The winner's line: what it beat, at which budget, with which LR bracketing and seeds, and what is withheld."""
    if not rows:
        return "no trials"
    chosen = choices(trials, space)
    by_label = {t.spec.label: t for t in trials}
    top = rows[0]
    c = chosen.get(by_label[top["label"]].base)
    if c is None or math.isnan(c.mean):
        return f"no winner: no trial of {top['label']!r} finished"
    seeds = f"seed {c.seeds[0]}" if len(c.seeds) == 1 else f"seeds {c.seeds[0]}..{c.seeds[-1]}"
    metric = "final val loss" if space.compute == "flops" else "final smoothed train loss"
    parts = [f"winner: {c.label}", f"{metric} {c.mean:.4f}" + (f" ± {c.std:.4f}" if len(c.scores) > 1 else "")]
    parts[-1] += f" ({seeds})"
    parts.append(_lr_phrase(c))
    parts.append(f"budget axis: {reference}")
    ref = next((chosen[x] for x in REFERENCES if x in chosen), None)
    if ref is not None and ref.label != c.label and not math.isnan(ref.mean):
        parts.append(f"vs {ref.label} {ref.mean:.4f} ({_lr_phrase(ref)}): Δ {c.mean - ref.mean:+.4f}")
        flops = space.compute == "flops"
        x = top.get("flops_to_target" if flops else "speedup_vs_full", math.nan)
        name = "FLOPs-to-target" if flops else "wall time-to-target"
        if c.edge or ref.edge:
            who = " and ".join(x.label for x in (c, ref) if x.edge)
            parts.append(f"speed-up withheld: the LR of {who} is at an edge of its grid")
        elif not math.isnan(x):
            how = "runs decayed at their own end" if space.budget_fracs else "its own curve (LR not decayed there)"
            parts.append(f"{name} {x:.2f}x (from {how})" if flops else f"{name} {x:.2f}x (smoothed train loss)")
        else:
            parts.append(f"{name}: the reference's loss is not reached")
    return "; ".join(parts)


def _lr_phrase(c: Choice) -> str:
    if c.lr is None:
        return "LR fixed (no grid)"
    wu = f", warm-up {c.warmup}" if c.warmup is not None else ""
    tried = "/".join(f"{x:.3g}" for x in c.lrs_tried)
    if c.edge:
        return f"lr {c.lr:.3g}{wu} at the {c.edge} edge of {tried} (NOT bracketed; {c.added} added)"
    return f"lr {c.lr:.3g}{wu} bracketed in {tried}"


def _space_target(trials: list[TrialSeries]) -> Structure:
    targets = {t.spec.schedule.target for t in trials}
    return max(targets, key=lambda s: s.as_tuple())


def _describe(s: Schedule) -> str:
    if s.is_full:
        return str(s.target)
    stages = " > ".join(f"{st.structure}@{b}" for st, b in zip(s.stages, s.boundaries(), strict=True))
    return f"{s.operator} phi={s.phi}: {stages}"


def best_trial(rows: list[dict[str, Any]], trials: list[TrialSeries]) -> TrialSeries:
    """The trial behind rank 1 (its schedule, solved length and run settings are what was ranked)."""
    return next(t for t in trials if t.spec.label == rows[0]["label"])


def best_schedule(rows: list[dict[str, Any]], trials: list[TrialSeries], space: SearchSpace) -> Schedule:
    """The schedule to train next.

    ``structures``: start from the target with every dimension whose smaller value learned faster (γ above the
    target's) set to its best value; grow the dimensions back one per stage, the least helpful reduction first
    (the most helpful stays small longest), stage starts by the paper's rule over ``best.total_steps`` steps.
    Other kinds: the best-ranked trial's schedule as it trained (under compute 'flops': solved for equal FLOPs).
    """
    by_label = {t.spec.label: t.spec for t in trials}
    if space.kind != "structures":
        return best_trial(rows, trials).trained.replace(name=f"{space.name}-best")
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


def _columns(rows: list[dict[str, Any]], names: tuple[str, ...] | list[str]) -> list[str]:
    """``names`` plus any probe columns, without those that hold no value in any row (no all-NaN columns)."""
    extra = sorted({k for r in rows for k in r if "/probe_" in k})
    cols = [c for c in (*names, *extra) if c not in ("schedule",)] + (["schedule"] if "schedule" in names else [])

    def empty(v: Any) -> bool:
        return v is None or v == "" or (isinstance(v, float) and math.isnan(v))

    keep = {"rank", "label", "status"}
    return [c for c in cols if c in keep or any(not empty(r.get(c)) for r in rows)]


def _cell(v: Any, fmt: str) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else format(v, fmt)
    return "" if v is None else str(v)


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = _columns(rows, COLUMNS)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _cell(r.get(k), ".6g") for k in cols})
    return path


def markdown(rows: list[dict[str, Any]], title: str = "", claim_line: str = "") -> str:
    cols = _columns(rows, MD_COLUMNS)
    lines = [f"### {title}", ""] if title else []
    lines += [claim_line, ""] if claim_line else []
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(c), ".4g") for c in cols) + " |")
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
