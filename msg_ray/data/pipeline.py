"""From a `DataConfig` to token shards on shared storage, read back memory-mapped: the one data path.

``prepare(cfg)`` resolves the source, loads (or trains once) the tokenizer, cuts the source into chunks
(`sources`), tokenises every chunk — in this process, or in parallel by an executor given by the caller (Ray Data
``map_batches``: `msg_ray.train.prepare`; this floor stays free of Ray), same function, same bytes — and writes each chunk's ``seq_len`` blocks as a shard (`shards`), then the
manifest. Records are tokenised without special tokens, each followed by EOS, concatenated per chunk and cut into
``seq_len`` blocks (a chunk's remainder, < ``seq_len`` tokens, is dropped). The same blocks serve both objectives:
causal LM uses them as is, MLM masks them on the fly in `BlockLoader`. A second ``prepare`` with the same inputs
only opens the manifest; ``DataConfig.shards`` names a prepared folder directly (what the driver hands to Ray
workers, so they never resolve the source or tokenise).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tokenizers import Tokenizer

from msg_ray.data import shards as S
from msg_ray.data.builtin import CORPORA
from msg_ray.data.cache import cache_root, say
from msg_ray.data.loader import BlockLoader
from msg_ray.data.sources import BUILDERS, Source, carve, read_records, resolve_source
from msg_ray.data.tokenizer import load_tokenizer, parse_spec, special_ids, tokenizer_digest
from msg_ray.validate import check_types

_FORMAT = 3  # bump when the shard layout changes, so stale shards are not reused
_SPLITS = S.SPLITS
_BPE_SAMPLE_CHARS = 256 << 20  # a BPE is trained on at most this much of the train split (its first chunks)
_WAVE_CHARS = 256 << 20  # inline chunks (built-in, hub) are shipped to Ray in waves of about this much text
_ENCODE_BATCH = 1000  # records per `encode_batch` call (bounds the Encoding objects alive at once)
# Runs chunk tasks (JSON-serialisable dicts) with `run_chunk` somewhere and returns their results in any order.
Executor = Callable[[list[dict[str, Any]], dict[str, Any]], list[dict[str, Any]]]
Mirror = Literal["now", "on_read"]


@dataclass(kw_only=True)
class DataConfig:
    """What text, which tokenizer, how to pack, where the shards live. ``split_seed`` fixes the held-out dev/test
    sets of ``bbc_news``/``movie_snippets`` (and the carved validation split of sources without one): keep it equal
    to the seed given to `downstream.load_classification` so evaluation texts stay out of pretraining.
    ``max_train_tokens`` keeps the first N tokens of the train stream (valid/test are never capped).
    ``source_config`` is a `datasets` config name for hub sources (``streaming`` reads it without downloading it
    whole); ``valid_fraction`` sizes the carved validation split. ``storage_path``: where shards are written, a
    local/NFS path or a `pyarrow.fs` URI every node sees (None: ``<cache>/shards``); ``shards``: an already
    prepared folder to read (set by the driver for the workers). ``chunk_bytes``: text per chunk/shard (the unit
    of parallel work and of resuming)."""

    source: str = "wikitext2"
    tokenizer: str = "bpe8k"
    seq_len: int = 128
    objective: str = "clm"
    text_column: str = "text"
    data_files: Any = None
    cache_dir: str | None = None
    seed: int = 0
    mlm_probability: float = 0.15
    max_train_tokens: int | None = None
    source_config: str | None = None
    split_seed: int = 0
    valid_fraction: float = 0.05
    storage_path: str | None = None
    shards: str | None = None
    chunk_bytes: int = 16 << 20
    streaming: bool = False

    def __post_init__(self) -> None:
        check_types(self)
        if not isinstance(self.source, str) or not self.source:
            raise ValueError(f"source must be a non-empty string, got {self.source!r}")
        if self.objective not in ("clm", "mlm"):
            raise ValueError(f"objective must be 'clm' or 'mlm', got {self.objective!r}")
        if not isinstance(self.seq_len, int) or self.seq_len < 2:
            raise ValueError(f"seq_len must be an int >= 2, got {self.seq_len!r}")
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1), got {self.mlm_probability}")
        if self.max_train_tokens is not None and self.max_train_tokens < self.seq_len:
            raise ValueError(f"max_train_tokens must be >= seq_len ({self.seq_len}), got {self.max_train_tokens}")
        if not self.text_column:
            raise ValueError("text_column must be a non-empty string")
        if not 0.0 < self.valid_fraction <= 0.5:
            raise ValueError(f"valid_fraction must be in (0, 0.5], got {self.valid_fraction}")
        if not isinstance(self.chunk_bytes, int) or self.chunk_bytes < 1024:
            raise ValueError(f"chunk_bytes must be an int >= 1024, got {self.chunk_bytes!r}")
        for name in ("storage_path", "shards"):
            if getattr(self, name) is not None and not getattr(self, name):
                raise ValueError(f"{name} must be None or a non-empty path/URI")
        try:
            parse_spec(self.tokenizer)
        except ValueError as e:
            raise ValueError(f"tokenizer: {e}") from None


@dataclass
class PreparedData:
    """Blocks per split (`shards.ShardedBlocks`, memory-mapped ``[N, seq_len]``), the tokenizer and its special
    ids, the manifest and statistics."""

    config: DataConfig
    tokenizer: Tokenizer
    train_blocks: S.ShardedBlocks
    valid_blocks: S.ShardedBlocks
    test_blocks: S.ShardedBlocks | None
    vocab_size: int
    eos_id: int
    pad_id: int
    mask_id: int
    cls_id: int
    sep_id: int
    manifest: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def special_ids(self) -> list[int]:
        return [self.eos_id, self.pad_id, self.mask_id, self.cls_id, self.sep_id]

    def loader(
        self, split: str = "train", *, batch_size: int, rank: int = 0, world_size: int = 1, seed: int | None = None
    ) -> BlockLoader:
        """A `BlockLoader` over ``split`` with this data's objective, special ids and MLM probability."""
        blocks = {"train": self.train_blocks, "valid": self.valid_blocks, "test": self.test_blocks}[split]
        if blocks is None:
            raise ValueError(f"source {self.config.source!r} has no {split} split")
        return BlockLoader(
            blocks,
            batch_size=batch_size,
            seed=self.config.seed if seed is None else seed,
            rank=rank,
            world_size=world_size,
            objective=self.config.objective,
            mask_id=self.mask_id,
            vocab_size=self.vocab_size,
            special_ids=self.special_ids,
            mlm_probability=self.config.mlm_probability,
        )


