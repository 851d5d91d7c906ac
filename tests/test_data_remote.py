"""Token shards on object storage: prepare into an S3 bucket (moto's S3 server over HTTP, reached through
`pyarrow.fs` exactly as a MinIO or AWS bucket would be), read it from another node's cache, refuse a corrupt
object; data_files given as URLs (served from 127.0.0.1) read by `datasets`, streaming or not, to the same shards."""

from __future__ import annotations

import functools
import http.server
import json
import os
import threading
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest
import torch

os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("MSG_RAY_QUIET", "1")

from msg_ray.data import DataConfig, cache_root, prepare  # noqa: E402
from msg_ray.data import shards as S  # noqa: E402
from msg_ray.data.builtin import ensure  # noqa: E402
from msg_ray.data.shards import join  # noqa: E402

moto_server = pytest.importorskip("moto.server")
BUCKET = "msg-ray-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> str:
    """A bucket on a local S3 server; yields the URI query that points `pyarrow.fs` at it."""
    keys = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    query = f"endpoint_override={host}:{port}&scheme=http&region=us-east-1"
    fs = pafs.S3FileSystem(
        endpoint_override=f"{host}:{port}", scheme="http", region="us-east-1", allow_bucket_creation=True
    )
    fs.create_dir(BUCKET)
    yield query
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    rng = np.random.default_rng(1)
    words = "amber basin cobalt delta ember fjord garnet harbor island jade".split()
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    rows = [" ".join(rng.choice(words, size=int(rng.integers(8, 24)))) + "." for _ in range(300)]
    path.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    return path


def _cache(tmp_path: Path, name: str) -> Path:
    """A fresh cache root (another node's, as far as the reader is concerned) sharing the GPT-2 files."""
    shared = cache_root()
    ensure("gpt2", shared)
    out = tmp_path / name
    (out / "tokenizers").mkdir(parents=True)
    (out / "tokenizers" / "gpt2").symlink_to(shared / "tokenizers" / "gpt2")
    return out


def _cfg(source: str, cache: Path, **kw) -> DataConfig:
    base = {"source": source, "tokenizer": "gpt2", "seq_len": 16, "cache_dir": str(cache), "chunk_bytes": 4096}
    return DataConfig(**{**base, **kw})


def test_join_keeps_the_query_last() -> None:
    assert join("s3://b/p/?endpoint_override=h:1&scheme=http", "k") == "s3://b/p/k?endpoint_override=h:1&scheme=http"
    assert join("/shared/data/", "k") == "/shared/data/k" and join("gs://b/p", "k") == "gs://b/p/k"


def test_prepare_into_s3_and_read_from_another_node(corpus: Path, s3: str, tmp_path: Path, monkeypatch) -> None:
    storage = f"s3://{BUCKET}/run1/data?{s3}"
    local = prepare(_cfg(str(corpus), _cache(tmp_path, "a"), storage_path=str(tmp_path / "local")))
    remote = prepare(_cfg(str(corpus), _cache(tmp_path, "b"), storage_path=storage))
    # The prepared folder is in the bucket, named by the same key, with the query kept at the end of the URI.
    assert remote.config.shards == f"s3://{BUCKET}/run1/data/{local.manifest['key']}?{s3}"
    fs, base = pafs.FileSystem.from_uri(remote.config.shards)
    listed = {i.path.removeprefix(base + "/") for i in fs.get_file_info(pafs.FileSelector(base, recursive=True))}
    assert {"manifest.json", "tokenizer.json"} <= listed and not [p for p in listed if ".partial" in p]
    for split in ("train", "valid"):
        a, b = local.manifest["splits"][split], remote.manifest["splits"][split]
        assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]
        assert {s["file"] for s in b["shards"]} <= listed
    # Another node: only data.shards (the URI) travels. Opened for counts (a driver), nothing is downloaded;
    # reading the train split brings exactly its shards into the node's cache.
    other = _cache(tmp_path, "c")
    opened = prepare(_cfg(str(corpus), other, shards=remote.config.shards))
    assert len(opened.train_blocks) == len(local.train_blocks) and not list(other.glob("mirror/*/*/*.bin"))
    assert torch.equal(opened.train_blocks[:], local.train_blocks[:])
    mirrored = sorted(p.relative_to(other / "mirror" / remote.manifest["key"]) for p in other.glob("mirror/*/*/*.bin"))
    assert [str(p) for p in mirrored] == sorted(s["file"] for s in remote.manifest["splits"]["train"]["shards"])
    # A training worker (mirror="now") has every shard on its node before the first step, each hashed once (as it
    # arrived), not read back again to fill the node's verified stamp.
    rehashed = []
    monkeypatch.setattr(S.Store, "sha256", lambda self, rel: rehashed.append(rel) or "")
    worker = prepare(_cfg(str(corpus), _cache(tmp_path, "w"), shards=remote.config.shards), mirror="now")
    assert not rehashed and (tmp_path / "w" / "verified" / f"{remote.manifest['key']}.json").is_file()
    assert len(list((tmp_path / "w" / "mirror").glob("*/*/*.bin"))) == len(
        remote.manifest["splits"]["train"]["shards"]
    ) + len(remote.manifest["splits"]["valid"]["shards"])
    assert torch.equal(worker.valid_blocks[:], local.valid_blocks[:])
    # A re-run with the same storage_path finds the bucket's manifest and writes nothing.
    again = prepare(_cfg(str(corpus), _cache(tmp_path, "d"), storage_path=storage))
    assert again.stats["from_cache"] and again.manifest == remote.manifest


