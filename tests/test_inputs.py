"""Bad inputs fail before Ray starts, with one line (exit 2) that names the field and the value.

Each case runs ``msg-ray train`` in-process: an accepted config would start Ray and train, so a case that slips
through shows as a slow test and a failed ``rc == 2`` assertion, not as a hang.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from msg_ray.cli import main

CASES = [  # (argv after "train", a fragment the error line must contain)
    (["--set", "engine.lr=nan"], "RunConfig.engine.lr: must be a finite number, got 'nan'"),
    (["--set", "engine.lr=fast"], "RunConfig.engine.lr: must be a finite number, got 'fast'"),
    (["--set", "engine.lr=inf"], "RunConfig.engine.lr"),
    (["--set", "engine.lr=-1"], "RunConfig.engine.lr"),
    (["--set", "engine.lr=0"], "RunConfig.engine.lr"),
    (["--set", "engine.micro_batch_size=big"], "RunConfig.engine.micro_batch_size: must be an int"),
    (["--set", "engine.micro_batch_size=0"], "RunConfig.engine.micro_batch_size"),
    (["--set", "engine.grad_accum=1.5"], "RunConfig.engine.grad_accum: must be an int"),
    (["--set", "engine.zero_stage=4"], "RunConfig.engine.zero_stage"),
    (["--set", "engine.precision=fp8"], "RunConfig.engine.precision"),
    (["--set", "engine.betas=[0.9]"], "RunConfig.engine.betas: must be a list of 2 values"),
    (["--set", "engine.betas=[0.9, 1.5]"], "RunConfig.engine.betas"),
    (["--set", "engine.weight_decay=-0.1"], "RunConfig.engine.weight_decay"),
    (["--set", "engine.colour=red"], "RunConfig.engine: unknown field"),
    (["--set", "min_lr_ratio=low"], "RunConfig.min_lr_ratio: must be a finite number, got 'low'"),
    (["--set", "min_lr_ratio=2"], "RunConfig.min_lr_ratio"),
    (["--set", "kill_rank_at_step=5"], "RunConfig.kill_rank_at_step: must be a list of 2 values, got 5"),
    (["--set", "kill_rank_at_step=[0, 'x']"], "RunConfig.kill_rank_at_step[1]: must be an int"),
    (["--set", "dropout=5"], "RunConfig.dropout: must be in [0, 1), got 5"),
    (["--set", "dropout=nan"], "RunConfig.dropout"),
    (["--set", "workers=True"], "RunConfig.workers: must be an int, got True"),
    (["--set", "workers=0"], "RunConfig.workers"),
    (["--set", "use_gpu=maybe"], "RunConfig.use_gpu: must be true or false"),
    (["--set", "warmup_steps=-3"], "RunConfig.warmup_steps"),
    (["--set", "eval_every=0"], "RunConfig.eval_every"),
    (["--set", "cpus_per_worker=0"], "RunConfig.cpus_per_worker"),
    (["--set", "lr_decay=step"], "RunConfig.lr_decay"),
    (["--set", "lr_scale=depth"], "RunConfig.lr_scale"),
    (["--set", "wall_budget_s=-1"], "RunConfig.wall_budget_s"),
    (["--set", "name=a b"], "RunConfig.name"),
    (["--set", "colour=red"], "RunConfig: unknown field"),
    (["--set", "data.seq_len=1.5"], "RunConfig.data.seq_len: must be an int, got 1.5"),
    (["--set", "data.seq_len=8192"], "RunConfig.data.seq_len"),
    (["--set", "data.mlm_probability=1.5"], "RunConfig.data.mlm_probability"),
    (["--set", "data.tokenizer=bpe:x"], "RunConfig.data"),
    (["--set", "data.objective=mlm"], "RunConfig.data.objective"),
    (["--set", "adaptive=3"], "RunConfig.adaptive"),
    (["--set", "novalue"], "--set expects key=value"),
    (["--steps", "0"], "--steps: must be >= 1, got 0"),
    (["--schedule", "no-such-preset"], "no-such-preset"),
    (["--arch", "bert"], "--arch bert does not match"),
    (["--config", "{missing}"], "--config: file not found"),
    (["--config", "{bad_yaml}"], "not valid YAML"),
    (["--config", "{bad_json}"], "not valid JSON"),
    (["--config", "{list_yaml}"], "must hold a mapping of RunConfig fields, got a list"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("inputs")
    out = {"missing": d / "missing.yaml", "bad_yaml": d / "bad.yaml", "bad_json": d / "bad.json",
           "list_yaml": d / "list.yaml"}  # fmt: skip
    out["bad_yaml"].write_text("engine: {lr: [1\n")
    out["bad_json"].write_text('{"engine": {"lr": 0.001,}}')  # YAML would accept this trailing comma
    out["list_yaml"].write_text("- 1\n- 2\n")
    return {k: str(v) for k, v in out.items()}


@pytest.mark.parametrize(("argv", "fragment"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_one_clear_line(argv, fragment, files, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MSG_RAY_HOME", str(tmp_path))  # nothing may be written outside the test's folder
    rc = main(["train", *(a.format(**files) for a in argv)])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("msg-ray: error: ") and len(err.splitlines()) == 1, err
    assert fragment in err, err
    assert not any(Path(tmp_path).iterdir()), "a rejected config wrote something"