def _absolute(path: str) -> str:
    return path if "://" in path else str(Path(path).expanduser().resolve())


def resolve_paths(cfg: DataConfig) -> DataConfig:
    """``cfg`` with every local path made absolute against this process's working directory (call it on the
    driver: Ray workers run elsewhere, so a relative ``my_corpus.txt`` would not be found there)."""
    changes: dict[str, Any] = {}
    if cfg.source not in CORPORA and cfg.source not in BUILDERS.values() and Path(cfg.source).expanduser().exists():
        changes["source"] = _absolute(cfg.source)
    files = cfg.data_files
    if isinstance(files, str):
        changes["data_files"] = _absolute(files)
    elif isinstance(files, dict):
        changes["data_files"] = {
            k: _absolute(v) if isinstance(v, str) else [_absolute(x) for x in v] for k, v in files.items()
        }
    elif isinstance(files, list | tuple):
        changes["data_files"] = [_absolute(x) for x in files]
    for name in ("cache_dir", "storage_path", "shards"):
        if getattr(cfg, name):
            changes[name] = _absolute(getattr(cfg, name))
    kind, arg = parse_spec(cfg.tokenizer)
    if kind == "file":
        changes["tokenizer"] = str(arg)
    return replace(cfg, **changes)


def storage_root(cfg: DataConfig) -> str:
    """Where this config's prepared folders live: ``storage_path``, else ``<cache>/shards``."""
    return cfg.storage_path or str(cache_root(cfg.cache_dir) / "shards")


