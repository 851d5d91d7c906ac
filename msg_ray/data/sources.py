"""Resolve a configured text source into ordered input chunks: built-in corpus, local files, or a hub dataset.

A `Source` has a stable ``key`` (computed without reading the data, so prepared shards are found fast), a
``fingerprint`` (what the key covers, recorded in the manifest) and ``tasks()``: the source cut into ordered
chunk descriptions of about ``chunk_bytes`` of text each, small and JSON-serialisable so any Ray worker can
process one. A chunk names a byte range of a text/JSON-lines file, row groups of a parquet file, a whole csv/JSON
file, or carries its records inline (built-in corpora, `datasets` hub datasets, streaming ones included).
`read_records(task)` returns a chunk's non-blank records. Local files are checked on the driver first (empty,
binary, not UTF-8, missing text column), so a bad input fails with one line before anything is tokenised.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from msg_ray.data.builtin import CORPORA, corpus_splits

BUILDERS = {
    ".txt": "text",
    ".text": "text",
    ".md": "text",
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".parquet": "parquet",
}
_SPLIT_ALIASES = {"train": "train", "validation": "valid", "valid": "valid", "dev": "valid", "test": "test"}
_SNIFF = 1 << 16  # bytes read from each local file on the driver to catch binary / non-UTF-8 input


@dataclass(frozen=True)
class Source:
    key: str  # short, filesystem-safe, stable for unchanged inputs
    description: str
    fingerprint: dict[str, Any]
    tasks: Callable[[], Iterator[dict[str, Any]]]  # ordered chunks; "split" says which split each feeds
    carve: bool  # no validation split in the source: carve one out of each train chunk (seeded)


def resolve_source(
    source: str,
    data_files: Any,
    text_column: str,
    source_config: str | None,
    split_seed: int,
    valid_fraction: float,
    root: Path,
    chunk_bytes: int = 16 << 20,
    streaming: bool = False,
) -> Source:
    """Decide what kind of source ``source`` names and how to cut it into chunks (local files are checked)."""
    if source in CORPORA:
        if data_files is not None:
            raise ValueError(f"data_files must be None for the built-in corpus {source!r}")
        key = source if source == "wikitext2" else f"{source}-s{split_seed}"

        def builtin_tasks() -> Iterator[dict[str, Any]]:
            splits = corpus_splits(source, root, split_seed)
            for split in ("train", "valid", "test"):
                yield from _inline_chunks(split, splits.get(split, []), chunk_bytes)

        return Source(key, f"built-in {source}", {"corpus": source, "split_seed": split_seed}, builtin_tasks, False)
    files = _local_files(source, data_files)
    if files is not None:
        builder = _builder_for(files)
        column = "text" if builder == "text" else text_column
        for ps in files.values():
            for p in ps:
                _check_file(p, builder, column)
        stats = [(s, str(p), p.stat().st_size, p.stat().st_mtime_ns) for s, ps in files.items() for p in ps]
        fingerprint = {"builder": builder, "files": stats, "text_column": column}
        key = "local-" + _digest([fingerprint, split_seed, valid_fraction])
        desc = f"local {builder} files {sorted(str(p) for ps in files.values() for p in ps)}"

        def file_tasks() -> Iterator[dict[str, Any]]:
            for split in ("train", "valid", "test"):
                for path in files.get(split, []):
                    yield from _file_chunks(split, path, builder, column, chunk_bytes)

        return Source(key, desc, fingerprint, file_tasks, "valid" not in files)
    return _hub_source(
        source, source_config, data_files, text_column, split_seed, valid_fraction, chunk_bytes, streaming
    )


def _digest(obj: Any) -> str:
    return hashlib.sha256(repr(obj).encode("utf-8")).hexdigest()[:16]


def _local_files(source: str, data_files: Any) -> dict[str, list[Path]] | None:
    """Split -> files for a local source (a path, or a builder name with data_files); None for a hub name."""
    if source in set(BUILDERS.values()):
        if data_files is None:
            raise ValueError(f"source {source!r} needs data_files (a path, list of paths or split->paths dict)")
        if any("://" in item for item in _items(data_files)):
            return None  # URLs (https://, s3://, hf://): `datasets` reads them through fsspec
        spec = data_files
    elif Path(source).expanduser().exists():
        if data_files is not None:
            raise ValueError(f"give either a local path as source or data_files, not both (source={source!r})")
        spec = source
    else:
        return None
    if isinstance(spec, dict):
        return {_split_name(k): _expand(v) for k, v in spec.items()}
    paths = _expand(spec)
    if len(paths) > 1 and Path(str(spec)).is_dir():
        return _split_by_name(paths)
    return {"train": paths}


def _items(spec: Any) -> list[str]:
    """Every path or URL named in a ``data_files`` spec (a string, a list, or split -> string or list)."""
    values = spec.values() if isinstance(spec, dict) else [spec]
    return [str(x) for v in values for x in ([v] if isinstance(v, str | Path) else v)]


def _split_name(name: str) -> str:
    if name not in _SPLIT_ALIASES:
        raise ValueError(f"data_files split {name!r} is not one of {sorted(_SPLIT_ALIASES)}")
    return _SPLIT_ALIASES[name]


def _expand(spec: Any) -> list[Path]:
    items = [spec] if isinstance(spec, (str, Path)) else list(spec)
    out: list[Path] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in BUILDERS and not p.name.startswith("."))
            if not found:
                raise ValueError(f"folder {path} holds no {'/'.join(sorted(BUILDERS))} files")
            out += found
        elif path.is_file():
            if path.stat().st_size == 0:
                raise ValueError(f"empty file: {path}")
            out.append(path.resolve())
        else:
            raise ValueError(f"file not found: {path}")
    return out


def _split_by_name(paths: list[Path]) -> dict[str, list[Path]]:
    """Files in a folder: a name containing valid/validation/dev or test marks that split, the rest is train."""
    out: dict[str, list[Path]] = {}
    for path in paths:
        name = path.name.lower()
        split = "test" if "test" in name else "valid" if any(k in name for k in ("valid", "dev")) else "train"
        out.setdefault(split, []).append(path)
    if "train" not in out:
        raise ValueError(f"no training files among {[str(p) for p in paths]}")
    return out


def _builder_for(files: dict[str, list[Path]]) -> str:
    builders = {BUILDERS.get(p.suffix.lower()) for ps in files.values() for p in ps}
    if None in builders:
        bad = [str(p) for ps in files.values() for p in ps if p.suffix.lower() not in BUILDERS]
        raise ValueError(f"unsupported file type {bad}: use {sorted(BUILDERS)}")
    if len(builders) != 1:
        raise ValueError(f"mixed file types {sorted(builders)} in one source; convert them to one format")
    return builders.pop()


def _check_file(path: Path, builder: str, column: str) -> None:
    """One-line errors for inputs that cannot be a corpus: empty, binary, not UTF-8, no such column/parquet."""
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"empty file: {path}")
    if builder == "parquet":
        try:
            names = pq.ParquetFile(path).schema_arrow.names
        except Exception as exc:  # pyarrow raises ArrowInvalid / OSError on a non-parquet file
            raise ValueError(f"could not read {path} as parquet: {type(exc).__name__}: {exc}") from None
        if column not in names:
            raise ValueError(f"text column {column!r} not found in {path}; available columns: {names}")
        return
    with open(path, "rb") as fh:
        head = fh.read(_SNIFF)
    nul = head.find(b"\0")
    if nul >= 0:
        raise ValueError(f"binary file: {path} (a NUL byte at offset {nul}; expected UTF-8 text)")
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=len(head) == size)
    except UnicodeDecodeError as exc:
        raise ValueError(f"could not read {path} as {builder}: UnicodeDecodeError: {exc} (not UTF-8 text)") from None
    if path.suffix.lower() == ".jsonl":
        first = next((line for line in head.decode("utf-8", "ignore").splitlines() if line.strip()), "")
        try:
            row = json.loads(first)
        except json.JSONDecodeError as exc:
            raise ValueError(f"could not read {path} as JSON lines: first record: {exc}") from None
        if not isinstance(row, dict) or column not in row:
            keys = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise ValueError(f"text column {column!r} not found in {path}; available columns: {keys}")


def _inline_chunks(split: str, records: Any, chunk_bytes: int) -> Iterator[dict[str, Any]]:
    """Records (any iterable of strings) grouped into chunks of about ``chunk_bytes`` characters, carried inline."""
    texts: list[str] = []
    size = 0
    for text in records:
        texts.append(text)
        size += len(text)
        if size >= chunk_bytes:
            yield {"split": split, "kind": "inline", "texts": texts}
            texts, size = [], 0
    if texts:
        yield {"split": split, "kind": "inline", "texts": texts}


def _texts(rows: Any, column: str, what: str) -> Iterator[str]:
    """The ``column`` of each row; a streaming dataset may not know its columns before the first row, so a missing
    column is caught here as the same one-line error."""
    for row in rows:
        if column not in row:
            raise ValueError(f"text column {column!r} not found in {what}; available columns: {sorted(row)}")
        yield row[column]


def _file_chunks(split: str, path: Path, builder: str, column: str, chunk_bytes: int) -> Iterator[dict[str, Any]]:
    """Byte ranges of a text / JSON-lines file, row-group ranges of a parquet file, or the whole csv/JSON file."""
    base = {"split": split, "path": str(path), "column": column}
    if builder == "text" or path.suffix.lower() == ".jsonl":
        size = path.stat().st_size
        for start in range(0, size, chunk_bytes):
            yield {
                **base,
                "kind": "lines" if builder == "text" else "jsonl",
                "start": start,
                "end": min(size, start + chunk_bytes),
            }
    elif builder == "parquet":
        meta = pq.ParquetFile(path).metadata
        groups: list[int] = []
        size = 0
        for g in range(meta.num_row_groups):
            groups.append(g)
            size += meta.row_group(g).total_byte_size
            if size >= chunk_bytes:
                yield {**base, "kind": "parquet", "groups": groups}
                groups, size = [], 0
        if groups:
            yield {**base, "kind": "parquet", "groups": groups}
    else:
        yield {**base, "kind": builder}


def _line_range(path: str, start: int, end: int) -> Iterator[bytes]:
    """Lines whose first byte lies in ``[start, end)`` (so consecutive ranges split a file without overlap)."""
    with open(path, "rb") as fh:
        if start > 0:
            fh.seek(start - 1)
            fh.readline()  # the rest of the line that began before ``start`` belongs to the previous range
        while fh.tell() < end:
            line = fh.readline()
            if not line:
                break
            yield line


def read_records(task: dict[str, Any]) -> list[str]:
    """A chunk's non-blank text records (ValueError naming the file on unreadable input)."""
    kind, path = task["kind"], task.get("path")
    if kind == "inline":
        texts = task["texts"]
    elif kind == "lines":
        texts = [
            line.decode("utf-8", "replace").rstrip("\r\n") for line in _line_range(path, task["start"], task["end"])
        ]
    elif kind == "jsonl":
        texts = []
        for line in _line_range(path, task["start"], task["end"]):
            if not line.strip():
                continue
            try:
                texts.append(json.loads(line)[task["column"]])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"could not read a record of {path} near byte {task['start']}: {exc!r}") from None
    elif kind == "parquet":
        table = pq.ParquetFile(path).read_row_groups(task["groups"], columns=[task["column"]])
        texts = table.column(0).to_pylist()
    else:
        texts = _load_whole(kind, path, task["column"])
    if any(t is not None and not isinstance(t, str) for t in texts[:1000]):
        raise ValueError(f"text column {task.get('column', 'text')!r} in {path or 'the source'} does not hold strings")
    return [t for t in texts if t is not None and t.strip()]


