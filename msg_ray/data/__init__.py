"""Data layer: text sources (built-in offline corpora, local files, `datasets`), tokenizers, token shards, loaders.

from msg_ray.data import DataConfig, prepare, BlockLoader
data = prepare(DataConfig(source="wikitext2", tokenizer="bpe8k", seq_len=64, objective="clm"))  # shards, mmap
loader = data.loader("train", batch_size=16, rank=0, world_size=2)  # or BlockLoader(data.train_blocks, ...)
"""

from msg_ray.data.cache import FetchError, cache_root
from msg_ray.data.loader import IGNORE_INDEX, BlockLoader, mask_tokens
from msg_ray.data.pipeline import DataConfig, PreparedData, open_prepared, prepare, resolve_paths
from msg_ray.data.shards import ShardedBlocks, check_writable
from msg_ray.data.tokenizer import SPECIAL_TOKENS, load_tokenizer

__all__ = [
    "IGNORE_INDEX",
    "SPECIAL_TOKENS",
    "BlockLoader",
    "DataConfig",
    "FetchError",
    "PreparedData",
    "ShardedBlocks",
    "cache_root",
    "check_writable",
    "load_tokenizer",
    "mask_tokens",
    "open_prepared",
    "prepare",
    "resolve_paths",
]
