"""The plain reference trainer (no Ray/DeepSpeed/MLflow) and its study table: equal-FLOPs runs, growth, LR rules."""

from __future__ import annotations

import math
import platform
import sys
from dataclasses import replace

import pytest
import torch

from benchmarks.plain import PlainJob, flops_to_reach, run_plain, valid_batches
from benchmarks.plain_study import FULL, STUDIES, at_budgets, budget_curve, pending, report, select, summarize
from msg_ray import growth as G
from msg_ray.data import DataConfig, prepare
from msg_ray.model import build_model
from msg_ray.operators import get_operator
from msg_ray.schedule import Schedule, Stage, full
from msg_ray.structure import Structure
from msg_ray.train.evaluation import EVAL_SEED, evaluate
from msg_ray.train.growth_event import grow_model
from msg_ray.train.optim import adamw, clipped_step, moments

GROW = Schedule(
    arch="gpt",
    total_steps=30,
    phi=3,
    head_dim=16,
    name="tiny",
    stages=(Stage(structure=[32, 64, 1, 1], start=0), Stage(structure=[48, 96, 2, 2], start=0.4)),
)


@pytest.fixture(scope="module")
def data():
    d = prepare(DataConfig(source="wikitext2", tokenizer="bpe:1024", seq_len=32, max_train_tokens=100_000))
    return d, valid_batches(d, 2, batch_size=8)


@pytest.mark.parametrize("lr_scale", ["none", "width"])
def test_plain_run_spends_full_flops_and_grows(data, lr_scale):
    d, vb = data
    base = full("gpt", GROW.target, 30, head_dim=16)
    f = run_plain(PlainJob(schedule=base, lr=3e-3, full_steps=30, batch_size=4, warmup_steps=3, eval_points=3), d, vb)
    short = run_plain(
        PlainJob(schedule=base, lr=3e-3, full_steps=12, batch_size=4, warmup_steps=3, eval_points=2), d, vb
    )
    assert short["total_steps"] == 12 and short["step"][-1] == 12  # the job's budget, not the schedule's length
    g = run_plain(
        PlainJob(
            schedule=GROW,
            lr=3e-3,
            full_steps=30,
            batch_size=4,
            warmup_steps=3,
            eval_points=3,
            lr_reset_growths=1,
            lr_scale=lr_scale,
        ),
        d,
        vb,
    )
    assert f["total_steps"] == 30 and g["total_steps"] > 30
    assert abs(g["flops"][-1] - f["flops"][-1]) <= f["flops"][-1] / 30  # equal FLOPs within one full step
    assert g["step"][-1] == g["total_steps"] and all(math.isfinite(v) for v in g["val_loss"])
    assert g["val_loss"][-1] < g["val_loss"][0] < math.log(1024) + 1  # it learns
    assert g["job"]["schedule"]["total_steps"] == g["total_steps"]  # the solved schedule is what is recorded
    assert len(g["growth_jumps"]) == 1 and abs(g["growth_jumps"][0]) < 1e-5 and f["growth_jumps"] == []  # MSG
    static = full("gpt", GROW.stages[0].structure, 30, head_dim=16)  # budget: 30 steps of GROW's target
    job = PlainJob(schedule=static, lr=3e-3, full_steps=30, batch_size=4, warmup_steps=3, eval_points=2)
    small = run_plain(replace(job, budget_of=(48, 96, 2, 2)), d, vb)
    assert small["total_steps"] > g["total_steps"]  # a static smaller model: more steps for the same FLOPs
    assert abs(small["flops"][-1] - f["flops"][-1]) <= f["flops"][-1] / 30


def test_downstream_scores_the_final_grown_model(data):
    d, vb = data
    seen = []

    def score(model):
        seen.append((model.structure, next(model.parameters()).device.type))
        return {"movie_snippets/probe_accuracy": 0.5}

    job = PlainJob(schedule=GROW, lr=3e-3, full_steps=30, batch_size=4, warmup_steps=3, eval_points=1)
    r = run_plain(job, d, vb, downstream=score)
    assert r["downstream"] == {"movie_snippets/probe_accuracy": 0.5}
    assert seen == [(GROW.target, "cpu")]
    assert "downstream" not in run_plain(job, d, vb)  # not asked: not scored