def _load_whole(builder: str, path: str, column: str) -> list[str]:
    import datasets  # deferred: importing datasets costs ~1 s and only csv / JSON-array files need it

    try:
        ds = datasets.load_dataset(builder, data_files=[path], split="train", cache_dir=None)
    except Exception as exc:  # datasets wraps parser errors in several exception types
        raise ValueError(f"could not read {path} as {builder}: {_root_cause(exc)}") from exc
    if column not in ds.column_names:
        raise ValueError(f"text column {column!r} not found in {path}; available columns: {ds.column_names}")
    return ds[column]


def _root_cause(exc: BaseException) -> str:
    """datasets wraps parser errors ("An error occurred while generating the dataset"): show the real one."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    return f"{type(exc).__name__}: {exc}"


def carve(records: list[str], seed: int, index: int, frac: float) -> tuple[list[str], list[str]]:
    """Split a train chunk's records into (train, valid): ``frac`` of them (at least one) held out, seeded by
    ``(seed, chunk index)`` so every worker and every re-run holds out the same records."""
    if not records:
        return [], []
    order = list(range(len(records)))
    random.Random(seed if index == 0 else f"{seed}:{index}").shuffle(order)
    held = set(order[: max(1, round(frac * len(records)))])
    return [t for i, t in enumerate(records) if i not in held], [t for i, t in enumerate(records) if i in held]


def _hub_source(name, config, data_files, column, seed, frac, chunk_bytes, streaming) -> Source:
    import datasets

    try:
        dsd = datasets.load_dataset(name, config, data_files=data_files, streaming=streaming)
    except Exception as exc:
        raise ValueError(
            f"unknown corpus {name!r}: not a built-in ({', '.join(CORPORA)}), not a local file or folder, and "
            f"`datasets` could not load it ({type(exc).__name__}: {exc})"
        ) from exc
    splits = {_SPLIT_ALIASES[s]: dsd[s] for s in dsd if s in _SPLIT_ALIASES}
    if "train" not in splits:
        raise ValueError(f"dataset {name!r} has no train split (splits: {list(dsd)})")
    for split, d in splits.items():
        names = d.column_names
        if names is not None and column not in names:
            raise ValueError(f"text column {column!r} not found in {name} {split}; available columns: {names}")
    prints = {s: getattr(d, "_fingerprint", None) for s, d in splits.items()}
    fingerprint = {
        "dataset": name,
        "config": config,
        "data_files": repr(data_files),
        "streaming": streaming,
        "fingerprints": prints,
        "text_column": column,
    }
    key = "hub-" + _digest([fingerprint, seed, frac])

    def hub_tasks() -> Iterator[dict[str, Any]]:
        for split in ("train", "valid", "test"):
            if split in splits:
                yield from _inline_chunks(split, _texts(splits[split], column, f"{name} {split}"), chunk_bytes)

    return Source(
        key, f"datasets {name}" + (f"/{config}" if config else ""), fingerprint, hub_tasks, "valid" not in splits
    )
