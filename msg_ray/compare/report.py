"""The comparison report: speed-ups, the table of paper tables 4/5 (Markdown + CSV) and figure 3/5-style plots.

Input is a list of `RunRecord` (one per operator x learning rate x seed), built either from the runs just
trained or from MLflow alone (``msg_ray.compare.mlflow_io``), so both paths give the same table.
Definitions (paired by seed, at each operator's best learning rate = lowest mean final validation loss):
- equal-steps speed-up = wall per step of full / wall per step of the schedule over its whole run (the paper's
  ratio for the same step budget; read per step it also holds when ``--budget flops`` gives the runs different
  step counts);
- time-to-target speed-up = wall(full) / wall at which the schedule run's validation loss first reaches the full
  run's final validation loss (linear interpolation between evaluations). A run that does not reach it within
  its budget is continued at full size when the comparison has ``extend_steps`` (the paper's Sch1-G keeps
  training; ``msg_ray.compare.extend``), else it counts as not reached; ``ttt_reached`` says how many seeds
  reached it and how many extra steps the longest continuation took;
- FLOPs-to-target speed-up = FLOPs(full run) / FLOPs the schedule run spent when it first reached that loss;
- ``grows``: the dimensions the operator grows itself (G_stack: layers, HyperCloning: width); MSG grows the others
  in the same growth event; ``loss_jump``: mean |loss after - loss before| over a run's growth events;
- FLOPs limit = FLOPs(full, same steps) / FLOPs(schedule); efficiency = equal-steps speed-up / limit (realised
  over the limit); ``val_vs_full`` = final validation loss minus the full run's (same seed; < 0: better). Under
  ``--budget flops`` (msg_ray.flops.solve_total_steps) every run spends the full run's FLOPs, so final loss is the
  equal-compute comparison of Kaddour et al. (NeurIPS 2023);
- decayed FLOPs-to-target (``CompareConfig.budget_fractions``): the same, read off runs solved to smaller budgets,
  each decayed at its own end, instead of off one run mid-way through its LR schedule (``budget_rows``). Runs at a
  smaller budget stay out of every other column.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from msg_ray import plots
from msg_ray.operators import get_operator
from msg_ray.schedule import FULL
from msg_ray.structure import DIMENSIONS
from msg_ray.train.metrics import decayed_reach, first_reach


@dataclass
class RunRecord:
    operator: str
    seed: int
    lr: float
    name: str
    history: dict[str, list]
    flops_limit: float = 1.0
    run_id: str | None = None
    scores: dict[str, list[float]] = field(default_factory=dict)  # downstream: metric -> value per fine-tune seed
    extension: dict[str, list] | None = None  # continued training past the budget (msg_ray.compare.extend)
    budget: float = 1.0  # fraction of the full run's FLOPs the run was solved to (< 1: the decayed budget curve)

    @property
    def wall(self) -> float:
        return float(self.history["wall_s"][-1])

    @property
    def flops(self) -> float:
        return float(self.history["flops"][-1])

    @property
    def final_val(self) -> float:
        return float(self.history["val_loss"][-1]) if self.history.get("val_loss") else math.nan

    @property
    def growth_steps(self) -> list[int]:
        return [int(s) for s in self.history.get("growth_steps", [])]


def time_to_reach(
    history: dict[str, list], target: float, extension: dict[str, list] | None = None, axis: str = "wall_s"
) -> float | None:
    """Wall seconds (``axis="wall_s"``) or FLOPs (``axis="flops"``) at which validation loss first gets to
    ``target`` (interpolated), or None if never. ``extension`` (same keys, later steps) continues the run past its
    budget on the same axes.
    """
    ext = extension if extension and axis in extension else {}  # continuations log wall time, not FLOPs
    vs = list(history.get("val_step") or []) + list(ext.get("val_step") or [])
    vl = list(history.get("val_loss") or []) + list(ext.get("val_loss") or [])
    if not vs or not history.get(axis):
        return None
    steps = np.asarray(list(history["step"]) + list(ext.get("step") or []), float)
    xs = np.interp(np.asarray(vs, float), steps, np.asarray(list(history[axis]) + list(ext.get(axis) or []), float))
    return first_reach(list(xs), vl, target)


def reach_target(record: RunRecord, full: RunRecord, axis: str = "wall_s") -> float | None:
    return time_to_reach(record.history, full.final_val, record.extension, axis)


def _ms(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def best_lrs(records: list[RunRecord]) -> dict[str, float]:
    """Per operator, the learning rate with the lowest mean final validation loss.

    Judged only on the seeds that ran every learning rate of that operator (the LR-search seeds), so a
    comparison that searched on seed 0 and then ran more seeds at the chosen LR keeps that choice.
    """
    by: dict[str, dict[float, dict[int, float]]] = {}
    for r in records:
        by.setdefault(r.operator, {}).setdefault(r.lr, {})[r.seed] = r.final_val
    best: dict[str, float] = {}
    for op, per_lr in by.items():
        common = set.intersection(*(set(seeds) for seeds in per_lr.values()))
        if not common:  # no seed ran every LR: fall back to all seeds
            common = {s for seeds in per_lr.values() for s in seeds}
        means = {lr: _ms([v for s, v in seeds.items() if s in common])[0] for lr, seeds in per_lr.items()}
        finite = {lr: m for lr, m in means.items() if not math.isnan(m)}
        best[op] = min(finite, key=finite.__getitem__) if finite else next(iter(per_lr))
    return best


def grid_edge_warnings(records: list[RunRecord]) -> list[str]:
    """One line per operator whose chosen LR is the lowest or highest it tried: its optimum may lie outside
    the grid, and an under-tuned baseline inflates every speed-up (widen ``--lrs`` until each choice is inside)."""
    out = []
    for op, lr in best_lrs(records).items():
        tried = sorted({r.lr for r in records if r.operator == op})
        if len(tried) > 1 and lr in (tried[0], tried[-1]):
            side = "lowest" if lr == tried[0] else "highest"
            out.append(
                f"WARNING: {op}: the chosen LR {lr:g} is the {side} tried ({', '.join(f'{x:g}' for x in tried)});"
                " its optimum may lie outside the grid - widen --lrs before trusting the speed-ups."
            )
    return out


def operator_order(records: list[RunRecord]) -> list[str]:
    """Fixed row order (msg, net2net, nomask, full), so a live report and one rebuilt from MLflow agree."""
    rank = {op: i for i, op in enumerate(("msg", "net2net", "nomask", FULL))}
    return sorted({r.operator for r in records}, key=lambda op: (rank.get(op, 3), op) if op != FULL else (9, op))


def summarize(records: list[RunRecord]) -> list[dict[str, Any]]:
    """One row per operator (best LR), numbers as (mean, std) tuples or plain values."""
    if not any(r.operator == FULL for r in records):
        raise ValueError("the comparison needs a 'full' run to compute speed-ups")
    lrs = best_lrs(records)
    full = {r.seed: r for r in records if r.operator == FULL and r.lr == lrs[FULL]}
    rows = []
    for op in operator_order(records):
        runs = sorted((r for r in records if r.operator == op and r.lr == lrs[op]), key=lambda r: r.seed)
        paired = [r for r in runs if r.seed in full]
        eq = [_per_step(full[r.seed]) / _per_step(r) for r in paired]  # step-rate ratio: budget-independent
        reach = [reach_target(r, full[r.seed]) for r in paired]
        reach_f = [reach_target(r, full[r.seed], "flops") for r in paired]
        ftt = [full[r.seed].flops / f for r, f in zip(paired, reach_f, strict=True) if f]
        extra = max(
            (r.extension["step"][-1] - r.history["step"][-1] for r in paired if r.extension and r.extension["step"]),
            default=0,
        )
        ttt = [full[r.seed].wall / t for r, t in zip(paired, reach, strict=True) if t]
        limit = runs[0].flops_limit
        row: dict[str, Any] = {
            "operator": op,
            "grows": grown_by(op),
            "lr": lrs[op],
            "seeds": len(runs),
            "wall_s": _ms([r.wall for r in runs]),
            "steps": _ms([float(r.history["step"][-1]) for r in runs]),
            "speedup_equal_steps": _ms(eq),
            "speedup_time_to_target": _ms(ttt),
            "speedup_flops_to_target": _ms(ftt),
            "ttt_reached": f"{len(ttt)}/{len(paired)}" + (f" (+{extra} steps)" if extra else ""),
            "flops": _ms([r.flops for r in runs]),
            "flops_limit": limit,
            "efficiency": _ms([e / limit for e in eq]),
            "final_val_loss": _ms([r.final_val for r in runs]),
            "val_vs_full": _ms([r.final_val - full[r.seed].final_val for r in paired]),
            "loss_jump": _ms([loss_jump(r) for r in runs if r.history.get("growth_events")]),
        }
        for key in sorted({k for r in runs for k in r.scores}):
            row[f"{key}"] = _ms([v for r in runs for v in r.scores.get(key, [])])
        rows.append(row)
    return rows


def budget_rows(records: list[RunRecord]) -> list[dict[str, Any]]:
    """The decayed budget curve: per growth operator that also ran at smaller budgets (at its chosen LR), the final
    val loss per budget fraction and FLOPs-to-target read off those runs (`decayed_reach`; target = the same seed's
    full run's final val); ``lower_bound``: the smallest budget already reached it."""
    main = [r for r in records if r.budget == 1.0]
    if not main or all(r.budget == 1.0 for r in records):
        return []
    lrs = best_lrs(main)
    full = {r.seed: r for r in main if r.operator == FULL and r.lr == lrs.get(FULL)}
    rows = []
    for op in operator_order(main):
        runs = [r for r in records if r.operator == op and r.lr == lrs[op] and r.seed in full]
        fracs = sorted({r.budget for r in runs})
        if op == FULL or len(fracs) < 2:
            continue
        row: dict[str, Any] = {"operator": op, "lr": lrs[op]}
        row.update({f"val_at_{f:g}x": _ms([r.final_val for r in runs if r.budget == f]) for f in fracs})
        reach = [
            (decayed_reach(pts, full[seed].final_val), full[seed].flops)
            for seed in full
            if len(pts := [(r.flops, r.final_val) for r in runs if r.seed == seed]) > 1
        ]
        row["speedup_flops_to_target_decayed"] = _ms([ff / f for (f, _), ff in reach])
        row["lower_bound"] = "yes" if any(not exact and f == f for (f, exact), _ in reach) else ""
        row["seeds"] = len(reach)
        rows.append(row)
    return rows


def grown_by(op: str) -> str:
    """Which dimensions the operator grows itself; the others are grown by MSG in the same event (the table says so)."""
    if op == FULL:
        return "-"
    dims = get_operator(op).dims
    if set(dims) == set(DIMENSIONS):
        return "all"
    short = {"hidden_dim": "hidden", "ffn_dim": "ffn", "head_num": "heads", "layer_num": "layers"}
    return "+".join(short[d] for d in dims) + " (rest by msg)"


def loss_jump(r: RunRecord) -> float:
    """Mean |loss after - loss before| over the run's growth events (0 for a strictly preserving operator)."""
    events = r.history.get("growth_events") or []
    return statistics.fmean(abs(e["loss_after"] - e["loss_before"]) for e in events) if events else math.nan


def _per_step(r: RunRecord) -> float:
    """Wall seconds per optimizer step over the whole run."""
    return r.wall / max(1, int(r.history["step"][-1]))


def lr_rows(records: list[RunRecord]) -> list[dict[str, Any]]:
    """The learning-rate search: final validation loss and wall time per operator and LR."""
    keys = sorted({(r.operator, r.lr) for r in records}, key=lambda k: (operator_order(records).index(k[0]), k[1]))
    best = best_lrs(records)
    rows = []
    for op, lr in keys:
        runs = [r for r in records if r.operator == op and r.lr == lr]
        rows.append(
            {
                "operator": op,
                "lr": lr,
                "seeds": len(runs),
                "final_val_loss": _ms([r.final_val for r in runs]),
                "wall_s": _ms([r.wall for r in runs]),
                "chosen": "yes" if best[op] == lr else "",
            }
        )
    return rows


def _fmt(v: Any) -> str:
    if isinstance(v, tuple):
        m, s = v
        if math.isnan(m):
            return "n/a"  # e.g. time-to-target when no seed reached the full run's loss
        return f"{_num(m)} ({_num(s)})"
    return _num(v) if isinstance(v, float) else str(v)


def _num(x: float) -> str:
    if math.isnan(x):
        return "nan"
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.3g}"
    return f"{x:.4g}" if abs(x) < 10 else f"{x:.1f}"