def prepare(cfg: DataConfig, *, executor: Executor | None = None, mirror: Mirror = "on_read") -> PreparedData:
    """Shards for ``cfg`` (written once, resumed if interrupted), opened for reading; raises ValueError naming
    any data problem. ``executor`` runs chunk tasks (`run_chunks` in this process when None; the Ray Data one
    is `msg_ray.train.prepare.ray_executor`); it is used only when shards must be written. ``mirror``: when
    should shards on remote storage be copied to this node (see `open_prepared`)."""
    start = time.perf_counter()
    cfg = resolve_paths(cfg)
    root = cache_root(cfg.cache_dir)
    if cfg.shards:
        return open_prepared(cfg, root, mirror)
    source = resolve_source(
        cfg.source,
        cfg.data_files,
        cfg.text_column,
        cfg.source_config,
        cfg.split_seed,
        cfg.valid_fraction,
        root,
        cfg.chunk_bytes,
        cfg.streaming,
    )
    tok = load_tokenizer(cfg.tokenizer, root, source.key, lambda: _bpe_texts(source, cfg))
    digest = tokenizer_digest(tok)
    tag = "".join(c if c.isalnum() else "_" for c in cfg.tokenizer)[-24:]
    key = f"{source.key}-{tag}-L{cfg.seq_len}-m{cfg.max_train_tokens}-c{cfg.chunk_bytes}-{digest[:8]}-v{_FORMAT}"
    uri = S.join(storage_root(cfg), key)
    store = S.Store(uri)
    from_cache = store.exists(S.MANIFEST)
    if not from_cache:
        S.check_writable(storage_root(cfg), "data.storage_path")
        executor = executor or run_chunks
        how = getattr(executor, "__name__", "custom")
        say(f"preparing {source.description} with tokenizer {cfg.tokenizer!r}, seq_len {cfg.seq_len} ({how})")
        _build(cfg, source, tok, store, key, executor)
    data = open_prepared(replace(cfg, shards=uri), root, mirror)
    data.stats.update(from_cache=from_cache, prepare_seconds=round(time.perf_counter() - start, 3))
    return data


def _bpe_texts(source: Source, cfg: DataConfig) -> list[str]:
    """Train records a BPE is trained on: the train split (carved validation records excluded), at most
    ``_BPE_SAMPLE_CHARS`` of it, read on the driver."""
    out: list[str] = []
    size = 0
    for index, task in enumerate(source.tasks()):
        if task["split"] != "train" or size >= _BPE_SAMPLE_CHARS:
            break
        records = read_records(task)
        if source.carve:
            records = carve(records, cfg.split_seed, index, cfg.valid_fraction)[0]
        out += records
        size += sum(map(len, records))
    return out


# -- building: chunks -> shards (one function, run by Ray Data or in this process) ----------------------------------
_TOKENIZERS: dict[str, Tokenizer] = {}


def process_chunk(task: dict[str, Any], ctx: dict[str, Any]) -> dict[str, Any]:
    """Read, tokenise and pack one chunk and write its shards + done marker; returns the marker."""
    store = S.Store(ctx["uri"])
    if ctx["uri"] not in _TOKENIZERS:
        _TOKENIZERS[ctx["uri"]] = Tokenizer.from_str(store.read(S.TOKENIZER_FILE).decode("utf-8"))
    tok, eos = _TOKENIZERS[ctx["uri"]], ctx["eos"]
    records = read_records(task)
    parts = {task["split"]: records}
    if ctx["carve"] and task["split"] == "train":
        parts["train"], parts["valid"] = carve(records, ctx["seed"], task["index"], ctx["frac"])
    # encode_batch_fast skips character offsets we do not use (~15% faster; tokenizers >= 0.20)
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    streams, info = {}, {}
    for split, texts in parts.items():
        pieces = [np.zeros(0, dtype=np.uint32)]
        for i in range(0, len(texts), _ENCODE_BATCH):
            for enc in encode(texts[i : i + _ENCODE_BATCH], add_special_tokens=False):
                pieces.append(np.asarray([*enc.ids, eos], dtype=np.uint32))
        streams[split] = np.concatenate(pieces)
        info[f"{split}_records"] = len(texts)
    return S.write_chunk(store, task["index"], streams, ctx["seq_len"], ctx["dtype"], info)


