"""Token shards on storage every node sees: write one chunk's shards atomically, read a split memory-mapped.

Layout of one prepared dataset ``<storage_path>/<key>/``::

    tokenizer.json                 the tokenizer the shards were made with (workers load it from here)
    chunks/000012.json             done marker of input chunk 12: its shards' blocks, tokens and SHA-256
    train/000012.bin               chunk 12's train blocks: [blocks, seq_len] little-endian uint16 (or uint32)
    valid/000012.bin, test/...
    manifest.json                  written last: per split the ordered shard list and totals, tokenizer digest,
                                   seq_len, dtype, source fingerprint

Every file is written to a temporary name and renamed into place; a chunk counts as done once its marker exists
and a prepared dataset once its manifest exists, so a half-written prepare is never read and a re-run continues
from the chunks already done. ``storage_path`` is a local/NFS path or a URI that `pyarrow.fs` understands
(``s3://``, ``gs://``, ...); remote shards are copied into each node's cache once (see `fetch`) and read there.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import torch

MANIFEST = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
SPLITS = ("train", "valid", "test")


def dtype_for(vocab_size: int) -> str:
    """Narrowest unsigned dtype holding every token id: uint16 up to 65,536 tokens, else uint32."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def join(root: str, name: str) -> str:
    """``root``/``name`` for a local path or a URI; a URI's query string (``?endpoint_override=...&scheme=http``,
    how `pyarrow.fs` is pointed at an S3-compatible server such as MinIO) stays at the end."""
    base, sep, query = root.partition("?") if "://" in root else (root, "", "")
    return f"{base.rstrip('/')}/{name}{sep}{query}"


