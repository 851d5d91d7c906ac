"""Checkpoint files: safe loading (no code runs from a crafted file), clear errors for damaged ones, and the
resume state (loader position, Python and torch RNG) surviving the safe loader."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from msg_ray.train import checkpoint as C


def _write(tmp_path: Path) -> Path:
    random.seed(3)
    torch.manual_seed(4)
    params = {"w": torch.randn(3, 2)}
    buffers = {"blocks.0.ffn_mask.value": torch.tensor([1.0, 0.5]), "blocks.0.ffn_mask.n_old": torch.tensor(1)}
    moments = {"exp_avg": {"w": torch.randn(3, 2)}, "exp_avg_sq": {"w": torch.rand(3, 2)}, "step": 7}
    rank_state = {"loader": {"epoch": 0, "step": 5, "seed": 1}, "rng": C.rng_state()}
    return C.save(
        tmp_path / "stage0-step0000005",
        rank=0,
        rank_state=rank_state,
        meta={"step": 5},
        params=params,
        buffers=buffers,
        moments=moments,
    )


def test_round_trip_through_the_safe_loader(tmp_path):
    d = _write(tmp_path)
    expected_python, expected_torch = random.random(), torch.rand(2)  # the draws right after the saved state
    loaded = C.load(d, rank=0)
    assert loaded.meta == {"step": 5} and loaded.moments["step"] == 7 and loaded.rank_state["loader"]["step"] == 5
    assert loaded.params["w"].shape == (3, 2) and loaded.buffers["blocks.0.ffn_mask.n_old"].item() == 1
    C.set_rng_state(loaded.rank_state["rng"])
    assert random.random() == expected_python and torch.equal(torch.rand(2), expected_torch)
    assert C.load(d, rank=1).rank_state["rng"] is None  # a rank that did not exist gets rank 0's position only


def test_truncated_file_is_a_clear_error(tmp_path):
    d = _write(tmp_path)
    data = (d / C.MODEL).read_bytes()
    (d / C.MODEL).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"model\.pt has {len(data) // 2} bytes, {len(data)} written"):
        C.load(d, rank=0)
    (d / "manifest-rank0.json").unlink()  # a checkpoint from before manifests: the loader still names the file
    with pytest.raises(ValueError, match=r"model\.pt: unreadable checkpoint file"):
        C.load(d, rank=0)
    (d / C.MODEL).write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="unreadable checkpoint file"):
        C.read(d / C.MODEL)


class _Payload:
    """Unpickling this would run ``Path.touch`` on the marker: what a crafted checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_crafted_checkpoint_runs_no_code(tmp_path):
    d = _write(tmp_path)
    marker = tmp_path / "code-ran"
    torch.save({"params": {"w": _Payload(marker)}, "buffers": {}}, d / C.MODEL)
    with pytest.raises(ValueError, match=r"model\.pt (has|does not match)"):  # the manifest catches it first
        C.load(d, rank=0)
    (d / "manifest-rank0.json").unlink()  # without a manifest, the safe loader still refuses the payload
    with pytest.raises(ValueError, match="unreadable checkpoint file"):
        C.load(d, rank=0)
    assert not marker.exists()


def test_manifest_lists_every_file_and_catches_a_flipped_byte(tmp_path):
    d = _write(tmp_path)
    manifest = json.loads((d / "manifest-rank0.json").read_text())
    assert set(manifest) == {"rank0.pt", C.MODEL, C.OPTIM, C.META} and not list(d.glob("*.tmp"))
    original = (d / C.OPTIM).read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0xFF  # same size, different content
    (d / C.OPTIM).write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"optim\.pt does not match its SHA-256"):
        C.load(d, rank=0)
    (d / C.OPTIM).write_bytes(original)
    C.verify(d)
    C.save(d, rank=1, rank_state={"loader": {}, "rng": None})  # another rank's own manifest
    (d / "rank1.pt").unlink()
    with pytest.raises(ValueError, match=r"rank1\.pt is missing \(listed in manifest-rank1\.json\)"):
        C.verify(d)


def test_eval_of_a_wrong_path_fails_before_ray(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "msg_ray.cli", "eval", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 2 and "neither a checkpoint folder" in p.stderr, p.stderr[-2000:]
    assert "Started a local Ray" not in p.stderr + p.stdout