def run_chunk(task: dict[str, Any], ctx: dict[str, Any]) -> dict[str, Any]:
    """`process_chunk`, with data problems returned as ``{"index", "error"}`` (one line on the driver, whichever
    process or Ray worker ran it)."""
    try:
        return process_chunk(task, ctx)
    except (ValueError, OSError) as exc:
        return {"index": task["index"], "error": str(exc) if isinstance(exc, ValueError) else f"{exc!r}"}


def run_chunks(tasks: list[dict[str, Any]], ctx: dict[str, Any]) -> list[dict[str, Any]]:
    """The in-process executor: the chunks one after another (the tokenizer may use several threads)."""
    return [run_chunk(t, ctx) for t in tasks]


run_chunks.__name__ = "local"


def _waves(tasks: Iterator[dict[str, Any]], skip, max_tasks: int) -> Iterator[list[dict[str, Any]]]:
    """Chunks to process, numbered in source order, grouped so that a wave's inline text stays bounded.
    ``skip(index, task)`` is asked lazily, after the previous waves' results are in."""
    wave: list[dict[str, Any]] = []
    size = 0
    for index, task in enumerate(tasks):
        if skip(index, task):
            continue
        wave.append({**task, "index": index})
        size += sum(map(len, task.get("texts", ())))
        if size >= _WAVE_CHARS or len(wave) >= max_tasks:
            yield wave
            wave, size = [], 0
    if wave:
        yield wave


def _train_stream_tokens(markers: dict[int, dict]) -> int:
    """Train tokens in the contiguous run of done chunks from chunk 0 (what the capped stream can use)."""
    total, i = 0, 0
    while i in markers:
        total += markers[i]["shards"].get("train", {}).get("tokens", 0)
        i += 1
    return total


def _build(cfg: DataConfig, source: Source, tok: Tokenizer, store: S.Store, key: str, executor: Executor) -> None:
    start = time.perf_counter()
    ids = special_ids(tok)
    body = tok.to_str().encode("utf-8")
    if not store.exists(S.TOKENIZER_FILE) or store.read(S.TOKENIZER_FILE) != body:
        store.write(S.TOKENIZER_FILE, body)
    ctx = {
        "uri": store.uri,
        "seq_len": cfg.seq_len,
        "dtype": S.dtype_for(tok.get_vocab_size()),
        "eos": ids["eos"],
        "carve": source.carve,
        "seed": cfg.split_seed,
        "frac": cfg.valid_fraction,
    }
    markers = S.done_chunks(store)
    if markers:
        say(f"resuming: {len(markers)} chunk(s) already done in {store.uri}")
    cap = cfg.max_train_tokens
    n_tasks = 0

    def skip(index: int, task: dict[str, Any]) -> bool:  # done, or train text beyond the token cap
        capped = cap is not None and task["split"] == "train" and _train_stream_tokens(markers) >= cap
        return index in markers or capped

    for wave in _waves(source.tasks(), skip, 8 if cap is not None else 1024):
        for result in executor(wave, ctx):
            if "error" in result:
                raise ValueError(result["error"])
            markers[int(result["index"])] = result
        n_tasks = max(n_tasks, wave[-1]["index"] + 1)
        say(f"{len(markers)} chunk(s) done, {time.perf_counter() - start:.1f} s")
    n_tasks = max([n_tasks, *(i + 1 for i in markers)])
    manifest = _manifest(cfg, source, tok, key, markers, n_tasks, ctx["dtype"])
    manifest["prepare_seconds"] = round(time.perf_counter() - start, 2)
    manifest["executor"] = getattr(executor, "__name__", "custom")
    store.write(S.MANIFEST, json.dumps(manifest, indent=1).encode())


