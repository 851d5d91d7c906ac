"""Resolve a configured text source into train/valid(/test) record lists: built-in corpus, local files, or hub.

A `Source` has a stable ``key`` (computed without reading the data, so a cached preparation is found fast) and a
``load()`` that returns ``{"train": [...], "valid": [...], "test": [...]}`` (test optional). Local and hub sources
go through Hugging Face `datasets`; a source without a validation split gets one carved out of train, seeded.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


@dataclass(frozen=True)
class Source:
    key: str  # short, filesystem-safe, stable for unchanged inputs
    description: str
    load: Callable[[], dict[str, list[str]]]


def resolve_source(
    source: str,
    data_files: Any,
    text_column: str,
    source_config: str | None,
    split_seed: int,
    valid_fraction: float,
    root: Path,
) -> Source:
    """Decide what kind of source ``source`` names and return how to load it (nothing is read yet)."""
    if source in CORPORA:
        if data_files is not None:
            raise ValueError(f"data_files must be None for the built-in corpus {source!r}")
        key = source if source == "wikitext2" else f"{source}-s{split_seed}"
        return Source(key, f"built-in {source}", lambda: corpus_splits(source, root, split_seed))
    files = _local_files(source, data_files)
    if files is not None:
        builder = _builder_for(files)
        stats = [(s, str(p), p.stat().st_size, p.stat().st_mtime_ns) for s, ps in files.items() for p in ps]
        key = "local-" + _digest([builder, stats, text_column, split_seed, valid_fraction])
        desc = f"local {builder} files {sorted(str(p) for ps in files.values() for p in ps)}"
        return Source(key, desc, lambda: _load_local(builder, files, text_column, split_seed, valid_fraction, root))
    return _hub_source(source, source_config, data_files, text_column, split_seed, valid_fraction, root)


def _digest(obj: Any) -> str:
    return hashlib.sha256(repr(obj).encode("utf-8")).hexdigest()[:16]


def _local_files(source: str, data_files: Any) -> dict[str, list[Path]] | None:
    """Split -> files for a local source (a path, or a builder name with data_files); None for a hub name."""
    if source in set(BUILDERS.values()):
        if data_files is None:
            raise ValueError(f"source {source!r} needs data_files (a path, list of paths or split->paths dict)")
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


def _column_texts(ds: Any, column: str, where: str) -> list[str]:
    if column not in ds.column_names:
        raise ValueError(f"text column {column!r} not found in {where}; available columns: {ds.column_names}")
    values = ds[column]
    if any(v is not None and not isinstance(v, str) for v in values[:1000]):
        raise ValueError(f"text column {column!r} in {where} does not hold strings")
    return [v for v in values if v is not None and v.strip()]


def _load_local(builder: str, files: dict[str, list[Path]], column: str, seed: int, frac: float, root: Path):
    import datasets  # deferred: importing datasets costs ~1 s, built-in corpora do not need it

    out: dict[str, list[str]] = {}
    for split, paths in files.items():
        where = f"{split} files {[str(p) for p in paths]}"
        try:
            ds = datasets.load_dataset(
                builder, data_files=[str(p) for p in paths], split="train", cache_dir=str(root / "hf_datasets")
            )
        except Exception as exc:  # datasets wraps parser errors in several exception types
            raise ValueError(f"could not read {where} as {builder}: {_root_cause(exc)}") from exc
        texts = _column_texts(ds, "text" if builder == "text" else column, where)
        if not texts:
            raise ValueError(f"no text in {where} (empty file or only blank records)")
        out[split] = texts
    return _ensure_valid(out, seed, frac)


def _root_cause(exc: BaseException) -> str:
    """datasets wraps parser errors ("An error occurred while generating the dataset"): show the real one."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    return f"{type(exc).__name__}: {exc}"


def _ensure_valid(splits: dict[str, list[str]], seed: int, frac: float) -> dict[str, list[str]]:
    """Carve a seeded validation split (``frac`` of the records, at least one) out of train if there is none."""
    if "valid" in splits:
        return splits
    train = splits["train"]
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    held = set(order[: max(1, round(frac * len(train)))])
    splits["valid"] = [t for i, t in enumerate(train) if i in held]
    splits["train"] = [t for i, t in enumerate(train) if i not in held]
    return splits


def _hub_source(name, config, data_files, column, seed, frac, root) -> Source:
    import datasets

    try:
        dsd = datasets.load_dataset(name, config, data_files=data_files)
    except Exception as exc:
        raise ValueError(
            f"unknown corpus {name!r}: not a built-in ({', '.join(CORPORA)}), not a local file or folder, and "
            f"`datasets` could not load it ({type(exc).__name__}: {exc})"
        ) from exc
    splits = {_SPLIT_ALIASES[s]: dsd[s] for s in dsd if s in _SPLIT_ALIASES}
    if "train" not in splits:
        raise ValueError(f"dataset {name!r} has no train split (splits: {list(dsd)})")
    key = "hub-" + _digest([name, config, {s: d._fingerprint for s, d in splits.items()}, column, seed, frac])

    def load() -> dict[str, list[str]]:
        out = {s: _column_texts(d, column, f"{name} {s}") for s, d in splits.items()}
        return _ensure_valid(out, seed, frac)

    return Source(key, f"datasets {name}" + (f"/{config}" if config else ""), load)