def test_the_growth_event_grows_carries_and_starts_the_ramp():
    """``grow_model``, the growth both loops call: the grown function equals the old one (float64, MSG at c = 0),
    old moments sit in the leading slices and new coordinates start at zero, the ramp starts at the growth step
    (applied for it), φ = 0 folds at once, and a same-size call leaves model and moments as they are."""
    torch.manual_seed(0)
    model = build_model("gpt", Structure(16, 32, 1, 1), vocab_size=64, max_seq_len=8, head_dim=8, seed=0).double()
    opt = adamw(model, 1e-2, 0.1)
    ids = torch.randint(0, 64, (4, 8), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "labels": ids}
    for _ in range(2):
        clipped_step(model, opt, model.loss(model(ids), ids), grad_clip=1.0)
    old = moments(model, opt)
    before = evaluate(model, [batch], "cpu")
    target = Structure(24, 48, 2, 2)
    g = grow_model(model, old, target, step=7, phi=4, seed=3)
    assert g.model.structure == target and g.preserving and g.ramp == G.MaskRamp(start_step=7, phi=4)
    assert G.mask_value(g.model) == 0.0 and abs(evaluate(g.model, [batch], "cpu") - before) < 1e-12
    assert set(g.moments) == {n for n, _ in g.model.named_parameters()}
    for name, m in old.items():
        lead = tuple(slice(0, n) for n in m["exp_avg"].shape)
        carried = g.moments[name]["exp_avg"].clone()
        assert torch.equal(carried[lead], m["exp_avg"]) and m["exp_avg"].any()
        carried[lead] = 0
        assert not carried.any()  # new coordinates start at zero
    assert not any(g.moments[n]["exp_avg"].any() for n in g.moments if n.startswith("blocks.1."))  # a new layer
    folded = grow_model(model, old, target, step=7, phi=0, seed=3)
    assert folded.ramp is None and not G.is_ramping(folded.model)  # φ = 0: c = 1 at once, masks folded
    same = grow_model(g.model, g.moments, target, step=8, phi=4)
    assert same.model is g.model and all(torch.equal(same.moments[n]["exp_avg"], g.moments[n]["exp_avg"]) for n in old)
    assert EVAL_SEED == 1234  # the seed every recorded validation loss was drawn with


def _result(label: str, lr: float, seed: int, vals: list[float]) -> dict:
    return {
        "job": {"label": label, "lr": lr, "seed": seed},
        "total_steps": 10,
        "flops": [1.0, 2.0, 3.0, 4.0],
        "val_loss": vals,
        "final_val": vals[-1],
    }


def test_study_table_picks_lr_flags_edges_and_reads_flops_to_target():
    res = [_result(FULL, lr, 0, [6, 5, 4.5, v]) for lr, v in ((1e-3, 4.2), (2e-3, 4.0), (4e-3, 4.3))]
    res += [_result("fast", lr, 0, [5.5, 4.5, 4.0, v]) for lr, v in ((1e-3, 3.95), (2e-3, 3.9), (4e-3, 3.8))]
    rows = {r["schedule"]: r for r in summarize(res)}
    assert rows[FULL]["lr"] == 2e-3 and rows[FULL]["lr_inside_grid"]
    assert rows["fast"]["lr"] == 4e-3 and not rows["fast"]["lr_inside_grid"]  # optimum at the edge: flagged
    assert rows["fast"]["vs_full"] == pytest.approx(-0.2)
    # target 4.0 reached at flops 3.0 (third evaluation) -> 4.0 / 3.0
    assert rows["fast"]["flops_to_target_speedup"][0] == pytest.approx(4.0 / 3.0)
    assert flops_to_reach(res[3], 4.75) == pytest.approx(1.75)  # 5.5 at 1.0 -> 4.5 at 2.0
    assert "| fast | 0.004 | NO |" in report(res)
    with pytest.raises(ValueError, match="full baseline"):
        summarize(res[3:])