class Store:
    """One prepared dataset's folder on a `pyarrow.fs` filesystem (local paths included), with atomic writes."""

    def __init__(self, uri: str) -> None:
        self.uri = uri if "?" in uri else uri.rstrip("/")
        if "://" in self.uri:
            self.fs, self.base = pafs.FileSystem.from_uri(self.uri)
        else:
            self.fs, self.base = pafs.LocalFileSystem(), str(Path(self.uri).expanduser().resolve())
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, rel: str) -> str:
        return f"{self.base}/{rel}"

    def local_path(self, rel: str) -> Path:
        if not self.local:
            raise ValueError(f"{self.uri} is not on a local file system")
        return Path(self.path(rel))

    def write(self, rel: str, data: bytes | memoryview) -> None:
        """Write ``rel`` through a temporary sibling + move (a rename on local and POSIX-like file systems)."""
        final = self.path(rel)
        parent = final.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        tmp = f"{parent}/.{final.rsplit('/', 1)[1]}.partial-{uuid.uuid4().hex[:8]}"
        try:
            with self.fs.open_output_stream(tmp) as fh:
                fh.write(data)
            self.fs.move(tmp, final)
        finally:
            if self.exists(tmp, absolute=True):
                self.fs.delete_file(tmp)

    def exists(self, rel: str, absolute: bool = False) -> bool:
        info = self.fs.get_file_info(rel if absolute else self.path(rel))
        return info.type != pafs.FileType.NotFound

    def size(self, rel: str) -> int | None:
        info = self.fs.get_file_info(self.path(rel))
        return None if info.type == pafs.FileType.NotFound else info.size

    def sizes(self, folders: set[str]) -> dict[str, int]:
        """``{rel path: bytes}`` of the files in ``folders``: one listing per folder (not one request per file)."""
        out = {}
        for folder in folders:
            for info in self.fs.get_file_info(pafs.FileSelector(self.path(folder), allow_not_found=True)):
                if info.type == pafs.FileType.File:
                    out[f"{folder}/{info.base_name}"] = info.size
        return out

    def read(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as fh:
            return fh.read()

    def read_json(self, rel: str) -> dict[str, Any]:
        return json.loads(self.read(rel))

    def listdir(self, rel: str) -> list[str]:
        selector = pafs.FileSelector(self.path(rel), allow_not_found=True)
        return sorted(i.base_name for i in self.fs.get_file_info(selector))

    def sha256(self, rel: str) -> str:
        digest = hashlib.sha256()
        with self.fs.open_input_stream(self.path(rel)) as fh:
            while chunk := fh.read(1 << 24):
                digest.update(chunk)
        return digest.hexdigest()


def check_writable(uri: str, what: str) -> None:
    """Raise ValueError naming ``what`` unless a file can be created under ``uri``. Leaves nothing behind: the
    probe file and any folders made for it are removed again."""
    try:
        if "://" in uri:
            store = Store(uri)
            probe = f".write-check-{uuid.uuid4().hex[:8]}"
            store.write(probe, b"ok")
            store.fs.delete_file(store.path(probe))
            return
        path = Path(uri).expanduser().resolve()
        made, p = [], path
        while not p.exists():
            made.append(p)
            p = p.parent
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / f".write-check-{uuid.uuid4().hex[:8]}"
            probe.write_bytes(b"ok")
            probe.unlink()
        finally:
            for d in made:  # deepest first
                if d.is_dir():
                    d.rmdir()
    except OSError as exc:  # pyarrow's IO errors are OSErrors too
        raise ValueError(f"{what}: cannot write to {uri} ({type(exc).__name__}: {exc})") from None


def shard_name(split: str, index: int) -> str:
    return f"{split}/{index:06d}.bin"


def marker_name(index: int) -> str:
    return f"chunks/{index:06d}.json"


def write_chunk(store: Store, index: int, streams: dict[str, np.ndarray], seq_len: int, dtype: str, info: dict):
    """Cut each split's token stream into ``[blocks, seq_len]`` (remainder dropped), write one shard per split
    that has a block, then the chunk's done marker. Returns the marker's content."""
    shards: dict[str, dict[str, Any]] = {}
    for split, stream in streams.items():
        n_blocks = len(stream) // seq_len
        entry = {"tokens": int(len(stream)), "blocks": n_blocks, "records": info.get(f"{split}_records", 0)}
        if n_blocks:
            data = np.ascontiguousarray(stream[: n_blocks * seq_len], dtype=np.dtype(dtype).newbyteorder("<"))
            view = memoryview(data).cast("B")
            store.write(shard_name(split, index), view)
            entry.update(file=shard_name(split, index), sha256=hashlib.sha256(view).hexdigest(), bytes=data.nbytes)
        shards[split] = entry
    marker = {"index": index, "shards": shards, **{k: v for k, v in info.items() if not k.endswith("_records")}}
    store.write(marker_name(index), json.dumps(marker).encode())
    return marker


def done_chunks(store: Store) -> dict[int, dict[str, Any]]:
    """Markers of the chunks already done whose shards are all present with their full size."""
    out = {}
    for name in store.listdir("chunks"):
        if not name.endswith(".json") or name.startswith("."):
            continue
        marker = store.read_json(f"chunks/{name}")
        if all(s["blocks"] == 0 or store.size(s["file"]) == s["bytes"] for s in marker["shards"].values()):
            out[int(marker["index"])] = marker
    return out


class ShardedBlocks:
    """A split's token blocks ``[N, seq_len]`` over shard files, read on demand (never loaded whole).

    Indexing with an int, a slice or an index array/tensor returns an int32 tensor of the rows (a copy of just
    those rows); ``shape``, ``len`` and ``dim()`` behave like the ``[N, seq_len]`` tensor it stands for.
    Rows are read with ``pread`` by default: with ``np.memmap`` (``mmap=True``) every random block read maps
    the pages around it (the kernel's fault-around, 64 KiB), so a worker's resident set grows by ~64 KiB per
    block touched until it holds the whole split (measurement in docs/results/data.md), which is what the
    flat-memory requirement rules out. ``fetch(i)``, when given, is called once before shard ``i`` is first read
    (it puts a remote shard at ``paths[i]``).
    """

    def __init__(
        self,
        paths: list[Path],
        counts: list[int],
        seq_len: int,
        dtype: str,
        limit: int | None = None,
        mmap: bool = False,
        fetch: Callable[[int], None] | None = None,
    ) -> None:
        self.paths, self.counts, self.seq_len, self.dtype = paths, counts, seq_len, np.dtype(dtype).newbyteorder("<")
        self.fetch, self._fetched = fetch, [fetch is None] * len(paths)
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        total = int(self.starts[-1])
        self.n = total if limit is None else min(limit, total)
        self.mmap = mmap
        self._maps: list[np.memmap | None] = [None] * len(paths)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.seq_len)

    def dim(self) -> int:
        return 2

    def __len__(self) -> int:
        return self.n

    def _map(self, i: int) -> np.memmap:
        if self._maps[i] is None:
            self._maps[i] = np.memmap(self.paths[i], dtype=self.dtype, mode="r", shape=(self.counts[i], self.seq_len))
        return self._maps[i]

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` (int64 array, each in [0, N)) as an int32 ``[len(idx), seq_len]`` array."""
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n):
            raise IndexError(f"block index out of range [0, {self.n})")
        out = np.empty((len(idx), self.seq_len), dtype=np.int32)
        which = np.searchsorted(self.starts, idx, side="right") - 1
        for shard in np.unique(which):
            if not self._fetched[shard]:
                self.fetch(int(shard))
                self._fetched[shard] = True
            sel = which == shard
            local = idx[sel] - self.starts[shard]
            out[sel] = self._map(int(shard))[local] if self.mmap else self._pread(int(shard), local)
        return out

    def _pread(self, shard: int, rows: np.ndarray) -> np.ndarray:
        """Rows of one shard through ``os.pread`` (one read for an ascending contiguous run, else one per row)."""
        row_bytes = self.seq_len * self.dtype.itemsize
        fd = os.open(self.paths[shard], os.O_RDONLY)
        try:
            if len(rows) > 1 and np.all(np.diff(rows) == 1):
                data = os.pread(fd, row_bytes * len(rows), int(rows[0]) * row_bytes)
            else:
                data = b"".join(os.pread(fd, row_bytes, int(r) * row_bytes) for r in rows)
        finally:
            os.close(fd)
        if len(data) != row_bytes * len(rows):
            raise ValueError(f"shard {self.paths[shard]} is shorter than its manifest says (truncated?)")
        return np.frombuffer(data, dtype=self.dtype).reshape(len(rows), self.seq_len)

    def __getitem__(self, key: Any) -> torch.Tensor:
        if isinstance(key, slice):
            return torch.from_numpy(self.rows(np.arange(self.n)[key]))
        if isinstance(key, int | np.integer):
            k = int(key) + (self.n if key < 0 else 0)
            return torch.from_numpy(self.rows(np.array([k]))[0])
        if isinstance(key, torch.Tensor):
            key = key.numpy()
        return torch.from_numpy(self.rows(np.asarray(key)))

    def __iter__(self) -> Iterator[torch.Tensor]:
        for i in range(self.n):
            yield self[i]


def verify(
    store: Store, shards: list[dict[str, Any]], full: bool, what: str, hashed: frozenset[str] = frozenset()
) -> None:
    """Raise ValueError naming the shard if one is missing, has the wrong size or (``full``) the wrong SHA-256;
    files in ``hashed`` were just checked against their SHA-256 (by `fetch`) and are not read again."""
    sizes = store.sizes({s["file"].rsplit("/", 1)[0] for s in shards})
    for s in shards:
        size = sizes.get(s["file"])
        if size is None:
            raise ValueError(f"{what}: shard {store.path(s['file'])} is missing; re-run `msg-ray data prepare`")
        if size != s["bytes"]:
            raise ValueError(
                f"{what}: shard {store.path(s['file'])} has {size} bytes, the manifest says {s['bytes']} (corrupt "
                "or truncated); delete the folder and prepare again"
            )
        if full and s["file"] not in hashed and store.sha256(s["file"]) != s["sha256"]:
            raise ValueError(
                f"{what}: shard {store.path(s['file'])} fails its SHA-256 check (corrupt); delete the folder and "
                "prepare again"
            )


def mirror(store: Store, shards: list[dict[str, Any]], local_root: Path) -> frozenset[str]:
    """Copy remote shards (and their manifest's tokenizer) into ``local_root`` once, each checked against its
    SHA-256 while it is copied; returns the shards this call copied (the others were there already)."""
    fetch(store, TOKENIZER_FILE, local_root)
    fetch(store, MANIFEST, local_root)
    return frozenset(s["file"] for s in shards if fetch(store, s["file"], local_root, s["sha256"]))


def fetch(store: Store, rel: str, local_root: Path, sha256: str | None = None) -> bool:
    """Copy ``rel`` from ``store`` to ``local_root/rel`` unless already there; True if this call copied it. The
    processes of one node take turns (a lock file per target), so a node downloads each file once, not once per
    worker; the copy is renamed into place only after its SHA-256 (when given) matched."""
    dst = local_root / rel
    if dst.is_file():
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst.with_name(f".{dst.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if dst.is_file():  # another worker of this node fetched it while this one waited
            return False
        tmp = dst.with_name(f".{dst.name}.partial-{os.getpid()}")
        digest = hashlib.sha256()
        with store.fs.open_input_stream(store.path(rel)) as src, open(tmp, "wb") as out:
            while chunk := src.read(1 << 24):
                digest.update(chunk)
                out.write(chunk)
        if sha256 is not None and digest.hexdigest() != sha256:
            tmp.unlink()
            raise ValueError(
                f"shard {store.path(rel)} fails its SHA-256 check (corrupt); delete the folder and prepare again"
            )
        os.replace(tmp, dst)
    return True