def to_markdown(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict[str, Any]]) -> str:
    """Tuples split into ``<col>_mean`` / ``<col>_std`` columns (machine-readable)."""
    flat = []
    for r in rows:
        d: dict[str, Any] = {}
        for k, v in r.items():
            if isinstance(v, tuple):
                d[f"{k}_mean"], d[f"{k}_std"] = v
            else:
                d[k] = v
        flat.append(d)
    cols = list(dict.fromkeys(k for d in flat for k in d))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat)
    return buf.getvalue()


def representative(records: list[RunRecord]) -> dict[str, RunRecord]:
    """For plots: each operator's best-LR run with the lowest seed."""
    lrs = best_lrs(records)
    out = {}
    for op in operator_order(records):
        runs = sorted((r for r in records if r.operator == op and r.lr == lrs[op]), key=lambda r: r.seed)
        out[op] = runs[0]
    return out


def make_plots(records: list[RunRecord], out_dir: str | Path, zoom_window: int = 200) -> list[Path]:
    """loss vs wall time, loss vs FLOPs (growths dashed) and the post-growth zoom, as PNG files."""
    out = Path(out_dir)
    reps = representative(records)
    hist = {op: r.history for op, r in reps.items()}
    growths = {op: r.growth_steps for op, r in reps.items()}
    paths = [
        plots.save(plots.loss_curves(hist, growth_steps=growths, x=x), out / f"loss_vs_{x}.png")
        for x in ("wall", "flops")
    ]
    grown = {op: h for op, h in hist.items() if growths[op]}
    if grown:
        fig = plots.growth_zoom(grown, {op: growths[op] for op in grown}, window=zoom_window)
        paths.append(plots.save(fig, out / "growth_zoom.png"))
    return paths