def test_lr_is_chosen_on_the_search_seeds_and_reported_over_all_seeds():
    """Seed 0 searches the grid; seeds 1-2 run at the chosen LR only. An unlucky extra seed at the chosen LR must
    not move the choice, and the reported loss averages every seed at the chosen LR."""
    res = [_result(FULL, lr, 0, [6, 5, 4.5, v]) for lr, v in ((1e-3, 4.2), (2e-3, 4.0), (4e-3, 4.3))]
    res += [_result(FULL, 2e-3, seed, [6, 5, 4.5, 4.4]) for seed in (1, 2)]  # worse than 4.2 at 1e-3 on average
    row = next(r for r in summarize(res) if r["schedule"] == FULL)
    assert row["lr"] == 2e-3 and row["lr_inside_grid"]
    assert row["final_val"][0] == pytest.approx((4.0 + 4.4 + 4.4) / 3)
    assert row["val_by_lr"] == {"0.001": 4.2, "0.002": 4.0, "0.004": 4.3}


def test_downstream_columns_and_a_rerun_lending_its_scores_to_the_first_run():
    res = [_result(FULL, lr, 0, [6, 5, 4.5, v]) for lr, v in ((1e-3, 4.2), (2e-3, 4.0), (4e-3, 4.3))]
    res += [_result(FULL, 2e-3, 1, [6, 5, 4.5, 4.1])]
    res += [_result("fast", lr, 0, [5.5, 4.5, 4.0, v]) for lr, v in ((1e-3, 3.95), (2e-3, 3.9), (4e-3, 3.95))]
    assert "probe" not in report(res)  # no run scored: no downstream columns
    acc = {"movie_snippets/probe_accuracy": 0.6, "bbc_news/probe_accuracy": 0.8}
    rerun = {**_result(FULL, 2e-3, 0, [6, 5, 4.5, 4.3]), "downstream": acc}  # another machine: another loss
    scored = [*res, {**_result("fast", 2e-3, 0, [5.5, 4.5, 4.0, 3.9]), "downstream": acc}, rerun]
    rows = {r["schedule"]: r for r in summarize(scored)}
    assert rows[FULL]["lr"] == 2e-3  # the rerun's worse loss does not move the LR search
    assert rows[FULL]["final_val"][0] == pytest.approx(4.05)  # the first run's loss, not a third run
    assert rows[FULL]["downstream"]["bbc_news/probe_accuracy"] == (0.8, 0.0, 1)
    table = report(scored)
    assert "movies acc (probe) | BBC acc (probe)" in table
    assert "| 0.600 (0.000) [1/2] | 0.800 (0.000) [1/2] |" in table  # full: one of two seeds scored
    assert "| fast | 0.002 | yes | 10 | 3.9000 (0.0000) | -0.1500 |" in table


def _at(label: str, budget: int, final_flops: float, final_val: float, seed: int = 0, lr: float = 2e-3) -> dict:
    r = _result(label, lr, seed, [6.0, 5.0, final_val])
    return {**r, "job": {**r["job"], "full_steps": budget}, "flops": [1.0, final_flops / 2, final_flops]}


