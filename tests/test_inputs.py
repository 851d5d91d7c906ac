"""Bad inputs fail before Ray starts, with one line (exit 2) that names the field and the value.

Each case runs ``msg-ray <command>`` in-process: an accepted config would start Ray and train, so a case that
slips through shows as a slow test and a failed ``rc == 2`` assertion, not as a hang.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from msg_ray.cli import main

CASES = [  # (argv, a fragment the one error line must contain)
    (["train", "--set", "engine.lr=nan"], "RunConfig.engine.lr: must be a finite number, got 'nan'"),
    (["train", "--set", "on_divergence=retry"], "RunConfig.on_divergence: must be 'stop' or 'rollback'"),
    (["train", "--set", "divergence_factor=0.5"], "RunConfig.divergence_factor: must be 0 (off) or > 1"),
    (["train", "--set", "rollback_lr_factor=2"], "RunConfig.rollback_lr_factor: must be in (0, 1]"),
    (["train", "--set", "engine.lr=fast"], "RunConfig.engine.lr: must be a finite number, got 'fast'"),
    (["train", "--set", "engine.lr=inf"], "RunConfig.engine.lr"),
    (["train", "--set", "engine.lr=-1"], "RunConfig.engine.lr"),
    (["train", "--set", "engine.lr=0"], "RunConfig.engine.lr"),
    (["train", "--set", "engine.micro_batch_size=big"], "RunConfig.engine.micro_batch_size: must be an int"),
    (["train", "--set", "engine.micro_batch_size=0"], "RunConfig.engine.micro_batch_size"),
    (["train", "--set", "engine.grad_accum=1.5"], "RunConfig.engine.grad_accum: must be an int"),
    (["train", "--set", "engine.zero_stage=4"], "RunConfig.engine.zero_stage"),
    (["train", "--set", "engine.precision=fp8"], "RunConfig.engine.precision"),
    (["train", "--set", "engine.betas=[0.9]"], "RunConfig.engine.betas: must be a list of 2 values"),
    (["train", "--set", "engine.betas=[0.9, 1.5]"], "RunConfig.engine.betas"),
    (["train", "--set", "engine.weight_decay=-0.1"], "RunConfig.engine.weight_decay"),
    (["train", "--set", "engine.colour=red"], "RunConfig.engine: unknown field"),
    (
        ["train", "--set", "tracking.backend=wandb"],
        "RunConfig.tracking.backend must be one of ('mlflow',), got 'wandb'",
    ),
    (["train", "--set", "min_lr_ratio=low"], "RunConfig.min_lr_ratio: must be a finite number, got 'low'"),
    (["train", "--set", "min_lr_ratio=2"], "RunConfig.min_lr_ratio"),
    (["train", "--set", "kill_rank_at_step=5"], "RunConfig.kill_rank_at_step: must be a list of 2 values, got 5"),
    (["train", "--set", "kill_rank_at_step=[0, 'x']"], "RunConfig.kill_rank_at_step[1]: must be an int"),
    (["train", "--set", "dropout=5"], "RunConfig.dropout: must be in [0, 1), got 5"),
    (["train", "--set", "dropout=nan"], "RunConfig.dropout"),
    (["train", "--set", "workers=True"], "RunConfig.workers: must be an int, got True"),
    (["train", "--set", "workers=0"], "RunConfig.workers"),
    (["train", "--set", "use_gpu=maybe"], "RunConfig.use_gpu: must be true or false"),
    (["train", "--set", "warmup_steps=-3"], "RunConfig.warmup_steps"),
    (["train", "--set", "eval_every=0"], "RunConfig.eval_every"),
    (["train", "--set", "cpus_per_worker=0"], "RunConfig.cpus_per_worker"),
    (["train", "--set", "lr_decay=step"], "RunConfig.lr_decay"),
    (["train", "--set", "lr_scale=depth"], "RunConfig.lr_scale"),
    (["train", "--set", "wall_budget_s=-1"], "RunConfig.wall_budget_s"),
    (["train", "--set", "name=a b"], "RunConfig.name"),
    (["train", "--set", "colour=red"], "RunConfig: unknown field"),
    (["train", "--set", "data.seq_len=1.5"], "RunConfig.data.seq_len: must be an int, got 1.5"),
    (["train", "--set", "data.seq_len=8192"], "RunConfig.data.seq_len"),
    (["train", "--set", "data.mlm_probability=1.5"], "RunConfig.data.mlm_probability"),
    (["train", "--set", "data.tokenizer=bpe:x"], "RunConfig.data"),
    (["train", "--set", "data.objective=mlm"], "RunConfig.data.objective"),
    (["train", "--set", "adaptive=3"], "RunConfig.adaptive"),
    (["train", "--set", "novalue"], "--set expects key=value"),
    (["train", "--steps", "0"], "--steps: must be >= 1, got 0"),
    (["train", "--schedule", "no-such-preset"], "no-such-preset"),
    (["train", "--schedule", "mini-sch1-g", "--arch", "bert"], "--arch bert does not match"),
    (["train", "--config", "{missing}"], "--config: file not found"),
    (["train", "--config", "{bad_yaml}"], "not valid YAML"),
    (["train", "--config", "{bad_json}"], "not valid JSON"),
    (["train", "--config", "{list_yaml}"], "must hold a mapping of RunConfig fields, got a list"),
    (["train", "--workers", "0"], "RunConfig.workers: must be an int >= 1, got 0"),
    (["train", "--set", "engine.eps=0"], "RunConfig.engine.eps"),
    (["train", "--set", "engine.grad_clip=-1"], "RunConfig.engine.grad_clip"),
    (["train", "--set", "data.valid_fraction=0.9"], "RunConfig.data.valid_fraction"),
    (["train", "--set", "data.max_train_tokens=3"], "RunConfig.data.max_train_tokens"),
    (["train", "--set", "data.text_column="], "RunConfig.data.text_column"),
    (["train", "--set", "data.source="], "RunConfig.data.source"),
    (["train", "--set", "data.seed=x"], "RunConfig.data.seed: must be an int, got 'x'"),
    (["train", "--set", "data.split_seed=1.5"], "RunConfig.data.split_seed: must be an int"),
    (["train", "--set", "data.tokenizer=gpt3"], "RunConfig.data.tokenizer: unknown tokenizer 'gpt3'"),
    (["train", "--set", "data.seq_len=1"], "RunConfig.data.seq_len"),
    (["train", "--set", "data.objective=xyz"], "RunConfig.data.objective"),
    (["train", "--set", "data.mlm_probability=0"], "RunConfig.data.mlm_probability"),
    (["train", "--set", "data=5"], "RunConfig.data must be a mapping"),
    (["train", "--set", "engine=5"], "RunConfig.engine must be a mapping"),
    (["train", "--set", "seed=-1"], "RunConfig.seed"),
    (["train", "--set", "seed=x"], "RunConfig.seed: must be an int, got 'x'"),
    (["train", "--set", "gamma_window=0"], "RunConfig.gamma_window"),
    (["train", "--set", "log_every=0"], "RunConfig.log_every"),
    (["train", "--set", "eval_batches=0"], "RunConfig.eval_batches"),
    (["train", "--set", "ckpt_every=-1"], "RunConfig.ckpt_every"),
    (["train", "--set", "report_every=-1"], "RunConfig.report_every"),
    (["train", "--set", "lr_reset_growths=-1"], "RunConfig.lr_reset_growths"),
    (["train", "--set", "max_failures=-1"], "RunConfig.max_failures"),
    (["train", "--set", "growth_check_tol=nan"], "RunConfig.growth_check_tol: must be a finite number"),
    (["train", "--set", "export_hf=maybe"], "RunConfig.export_hf: must be true or false"),
    (["train", "--set", "experiment=5"], "RunConfig.experiment: must be a string, got 5"),
    (["train", "--set", "storage_path=5"], "RunConfig.storage_path: must be a string"),
    (["train", "--set", "name="], "RunConfig.name"),
    (["train", "--set", "adaptive={'target_gamma': 1, 'colour': 2}"], "RunConfig.adaptive: unknown field"),
    (["train", "--set", "adaptive={}"], "RunConfig.adaptive.target_gamma is required"),
    (["train", "--set", "adaptive={'target_gamma': {'times': [1]}}"], "RunConfig.adaptive.target_gamma"),
    (["train", "--set", "schedule.phi=-1"], "phi must be an int >= 0"),
    (["train", "--set", "schedule.total_steps=0"], "total_steps must be an int >= 1"),
    (["train", "--set", "schedule.operator=foo"], "operator must be one of"),
    (["train", "--set", "schedule.arch=mamba"], "arch must be one of"),
    (["train", "--set", "schedule.head_dim=0"], "head_dim must be an int >= 1"),
    (["train", "--set", "schedule.stages=[]"], "stages must hold at least one stage"),
    (["train", "--set", "schedule.depth_init=zero"], "depth_init must be one of"),
    (["train", "--set", "engine.zero_stage=x"], "RunConfig.engine.zero_stage: must be an int, got 'x'"),
    (["train", "--set", "engine.precision=3"], "RunConfig.engine.precision: must be a string"),
    (["train", "--set", "engine.betas=x"], "RunConfig.engine.betas: must be a list of 2 values"),
    (["train", "--set", "engine.weight_decay=nan"], "RunConfig.engine.weight_decay: must be a finite number"),
    (["train", "--set", "engine.grad_accum=0"], "RunConfig.engine.grad_accum"),
    (["train", "--set", "engine.micro_batch_size=-1"], "RunConfig.engine.micro_batch_size"),
    (["train", "--set", "engine.lr=1e999"], "RunConfig.engine.lr: must be a finite number, got inf"),
    (["train", "--set", "lr_decay=5"], "RunConfig.lr_decay: must be a string"),
    (["train", "--set", "min_lr_ratio=-0.1"], "RunConfig.min_lr_ratio"),
    (["train", "--set", "cpus_per_worker=nan"], "RunConfig.cpus_per_worker: must be a finite number"),
    (["train", "--set", "wall_budget_s=nan"], "RunConfig.wall_budget_s"),
    (["train", "--set", "wall_budget_s=True"], "RunConfig.wall_budget_s"),
    (["train", "--set", "dropout=-0.1"], "RunConfig.dropout"),
    (["train", "--set", "dropout=1"], "RunConfig.dropout"),
    (["train", "--set", "ln_eps=0"], "RunConfig.ln_eps: must be in (0, 1e-2), got 0"),
    (["train", "--set", "ln_eps=0.5"], "RunConfig.ln_eps"),
    (["train", "--set", "ln_eps=nan"], "RunConfig.ln_eps"),
    (["train", "--set", "kill_rank_at_step=[0]"], "RunConfig.kill_rank_at_step: must be a list of 2 values"),
    (["train", "--set", "use_gpu=1"], "RunConfig.use_gpu: must be true or false, got 1"),
    (["train", "--set", "workers=1.5"], "RunConfig.workers: must be an int, got 1.5"),
    (["train", "--set", "workers=-2"], "RunConfig.workers"),
    (["compare", "--seeds", "1,a"], "--seeds: expected N or a comma list of ints"),
    (["compare", "--lrs", ","], "CompareConfig.lrs"),
    (["compare", "--lrs", "a,b"], "--lrs: expected a comma list of numbers"),
    (["compare", "--lrs", "0.001,0.001"], "CompareConfig.lrs must be distinct positive numbers"),
    (["compare", "--lrs=-1,0.001"], "CompareConfig.lrs"),
    (["compare", "--lrs", "nan"], "CompareConfig.lrs"),
    (["compare", "--seeds", "0"], "--seeds must be >= 1"),
    (["compare", "--seeds", "a"], "--seeds: expected N or a comma list of ints"),
    (["compare", "--seeds", "1,1"], "CompareConfig.seeds"),
    (["compare", "--operators", "msg"], "CompareConfig.operators must include 'full'"),
    (["compare", "--operators", "msg,full,foo"], "CompareConfig.operators"),
    (["compare", "--budget", "wall"], "CompareConfig.wall_s"),
    (["compare", "--wall-s", "5"], "CompareConfig.wall_s"),
    (["compare", "--max-concurrent", "0"], "CompareConfig.max_concurrent"),
    (["compare", "--lr-search-seeds", "3"], "CompareConfig.lr_search_seeds"),
    (["compare", "--extend-steps", "-1"], "CompareConfig.extend_steps"),
    (["compare", "--budget-fractions", "0.5,x"], "--budget-fractions: expected a comma list of numbers"),
    (["compare", "--budget-fractions", "1.5"], "CompareConfig.budget_fractions"),
    (["compare", "--budget-fractions", "0.5", "--budget", "steps"], "CompareConfig.budget_fractions"),
    (["compare", "--name", "a/b"], "CompareConfig.name"),
    (["compare", "--eval-set", "lm.steps=x"], "FinetuneConfig.steps"),
    (["compare", "--lr-of", "msg=1"], "CompareConfig.lr_of"),
    (["compare", "--lr-of", "msg:1"], "--lr-of: expected OP=LR items"),
    (["compare", "--lr-of", "msg=1,full=2", "--lrs", "1"], "CompareConfig.lr_of replaces the LR search"),
    (["compare", "--set", "engine.lr=nan"], "RunConfig.engine.lr: must be a finite number"),
    (["compare", "--mode", "parallel", "--workers", "2"], "CompareConfig.mode 'parallel'"),
    (["tune", "--space", "nope"], "unknown space 'nope'"),
    (["tune", "--space", "durations", "--set", "budget.wall_s=x"], "budget"),
    (["tune", "--space", "structures", "--set", "budget.wall_s=-5"], "budget"),
    (["tune", "--space", "structures", "--set", "asha.grace=-1"], "asha"),
    (["tune", "--space", "structures", "--set", "asha.colour=1"], "asha"),
    (["tune", "--space", "durations", "--max-concurrent", "0"], "SweepConfig.max_concurrent"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("inputs")
    out = {
        "missing": d / "missing.yaml",
        "bad_yaml": d / "bad.yaml",
        "bad_json": d / "bad.json",
        "list_yaml": d / "list.yaml",
    }
    out["bad_yaml"].write_text("engine: {lr: [1\n")
    out["bad_json"].write_text('{"engine": {"lr": 0.001,}}')  # YAML would accept this trailing comma
    out["list_yaml"].write_text("- 1\n- 2\n")
    return {k: str(v) for k, v in out.items()}


@pytest.mark.parametrize(("argv", "fragment"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_one_clear_line(argv, fragment, files, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MSG_RAY_HOME", str(tmp_path))  # nothing may be written outside the test's folder
    for key, path in files.items():  # {name} placeholders for the files made above (dict literals keep their braces)
        argv = [a.replace("{" + key + "}", path) for a in argv]
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("msg-ray: error: ") and len(err.splitlines()) == 1, err
    assert fragment in err, err
    assert not any(Path(tmp_path).iterdir()), "a rejected config wrote something"


# -- the Python API: the same rule (one ValueError naming the field and the value) ------------------------------


def _model(arch: str = "gpt", **kw):
    from msg_ray import build_model
    from msg_ray.structure import Structure

    args = {"vocab_size": 100, "max_seq_len": 16, "head_dim": 8, **kw}
    return build_model(arch, Structure(16, 32, 2, 1), **args)


def _forward(arch: str, ids):
    import torch

    return lambda: _model(arch)(torch.tensor(ids) if not isinstance(ids, torch.Tensor) else ids)


API_CASES = [  # (id, call, fragment)
    ("init_std=nan", lambda: _model(init_std=float("nan")), "ModelConfig.init_std"),
    ("init_std<0", lambda: _model(init_std=-0.02), "ModelConfig.init_std"),
    ("vocab_size=0", lambda: _model(vocab_size=0), "ModelConfig.vocab_size"),
    ("unknown arch", lambda: _model("t5"), "t5"),
    *[
        (f"{arch} id=vocab", _forward(arch, [[1, 2, 100]]), "token id 100 outside the vocabulary [0, 100)")
        for arch in ("gpt", "bert", "llama")
    ],
    ("gpt id<0", _forward("gpt", [[1, -3]]), "token id -3 outside"),
    ("float ids", _forward("gpt", [[1.0, 2.0]]), "input_ids: expected an int64/int32 tensor"),
    ("1-d ids", _forward("llama", [1, 2]), "input_ids: expected an int64/int32 tensor [batch, seq]"),
    ("seq > max", _forward("bert", [[1] * 17]), "input_ids: sequence length 17 exceeds max_seq_len 16"),
]


@pytest.mark.parametrize(("call", "fragment"), [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_bad_python_api_input_is_a_clear_value_error(call, fragment):
    with pytest.raises(ValueError) as err:
        call()
    assert fragment in str(err.value) and len(str(err.value).splitlines()) == 1, err.value
