"""Token shards: layout and manifest, resume of an interrupted prepare, the one-line errors before training, exact
loader resume across shards with 2 ranks, and a Ray Data prepare equal to the in-process one."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("MSG_RAY_QUIET", "1")

from msg_ray.data import BlockLoader, DataConfig, ShardedBlocks, cache_root, prepare, resolve_paths  # noqa: E402
from msg_ray.data.builtin import ensure  # noqa: E402
from msg_ray.data.loader import BlockPermutation  # noqa: E402
from msg_ray.presets import get_schedule  # noqa: E402
from msg_ray.train.config import RunConfig  # noqa: E402
from msg_ray.train.engine import EngineConfig  # noqa: E402
from msg_ray.train.run import check_batches  # noqa: E402

WORDS = "river stone lamp forest signal harbour copper meadow lantern orbit velvet thunder".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """~40 kB of text, 400 lines: with chunk_bytes=4096 about 10 chunks, each its own shard."""
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(WORDS, size=int(rng.integers(8, 24)))) + "." for _ in range(400)]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    shared = cache_root()
    ensure("gpt2", shared)
    out = tmp_path / "cache"
    (out / "tokenizers").mkdir(parents=True)
    (out / "tokenizers" / "gpt2").symlink_to(shared / "tokenizers" / "gpt2")
    return out


def _cfg(corpus: Path, cache: Path, **kw) -> DataConfig:
    base = {"source": str(corpus), "tokenizer": "gpt2", "seq_len": 16, "cache_dir": str(cache), "chunk_bytes": 4096}
    return DataConfig(**{**base, **kw})


def test_layout_manifest_and_memmap_reads(corpus: Path, cache: Path) -> None:
    data = prepare(_cfg(corpus, cache))
    root = Path(data.config.shards)
    m = json.loads((root / "manifest.json").read_text())
    assert m["seq_len"] == 16 and m["dtype"] == "uint16" and m["chunks"] == len(list((root / "chunks").glob("*.json")))
    assert m["chunks"] >= 8 and (root / "tokenizer.json").is_file()
    assert m["tokenizer"]["spec"] == "gpt2" and len(m["tokenizer"]["digest"]) == 16
    assert m["fingerprint"]["files"][0][1] == str(corpus)  # source fingerprint: path, size, mtime
    rows = []
    for split in ("train", "valid"):
        info = m["splits"][split]
        assert info["blocks"] == sum(s["blocks"] for s in info["shards"]) == len(getattr(data, f"{split}_blocks"))
        for s in info["shards"]:
            raw = (root / s["file"]).read_bytes()
            assert len(raw) == s["bytes"] == s["blocks"] * 16 * 2 and hashlib.sha256(raw).hexdigest() == s["sha256"]
            rows.append(np.frombuffer(raw, dtype="<u2").reshape(-1, 16))
    # The split reads back exactly the shard bytes, in manifest order (train, then valid), by pread or mmap.
    train = np.concatenate(rows[: len(m["splits"]["train"]["shards"])])
    assert np.array_equal(train, data.train_blocks[:].numpy())
    tb = data.train_blocks
    mapped = ShardedBlocks(tb.paths, tb.counts, 16, "uint16", mmap=True)
    idx = torch.randint(len(tb), (200,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(tb[idx], mapped[idx]) and np.array_equal(train[idx.numpy()], tb[idx].numpy())
    # No validation file: each train chunk holds out 5% of its records (at least one), seeded.
    assert data.stats["train_records"] + data.stats["valid_records"] == 400
    assert m["chunks"] <= data.stats["valid_records"] <= 2 * m["chunks"]
    text = data.tokenizer.decode(data.train_blocks[0].tolist())
    assert text.split()[0] in WORDS  # the corpus' first words, not padding


def test_interrupted_prepare_resumes_from_done_chunks(corpus: Path, cache: Path) -> None:
    first = prepare(_cfg(corpus, cache))
    root = Path(first.config.shards)
    hashes = [s["sha256"] for s in first.manifest["splits"]["train"]["shards"]]
    kept = root / first.manifest["splits"]["train"]["shards"][0]["file"]
    mtime = kept.stat().st_mtime_ns
    # Simulate a prepare killed midway: no manifest, chunk 3's marker and shard gone, a stray partial file.
    (root / "manifest.json").unlink()
    (root / "chunks" / "000003.json").unlink()
    (root / "train" / "000003.bin").unlink()
    (root / "train" / ".000004.bin.partial-deadbeef").write_bytes(b"half")
    again = prepare(_cfg(corpus, cache))
    assert not again.stats["from_cache"] and kept.stat().st_mtime_ns == mtime  # done chunks not redone
    assert [s["sha256"] for s in again.manifest["splits"]["train"]["shards"]] == hashes
    assert torch.equal(again.train_blocks[:], first.train_blocks[:])


def test_errors_before_training(corpus: Path, cache: Path, tmp_path: Path) -> None:
    data = prepare(_cfg(corpus, cache))
    shards = data.config.shards
    with pytest.raises(ValueError, match=r"data\.seq_len: the shards at .* seq_len 16, the run uses 32"):
        prepare(_cfg(corpus, cache, seq_len=32, shards=shards))
    with pytest.raises(ValueError, match=r"data\.tokenizer: the shards at .* made with tokenizer gpt2"):
        prepare(_cfg(corpus, cache, tokenizer="bpe:320", shards=shards))
    with pytest.raises(ValueError, match=r"data\.shards: no prepared data at"):
        prepare(_cfg(corpus, cache, shards=str(tmp_path / "nothing")))
    shard = Path(shards) / data.manifest["splits"]["train"]["shards"][1]["file"]
    raw = bytearray(shard.read_bytes())
    raw[10] ^= 0xFF  # same size, other content: only the hash can tell
    shard.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"shard .*000001\.bin fails its SHA-256 check"):
        prepare(_cfg(corpus, cache))
    shard.unlink()
    with pytest.raises(ValueError, match=r"shard .*000001\.bin is missing"):
        prepare(_cfg(corpus, cache))
    with pytest.raises(ValueError, match=r"data\.storage_path: cannot write to /proc/msg_ray_nowhere"):
        prepare(_cfg(corpus, cache, storage_path="/proc/msg_ray_nowhere"))
    (tmp_path / "blob.txt").write_bytes(b"GIF89a\x00\x01\x02")
    with pytest.raises(ValueError, match=r"binary file: .*blob\.txt"):
        prepare(_cfg(tmp_path / "blob.txt", cache))


def test_corpus_too_small_for_one_batch_is_refused(corpus: Path, cache: Path) -> None:

    data = prepare(_cfg(corpus, cache))
    n = len(data.valid_blocks)
    cfg = RunConfig(
        schedule=get_schedule("mini-sch1-g"),
        data=data.config,
        workers=2,
        engine=EngineConfig(micro_batch_size=n // 2 + 1),
    )
    with pytest.raises(ValueError, match=rf"the valid split of .* has {n} blocks .* fewer than one batch"):
        check_batches(cfg, data)


def test_unwritable_msg_ray_home_is_one_line(monkeypatch, capsys) -> None:
    from msg_ray.cli import main

    monkeypatch.setenv("MSG_RAY_HOME", "/proc/msg_ray_home")
    assert main(["train", "--schedule", "mini-sch1-g", "--arch", "gpt"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "RunConfig.storage_path (from MSG_RAY_HOME=/proc/msg_ray_home): cannot write" in err[0]


def test_relative_paths_resolved_on_the_driver(corpus: Path, monkeypatch) -> None:
    monkeypatch.chdir(corpus.parent)
    cfg = resolve_paths(DataConfig(source="corpus.txt", storage_path="shards", cache_dir="c"))
    assert cfg.source == str(corpus) and cfg.storage_path == str(corpus.parent / "shards")
    assert resolve_paths(DataConfig(source="wikitext2")).source == "wikitext2"


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 4097])
def test_block_permutation_is_a_bijection(n: int) -> None:
    a, b = BlockPermutation(n, 1)(np.arange(n)), BlockPermutation(n, 2)(np.arange(n))
    assert sorted(a.tolist()) == list(range(n)) and (n < 7 or not np.array_equal(a, b))


def test_two_rank_resume_exact_across_shards(corpus: Path, cache: Path) -> None:
    data = prepare(_cfg(corpus, cache))
    blocks = data.train_blocks
    assert len(blocks.counts) >= 8
    kw = {"batch_size": 4, "seed": 3, "world_size": 2}
    runs = [BlockLoader(blocks, rank=r, **kw) for r in (0, 1)]
    per_epoch = runs[0].batches_per_epoch
    stop = per_epoch - 2  # resume 2 steps before the epoch (and its permutation) changes
    seen: list[set[int]] = [set(), set()]
    for _ in range(stop):
        for r, loader in enumerate(runs):
            idx = loader._indices()
            seen[r] |= set(np.searchsorted(blocks.starts, idx.numpy(), side="right").tolist())
            next(loader)
    assert len(seen[0]) > 1 and len(seen[1]) > 1  # every rank's batches came from several shards
    states = [loader.state_dict() for loader in runs]
    resumed = [BlockLoader(blocks, rank=r, **kw) for r in (0, 1)]
    for loader, state in zip(resumed, states, strict=True):
        loader.load_state_dict(state)
    for _ in range(5):  # crosses into the next epoch
        for a, b in zip(runs, resumed, strict=True):
            assert torch.equal(next(a)["input_ids"], next(b)["input_ids"])
    assert runs[0].epoch == 1 and runs[0].passes == pytest.approx((per_epoch + 3) * 8 / len(blocks))
    assert runs[0].tokens_seen == (per_epoch + 3) * 8 * 16


def test_ray_data_prepare_equals_in_process(corpus: Path, cache: Path, tmp_path: Path, ray_local) -> None:
    from msg_ray.train.prepare import ray_executor

    kw = {"chunk_bytes": 12288}  # 4 chunks: fewer Ray tasks to start on a busy machine, still several per worker
    local = prepare(_cfg(corpus, cache, storage_path=str(tmp_path / "local"), **kw))  # in this process
    ray_cpus = ray_local.cluster_resources().get("CPU", 0)
    assert ray_cpus >= 2 and local.manifest["chunks"] >= 3  # map_batches tasks (num_cpus=1 each) run side by side
    dist = prepare(_cfg(corpus, cache, storage_path=str(tmp_path / "ray"), **kw), executor=ray_executor(local_below=0))
    assert dist.manifest["executor"] == "ray" and local.manifest["executor"] == "local"
    for split in ("train", "valid"):
        a, b = local.manifest["splits"][split], dist.manifest["splits"][split]
        assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]] and a["tokens"] == b["tokens"]
    assert torch.equal(local.train_blocks[:], dist.train_blocks[:])


def test_data_prepare_command(corpus: Path, cache: Path, capsys) -> None:
    from msg_ray.cli import main

    argv = ["data", "prepare", "--data", str(corpus), "--tokenizer", "gpt2", "--seq-len", "16", "--local"]
    assert main([*argv, "--set", f"cache_dir={cache}", "--set", "chunk_bytes=4096"]) == 0
    out = capsys.readouterr().out
    shards = out.split("--set data.shards=")[1].split()[0]
    assert (Path(shards) / "manifest.json").is_file() and "train " in out and "tokens" in out
    # --set values parse as in `msg-ray train --set` (lower-case booleans, none): the same shards, from the cache
    again = [*argv, "--set", f"cache_dir={cache}", "--set", "chunk_bytes=4096", "--set", "streaming=false"]
    assert main([*again, "--set", "max_train_tokens=none"]) == 0 and f"data.shards={shards}" in capsys.readouterr().out
    assert main([*argv, "--set", "text_colum=body"]) == 2  # a typo in a field name: one line, no traceback
    assert "FIELD one of" in capsys.readouterr().err
