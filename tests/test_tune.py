"""Schedule search: space validation, a real Tune+ASHA sweep and its resume.

Real Ray (the session's local cluster), real DeepSpeed (world size 1 per trial), real MLflow (sqlite).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from netutil import sqlite_store

from msg_ray.presets import get_schedule
from msg_ray.schedule import Schedule
from msg_ray.tune.space import SearchSpace, load_space

REPO = Path(__file__).resolve().parents[1]
RUN = {
    "data": {"source": "wikitext2", "tokenizer": "bpe:1024", "seq_len": 32, "max_train_tokens": 200_000},
    "engine": {"zero_stage": 0, "micro_batch_size": 4, "lr": 3e-3},
    "warmup_steps": 5,
    "gamma_window": 10,
    "report_every": 5,
    "log_every": 20,
    "eval_every": 1000,
    "eval_batches": 2,
    "export_hf": False,
}
TINY = {
    "kind": "structures",
    "arch": "gpt",
    "head_dim": 16,
    "target": [32, 64, 2, 2],
    "vary": {"hidden_dim": [16], "ffn_dim": [32], "layer_num": [1]},
    "total_steps": 100_000,
    "budget": {"wall_s": 6},
    "asha": {"time_attr": "wall_s", "grace": 1.5, "reduction_factor": 2},
    "run": RUN,
    "best": {"total_steps": 40, "phi": 4},
}


def write_space(path: Path, space: dict) -> Path:
    path.write_text(f'"""A test space."""\nSPACE = {space!r}\n')
    return path


# -- space validation (no Ray) -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"vary": {"depth": [1]}}, "unknown dimension 'depth'"),
        ({"vary": {"hidden_dim": [64]}}, "hidden_dim=64 is not smaller than the target's 32"),
        ({"vary": {}}, "grid is empty"),
        ({"budget": {"steps": 10}}, "budget"),
        ({"splits": ["equal"]}, "splits: is a field of kind 'durations'"),
        ({"colour": 1}, "unknown field"),
    ],
)
def test_bad_structures_spaces_raise_clear_errors(tmp_path, change, match):
    with pytest.raises(ValueError, match=match):
        load_space(write_space(tmp_path / "bad.py", {**TINY, **change}))


def test_bad_schedule_spaces_raise_clear_errors(tmp_path):
    shrink = {"kind": "durations", "structures": [[32, 64, 2, 2], [32, 32, 2, 2]], "splits": ["equal"]}
    with pytest.raises(ValueError, match="shrink ffn_dim"):
        SearchSpace.from_dict(shrink, name="s")
    with pytest.raises(ValueError, match="grid is empty"):
        SearchSpace.from_dict({"kind": "phi", "schedule": "mini-sch1-g", "total_steps": 1200, "values": []}, name="p")
    with pytest.raises(ValueError, match="unknown space 'nope'"):
        load_space("nope")
    # The pipeline reports it in one line, rc 2, without starting Ray (fast: no cluster start-up).
    bad = write_space(tmp_path / "bad.py", {**TINY, "vary": {"depth": [1]}})
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, str(REPO / "pipelines/sweep.py"), "--space", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2 and "unknown dimension 'depth'" in p.stderr, p.stderr[-2000:]
    assert "Started a local Ray" not in p.stderr + p.stdout and time.perf_counter() - t0 < 60


def test_builtin_spaces_plan_valid_trials():
    counts = {"structures": 7, "durations": 12, "schedules": 15, "phi": 15, "operators": 12, "adaptive": 9}
    for name, n in counts.items():
        space = load_space(name)
        assert len(space.trials()) == n and space.doc
        cfg = space.run_config(space.trials()[0], "x")
        assert cfg.schedule.arch == "gpt"
        # the same space for llama (msg-ray tune --arch llama): every trial, full references included
        llama = load_space(name, ["arch=llama"])
        assert {llama.run_config(t, "x").schedule.arch for t in llama.trials()} == {"llama"}
        assert llama.run_config(llama.trials()[0], "x").data.objective == "clm"
    adaptive = load_space("adaptive", ["adaptive.target_gamma=0.5"])
    fixed, online, full = (adaptive.run_config(t, "x") for t in adaptive.trials()[::3])  # one LR each
    assert fixed.adaptive is None and full.adaptive is None and full.schedule.is_full
    assert online.adaptive["target_gamma"] == 0.5 and online.schedule.stages == fixed.schedule.stages
    with pytest.raises(ValueError, match="min_stage_steps must be >= phi"):
        bad = load_space("adaptive", ["adaptive.min_stage_steps=5"])
        bad.run_config(bad.trials()[3], "x")


# -- a real sweep -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, ray_local):
    from msg_ray.tune import SweepConfig, run_sweep

    tmp = tmp_path_factory.mktemp("tune")
    # Two structures x two LRs: the 1e-5 trials barely move from the initial loss, so whichever of them reaches
    # ASHA's first rung after better trials were recorded there is stopped -- deterministic, not a coin toss on
    # the noisy early losses of similar trials (which let all four run to the budget now and then).
    space = {**TINY, "vary": {"hidden_dim": [16]}, "lrs": [3e-3, 1e-5], "lr_extend": 0, "probes": []}
    cfg = SweepConfig(
        space=load_space(write_space(tmp / "tiny.py", space)),
        max_concurrent=2,
        storage_path=str(tmp / "ray"),
        tracking_uri=sqlite_store(tmp / "mlruns.db"),
        experiment="test-tune",
    )
    t0 = time.perf_counter()
    result = run_sweep(cfg)
    print(f"4-trial sweep: {time.perf_counter() - t0:.1f}s")
    return tmp, cfg, result


@pytest.mark.slow
def test_sweep_runs_all_trials_and_asha_stops_some(sweep):
    _, _, r = sweep
    assert not r.interrupted
    status = {t.spec.label: t.status for t in r.trials}
    assert set(status) == {"target@lr0.003", "target@lr1e-05", "hidden16@lr0.003", "hidden16@lr1e-05"}
    assert "stopped_early" in (status["target@lr1e-05"], status["hidden16@lr1e-05"]), status
    assert set(status.values()) <= {"stopped_early", "budget"}, status
    for t in r.trials:  # trials that ran to the budget reached it on the wall-time axis
        if t.status == "budget":
            assert t.series["wall_s"][-1] >= 6.0
        else:
            assert t.series["wall_s"][-1] < 6.0
    ranked = [row for row in r.rows if not math.isnan(row["gamma_rank"])]
    assert ranked and [row["rank"] for row in ranked] == list(range(1, len(ranked) + 1))


@pytest.mark.slow
def test_sweep_results_files_and_best_schedule(sweep):
    _, _, r = sweep
    csv_lines = (r.results_dir / "results.csv").read_text().strip().splitlines()
    assert csv_lines[0].startswith("rank,label,status") and len(csv_lines) == 5
    assert "speedup_vs_full" in csv_lines[0]  # computed against the chosen reference, no longer NaN everywhere
    assert (r.results_dir / "gamma_vs_time.png").stat().st_size > 5000
    assert (r.results_dir / "loss_vs_flops.png").stat().st_size > 5000
    best = get_schedule(str(r.best_schedule))  # what `msg-ray train --schedule <file>` reads (training: below)
    assert best.target.as_tuple() == (32, 64, 2, 2) and best.total_steps == 40
    # lr_extend 0: the 1e-5 points never win, so every label's choice sits at the top edge and says so
    rows = {row["label"]: row for row in r.rows}
    # a label whose trials ASHA stopped all has no choice; every label with one is at an edge (2 points)
    assert {rows[x]["edge"] for x in rows if rows[x]["chosen"] == "yes"} in ({"high"}, {"low"}, {"high", "low"})
    assert all(not rows[x]["chosen"] for x in rows if rows[x]["status"] == "stopped_early")
    assert all(math.isnan(rows[x]["flops_to_target"]) for x in rows)


# -- an equal-compute sweep: LR bracketing, probes, the claim, the best schedule as ranked ------------------------

FLOPS = {
    "kind": "durations",
    "arch": "gpt",
    "head_dim": 16,
    "structures": [[16, 32, 1, 1], [32, 64, 2, 2]],
    "splits": ["equal"],
    "total_steps": 24,
    "phi": 2,
    "compute": "flops",
    "lrs": [2e-4, 6e-4],  # far below this tiny model's best: the top point wins and the sweep adds one above
    "lr_step": 3.0,
    "lr_extend": 1,
    "probes": ["bbc_news"],
    "probe_examples": 24,
    "run": {**RUN, "eval_every": 6, "warmup_steps": 2},
}


@pytest.fixture(scope="module")
def flops_sweep(tmp_path_factory, ray_local):
    from msg_ray.tune import SweepConfig, run_sweep

    tmp = tmp_path_factory.mktemp("tune-flops")
    cfg = SweepConfig(
        space=load_space(write_space(tmp / "tinyflops.py", FLOPS)),
        max_concurrent=4,
        storage_path=str(tmp / "ray"),
        tracking_uri=sqlite_store(tmp / "mlruns.db"),
        experiment="test-tune-flops",
    )
    t0, out = time.perf_counter(), io.StringIO()
    with contextlib.redirect_stdout(out):  # the plan and progress lines the driver prints
        result = run_sweep(cfg)
    print(out.getvalue())
    print(f"equal-compute sweep with one LR round: {time.perf_counter() - t0:.1f}s")
    return tmp, cfg, result, out.getvalue()


@pytest.mark.slow
def test_flops_sweep_brackets_lrs_and_states_its_claim(flops_sweep):
    _, _, r, _ = flops_sweep
    assert not r.interrupted
    labels = [t.spec.label for t in r.trials]
    # round 0: 2 labels x 2 LRs; round 1: one point above the top edge per label (6e-4 x 3), and no further
    assert labels[:4] == ["equal@lr0.0002", "equal@lr0.0006", "full@lr0.0002", "full@lr0.0006"]
    assert sorted(labels[4:]) == ["equal@lr0.0018", "full@lr0.0018"]
    rows = {row["label"]: row for row in r.rows}
    chosen = [row for row in r.rows if row["chosen"] == "yes"]
    assert len(chosen) == 2 and r.rows[:2] == chosen  # one chosen point per label, ranked first
    for row in chosen:  # at the edge after the one allowed extension -> flagged, speed-up withheld
        if row["lr"] == 1.8e-3:
            assert row["edge"] == "high" and math.isnan(row["flops_to_target"])
        assert row["val_mean"] == row["final_val"] and row["n_seeds"] == 1
    md = (r.results_dir / "results.md").read_text()
    claim = md.splitlines()[2]
    assert claim.startswith("winner: ") and "(seed 0)" in claim and "budget axis: equal training FLOPs" in claim
    assert ("bracketed in" in claim) or ("NOT bracketed" in claim and "speed-up withheld" in claim), claim
    header = md.splitlines()[4]
    assert "speedup_vs_full" in header and "bbc_news/probe_accuracy" in header
    for c in header.strip("| ").split(" | "):  # no column is empty in every row
        assert any(row.get(c) not in (None, "") and row.get(c) == row.get(c) for row in rows.values()), c
    # every trial that trained to its end holds its probe scores
    assert all(0.0 <= t.probes["bbc_news/probe_accuracy"] <= 1.0 for t in r.trials), [t.probes for t in r.trials]
    assert (r.results_dir / "loss_vs_flops.png").stat().st_size > 5000


@pytest.mark.slow
def test_flops_sweep_prints_its_plan_then_progress(flops_sweep):
    out = flops_sweep[3]
    plan = out.index("[msg_ray tune] plan: tinyflops (durations): 4 trials, 4 at a time")
    assert "s/step for (32,64,2,2)" in out and " min per trial" in out and "up to 2 more trials" in out
    lines = [x for x in out.splitlines() if " done " in x and "best so far" in x]
    assert len(lines) == 6 and out.index(lines[0]) > plan  # one per finished trial, after the plan
    assert lines[-1].startswith("[msg_ray tune] 6/6 done")


@pytest.mark.slow
def test_flops_sweep_logs_probes_to_each_trial(flops_sweep):
    from msg_ray.tracking import child_runs, load_run_metrics

    _, _, r, _ = flops_sweep
    children = child_runs(r.tracking_uri, r.parent_run_id)
    assert len(children) == 6
    for c in children:
        hist = load_run_metrics(r.tracking_uri, c["run_id"], ["probe/bbc_news/probe_accuracy", "tune/final_val"])
        assert hist["probe/bbc_news/probe_accuracy"] and hist["tune/final_val"], c["tags"]


@pytest.mark.slow
def test_best_run_reproduces_the_ranked_loss(flops_sweep, tmp_path):
    import yaml

    from msg_ray.train.config import RunConfig
    from msg_ray.train.run import run

    tmp, _, r, _ = flops_sweep
    best = Schedule.load(r.best_schedule)
    ranked = r.rows[0]
    assert best.total_steps == ranked["steps"]  # the steps solved for equal FLOPs, not the space's total_steps
    text = r.best_schedule.read_text()
    assert f"lr {ranked['lr']:g}" in text and "msg-ray train --config best_run.yaml" in text
    run_cfg = yaml.safe_load((r.results_dir / "best_run.yaml").read_text())
    assert run_cfg["engine"]["lr"] == ranked["lr"] and run_cfg["schedule"]["total_steps"] == ranked["steps"]
    cfg = RunConfig.from_dict(
        {
            **run_cfg,
            "name": "best",
            "storage_path": str(tmp_path / "ray"),
            "tracking_uri": sqlite_store(tmp / "mlruns.db"),
        }
    )
    out = run(cfg)
    assert out.history["val_loss"][-1] == pytest.approx(ranked["final_val"], abs=1e-5)


@pytest.mark.slow
def test_sweep_mlflow_parent_and_children(sweep):
    from msg_ray.tracking import child_runs, find_runs, load_run_metrics

    _, cfg, r = sweep
    parents = find_runs(r.tracking_uri, "test-tune", "tags.`msg_ray.tune` = 'parent'")
    assert [p["run_id"] for p in parents] == [r.parent_run_id] and parents[0]["status"] == "FINISHED"
    assert parents[0]["params"]["space.kind"] == "structures"
    children = child_runs(r.tracking_uri, r.parent_run_id)
    assert len(children) == 4
    by_label = {c["tags"]["msg_ray.tune.label"]: c for c in children}
    for t in r.trials:
        c = by_label[t.spec.label]
        assert c["status"] == ("KILLED" if t.status == "stopped_early" else "FINISHED")
        assert c["tags"]["msg_ray.tune.status"] == t.status
        hist = load_run_metrics(r.tracking_uri, c["run_id"], ["train/loss", "tune/rank"])
        assert len(hist["train/loss"]) >= 2 and hist["tune/rank"], t.spec.label
    # the parent's artifacts: the table, the best schedule and the γ plot
    from mlflow.tracking import MlflowClient

    arts = {a.path for a in MlflowClient(r.tracking_uri).list_artifacts(r.parent_run_id, "results")}
    assert {"results/results.csv", "results/best_schedule.yaml", "results/gamma_vs_time.png"} <= arts


@pytest.mark.slow
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(tmp_path, ray_local):
    import ray

    from msg_ray.tracking import find_runs
    from msg_ray.tune import SweepConfig, run_sweep

    space = {**TINY, "total_steps": 30, "budget": {}, "asha": None, "vary": {"hidden_dim": [16], "layer_num": [1]}}
    path = write_space(tmp_path / "resume.py", space)
    uri, storage = sqlite_store(tmp_path / "mlruns.db"), str(tmp_path / "ray")
    args = [
        "--space",
        str(path),
        "--max-concurrent",
        "1",
        "--storage-path",
        storage,
        "--tracking-uri",
        uri,
        "--experiment",
        "test-resume",
        "--address",
        ray.get_runtime_context().gcs_address,
    ]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "pipelines/sweep.py"), *args],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # A trial of a one-stage schedule reports its only checkpoint at its last step. (Polling MLflow here
    # instead would race the subprocess creating the sqlite tables.)
    exp_dir, deadline, done = tmp_path / "ray" / "resume", time.time() + 180, []
    while time.time() < deadline and proc.poll() is None and not done:
        time.sleep(0.5)
        done = sorted(exp_dir.glob("inprocess_trial_*/checkpoint_*"))
    assert done, proc.communicate(timeout=60)[0][-3000:]
    time.sleep(3)  # let Tune record the trial as terminated
    proc.send_signal(signal.SIGINT)  # Tune saves the experiment state and stops
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 3 and "interrupted" in output, output[-3000:]
    done_dir = done[0].parent
    snapshot = (done_dir / "result.json").read_text()
    done_index = int(done_dir.name.split("_trial=")[1].split("_")[0])

    cfg = SweepConfig(
        space=load_space(path), max_concurrent=1, storage_path=storage, tracking_uri=uri, experiment="test-resume"
    )
    result = run_sweep(cfg)
    assert not result.interrupted and {t.status for t in result.trials} == {"completed"}
    assert (done_dir / "result.json").read_text() == snapshot  # not re-run
    assert result.trials[done_index].series["step"][-1] == 30
    runs = find_runs(uri, "test-resume", "tags.`msg_ray.tune` = 'child'")
    assert len(runs) == 3 and {r["status"] for r in runs} == {"FINISHED"}  # same child runs, no duplicates


def test_nested_trial_resources_always_fit_two_cpus():
    from msg_ray.tune.trial import TRIAL_CPU, plan_resources

    # 2 CPUs, 2 concurrent trials of 2 workers each: workers shrink so trials + workers never exceed the cluster
    res, per_worker, k = plan_resources("nested", 2.0, 2, 2, 1.0)
    assert k == 2 and res == {"CPU": TRIAL_CPU} and k * (TRIAL_CPU + 2 * per_worker) <= 2.0 and per_worker > 0.4
    assert plan_resources("nested", 2.0, None, 2, 1.0)[2] == 1  # default concurrency: what fits unshrunk
    assert plan_resources("inprocess", 4.0, None, 1, 1.0) == ({"CPU": 1.0}, 1.0, 4)
    with pytest.raises(ValueError, match="do not fit"):
        plan_resources("nested", 2.0, 64, 4, 1.0)
    with pytest.raises(ValueError, match="nested"):
        plan_resources("inprocess", 2.0, 1, 2, 1.0)


def test_gpu_trials_request_a_gpu_each_and_concurrency_follows_gpus():
    from ray import tune

    from msg_ray.tune.sweep import SweepConfig, trial_resources
    from msg_ray.tune.trial import TRIAL_CPU, inprocess_trial

    space = SearchSpace.from_dict({**TINY, "run": {**RUN, "use_gpu": True}}, name="g")
    plan = {"trials": [{"run": space.run_config(space.trials()[0], "g").to_dict()}]}
    res, _, k = trial_resources(SweepConfig(space=space), plan, {"CPU": 16.0, "GPU": 2.0})
    assert res == {"CPU": 1.0, "GPU": 1.0} and k == 2  # 16 CPUs would fit 16 trials; 2 GPUs fit 2
    # the bundle Tune asks Ray for (the same call the sweep makes)
    assert tune.with_resources(inprocess_trial, res)._resources.bundles == [{"CPU": 1.0, "GPU": 1.0}]
    nested = SweepConfig(space=space, workers_per_trial=2, mode="nested")  # the TorchTrainer asks 1 GPU per worker
    assert trial_resources(nested, plan, {"CPU": 16.0, "GPU": 4.0})[::2] == ({"CPU": TRIAL_CPU}, 2)
    with pytest.raises(ValueError, match="run.use_gpu: a trial needs 2 GPU"):
        trial_resources(nested, plan, {"CPU": 16.0, "GPU": 1.0})
    cpu_plan = {"trials": [{"run": {**plan["trials"][0]["run"], "use_gpu": False}}]}
    assert trial_resources(SweepConfig(space=space), cpu_plan, {"CPU": 4.0, "GPU": 2.0}) == ({"CPU": 1.0}, 1.0, 4)


def test_equal_compute_space_adds_reference_lr_grid_and_solves_flops():
    from msg_ray.flops import full_flops, schedule_flops

    space = load_space("durations")
    trials = space.trials()
    labels = {t.meta.get("base_label") for t in trials}
    assert "full" in labels and len(labels) == 4  # 3 splits + the full reference
    assert {t.meta["lr"] for t in trials} == {1.4e-3, 2.8e-3, 5.6e-3}  # one grid for every trial
    ref = next(t for t in trials if t.meta["base_label"] == "full")
    assert ref.schedule.is_full and ref.schedule.target == space.reference_target()
    lr_trial = trials[1]
    cfg = space.run_config(lr_trial, "x", vocab_size=8192)
    assert cfg.engine.lr == lr_trial.meta["lr"] and cfg.engine.micro_batch_size == 16  # merged, not replaced
    budget = full_flops(cfg.schedule, 300, 8192, 64)
    assert cfg.schedule.total_steps > 300
    assert abs(schedule_flops(cfg.schedule, 8192, 64, 1) - budget) <= full_flops(cfg.schedule, 1, 8192, 64)
    with pytest.raises(ValueError, match="asha: must be None with compute 'flops'"):
        load_space("durations", ["asha.grace=5"])
    with pytest.raises(ValueError, match="compute: must be one of"):
        load_space("durations", ["compute=wall"])
    with pytest.raises(ValueError, match="lrs: must be a list"):
        load_space("durations", ["lrs=[0.001,-1]"])


def test_equal_compute_table_ranks_by_final_loss_with_flops_to_target():
    from msg_ray.tune.results import TrialSeries, choices, claim, extensions, table

    space = SearchSpace.from_dict(
        {
            **TINY,
            "compute": "flops",
            "budget": {},
            "asha": None,
            "lrs": [1e-3, 2e-3, 4e-3],
            "vary": {"hidden_dim": [16]},
        },
        name="t",
    )
    specs = space.trials()

    def series(final: float) -> dict:
        return {
            "step": [10, 20, 30],
            "wall_s": [1.0, 2.0, 3.0],
            "flops": [1.0, 2.0, 3.0],
            "loss_avg": [6.0, 5.0, final],
            "val_loss": [6.0, 5.0, final],
            "gamma": [0.1, 0.1, 0.1],
        }

    def run(finals: dict) -> tuple[list, list]:
        trials = [TrialSeries(s, "completed", series(finals[s.label])) for s in specs]
        return trials, table(trials, space, 256, 32)

    finals = {"target@lr0.001": 4.5, "target@lr0.002": 4.0, "target@lr0.004": 4.3}
    finals |= {"hidden16@lr0.001": 4.1, "hidden16@lr0.002": 3.8, "hidden16@lr0.004": 3.9}
    trials, rows = run(finals)
    assert [r["label"] for r in rows[:2]] == ["hidden16@lr0.002", "target@lr0.002"]  # chosen rows, by final loss
    best = rows[0]
    assert best["chosen"] == "yes" and best["edge"] == "" and best["val_vs_full"] == pytest.approx(-0.2)
    # the reference's final 4.0 is reached between (2.0, 5.0) and (3.0, 3.8): at 2 + 1/1.2 FLOPs
    assert best["flops_to_target"] == pytest.approx(3.0 / (2.0 + 1.0 / 1.2))
    assert not extensions(choices(trials, space), space)  # both bracketed: nothing to add
    line = claim(rows, trials, space, "equal FLOPs")
    assert "winner: hidden16" in line and "bracketed in 0.001/0.002/0.004" in line and "FLOPs-to-target 1.06x" in line
    # the same with hidden16's best at the top of the grid: flagged, speed-up withheld, one point added above
    trials, rows = run({**finals, "hidden16@lr0.004": 3.7})
    assert rows[0]["label"] == "hidden16@lr0.004" and rows[0]["edge"] == "high"
    assert math.isnan(rows[0]["flops_to_target"]) and not math.isnan(rows[0]["val_vs_full"])
    assert "speed-up withheld" in claim(rows, trials, space, "equal FLOPs")
    assert extensions(choices(trials, space), space) == [{"base": "hidden16", "lr": 0.005657, "warmup": None}]


def test_seeds_warmups_and_budgets_on_the_grid():
    from msg_ray.tune.results import TrialSeries, choices, table

    base = {**TINY, "compute": "flops", "budget": {}, "asha": None, "vary": {"hidden_dim": [16]}}
    space = SearchSpace.from_dict({**base, "lrs": [1e-3, 2e-3, 4e-3], "warmups": [0, 5]}, name="w")
    trials = space.trials((0, 1))
    assert len(trials) == 2 * 3 * 2 * 2 and trials[1].label == "target@lr0.001-wu5-s0"
    assert space.run_config(trials[1], "w").warmup_steps == 5 and space.run_config(trials[1], "w").seed == 0
    with pytest.raises(ValueError, match="warmups: needs an LR grid"):
        SearchSpace.from_dict({**base, "warmups": [0, 5]}, name="w")

    def series(final: float) -> dict:
        return {"step": [1, 2], "wall_s": [1.0, 2.0], "flops": [1.0, 2.0], "loss_avg": [6.0, final]} | {
            "val_loss": [6.0, final],
            "gamma": [0.1, 0.1],
        }

    finals = {}
    for t in trials:  # hidden16 is best at lr 2e-3 with warm-up 5; seed 1 a little worse than seed 0
        lr, wu = t.meta["lr"], t.meta["warmup"]
        gap = -0.1 if t.meta["base_label"] == "hidden16" else 0.0
        finals[t.label] = 4.0 + gap + abs(lr - 2e-3) * 100 + (0 if wu == 5 else 0.1) + 0.02 * t.seed
    series_ = [TrialSeries(t, "completed", series(finals[t.label])) for t in trials]
    c = choices(series_, space)["hidden16"]
    assert (c.lr, c.warmup, c.seeds, c.edge) == (2e-3, 5, [0, 1], "")
    assert c.mean == pytest.approx(3.91) and c.std == pytest.approx(0.02 / 2**0.5)
    rows = table(series_, space, 256, 32)
    assert [r["label"] for r in rows[:2]] == ["hidden16@lr0.002-wu5-s0", "hidden16@lr0.002-wu5-s1"]
    assert rows[0]["n_seeds"] == 2 and rows[0]["val_std"] == pytest.approx(0.02 / 2**0.5)

    # budget fractions: each trial also solved to half the FLOPs; FLOPs-to-target from the decayed ends
    space = SearchSpace.from_dict({**base, "lrs": [1e-3, 2e-3, 4e-3], "budget_fracs": [0.5, 1.0]}, name="b")
    trials = space.trials()
    assert len(trials) == 12 and trials[0].label == "target@lr0.001-b0.5"
    half, whole = (space.run_config(t, "b", vocab_size=256).schedule.total_steps for t in trials[:2])
    assert half < whole and abs(2 * half - whole) <= 2
    finals = {t.label: (4.0 if t.meta["budget_frac"] == 1 else 4.6) + abs(t.meta["lr"] - 2e-3) * 100 for t in trials}
    finals["hidden16@lr0.002-b0.5"], finals["hidden16@lr0.002-b1"] = 3.9, 3.7
    series_ = [
        TrialSeries(
            t,
            "completed",
            {**series(finals[t.label]), "flops": [0.5, t.meta["budget_frac"] * 2.0]},
        )
        for t in trials
    ]
    best = table(series_, space, 256, 32)[0]
    assert best["label"] == "hidden16@lr0.002-b1" and best["edge"] == ""
    # hidden16's half-budget run (1.0 FLOPs) already reaches the reference's 4.0: speed-up >= 2.0 / 1.0
    assert best["flops_to_target"] == pytest.approx(2.0)


def test_plan_only_prints_the_plan_without_ray(tmp_path, capsys):
    from msg_ray.tune import SweepConfig, run_sweep

    space = load_space(write_space(tmp_path / "p.py", {**TINY, "lrs": [1e-3, 2e-3, 4e-3]}))
    r = run_sweep(SweepConfig(space=space, storage_path=str(tmp_path / "ray")), plan_only=True)
    out = capsys.readouterr().out
    assert r.interrupted and not r.rows and not (tmp_path / "ray").exists()  # nothing ran, nothing written
    assert "plan: p (structures): 12 trials" in out and "estimate" in out and "up to 8 more trials" in out


def test_planned_trials_carry_an_absolute_corpus_path(tmp_path, monkeypatch):
    """Trials run in Tune's own folders (maybe on other nodes): a relative corpus path arrives absolute."""
    from msg_ray.tune import SweepConfig
    from msg_ray.tune.sweep import plan_trials

    monkeypatch.chdir(tmp_path)
    Path("corpus.txt").write_text("some text\n")
    space = load_space(write_space(tmp_path / "p.py", TINY), ["run.data.source=corpus.txt"])
    trials = plan_trials(SweepConfig(space=space, storage_path=str(tmp_path / "ray")), str(tmp_path), "sqlite:///x")
    assert {t["run"]["data"]["source"] for t in trials} == {str(tmp_path / "corpus.txt")}
