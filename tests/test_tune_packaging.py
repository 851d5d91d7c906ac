"""The built-in Tune spaces ship in the wheel: a non-editable install finds and loads them (no checkout needed)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_package_and_maps_the_spaces():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {str(p.parent.relative_to(REPO)).replace("/", ".") for p in (REPO / "msg_ray").rglob("__init__.py")}
    assert set(cfg["packages"]) == found | {"msg_ray.tune_spaces"}  # a new subpackage must be listed
    assert cfg["package-dir"] == {"msg_ray.tune_spaces": "tune_spaces"}


@pytest.mark.slow
def test_wheel_ships_the_spaces_and_an_installed_copy_loads_them(tmp_path):
    """Build the wheel, install it with --target (no deps), load a space from outside the checkout."""
    wheel_dir, site, src = tmp_path / "wheel", tmp_path / "site", tmp_path / "src"
    for name in ("msg_ray", "tune_spaces"):  # a copy: setuptools writes build/ and *.egg-info into the source tree
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    build = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", str(src), "-w", str(wheel_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = wheel_dir.glob("msg_ray-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"msg_ray/tune_spaces/durations.py", "msg_ray/tune_spaces/__init__.py"} <= names
    assert not any(n.startswith("tune_spaces/") for n in names)
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, timeout=300)
    code = (
        "import msg_ray; from msg_ray.tune.space import load_space, spaces_dir, known_spaces; "
        "print(msg_ray.__file__, spaces_dir(), len(load_space('durations').trials()), known_spaces())"
    )
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    file, where, n, known = out.stdout.split(" ", 3)
    assert file.startswith(str(site)) and where == str(site / "msg_ray" / "tune_spaces") and int(n) == 12
    assert "durations" in known and "_common" not in known
