"""Tokenizers for the data layer: the real GPT-2 BPE, a locally trained byte-level BPE, or a user's file.

Every tokenizer returned here is a `tokenizers.Tokenizer` carrying the same five special tokens, so one prepared
dataset serves both objectives: ``<|endoftext|>`` (EOS between documents, GPT-style) and ``[PAD]``, ``[MASK]``,
``[CLS]``, ``[SEP]`` (BERT-style MLM). Byte-level pre-tokenisation without a prefix space keeps decoding exact.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from msg_ray.data.builtin import ensure
from msg_ray.data.cache import atomic_write_bytes, say

EOS, PAD, MASK, CLS, SEP = SPECIAL_TOKENS = ("<|endoftext|>", "[PAD]", "[MASK]", "[CLS]", "[SEP]")
DEFAULT_BPE_SIZE = 8192
_MIN_BPE_SIZE = 300  # 256 byte symbols + the special tokens + a few merges


def parse_spec(spec: str) -> tuple[str, int | Path | None]:
    """``gpt2`` | ``bpe`` | ``bpe8k`` | ``bpe:4096`` | ``bpe4096`` | path to a tokenizer.json (or its folder)."""
    if spec == "gpt2":
        return "gpt2", None
    match = re.fullmatch(r"bpe(?::?(\d+)(k?))?", spec)
    if match:
        size = DEFAULT_BPE_SIZE if match.group(1) is None else int(match.group(1)) * (1024 if match.group(2) else 1)
        if size < _MIN_BPE_SIZE:
            raise ValueError(f"tokenizer {spec!r}: BPE vocabulary must be at least {_MIN_BPE_SIZE}, got {size}")
        return "bpe", size
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / "tokenizer.json"
    if path.is_file():
        return "file", path.resolve()
    raise ValueError(
        f"unknown tokenizer {spec!r}: use 'gpt2', 'bpe8k', 'bpe:<size>' or a path to a tokenizer.json file"
    )


def _with_specials(tok: Tokenizer) -> Tokenizer:
    # Tokens that already exist (GPT-2's <|endoftext|>) keep their ids; the rest are appended.
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


def gpt2_tokenizer(root: Path) -> Tokenizer:
    """GPT-2's 50,257-token byte-level BPE (from the cached ``encoder.json``/``vocab.bpe``) plus our specials."""
    folder = ensure("gpt2", root)
    tok = Tokenizer(models.BPE.from_file(str(folder / "encoder.json"), str(folder / "vocab.bpe")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return _with_specials(tok)


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE of ``vocab_size`` tokens (special tokens get ids 0..4)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=sys.stderr.isatty(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return _with_specials(tok)


def load_tokenizer(spec: str, root: Path, source_key: str, train_texts: Callable[[], list[str]]) -> Tokenizer:
    """The tokenizer named by ``spec``; a BPE is trained once on ``train_texts()`` and cached per source."""
    kind, arg = parse_spec(spec)
    if kind == "gpt2":
        return gpt2_tokenizer(root)
    if kind == "file":
        try:
            return _with_specials(Tokenizer.from_file(str(arg)))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
            raise ValueError(f"could not read tokenizer file {arg}: {exc}") from exc
    path = root / "tokenizers" / f"bpe{arg}-{source_key}.json"
    if path.is_file():
        return Tokenizer.from_file(str(path))
    say(f"training a {arg}-token byte-level BPE on the train split of {source_key} (cached at {path})")
    tok = train_bpe(train_texts(), int(arg))
    atomic_write_bytes(path, tok.to_str().encode("utf-8"))
    return tok


def tokenizer_digest(tok: Tokenizer) -> str:
    """Short content hash, part of the packed-data cache key (a retrained tokenizer invalidates old blocks)."""
    return hashlib.sha256(tok.to_str().encode("utf-8")).hexdigest()[:16]


def special_ids(tok: Tokenizer) -> dict[str, int]:
    """Ids of the special tokens: keys ``eos``, ``pad``, ``mask``, ``cls``, ``sep``."""
    keys = ("eos", "pad", "mask", "cls", "sep")
    return {key: tok.token_to_id(t) for key, t in zip(keys, SPECIAL_TOKENS, strict=True)}