@dataclass
class Report:
    rows: list[dict[str, Any]]
    lr_rows: list[dict[str, Any]]
    markdown: str
    csv: str
    files: list[Path]
    budget_rows: list[dict[str, Any]] = field(default_factory=list)


def write_report(records: list[RunRecord], out_dir: str | Path, *, title: str = "", zoom_window: int = 200) -> Report:
    """Table (Markdown + CSV), the LR-search table and the plots under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    main = [r for r in records if r.budget == 1.0]  # the runs at the comparison's budget
    rows, search, curve = summarize(main), lr_rows(main), budget_rows(records)
    md = (f"## {title}\n\n" if title else "") + to_markdown(rows)
    if len({r["lr"] for r in search}) > 1 or len(search) > len(rows):
        md += "\nLearning-rate search (final validation loss):\n\n" + to_markdown(search)
        md += "".join(f"\n{w}\n" for w in grid_edge_warnings(main))
    if curve:
        md += (
            "\nDecayed budget curve (runs solved to fractions of the full run's FLOPs, each decayed at its own "
            "end; FLOPs-to-target read off them):\n\n" + to_markdown(curve)
        )
    text = to_csv(rows)
    files = [out / "comparison.md", out / "comparison.csv", out / "lr_search.csv"]
    files[0].write_text(md)
    files[1].write_text(text)
    files[2].write_text(to_csv(search))
    if curve:
        files.append(out / "budget_curve.csv")
        files[-1].write_text(to_csv(curve))
    files += make_plots(main, out, zoom_window)
    return Report(rows=rows, lr_rows=search, markdown=md, csv=text, files=files, budget_rows=curve)