def test_corrupt_object_is_refused_naming_it(corpus: Path, s3: str, tmp_path: Path) -> None:
    remote = prepare(_cfg(str(corpus), _cache(tmp_path, "a"), storage_path=f"s3://{BUCKET}/run2?{s3}"))
    fs, base = pafs.FileSystem.from_uri(remote.config.shards)
    shard = remote.manifest["splits"]["train"]["shards"][1]["file"]
    with fs.open_input_stream(f"{base}/{shard}") as fh:
        raw = bytearray(fh.read())
    raw[0] ^= 1  # same size, one bit flipped: only the SHA-256 can tell
    with fs.open_output_stream(f"{base}/{shard}") as fh:
        fh.write(bytes(raw))
    # A training worker refuses it before the first step; a reader fetching on demand when it reaches that shard,
    # leaving no file behind in its cache.
    with pytest.raises(ValueError, match=f"shard .*{shard} fails its SHA-256 check"):
        prepare(_cfg(str(corpus), _cache(tmp_path, "b"), shards=remote.config.shards), mirror="now")
    lazy = prepare(_cfg(str(corpus), _cache(tmp_path, "c"), shards=remote.config.shards))
    first = remote.manifest["splits"]["train"]["shards"][0]["blocks"]
    assert lazy.train_blocks[:first].shape[0] == first  # shard 0 is intact
    with pytest.raises(ValueError, match=f"shard .*{shard} fails its SHA-256 check"):
        lazy.train_blocks[first]
    assert not [p for p in (tmp_path / "c" / "mirror").rglob("*") if p.name.endswith(".bin") and shard in str(p)]


@pytest.fixture(scope="module")
def http_corpus(corpus: Path) -> str:
    """``corpus`` served over HTTP from 127.0.0.1 (a URL in data_files, as a user's https:// or s3:// one)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(corpus.parent))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{corpus.name}"
    server.shutdown()


def test_url_data_files_streaming_and_whole_give_the_same_shards(http_corpus: str, tmp_path: Path, monkeypatch) -> None:
    """data_files given as a URL go to `datasets` (not the local-file reader); read streaming (records arrive as
    an iterator) they pack into the same blocks as the same files downloaded whole."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)  # 127.0.0.1 only: the suite's offline guard
    files = {"train": http_corpus}
    whole = prepare(_cfg("json", _cache(tmp_path, "a"), data_files=files))
    streamed = prepare(_cfg("json", _cache(tmp_path, "b"), data_files=files, streaming=True))
    assert whole.manifest["fingerprint"]["dataset"] == "json" and streamed.manifest["fingerprint"]["streaming"]
    assert streamed.manifest["key"] != whole.manifest["key"] and streamed.stats["train_records"] > 250
    for split in ("train", "valid"):
        a, b = whole.manifest["splits"][split], streamed.manifest["splits"][split]
        assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]] and a["tokens"] == b["tokens"]
    with pytest.raises(ValueError, match="text column 'body' not found in json train; available columns"):
        prepare(_cfg("json", _cache(tmp_path, "c"), data_files=files, streaming=True, text_column="body"))


@pytest.mark.slow
def test_two_workers_train_on_shards_in_a_bucket(corpus: Path, s3: str, tmp_path: Path, ray_local) -> None:
    """`msg-ray train` with data.storage_path in the bucket: the driver prepares into it, both workers of the node
    take the shards from it (one download per file, under the node's lock) and train; the credentials travel in
    the URI, as the Ray workers do not carry the test's AWS environment."""
    from test_train import tiny_config

    from msg_ray.train.run import run

    cache = _cache(tmp_path, "cache")
    storage = f"s3://test:test@{BUCKET}/run3?{s3}"
    data = {"source": str(corpus), "tokenizer": "gpt2", "seq_len": 32, "cache_dir": str(cache), "storage_path": storage}
    out = run(tiny_config(tmp_path, "s3run", data=data, engine={"zero_stage": 0, "micro_batch_size": 4, "lr": 3e-3}))
    assert len(out.history["train_loss"]) == 30 and all(np.isfinite(out.history["train_loss"]))
    (folder,) = (cache / "mirror").iterdir()
    fs, base = pafs.FileSystem.from_uri(f"s3://{BUCKET}/run3/{folder.name}?{s3}")
    remote = sorted(
        i.path.removeprefix(base + "/")
        for i in fs.get_file_info(pafs.FileSelector(base, recursive=True))
        if i.path.endswith(".bin")
    )
    local = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.bin"))
    assert local == remote and not list(folder.rglob("*.partial-*"))
