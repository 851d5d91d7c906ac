"""``benchmarks/gpu_check.py`` as a user runs it: ``--cpu`` (part a on gloo, plus part b's code on a tiny model) in
CI, so the script cannot rot; on a GPU machine ``pytest -m gpu`` runs part a on the GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _gpu_check(tmp_path: Path, *flags: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", *flags, "--out", str(out), "--work", str(tmp_path / "work")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


def _assert_part_a(result: dict) -> None:
    runs = {r["arch"]: r for r in result["parts"]["a"]}
    assert sorted(runs) == ["gpt", "llama"] and runs["llama"]["zero_stage"] == 3
    for r in runs.values():
        assert [g["step"] for g in r["growths"]] == [5, 10, 15, 20]  # ffn, hidden, heads, layers
        assert [p["stage"] for p in r["placement_checked"]] == [1, 2, 3, 4]
        assert r["resume"]["steps"] == list(range(16, 26))
        assert "loss nan at step 3" in r["injected_nan"]
        assert r["failures"] == []


@pytest.mark.slow
def test_gpu_check_cpu_mode(tmp_path):
    proc, result = _gpu_check(tmp_path, "--cpu", "--parts", "a,b", "--perf-tiny")
    assert proc.returncode == 0 and result["ok"], result["failures"]
    _assert_part_a(result)
    for r in result["parts"]["a"]:  # on CPU the same computation gives the same numbers: exact checks
        assert r["resume"]["max_loss_diff"] == 0.0 and r["export"]["max_diff_same_dtype"] == 0.0
    perf = result["parts"]["b"]
    assert perf["size"] == "tiny" and perf["folded"]["tokens_per_s"] > 0 and perf["growth_seconds"] > 0


@pytest.mark.gpu
def test_gpu_check_part_a_on_the_gpu(tmp_path):
    proc, result = _gpu_check(tmp_path, "--parts", "a")
    assert proc.returncode == 0 and result["ok"], result["failures"]
    _assert_part_a(result)