def test_decayed_budget_curve_reads_flops_to_target_off_runs_decayed_at_smaller_budgets():
    res = [_at(FULL, 10, 4.0, v, lr=lr) for lr, v in ((1e-3, 4.2), (2e-3, 4.0), (4e-3, 4.3))]
    res += [_at("fast", 10, 4.0, v, lr=lr) for lr, v in ((1e-3, 3.9), (2e-3, 3.8), (4e-3, 3.85))]
    res += [_at("fast", 5, 2.0, 4.1), _at("fast", 6, 2.4, 3.95)]  # budget runs at fast's chosen LR
    rows = {r["schedule"]: r for r in summarize(res)}
    assert rows["fast"]["final_val"][0] == pytest.approx(3.8) and rows["fast"]["runs"] == 1  # budget runs apart
    (curve,) = budget_curve(res)
    # target 4.0 between 2.0 (4.1) and 2.4 (3.95), log-linear: 2/3 of the way from log 2.0 to log 2.4
    assert curve["flops_to_target_speedup"][0] == pytest.approx(4.0 / (2.0 * 1.2 ** (2 / 3)))
    assert curve["val_by_budget"] == {0.5: (4.1, 0.0, 1), 0.6: (3.95, 0.0, 1), 1.0: (3.8, 0.0, 1)}
    assert not curve["bound"] and "Decayed budget curve" in report(res)
    # the smallest budget already reaches the target: the speed-up is only a lower bound, and says so
    (low,) = budget_curve([*res, _at("fast", 4, 1.6, 3.99)])
    assert low["bound"] and low["flops_to_target_speedup"][0] == pytest.approx(2.5)
    assert "(a lower bound)" in report([*res, _at("fast", 4, 1.6, 3.99)])
    assert "Decayed budget curve" not in report(res[:6])  # no budget runs: no second table


def test_budget_jobs_are_jobs_of_their_own_and_full_at_its_own_budget_stays_the_target():
    study = select(STUDIES["gpt-operators"](0.05), only="full,msg", lrs="8e-3", seeds="0")
    budgets = at_budgets(study, "0.5,1")
    n = study.jobs[0].full_steps
    assert sorted((j.label, j.full_steps) for j in budgets.jobs) == [
        ("full", round(n / 2)),
        ("full", n),
        ("msg", round(n / 2)),
        ("msg", n),
    ]
    done = [
        {
            "job": {
                "label": "msg",
                "lr": 0.008,
                "seed": 0,
                "lr_scale": "none",
                "lr_reset_growths": 0,
                "full_steps": n,
                "warmup_steps": 150,
            }
        }
    ]
    assert len(pending(budgets, done).jobs) == 3  # the same job at another budget is still to run
    for bad in ("0", "1.5", "half", ""):
        with pytest.raises(ValueError, match="--budgets"):
            at_budgets(study, bad)
    # full at half its budget: a row of the curve, never the target (that stays full at the study's budget)
    res = [_at(FULL, 10, 4.0, 4.0), _at(FULL, 5, 2.0, 4.3), _at("fast", 10, 4.0, 3.8), _at("fast", 5, 2.0, 4.1)]
    rows = {r["schedule"]: r for r in budget_curve(res)}
    assert rows[FULL]["target"] == 4.0 and rows[FULL]["flops_to_target_speedup"][0] == pytest.approx(1.0)
    assert rows["fast"]["flops_to_target_speedup"][0] == pytest.approx(4.0 / (2.0 * 2 ** (1 / 3)))


def test_a_cut_short_study_resumes_with_only_the_jobs_its_results_lack():
    study = select(STUDIES["gpt-operators"](0.05), only="full,msg", lrs="4e-3,8e-3", seeds="0,1")
    assert len(study.jobs) == 8
    n = study.jobs[0].full_steps
    common = {"lr_scale": "none", "lr_reset_growths": 0, "full_steps": n, "warmup_steps": 150}
    done = [
        {"job": {"label": "msg", "lr": 0.008, "seed": 1, **common}},
        {"job": {"label": "full", "lr": 0.004, "seed": 0, **common}},
    ]
    left = {(j.label, j.lr, j.seed) for j in pending(study, done).jobs}
    assert len(left) == 6 and ("msg", 8e-3, 1) not in left and ("full", 4e-3, 0) not in left
    assert ("msg", 8e-3, 0) in left and ("full", 4e-3, 1) in left  # same label and LR, other seed: still to run
    # another LR policy is another job
    assert len(pending(study, [{"job": {**done[0]["job"], "lr_scale": "width"}}]).jobs) == 8
    assert len(pending(study, [{"job": {**done[0]["job"], "warmup_steps": 300}}]).jobs) == 8  # and another warm-up


