"""``msg-ray data prepare``: tokenise a corpus into token shards on shared storage (Ray Data) and print where.

    msg-ray data prepare --data my_corpus/ --tokenizer gpt2 --seq-len 1024 --storage-path s3://bucket/msg_ray/data
    msg-ray train ... --set data.shards=<printed path>   # or the same --data/--tokenizer/seq_len: found by key

Without ``--address`` (or ``RAY_ADDRESS``) a local Ray is started; ``--local`` tokenises in this process instead.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields

from msg_ray.data.pipeline import DataConfig, describe, prepare
from msg_ray.train.config import parse_value
from msg_ray.train.prepare import ray_executor


def data_config(args: argparse.Namespace) -> DataConfig:
    """The `DataConfig` of the flags: ``--data``/``--tokenizer``/``--seq-len``/``--storage-path`` plus ``--set``."""
    kw = {"source": args.data, "tokenizer": args.tokenizer, "seq_len": args.seq_len}
    if args.storage_path:
        kw["storage_path"] = args.storage_path
    names = {f.name for f in fields(DataConfig)}
    for item in args.overrides:
        key, sep, raw = item.partition("=")
        key = key.removeprefix("data.")
        if not sep or key not in names:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {sorted(names)}")
        kw[key] = parse_value(raw)  # the same values as `msg-ray train --set` (true, none, 1e6, [..])
    return DataConfig(**kw)


def cmd_prepare(args: argparse.Namespace) -> int:
    cfg = data_config(args)
    data = prepare(cfg, executor=None if args.local else ray_executor(args.address))
    print(describe(data))
    keep = ("train_tokens", "valid_tokens", "test_tokens", "train_blocks", "valid_blocks", "from_cache")
    print(json.dumps({"shards": data.config.shards, **{k: data.stats.get(k) for k in keep}}, indent=1))
    print(f"train on it: msg-ray train ... --set data.shards={data.config.shards}")
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    """Add ``data prepare`` to the ``msg-ray`` command line."""
    p = sub.add_parser("data", help="prepare token shards for training (Ray Data)")
    dsub = p.add_subparsers(dest="data_command", required=True)
    q = dsub.add_parser("prepare", help="tokenise a corpus into token shards + manifest on shared storage")
    q.add_argument("--data", default="wikitext2", help="built-in corpus, hub dataset name, or local file/folder")
    q.add_argument("--tokenizer", default="bpe8k", help="gpt2 | bpe8k | bpe:<size> | path to a tokenizer.json")
    q.add_argument("--seq-len", type=int, default=128, help="tokens per block (the run's data.seq_len)")
    q.add_argument("--storage-path", default="", help="local/NFS path or pyarrow URI (default: <cache>/shards)")
    q.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="any DataConfig field (text_column=body, streaming=True, max_train_tokens=1000000)",
    )
    q.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or a local Ray)")
    q.add_argument("--local", action="store_true", help="tokenise in this process instead of with Ray Data")
    q.set_defaults(func=cmd_prepare)