def _manifest(cfg, source: Source, tok: Tokenizer, key: str, markers: dict, n_tasks: int, dtype: str) -> dict:
    """Per split: shards in chunk order and totals (train capped at ``max_train_tokens``); checks that train and
    valid hold at least one block."""
    ordered = [markers[i] for i in range(n_tasks) if i in markers]
    if cfg.max_train_tokens is not None:  # train chunks after the cap were never needed
        keep, tokens = [], 0
        for m in ordered:
            if "train" in m["shards"] and tokens >= cfg.max_train_tokens:
                continue
            keep.append(m)
            tokens += m["shards"].get("train", {}).get("tokens", 0)
        ordered = keep
    splits: dict[str, Any] = {}
    for split in _SPLITS:
        entries = [m["shards"][split] for m in ordered if split in m["shards"]]
        if not entries:
            continue
        shards = [{k: e[k] for k in ("file", "blocks", "sha256", "bytes")} for e in entries if e["blocks"]]
        tokens, blocks = sum(e["tokens"] for e in entries), sum(e["blocks"] for e in entries)
        if split == "train" and cfg.max_train_tokens is not None:
            tokens = min(tokens, cfg.max_train_tokens)
            blocks = min(blocks, cfg.max_train_tokens // cfg.seq_len)
        records = sum(e["records"] for e in entries)
        if split != "test" and records == 0:
            raise ValueError(f"no text in {split} files of {source.description} (empty file or only blank records)")
        if split != "test" and blocks == 0:
            raise ValueError(
                f"{split} split of {source.description} has {tokens} tokens, fewer than one block of "
                f"seq_len={cfg.seq_len}: add text or lower seq_len"
            )
        splits[split] = {"tokens": tokens, "blocks": blocks, "records": records, "shards": shards}
    return {
        "format": _FORMAT,
        "key": key,
        "source": cfg.source,
        "description": source.description,
        "fingerprint": source.fingerprint,
        "tokenizer": {"spec": cfg.tokenizer, "digest": tokenizer_digest(tok), "vocab_size": tok.get_vocab_size()},
        "seq_len": cfg.seq_len,
        "dtype": dtype,
        "max_train_tokens": cfg.max_train_tokens,
        "chunk_bytes": cfg.chunk_bytes,
        "chunks": len(ordered),
        "splits": splits,
    }


# -- reading -------------------------------------------------------------------------------------------------------
def open_prepared(cfg: DataConfig, root: Path | None = None, mirror: Mirror = "on_read") -> PreparedData:
    """Open the prepared folder ``cfg.shards`` after checking it matches ``cfg`` (seq_len, tokenizer) and that its
    shards are intact (sizes always; SHA-256 once per node and shard set, remembered under ``<cache>/verified``).

    Shards on remote storage are copied into ``<cache>/mirror/<key>`` (once per node, each SHA-256-checked as it
    arrives): all of them here with ``mirror="now"`` (training workers: no download inside a step, a corrupt
    shard refused before the first one), else each on its first read, so a driver that only needs the counts
    downloads nothing."""
    if mirror not in ("now", "on_read"):
        raise ValueError(f"mirror must be 'now' or 'on_read', got {mirror!r}")
    root = root or cache_root(cfg.cache_dir)
    store = S.Store(cfg.shards)
    if not store.exists(S.MANIFEST):
        raise ValueError(
            f"data.shards: no prepared data at {cfg.shards} (no {S.MANIFEST}); run `msg-ray data prepare`, and on "
            "a cluster set data.storage_path to storage every node sees"
        )
    m = store.read_json(S.MANIFEST)
    if m.get("format") != _FORMAT:
        raise ValueError(f"data.shards: {cfg.shards} has shard format {m.get('format')}, this code reads {_FORMAT}")
    if m["seq_len"] != cfg.seq_len:
        raise ValueError(
            f"data.seq_len: the shards at {cfg.shards} hold blocks of seq_len {m['seq_len']}, the run uses "
            f"{cfg.seq_len}; prepare again with this seq_len"
        )
    body = store.read(S.TOKENIZER_FILE).decode("utf-8")
    tok = Tokenizer.from_str(body)
    if tokenizer_digest(tok) != m["tokenizer"]["digest"]:
        raise ValueError(f"data.shards: {store.path(S.TOKENIZER_FILE)} does not match its manifest's digest (corrupt)")
    _check_tokenizer(cfg, m, root)
    shards = [s for split in m["splits"].values() for s in split["shards"]]
    what = f"data.shards ({cfg.shards})"
    local_root, remote, hashed = root / "mirror" / m["key"], store, frozenset()
    if not store.local and mirror == "now":
        hashed = S.mirror(store, shards, local_root)
        store = S.Store(str(local_root))
    if store.local:
        _verify(store, shards, root / "verified" / f"{m['key']}.json", what, hashed)
    else:
        S.verify(store, shards, full=False, what=what)  # sizes from a listing; hashes as each shard arrives

    def on_read(info: dict[str, Any]) -> Callable[[int], None] | None:
        if store.local:
            return None

        def fetch(i: int) -> None:
            S.fetch(remote, info["shards"][i]["file"], local_root, info["shards"][i]["sha256"])

        return fetch

    blocks = {}
    for split, info in m["splits"].items():
        paths = [store.local_path(s["file"]) if store.local else local_root / s["file"] for s in info["shards"]]
        counts = [s["blocks"] for s in info["shards"]]
        blocks[split] = S.ShardedBlocks(
            paths, counts, m["seq_len"], m["dtype"], limit=info["blocks"], fetch=on_read(info)
        )
    ids = special_ids(tok)
    stats: dict[str, Any] = {}
    for split, info in m["splits"].items():
        stats.update({f"{split}_{k}": info[k] for k in ("tokens", "blocks", "records")})
    stats.update(source=cfg.source, tokenizer=cfg.tokenizer, vocab_size=tok.get_vocab_size(), seq_len=cfg.seq_len)
    stats.update(shards_path=cfg.shards, n_shards=len(shards), shard_bytes=sum(s["bytes"] for s in shards))
    stats.update(from_cache=True, tokenize_seconds=m.get("prepare_seconds"))
    return PreparedData(
        config=cfg,
        tokenizer=tok,
        train_blocks=blocks["train"],
        valid_blocks=blocks["valid"],
        test_blocks=blocks.get("test"),
        vocab_size=tok.get_vocab_size(),
        eos_id=ids["eos"],
        pad_id=ids["pad"],
        mask_id=ids["mask"],
        cls_id=ids["cls"],
        sep_id=ids["sep"],
        manifest=m,
        stats=stats,
    )


def _check_tokenizer(cfg: DataConfig, m: dict[str, Any], root: Path) -> None:
    """The run's tokenizer must be the shards' one: the same spec (``gpt2`` is pinned and SHA-checked, a BPE spec
    is trained per source, so the spec decides), and for a tokenizer file the same content digest."""
    made = m["tokenizer"]
    kind, _ = parse_spec(cfg.tokenizer)
    same, mine = cfg.tokenizer == made["spec"], cfg.tokenizer
    if kind == "file":
        digest = tokenizer_digest(load_tokenizer(cfg.tokenizer, root, "", list))
        same, mine = digest == made["digest"], f"{cfg.tokenizer} (digest {digest})"
    if not same:
        raise ValueError(
            f"data.tokenizer: the shards at {cfg.shards} were made with tokenizer {made['spec']} (digest "
            f"{made['digest']}), the run uses {mine}; prepare again with the run's tokenizer"
        )


def _verify(
    store: S.Store, shards: list[dict[str, Any]], stamp: Path, what: str, hashed: frozenset[str] = frozenset()
) -> None:
    """Sizes every time; SHA-256 only when the shard files' (size, mtime) differ from the last verified set, and
    not for the ``hashed`` ones (just fetched and checked)."""
    seen = {s["file"]: list(_stat(store.local_path(s["file"]))) for s in shards}
    if stamp.is_file() and json.loads(stamp.read_text()) == seen:
        S.verify(store, shards, full=False, what=what)
        return
    S.verify(store, shards, full=True, what=what, hashed=hashed)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(seen))


def _stat(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except FileNotFoundError:
        return (-1, -1)
    return (st.st_size, st.st_mtime_ns)


def describe(data: PreparedData) -> str:
    """One line for logs: where the shards are and what they hold."""
    s = data.stats
    return (
        f"{s['shards_path']}: train {s['train_tokens']:,} tokens ({s['train_blocks']:,} blocks), valid "
        f"{s['valid_tokens']:,} tokens, {s['n_shards']} shard(s), {s['shard_bytes'] / 1e6:.1f} MB"
    )
