"""From a `DataConfig` to cached, packed token blocks: resolve source, load tokenizer, tokenise, pack, cache.

Records are tokenised without special tokens, each followed by EOS, concatenated and cut into ``seq_len`` blocks
(remainder dropped). The same blocks serve both objectives: causal LM uses them as is, MLM masks them on the fly
in `BlockLoader`. The packed result is stored under ``<cache>/packed/<key>`` where the key covers the source
(files' size/mtime, corpus, split seed), the tokenizer's content, ``seq_len`` and ``max_train_tokens``; a second
`prepare` with the same inputs only loads tensors.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from msg_ray.data.cache import atomic_dir, cache_root, say
from msg_ray.data.loader import BlockLoader
from msg_ray.data.sources import Source, resolve_source
from msg_ray.data.tokenizer import load_tokenizer, parse_spec, special_ids, tokenizer_digest
from msg_ray.validate import check_types

_FORMAT = 2  # bump when the packing layout changes, so stale caches are not reused
_SPLITS = ("train", "valid", "test")


@dataclass(kw_only=True)
class DataConfig:
    """What text, which tokenizer, how to pack. ``split_seed`` fixes the held-out dev/test sets of ``bbc_news``/
    ``movie_snippets`` (and the carved validation split of sources without one): keep it equal to the seed given
    to `downstream.load_classification` so evaluation texts stay out of pretraining. ``max_train_tokens`` keeps
    the first N tokens of the train stream (valid/test are never capped). ``source_config`` is a `datasets`
    config name for hub sources; ``valid_fraction`` sizes the carved validation split."""

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
        try:
            parse_spec(self.tokenizer)
        except ValueError as e:
            raise ValueError(f"tokenizer: {e}") from None


@dataclass
class PreparedData:
    """Packed blocks (int32 ``[N, seq_len]``) per split, the tokenizer and its special ids, and statistics."""

    config: DataConfig
    tokenizer: Tokenizer
    train_blocks: torch.Tensor
    valid_blocks: torch.Tensor
    test_blocks: torch.Tensor | None
    vocab_size: int
    eos_id: int
    pad_id: int
    mask_id: int
    cls_id: int
    sep_id: int
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


def pack(
    tok: Tokenizer, texts: list[str], eos_id: int, seq_len: int, max_tokens: int | None = None, desc: str = ""
) -> tuple[torch.Tensor, int]:
    """Tokenise ``texts`` (EOS after each), keep at most ``max_tokens``, cut into ``[N, seq_len]`` int32 blocks.

    Returns (blocks, tokens in the stream before the remainder is dropped)."""
    pieces: list[np.ndarray] = []
    total, chunk = 0, 1000
    with tqdm(total=len(texts), desc=f"tokenising {desc}", unit="rec", disable=None, mininterval=2) as bar:
        for start in range(0, len(texts), chunk):
            for enc in tok.encode_batch(texts[start : start + chunk], add_special_tokens=False):
                pieces.append(np.asarray(enc.ids + [eos_id], dtype=np.int32))
                total += len(pieces[-1])
            bar.update(min(chunk, len(texts) - start))
            if max_tokens is not None and total >= max_tokens:
                break
    stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)
    if max_tokens is not None:
        stream = stream[:max_tokens]
    n_blocks = len(stream) // seq_len
    return torch.from_numpy(stream[: n_blocks * seq_len].reshape(n_blocks, seq_len).copy()), len(stream)


def _build(cfg: DataConfig, source: Source, tok: Tokenizer, splits: dict[str, list[str]], ids: dict) -> dict:
    blocks: dict[str, torch.Tensor] = {}
    stats: dict[str, Any] = {}
    start = time.perf_counter()
    for split in _SPLITS:
        if split not in splits:
            continue
        limit = cfg.max_train_tokens if split == "train" else None
        packed, n_tokens = pack(tok, splits[split], ids["eos"], cfg.seq_len, limit, f"{source.key} {split}")
        if len(packed) == 0 and split != "test":
            raise ValueError(
                f"{split} split of {source.description} has {n_tokens} tokens, fewer than one block of "
                f"seq_len={cfg.seq_len}: add text or lower seq_len"
            )
        stats.update({f"{split}_records": len(splits[split]), f"{split}_tokens": n_tokens})
        stats[f"{split}_blocks"] = len(packed)
        if len(packed):
            blocks[split] = packed
    stats["tokenize_seconds"] = round(time.perf_counter() - start, 2)
    return {"blocks": blocks, "stats": stats}


def prepare(cfg: DataConfig) -> PreparedData:
    """Fetch/tokenise/pack the configured text with caching; raises ValueError naming any data problem."""
    start = time.perf_counter()
    root = cache_root(cfg.cache_dir)
    source = resolve_source(
        cfg.source, cfg.data_files, cfg.text_column, cfg.source_config, cfg.split_seed, cfg.valid_fraction, root
    )
    loaded: dict[str, dict[str, list[str]]] = {}

    def splits() -> dict[str, list[str]]:
        if "v" not in loaded:
            loaded["v"] = source.load()
        return loaded["v"]

    tok = load_tokenizer(cfg.tokenizer, root, source.key, lambda: splits()["train"])
    ids = special_ids(tok)
    tag = "".join(c if c.isalnum() else "_" for c in cfg.tokenizer)[-24:]
    key = f"{source.key}-{tag}-L{cfg.seq_len}-m{cfg.max_train_tokens}-{tokenizer_digest(tok)[:8]}-v{_FORMAT}"
    target = root / "packed" / key
    from_cache = (target / "meta.json").is_file()
    if not from_cache:
        say(f"preparing {source.description} with tokenizer {cfg.tokenizer!r}, seq_len {cfg.seq_len}")
        built = _build(cfg, source, tok, splits(), ids)
        with atomic_dir(target) as tmp:
            torch.save(built["blocks"], tmp / "blocks.pt")
            (tmp / "meta.json").write_text(json.dumps(built["stats"], indent=1))
    blocks = torch.load(target / "blocks.pt", weights_only=True)
    stats = json.loads((target / "meta.json").read_text())
    stats.update(source=cfg.source, tokenizer=cfg.tokenizer, vocab_size=tok.get_vocab_size(), seq_len=cfg.seq_len)
    stats.update(from_cache=from_cache, cache_path=str(target), prepare_seconds=round(time.perf_counter() - start, 3))
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
        stats=stats,
    )
