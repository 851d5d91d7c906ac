"""Schedule studies for the plain reference loop: which growth schedules and LR policies beat tuned full training
at equal FLOPs (``benchmarks/bench_schedules.py`` runs them; ``report`` prints the table that chose the presets).

Rules every study follows (Kaddour et al., NeurIPS 2023): one LR grid for every schedule and the baseline, each
chosen LR checked to lie inside the grid, every run's LR decayed at its own end, equal training FLOPs.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from benchmarks.plain import PlainJob, flops_to_reach
from msg_ray.growth import OPERATORS
from msg_ray.presets import DEFAULT_SCHEDULE, get_schedule
from msg_ray.schedule import FULL, Schedule, Stage, full
from msg_ray.train.metrics import decayed_reach

_T = [128, 512, 4, 4]  # the mini target (head_dim 32)
_FFN_FIRST = [[64, 256, 2, 2], [64, 512, 2, 2], [128, 512, 2, 2], [128, 512, 4, 2], _T]
_STATIC = [[128, 512, 4, 2], [64, 512, 2, 2]]  # the target at half depth; the growth path's second stage
_HIDDEN_LAST = [[64, 256, 2, 2], [64, 512, 2, 2], [64, 512, 4, 2], [64, 512, 4, 4], _T]


@dataclass
class Study:
    data: dict[str, Any]
    jobs: list[PlainJob]


def _sched(arch: str, structures: list, starts: list[float], name: str, total: int, phi: int) -> Schedule:
    stages = tuple(Stage(structure=s, start=float(b)) for s, b in zip(structures, starts, strict=True))
    return Schedule(arch=arch, stages=stages, total_steps=total, phi=phi, head_dim=32, name=name)


def candidates(arch: str, total: int, phi: int = 50) -> dict[str, Schedule]:
    """The growth schedules a study compares (names say structure order and where the last growth lands)."""
    wd = [[64, 256, 2, 2], [128, 512, 4, 2], _T]
    out = {
        "ffn-first-48": _sched(arch, _FFN_FIRST, [0, 0.12, 0.24, 0.36, 0.48], "ffn-first-48", total, phi),
        "ffn-first-32": _sched(arch, _FFN_FIRST, [0, 0.08, 0.16, 0.24, 0.32], "ffn-first-32", total, phi),
        "ffn-first-60": _sched(arch, _FFN_FIRST, [0, 0.15, 0.30, 0.45, 0.60], "ffn-first-60", total, phi),
        "ffn-first-72": _sched(arch, _FFN_FIRST, [0, 0.18, 0.36, 0.54, 0.72], "ffn-first-72", total, phi),
        "ffn-first-84": _sched(arch, _FFN_FIRST, [0, 0.21, 0.42, 0.63, 0.84], "ffn-first-84", total, phi),
        "width-depth-40": _sched(arch, wd, [0, 0.2, 0.4], "width-depth-40", total, phi),
        "depth-30": _sched(arch, [[128, 512, 4, 2], _T], [0, 0.3], "depth-30", total, phi),
        # hidden_dim last: the LM head (38 % of the target's FLOPs at a 4k vocabulary) stays at hidden 64 until 48 %
        "hidden-last-48": _sched(arch, _HIDDEN_LAST, [0, 0.12, 0.24, 0.36, 0.48], "hidden-last-48", total, phi),
    }
    ref = DEFAULT_SCHEDULE[arch]  # the mini version of the paper's schedule
    out[ref] = get_schedule(ref, total_steps=total, phi=phi)
    return out


def _grid(
    schedules: dict[str, Schedule], lrs: list[float], seeds: list[int], full_steps: int, **kw: Any
) -> list[PlainJob]:
    return [
        PlainJob(schedule=s, lr=lr, full_steps=full_steps, seed=seed, label=label, **kw)
        for label, s in schedules.items()
        for lr in lrs
        for seed in seeds
    ]


def _study(
    arch: str,
    data: dict,
    full_steps: int,
    lrs: list[float],
    picks: list[str] | None,
    policies: bool,
    scale: float,
    **kw: Any,
) -> Study:
    n = max(60, int(full_steps * scale))
    cands = candidates(arch, n, phi=max(1, round(50 * min(1.0, scale))))
    if picks is not None:
        cands = {k: v for k, v in cands.items() if k in picks}
    base = full(arch, _T, n, head_dim=32, phi=50, name=FULL)
    seeds = [0, 1, 2]  # seed 0 searches; seeds 1-2 repeat the chosen point (select with --seeds)
    jobs = _grid({FULL: base, **cands}, lrs, seeds, n, **kw)
    # smaller static models at the target's FLOPs: is growth better than simply training a smaller model longer?
    static = {f"static-{'x'.join(map(str, s))}": full(arch, s, n, head_dim=32, phi=50, name="static") for s in _STATIC}
    jobs += [replace(j, budget_of=tuple(_T)) for j in _grid(static, lrs, seeds, n, **kw)]
    if policies:  # the LR policy study on the first candidate: resets at the 1st/2nd growth, muP-style width rule
        first = next(iter(cands))
        jobs += [
            replace(j, lr_reset_growths=2, label=f"{first}+reset2")
            for j in _grid({first: cands[first]}, lrs, seeds, n, **kw)
        ]
        jobs += [
            replace(j, lr_scale="width", label=f"{first}+width")
            for j in _grid({first: cands[first]}, lrs, seeds, n, **kw)
        ]
    # seed 0 of every label first: a sweep cut short still covers every schedule
    return Study(data=data, jobs=sorted(jobs, key=lambda j: j.seed))


def _operators(scale: float, lrs: list[float]) -> Study:
    """Every registered operator on the same schedule (ffn-first-48: each dimension doubles, so cloning operators
    apply) and full training, on the gpt-warmup150 protocol; seeds 0-2 (select with --seeds)."""
    n = max(60, int(1500 * scale))
    base = candidates("gpt", n, phi=max(1, round(50 * min(1.0, scale))))["ffn-first-48"]
    scheds = {FULL: full("gpt", _T, n, head_dim=32, phi=50, name=FULL)}
    scheds.update({op: base.replace(operator=op, name=op) for op in OPERATORS})
    data = _CLM_DATA
    jobs = _grid(scheds, lrs, [0, 1, 2], n, batch_size=16, warmup_steps=150)
    return Study(data=data, jobs=sorted(jobs, key=lambda j: j.seed))


# WikiText-2 with a 4k BPE at seq 64: the data of every study below that names its data
_CLM_DATA = {"source": "wikitext2", "tokenizer": "bpe:4096", "seq_len": 64, "objective": "clm"}
_MLM_DATA = {"source": "wikitext2", "tokenizer": "bpe:4096", "seq_len": 64, "objective": "mlm"}
_GPT_LRS = [1.4e-3, 2e-3, 2.8e-3, 4e-3, 5.6e-3]
_BERT_LRS = [5e-4, 1e-3, 1.4e-3, 2e-3, 2.8e-3]

STUDIES: dict[str, Callable[[float], Study]] = {
    "gpt": lambda scale: _study(
        "gpt",
        {"source": "wikitext2", "tokenizer": "bpe8k", "seq_len": 64, "objective": "clm"},
        1500,
        _GPT_LRS,
        None,
        True,
        scale,
        batch_size=16,
        warmup_steps=50,
    ),
    "bert": lambda scale: _study(
        "bert",
        {"source": "wikitext2", "tokenizer": "bpe8k", "seq_len": 64, "objective": "mlm"},
        2000,
        _BERT_LRS,
        ["ffn-first-48", "ffn-first-32", "width-depth-40", "mini-sch1-b"],
        False,
        scale,
        batch_size=16,
        warmup_steps=150,
    ),
    # warm-up 150 (the tuned full baseline's warm-up), the LR grid widened to bracket growth's optimum
    "gpt-warmup150": lambda scale: _study(
        "gpt",
        _CLM_DATA,
        1500,
        [2.8e-3, 4e-3, 5.6e-3, 8e-3, 1.12e-2],
        ["ffn-first-48", "ffn-first-32", "ffn-first-60", "ffn-first-72", "ffn-first-84", "hidden-last-48"],
        False,
        scale,
        batch_size=16,
        warmup_steps=150,
    ),
    # the same with warm-up 50, 300, 600 and 1000: the warm-up grid widened until each operator's optimum is inside it
    **{
        f"gpt-warmup{w}": (
            lambda scale, w=w: _study(
                "gpt",
                _CLM_DATA,
                1500,
                [2.8e-3, 4e-3, 5.6e-3, 8e-3, 1.12e-2],
                ["ffn-first-48"],
                False,
                scale,
                batch_size=16,
                warmup_steps=w,
            )
        )
        for w in (50, 300, 600, 1000)
    },
    # BERT MLM on the protocol of docs/results/bert.md (4k BPE, seq 64, batch 16, warm-up 150, 2,000 full steps);
    # ffn-first-48 is the mini-bert-fast preset's shape; -72 / -84 end growth later (GPT's best at this budget)
    "bert-warmup150": lambda scale: _study(
        "bert",
        _MLM_DATA,
        2000,
        [5e-4, 1e-3, 2e-3, 4e-3],
        ["ffn-first-48", "ffn-first-72", "ffn-first-84"],
        False,
        scale,
        batch_size=16,
        warmup_steps=150,
    ),
    # the same with warm-up 50: with 150 and 600, a warm-up grid that can bracket each operator's optimum
    "bert-warmup50": lambda scale: _study(
        "bert",
        _MLM_DATA,
        2000,
        [5e-4, 1e-3, 2e-3, 4e-3],
        ["ffn-first-48"],
        False,
        scale,
        batch_size=16,
        warmup_steps=50,
    ),
    # the same with warm-up 600 (the GPT baseline's bracketed optimum), the LR grid shifted up one point
    "bert-warmup600": lambda scale: _study(
        "bert",
        _MLM_DATA,
        2000,
        [1e-3, 2e-3, 4e-3, 8e-3],
        ["ffn-first-48"],
        False,
        scale,
        batch_size=16,
        warmup_steps=600,
    ),
    # the llama architecture on the gpt-warmup150 protocol, the grid widened by one point on each side
    "llama-warmup150": lambda scale: _study(
        "llama",
        _CLM_DATA,
        1500,
        [2e-3, 2.8e-3, 4e-3, 5.6e-3, 8e-3, 1.12e-2],
        ["ffn-first-48"],
        False,
        scale,
        batch_size=16,
        warmup_steps=150,
    ),
    # the operator zoo on one schedule (msg_ray.operators), same LR grid for every operator and full
    "gpt-operators": lambda scale: _operators(scale, [2.8e-3, 4e-3, 5.6e-3, 8e-3, 1.12e-2]),
    # robustness of the shipped shape (ffn-first-48) on the gpt-warmup150 protocol with another tokenizer size
    # (8k BPE), sequence length (128) and batch (8: the same tokens per step)
    "gpt-robust": lambda scale: _study(
        "gpt",
        {"source": "wikitext2", "tokenizer": "bpe8k", "seq_len": 128, "objective": "clm"},
        1500,
        [2.8e-3, 4e-3, 5.6e-3, 8e-3, 1.12e-2],
        ["ffn-first-48"],
        False,
        scale,
        batch_size=8,
        warmup_steps=150,
    ),
    # 4x the gpt-warmup150 budget (6,000 full steps, ~2.0 epochs of WikiText-2): does the lead of growth and of the
    # smaller static model over full shrink as the target moves towards compute-optimal? (warm-up 150 / 600)
    **{
        f"gpt-4x-warmup{w}": (
            lambda scale, w=w: _study(
                "gpt",
                _CLM_DATA,
                6000,
                [2.8e-3, 4e-3, 5.6e-3, 8e-3],
                ["ffn-first-48", "ffn-first-84"],
                False,
                scale,
                batch_size=16,
                warmup_steps=w,
            )
        )
        for w in (150, 600)
    },
}


def select(study: Study, only: str = "", lrs: str = "", seeds: str = "", data: list[str] | None = None) -> Study:
    """A subset of a study (comma lists of labels, LRs, seeds) with DataConfig overrides (``key=value``)."""
    keep_labels = {x.strip() for x in only.split(",") if x.strip()}
    keep_lrs = {float(x) for x in lrs.split(",") if x.strip()}
    keep_seeds = {int(x) for x in seeds.split(",") if x.strip()}
    jobs = [
        j
        for j in study.jobs
        if (not keep_labels or j.label in keep_labels)
        and (not keep_lrs or j.lr in keep_lrs)
        and (not keep_seeds or j.seed in keep_seeds)
    ]
    if not jobs:
        raise ValueError(f"no job of the study matches only={only!r} lrs={lrs!r} seeds={seeds!r}")
    overrides = {}
    for item in data or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--data expects key=value, got {item!r}")
        overrides[key.strip()] = int(value) if value.strip().isdigit() else value.strip()
    return Study(data={**study.data, **overrides}, jobs=jobs)


def job_key(job: dict[str, Any]) -> tuple:
    """What identifies a job within one study's results (a result's ``job`` field, or ``asdict(PlainJob)``)."""
    return (
        job["label"],
        float(job["lr"]),
        int(job["seed"]),
        job.get("lr_scale"),
        job.get("lr_reset_growths"),
        job.get("full_steps"),
        job.get("warmup_steps"),
    )


def at_budgets(study: Study, fractions: str) -> Study:
    """The study's jobs at smaller compute budgets (comma list of fractions of full's FLOPs, each in (0, 1]): each
    run is solved to its own budget and decays its LR at its own end, so the final losses trace the decayed
    loss-vs-FLOPs frontier that :func:`budget_curve` reads (Kaddour et al.: compare runs annealed at each budget,
    not a point mid-way through a longer run's schedule). The target stays full training at the study's budget;
    full runs at smaller budgets show how much a short decayed run loses against a long run's midpoint."""
    try:
        frac = sorted({float(x) for x in fractions.split(",") if x.strip()})
    except ValueError as e:
        raise ValueError(f"--budgets expects a comma list of fractions, got {fractions!r}") from e
    if not frac or not all(0 < f <= 1 for f in frac):
        raise ValueError(f"--budgets: every fraction must be in (0, 1], got {fractions!r}")
    return replace(
        study, jobs=[replace(j, full_steps=max(1, round(j.full_steps * f))) for j in study.jobs for f in frac]
    )


def pending(study: Study, done: list[dict]) -> Study:
    """The study without the jobs ``done`` (saved results) already holds: a sweep cut short resumes, not restarts."""
    have = {job_key(r["job"]) for r in done}
    return replace(study, jobs=[j for j in study.jobs if job_key(asdict(j)) not in have])


# downstream metrics a study's table shows (linear probes; bench_schedules.py --downstream scores the runs)
DOWNSTREAM = {"movie_snippets/probe_accuracy": "movies acc", "bbc_news/probe_accuracy": "BBC acc"}


def relabel(result: dict, renames: dict[str, str]) -> dict:
    """``result`` with its label renamed per ``renames`` (one schedule saved by two studies under two labels)."""
    label = result["job"]["label"]
    return result if label not in renames else {**result, "job": {**result["job"], "label": renames[label]}}


def dedupe(results: list[dict]) -> list[dict]:
    """One result per job (`job_key`): the first one, its curve untouched, with the downstream scores of a repeat
    when it has none (a job rerun only to score its model). The LR search stays what first ran: a rerun on
    another machine ends ~1e-3 apart (float kernels differ), which must not move an LR choice."""
    by: dict[tuple, dict] = {}
    for r in results:
        key = job_key(r["job"])
        if key not in by:
            by[key] = r
        elif r.get("downstream") and not by[key].get("downstream"):
            by[key] = {**by[key], "downstream": r["downstream"], "downstream_from_rerun": True}
    return list(by.values())


def _ms(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def _hp(job: dict[str, Any]) -> tuple[float, int | None]:
    """A run's tuned hyper-parameters: (peak LR, warm-up steps)."""
    return job["lr"], job.get("warmup_steps")


def _inside(values: set, chosen: Any) -> bool | None:
    """Whether ``chosen`` lies strictly inside the searched ``values`` (None: only one value was tried)."""
    grid = sorted(values, key=lambda v: (v is None, v))
    return None if len(grid) < 2 else chosen not in (grid[0], grid[-1])


def summarize(results: list[dict]) -> list[dict[str, Any]]:
    """One row per label: chosen (LR, warm-up) (lowest mean final val over the seeds of the search), grid
    position of each, loss at equal FLOPs and FLOPs-to-target over every seed at the chosen pair. Runs of one label
    with several warm-ups form one search: each operator gets the best of the same LR x warm-up grid."""
    by: dict[str, dict[tuple, list[dict]]] = {}
    main = _main_budget(results)
    for r in dedupe(results):
        if r["job"].get("full_steps") not in (main, None):
            continue  # a run of the decayed budget curve (`at_budgets`), not of this budget's comparison
        by.setdefault(r["job"]["label"], {}).setdefault(_hp(r["job"]), []).append(r)
    if FULL not in by:
        raise ValueError("a study needs its full baseline")

    def searched(per_hp: dict[tuple, list[dict]], hp: tuple) -> float:
        """Mean final loss at ``hp`` over the seeds every point of the label's search ran (the search's seeds):
        seeds run only at the chosen point afterwards must not tilt the choice."""
        common = set.intersection(*({r["job"]["seed"] for r in rs} for rs in per_hp.values()))
        return _ms([r["final_val"] for r in per_hp[hp] if not common or r["job"]["seed"] in common])[0]

    def choose(per_hp: dict[tuple, list[dict]]) -> tuple:
        return min(per_hp, key=lambda hp: searched(per_hp, hp))

    full_hp = choose(by[FULL])
    target = _ms([r["final_val"] for r in by[FULL][full_hp]])[0]
    full_flops = statistics.fmean(r["flops"][-1] for r in by[FULL][full_hp])
    rows = []
    for label, per_hp in by.items():
        hp = choose(per_hp)
        (lr, warmup), runs = hp, per_hp[hp]
        warmups = {w for _, w in per_hp}
        reach = [flops_to_reach(r, target) for r in runs]
        name = (lambda x, w: f"{x:g}") if len(warmups) < 2 else (lambda x, w: f"{x:g}@w{w}")
        rows.append(
            {
                "schedule": label,
                "lr": lr,
                "warmup": warmup,
                "lr_inside_grid": bool(_inside({x for x, w in per_hp if w == warmup}, lr)),
                "warmup_inside_grid": _inside({w for x, w in per_hp if x == lr}, warmup),
                "warmup_searched": len(warmups) > 1,
                "steps": runs[0]["total_steps"],
                "final_val": _ms([r["final_val"] for r in runs]),
                "vs_full": _ms([r["final_val"] for r in runs])[0] - target,
                "flops_to_target_speedup": _ms([full_flops / f if f == f else math.nan for f in reach]),
                "reached": f"{sum(f == f for f in reach)}/{len(reach)}",
                "runs": len(runs),
                "flops": statistics.fmean(r["flops"][-1] for r in runs),
                "val_by_lr": {name(x, w): round(searched(per_hp, (x, w)), 4) for x, w in sorted(per_hp, key=_hp_order)},
                "downstream": _downstream(runs),
                "loss_jump": _ms([max(map(abs, r["growth_jumps"])) for r in runs if r.get("growth_jumps")])[0],
            }
        )
    rows.sort(key=lambda r: r["final_val"][0])
    return rows


def _hp_order(hp: tuple) -> tuple:
    return (hp[1] is not None, hp[1] or 0, hp[0])


def _main_budget(results: list[dict]) -> int | None:
    """The study's budget: the full baseline's ``full_steps`` (growth runs at other budgets trace the curve)."""
    budgets = [b for r in results if r["job"]["label"] == FULL and (b := r["job"].get("full_steps")) is not None]
    return max(budgets, default=None)


def budget_curve(results: list[dict]) -> list[dict[str, Any]]:
    """Per label that ran at several budgets (at its LR chosen by :func:`summarize`; full training too, when it was
    re-run shorter): mean final val per budget fraction, and FLOPs-to-target read off that decayed frontier (per
    seed, then mean/std), the target always full's final val at the study's budget."""
    rows = {r["schedule"]: r for r in summarize(results)}
    runs, main = dedupe(results), _main_budget(results)
    target, full_flops = rows[FULL]["final_val"][0], rows[FULL]["flops"]
    out = []
    for label, row in rows.items():
        mine = [r for r in runs if r["job"]["label"] == label and _hp(r["job"]) == (row["lr"], row["warmup"])]
        budgets = sorted({b for r in mine if (b := r["job"].get("full_steps")) is not None})
        if main is None or len(budgets) < 2:
            continue
        seeds: dict[int, list[tuple[float, float]]] = {}
        for r in mine:
            seeds.setdefault(r["job"]["seed"], []).append((r["flops"][-1], r["final_val"]))
        reach = [decayed_reach(pts, target) for pts in seeds.values() if len(pts) > 1]
        at = {b: [r["final_val"] for r in mine if r["job"].get("full_steps") == b] for b in budgets}
        out.append(
            {
                "schedule": label,
                "lr": row["lr"],
                "target": target,
                "val_by_budget": {round(b / main, 3): (*_ms(v), len(v)) for b, v in at.items()},
                "flops_to_target_speedup": _ms([full_flops / f for f, _ in reach]),
                "seeds": len(reach),
                "bound": any(not exact and f == f for f, exact in reach),
            }
        )
    return out


def _budget_report(results: list[dict]) -> str:
    rows = budget_curve(results)
    if not rows:
        return ""
    fracs = sorted({f for r in rows for f in r["val_by_budget"]})
    vals = [f"val at {f:g}x full's FLOPs" for f in fracs]
    head = ["schedule", "LR", *vals, "FLOPs-to-target (decayed runs)", "seeds"]
    lines = [
        f"\nDecayed budget curve (every run solved to its budget and decayed at its own end; target = tuned "
        f"full's final val {rows[0]['target']:.4f}):",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        cells = [r["schedule"], f"{r['lr']:g}"]
        for f in fracs:
            m, s, n = r["val_by_budget"].get(f, (math.nan, math.nan, 0))
            cells.append("–" if n == 0 else f"{m:.4f} ({s:.4f}) [{n}]")
        (sm, ss), bound = r["flops_to_target_speedup"], " (a lower bound)" if r["bound"] else ""
        lines.append("| " + " | ".join([*cells, f"{sm:.2f}x ({ss:.2f}){bound}", str(r["seeds"])]) + " |")
    return "\n".join(lines)


def _downstream(runs: list[dict]) -> dict[str, tuple[float, float, int]]:
    """{metric: (mean, std, number of runs scored)} over the runs that carry downstream scores."""
    scored = [r["downstream"] for r in runs if r.get("downstream")]
    return {k: (*_ms([d[k] for d in scored]), len(scored)) for k in DOWNSTREAM if scored}


def report(results: list[dict]) -> str:
    """Markdown table of :func:`summarize` (mean (std) over seeds)."""
    rows = summarize(results)
    probes = any(r["downstream"] for r in rows)  # downstream columns only when some run was scored
    extra = [f"{name} (probe)" for name in DOWNSTREAM.values()] if probes else []
    warm = any(r["warmup_searched"] for r in rows)  # a warm-up column only when some label searched warm-ups
    head = [
        "schedule",
        "LR",
        "inside grid",
        *(["warm-up", "inside grid"] if warm else []),
        "steps",
        "final val at equal FLOPs",
        "Δ vs full",
        "FLOPs-to-target",
        "reached",
        "max loss jump at a growth",
        *extra,
        "val by LR (search seeds)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        (m, s), (sm, ss) = r["final_val"], r["flops_to_target_speedup"]
        inside = {True: "yes", False: "NO", None: "one value"}[r["warmup_inside_grid"]]
        cells = [
            r["schedule"],
            f"{r['lr']:g}",
            "yes" if r["lr_inside_grid"] else "NO",
            *([str(r["warmup"]), inside] if warm else []),
            str(r["steps"]),
            f"{m:.4f} ({s:.4f})",
            f"{r['vs_full']:+.4f}",
            f"{sm:.2f}x ({ss:.2f})",
            r["reached"],
            "–" if math.isnan(r["loss_jump"]) else f"{r['loss_jump']:.2g}",
        ]
        for k in DOWNSTREAM if probes else ():
            dm, ds, n = r["downstream"].get(k, (math.nan, math.nan, 0))
            cells.append("–" if n == 0 else f"{dm:.3f} ({ds:.3f})" + ("" if n == r["runs"] else f" [{n}/{r['runs']}]"))
        lines.append("| " + " | ".join([*cells, str(r["val_by_lr"])]) + " |")
    return "\n".join(lines) + _budget_report(results)
