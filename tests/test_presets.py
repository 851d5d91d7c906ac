"""Cluster presets carry the run settings their step budgets assume, and a run takes them as defaults: the resolved
config has them, and an override that changes the tokens per step warns (one that keeps them does not)."""

from __future__ import annotations

import argparse
import warnings

import pytest

from msg_ray.cli_args import add_run_args, build_run_config
from msg_ray.flops import solve_total_steps
from msg_ray.presets import FAST, PRESETS, SETTINGS, preset_settings
from msg_ray.train.config import BudgetWarning, RunConfig

# (vocabulary, sequence length) each fast preset's total_steps was solved for (presets.py's FAST comment)
SOLVED_FOR = {"gpt-fast": (50257, 1024), "bert-fast": (30522, 512), "llama-1b-fast": (32000, 2048)}


def _config(*argv: str) -> RunConfig:
    parser = argparse.ArgumentParser()
    add_run_args(parser)
    return build_run_config(parser.parse_args(list(argv)))


def test_every_cluster_preset_states_its_settings():
    cluster = {name for name in PRESETS if not name.startswith("mini-")}
    assert set(SETTINGS) == cluster
    assert all(preset_settings(name) is None for name in PRESETS if name.startswith("mini-"))
    # the paper's appendix D (Bert: batch 256, seq 128; GPT-2: seq 1024, batch 140) and J (batch 480)
    assert (SETTINGS["sch1-b"].seq_len, SETTINGS["sch1-b"].global_batch) == (128, 256)
    assert (SETTINGS["rapid-l"].seq_len, SETTINGS["full-bert-large"].global_batch) == (128, 256)
    assert (SETTINGS["sch1-g"].seq_len, SETTINGS["sch1-g"].global_batch) == (1024, 140)
    assert (SETTINGS["sch-gpt-new"].seq_len, SETTINGS["sch-gpt-new"].global_batch) == (1024, 480)
    for name, (vocab, seq) in SOLVED_FOR.items():  # the sequence length a preset states is the one it was solved at
        assert SETTINGS[name].seq_len == seq
        assert PRESETS[name].total_steps == solve_total_steps(PRESETS[name], FAST[name]["full_steps"], vocab, seq)


def test_every_cluster_preset_resolves_to_its_budget_on_one_worker():
    with warnings.catch_warnings():
        warnings.simplefilter("error", BudgetWarning)
        for name, settings in SETTINGS.items():
            cfg = RunConfig.from_dict({"schedule": name, "data": {"source": "wikitext2"}})
            assert cfg.tokens_per_step == cfg.budget_tokens_per_step == settings.tokens_per_step, name
            assert cfg.engine.micro_batch_size <= settings.micro_batch and cfg.engine.precision == settings.precision


@pytest.mark.parametrize(("workers", "micro", "accum"), [(1, 10, 14), (4, 7, 5), (14, 10, 1)])
def test_preset_run_resolves_its_settings(workers, micro, accum):
    with warnings.catch_warnings():
        warnings.simplefilter("error", BudgetWarning)
        cfg = _config("--schedule", "gpt-fast", "--workers", str(workers))
        again = RunConfig.from_dict(cfg.to_dict())  # what a worker or a resume reads back
    assert (cfg.data.seq_len, cfg.engine.precision, cfg.engine.zero_stage) == (1024, "bf16", 2)
    assert (cfg.engine.micro_batch_size, cfg.engine.grad_accum) == (micro, accum)
    assert cfg.tokens_per_step == cfg.budget_tokens_per_step == 140 * 1024
    assert cfg.budget_mismatch() is None and again == cfg


def test_override_that_changes_tokens_per_step_warns():
    with pytest.warns(
        BudgetWarning, match=r"'bert-fast' was solved for 131,072 tokens per step, this run trains 32,768"
    ):
        cfg = _config("--schedule", "bert-fast", "--set", "data.seq_len=128")
    assert cfg.data.seq_len == 128 and cfg.budget_tokens_per_step == 512 * 256
    with pytest.warns(BudgetWarning, match=r"engine\.grad_accum 2 x workers 8"):  # 140 sequences do not split 8 ways
        _config("--schedule", "sch1-g", "--workers", "8")
    with warnings.catch_warnings():  # overrides that keep the tokens per step: a smaller micro-batch, fp32, fewer steps
        warnings.simplefilter("error", BudgetWarning)
        cfg = _config("--schedule", "sch1-b", "--steps", "90000", "--set", "engine.micro_batch_size=8")
        assert (cfg.engine.micro_batch_size, cfg.engine.grad_accum, cfg.total_steps) == (8, 32, 90_000)
        assert _config("--schedule", "llama-1b-fast", "--set", "engine.precision=fp32").engine.precision == "fp32"


def test_mini_presets_and_custom_schedules_keep_the_run_defaults():
    with warnings.catch_warnings():
        warnings.simplefilter("error", BudgetWarning)
        cfg = _config("--schedule", "mini-sch1-g", "--set", "data.seq_len=64")
    assert cfg.budget_tokens_per_step is None and cfg.engine.precision == "fp32" and cfg.engine.micro_batch_size == 8
    impostor = PRESETS["mini-gpt-fast"].replace(name="gpt-fast")  # the name, not the stages: no preset settings
    plain = RunConfig.from_dict({"schedule": impostor.to_dict(), "data": {"source": "wikitext2"}})
    assert plain.budget_tokens_per_step is None and plain.data.seq_len == 128
