"""Test helpers for real MLflow stores and services: a free loopback port, a fresh sqlite store, a real
`mlflow server` process group."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_TEMPLATE: list[Path] = []  # the migrated empty store of this test process, made on first use


def sqlite_store(path: Path) -> str:
    """``sqlite:///path``, an MLflow store made empty when ``path`` does not exist yet (an existing one is kept).
    Creating a store runs MLflow's schema migrations (~5 s on a 2-core box); this process does it once and copies
    the empty result."""
    if path.exists():
        return f"sqlite:///{path}"
    if not _TEMPLATE:
        from mlflow.tracking import MlflowClient

        folder = tempfile.mkdtemp(prefix="mlflow-template-")
        atexit.register(shutil.rmtree, folder, True)
        template = Path(folder) / "empty.db"
        MlflowClient(tracking_uri=f"sqlite:///{template}").search_experiments()
        _TEMPLATE.append(template)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_TEMPLATE[0], path)
    return f"sqlite:///{path}"


class MlflowServer:
    """A real `mlflow server` on a free loopback port serving ``store``: ``start()`` (again after ``kill()``)."""

    def __init__(self, store: str, workdir: Path) -> None:
        self.store, self.workdir, self.port = store, workdir, free_port()
        self.procs: list[subprocess.Popen] = []

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> None:  # ~10 s idle, ~40 s on a loaded 2-core box
        cmd = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            self.store,
            "--artifacts-destination",
            str(self.workdir / "srv-artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        log_path = self.workdir / "server.log"
        log = open(log_path, "ab")  # noqa: SIM115 - lives as long as the server
        self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=log, env=env, start_new_session=True))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[-1].poll() is not None:
                raise RuntimeError(f"mlflow server exited: {log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"mlflow server not healthy after {timeout} s")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """End every started server; it forks workers, so the whole process group it leads."""
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
