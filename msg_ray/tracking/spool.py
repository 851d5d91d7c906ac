"""A durable local spool for one tracked run: every tracking call as a line on disk, shipped later, lost never.

``Spool(directory)`` keeps two files there (no MLflow here; ``mlflow_sync`` ships what this module stores):

- ``spool.jsonl``: append-only JSON lines, one record per tracking call, each with a monotonically increasing
  ``seq`` and a ``kind``: ``run`` (experiment, run name, tags, parent run id and URI of the run, written first),
  ``metrics`` (``[[key, value, timestamp_ms, step], ...]``), ``params`` (dict), ``tags`` (dict), ``artifact``
  (a file or directory copied at spool time to ``artifacts/<seq>-<name>/<name>``, plus its ``artifact_path``)
  and ``status`` (a terminal status). Every append is flushed to the OS; artifact and status records, and the
  run record, are also fsynced. A half-written last line (a crash mid-append) is ignored by readers and cut off
  by the next writer.
- ``shipped.json``: the last ``seq`` the tracking store acknowledged, the byte offset just after it (where the
  next replay starts reading) and the ``run_id`` the spool belongs to.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from msg_ray.tracking.base import plain, public

log = logging.getLogger(__name__)

SPOOL_FILE = "spool.jsonl"
SHIPPED_FILE = "shipped.json"
KINDS = ("run", "metrics", "params", "tags", "artifact", "status")


class Spool:
    """The spool of one run in `directory` (created if missing). One writer at a time; readers any time."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory).expanduser().resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / SPOOL_FILE
        self.shipped_path = self.directory / SHIPPED_FILE
        self._fh = None  # opened on the first append (a reader such as sync() never cuts a writer's line)
        self.last_seq = max((rec["seq"] for _, rec in self._read(0)), default=0)

    # -- reading ---------------------------------------------------------------------------------------------

    def _read(self, offset: int) -> Iterator[tuple[int, dict]]:
        """(byte offset after the line, record) for every complete, valid line from `offset` on."""
        if not self.path.exists():
            return
        with open(self.path, "rb") as fh:
            fh.seek(offset)
            for line in fh:
                offset += len(line)
                if not line.endswith(b"\n"):
                    return  # half-written (a crash, or a writer mid-append): not a record yet
                try:
                    rec = json.loads(line)
                except ValueError:
                    log.warning("msg_ray: %s: skipping an unreadable line ending at byte %d", self.path, offset)
                    continue
                if isinstance(rec, dict) and isinstance(rec.get("seq"), int) and rec.get("kind") in KINDS:
                    yield offset, rec

    def shipped(self) -> dict:
        """{"seq", "offset", "run_id"}: what the store acknowledged; zeros and None for a fresh spool."""
        state = {"seq": 0, "offset": 0, "run_id": None}
        with contextlib.suppress(OSError, ValueError):
            state.update(json.loads(self.shipped_path.read_text()))
        return state

    @property
    def run_id(self) -> str | None:
        return self.shipped()["run_id"]

    def run_record(self) -> dict | None:
        """The `run` record (how to create the run), or None when the spool has none."""
        return next((rec for _, rec in self._read(0) if rec["kind"] == "run"), None)

    def pending(self) -> Iterator[tuple[int, dict]]:
        """(byte offset after the record, record) for every record after the shipped seq, in order."""
        state = self.shipped()
        offset = state["offset"] if self._is_line_start(state["offset"]) else 0
        for end, rec in self._read(offset):
            if rec["seq"] > state["seq"]:
                yield end, rec

    def _is_line_start(self, offset: Any) -> bool:
        if not isinstance(offset, int) or offset <= 0 or not self.path.exists():
            return False
        if offset > self.path.stat().st_size:
            return False
        with open(self.path, "rb") as fh:
            fh.seek(offset - 1)
            return fh.read(1) == b"\n"

    def artifact_file(self, rec: Mapping[str, Any]) -> Path:
        """The spooled copy an `artifact` record ships."""
        return self.directory / "artifacts" / f"{rec['seq']}-{rec['name']}" / rec["name"]

    # -- writing ---------------------------------------------------------------------------------------------

    def mark_shipped(self, seq: int, offset: int, run_id: str | None = None) -> None:
        """Record that the store accepted everything up to `seq` for `run_id` (fsynced when the run id changes;
        a different run id than before starts over from the first record)."""
        state = self.shipped()
        new_run = run_id is not None and run_id != state["run_id"]
        if new_run and state["run_id"] is not None:  # the old run is gone: everything goes to the new one
            state["seq"], state["offset"] = 0, 0
        if run_id is not None:
            state["run_id"] = run_id
        if seq > state["seq"]:
            state["seq"], state["offset"] = seq, offset
        tmp = self.shipped_path.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            json.dump(state, fh)
            if new_run:  # losing the run id would create a second run on the next replay
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, self.shipped_path)

    def set_run_id(self, run_id: str) -> None:
        self.mark_shipped(0, 0, run_id)

    def append(self, kind: str, sync: bool = False, **fields: Any) -> int:
        """Append one record; returns its seq. `sync` also fsyncs it."""
        if kind not in KINDS:
            raise ValueError(f"kind: must be one of {KINDS}, got {kind!r}")
        fh = self._fh or self._open_for_append()
        seq = self.last_seq + 1
        fh.write(json.dumps({"seq": seq, "kind": kind, **fields}, default=str).encode() + b"\n")
        fh.flush()
        if sync:
            os.fsync(fh.fileno())
        self.last_seq = seq
        return seq

    def _open_for_append(self):
        """Open spool.jsonl, first cutting a half-written last line (or ending a complete one)."""
        if self.path.exists() and self.path.stat().st_size:
            with open(self.path, "r+b") as fh:
                data = fh.read()
                if not data.endswith(b"\n"):
                    cut = data.rfind(b"\n") + 1
                    try:
                        json.loads(data[cut:])
                        fh.write(b"\n")  # a complete record that only lacked its newline
                    except ValueError:
                        fh.truncate(cut)
        self._fh = open(self.path, "ab")  # noqa: SIM115 - kept open for the spool's lifetime
        return self._fh

    def add_run(self, **fields: Any) -> int:
        return self.append("run", sync=True, **plain(fields))

    def add_file(self, name: str, artifact_path: str | None, write: Callable[[Path], Any]) -> int:
        """Spool an artifact: `write(path)` creates `artifacts/<seq>-<name>/<name>`; then the record (fsynced)."""
        name = Path(name).name
        if not name:
            raise ValueError("artifact name: must not be empty")
        seq = self.last_seq + 1
        folder = self.directory / "artifacts" / f"{seq}-{name}"
        shutil.rmtree(folder, ignore_errors=True)  # leftovers of a crash before the record was written
        folder.mkdir(parents=True)
        try:
            write(folder / name)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        _fsync_tree(folder)
        return self.append("artifact", sync=True, name=name, artifact_path=artifact_path)

    def add_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> int:
        """Spool a copy of a local file or directory (uploaded under `artifact_path` with its own name)."""
        source = Path(path)
        if not source.exists():
            raise FileNotFoundError(f"artifact {source} does not exist")
        if source.is_dir():
            return self.add_file(source.name, artifact_path, lambda dst: shutil.copytree(source, dst))
        return self.add_file(source.name, artifact_path, lambda dst: shutil.copyfile(source, dst))

    def add_dict(self, d: Mapping[str, Any], name: str) -> int:
        """Spool a dict as `name` (YAML for .yaml/.yml, else JSON, as MLflow's log_dict writes it)."""
        data = public(d)

        def write(dst: Path) -> None:
            with open(dst, "w") as fh:
                if dst.suffix in (".yaml", ".yml"):
                    yaml.dump(data, fh, indent=2, default_flow_style=False)
                else:
                    json.dump(data, fh, indent=2, default=str)

        folder, _, base = name.rpartition("/")
        return self.add_file(base, folder or None, write)

    def add_figure(self, fig: Any, name: str) -> int:
        """Spool a matplotlib figure saved as `name` (PNG for a .png name)."""
        if not callable(getattr(fig, "savefig", None)):
            raise TypeError(f"not a matplotlib figure: {type(fig).__name__}")
        folder, _, base = name.rpartition("/")
        return self.add_file(base, folder or None, lambda dst: fig.savefig(dst))

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _fsync_tree(root: Path) -> None:
    for path in [root, *root.rglob("*")] if root.is_dir() else [root]:
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