def test_studies_give_every_schedule_the_same_lr_grid():
    for name, make in STUDIES.items():
        study = make(0.05)
        grids = {}
        for j in study.jobs:
            grids.setdefault(j.label, set()).add(j.lr)
        assert FULL in grids and len({frozenset(g) for g in grids.values()}) == 1, name
        assert all(len(g) >= 3 for g in grids.values())  # room for an interior optimum


DOUBLING = Schedule(
    arch="gpt",
    total_steps=30,
    phi=3,
    head_dim=16,
    name="double",
    stages=(Stage(structure=[32, 64, 1, 1], start=0), Stage(structure=[64, 128, 2, 2], start=0.4)),
)


@pytest.mark.parametrize("op", ["hypercloning", "lemon", "gstack", "bert2bert-aki"])
def test_every_operator_trains_through_a_growth_with_its_layout(data, op):
    """The zoo in the plain loop: the growth carries moments by the operator's layout and training goes on."""
    d, vb = data
    g = run_plain(
        PlainJob(
            schedule=DOUBLING.replace(operator=op), lr=3e-3, full_steps=30, batch_size=4, warmup_steps=3, eval_points=3
        ),
        d,
        vb,
    )
    assert g["job"]["schedule"]["operator"] == op and all(math.isfinite(v) for v in g["val_loss"])
    assert g["val_loss"][-1] < g["val_loss"][0]
    jump = max(map(abs, g["growth_jumps"]))  # float32 forward: preserving operators within rounding
    assert jump < 1e-4 if get_operator(op).preserving else jump > 1e-4, (op, g["growth_jumps"])


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_keep_freed_memory_applies_on_glibc():
    from msg_ray.train.hostmem import keep_freed_memory

    assert keep_freed_memory() and keep_freed_memory()  # idempotent: workers call it once each


def _warm(label: str, lr: float, warmup: int, final: float, seed: int = 0) -> dict:
    r = _result(label, lr, seed, [6, 5, 4.5, final])
    return {**r, "job": {**r["job"], "warmup_steps": warmup}}


def test_warmup_is_searched_with_the_lr_and_both_edges_are_flagged():
    """Runs of one label at several warm-ups form one LR x warm-up search (a warm-up is part of the key, so two
    warm-ups at one LR are two runs, not a repeat); the table flags a choice at the edge of either grid."""
    res = [
        _warm(FULL, lr, w, v)
        for lr, w, v in (
            (1e-3, 50, 4.3),
            (2e-3, 50, 4.2),
            (4e-3, 50, 4.4),
            (1e-3, 150, 4.1),
            (2e-3, 150, 4.0),
            (4e-3, 150, 4.05),
        )
    ]
    res += [_warm("fast", lr, 50, v) for lr, v in ((1e-3, 3.95), (2e-3, 3.9), (4e-3, 3.95))]
    rows = {r["schedule"]: r for r in summarize(res)}
    full_row = rows[FULL]
    assert (full_row["lr"], full_row["warmup"]) == (2e-3, 150) and full_row["final_val"][0] == 4.0
    assert full_row["lr_inside_grid"] and full_row["warmup_inside_grid"] is False  # longest warm-up tried: edge
    assert rows["fast"]["warmup_inside_grid"] is None and rows["fast"]["vs_full"] == pytest.approx(-0.1)
    assert full_row["val_by_lr"]["0.002@w150"] == 4.0 and len(full_row["val_by_lr"]) == 6
    table = report(res)
    assert "| full | 0.002 | yes | 150 | NO |" in table and "| fast | 0.002 | yes | 50 | one value |" in table
    res.append(_warm(FULL, 2e-3, 300, 4.02))
    assert summarize(res)[-1]["warmup_inside_grid"] is True  # bracketed once a longer warm-up ran and lost
