"""CLI: prefetch built-in corpora / the GPT-2 tokenizer into the cache and report token counts and timings.

python -m msg_ray.data.fetch wikitext2 bbc_news movie_snippets gpt2     # or: --all
python -m msg_ray.data.fetch --all --tokenizers gpt2 bpe8k --seq-len 128  # also tokenise + pack (cached)
"""

from __future__ import annotations

import argparse
import json
import time

from msg_ray.data.builtin import CORPORA, ENTRIES, ensure
from msg_ray.data.cache import cache_root
from msg_ray.data.pipeline import DataConfig, prepare


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m msg_ray.data.fetch", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"any of {sorted(ENTRIES)}")
    parser.add_argument("--all", action="store_true", help="fetch every built-in entry")
    parser.add_argument("--tokenizers", nargs="*", default=["gpt2"], help="tokenise corpora with these (none: skip)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)
    names = sorted(ENTRIES) if args.all else args.names
    unknown = sorted(set(names) - set(ENTRIES))
    if not names or unknown:
        parser.error(f"name built-in entries from {sorted(ENTRIES)} (unknown: {unknown}) or pass --all")
    root = cache_root(args.cache_dir)
    report = []
    for name in names:
        start = time.perf_counter()
        path = ensure(name, root)
        report.append({"name": name, "path": str(path), "fetch_seconds": round(time.perf_counter() - start, 2)})
        for tok in args.tokenizers if name in CORPORA else []:
            stats = prepare(DataConfig(source=name, tokenizer=tok, seq_len=args.seq_len, cache_dir=args.cache_dir))
            keep = ("train_tokens", "valid_tokens", "test_tokens", "tokenize_seconds", "prepare_seconds")
            report.append({"name": name, "tokenizer": tok, **{k: stats.stats.get(k) for k in keep}})
    for row in report:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
