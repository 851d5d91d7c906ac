"""Benchmark: the data path at 0.1 / 1 / 4 GB of text — prepare throughput with 1 and 2 CPUs, per-worker resident
memory while training, time to the first step — for the shard path and, as the baseline, the old in-memory pack.

Corpora are generated locally (no download): WikiText-2 train sentences resampled with a seeded generator into
paragraphs of 3-12 sentences, one paragraph per line, so token statistics are WikiText-2's. Tokenizer GPT-2,
seq_len 128. Every measurement runs in its own process (a fresh Ray per prepare, ``msg-ray train`` per training):

- prepare: new path = `prepare` over Ray Data with ``ray.init(num_cpus=C)`` (``--pin-new``: the whole process tree
  pinned to C cores with ``taskset``, i.e. a C-core machine); old path = the single-process `prepare` of commit
  2c377b9 (the last one before token shards), pinned to C cores (the tokenizer's own thread pool uses them).
- training: ``msg-ray train --workers 2`` for ``--steps`` steps of mini-full-gpt (static) on the prepared data;
  every 0.25 s the resident memory (RSS, and its anonymous part) of each Ray Train worker process is sampled; the
  peak per worker is reported. Time to first step: launch of ``msg-ray train`` to its first step line (data
  already prepared, so this is start-up + opening the data).
- each measurement runs in the folder of the checkout it measures and checks that ``msg_ray`` was imported from
  there (``python -c``/``-m`` put the working directory on ``sys.path`` ahead of PYTHONPATH).

    git archive 2c377b9 | tar -x -C /tmp/oldmain                            # the old path
    python -m benchmarks.bench_data --sizes 0.1 --old /tmp/oldmain          # develop
    python -m benchmarks.bench_data --sizes 1 --cpus 2 1 --pin-new --old /tmp/oldmain --old-cpus 2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEQ_LEN = 128


def make_corpus(path: Path, gigabytes: float, seed: int = 0) -> None:
    """Write ``gigabytes`` of resampled WikiText-2 paragraphs to ``path`` (atomically; kept between runs)."""
    import numpy as np

    from msg_ray.data import cache_root
    from msg_ray.data.builtin import ensure

    if path.is_file():
        return
    text = (ensure("wikitext2", cache_root()) / "train.txt").read_text(encoding="utf-8")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("=")]
    sentences = [s.strip() + " ." for ln in lines for s in ln.split(" . ") if len(s.split()) > 3]
    rng = np.random.default_rng(seed)
    target = int(gigabytes * 1e9)
    tmp = path.with_suffix(".partial")
    written = 0
    with open(tmp, "w", encoding="utf-8") as fh:
        while written < target:
            counts = rng.integers(3, 13, size=10_000)
            picks = rng.integers(0, len(sentences), size=int(counts.sum()))
            out, at = [], 0
            for c in counts:
                out.append(" ".join(sentences[i] for i in picks[at : at + c]))
                at += c
            block = "\n".join(out) + "\n"
            fh.write(block)
            written += len(block.encode("utf-8"))
    os.replace(tmp, path)


def _check_code(module_file: str, checkout: str) -> None:
    """The measured code must be ``checkout``'s: ``python -c``/``-m`` put the working directory first on
    ``sys.path`` (before PYTHONPATH), so a run started from another checkout silently measures that one."""
    if not Path(module_file).resolve().is_relative_to(Path(checkout).resolve()):
        raise RuntimeError(f"measured msg_ray from {module_file}, expected the checkout {checkout}")


def _env(pythonpath: str, home: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=pythonpath, MSG_RAY_HOME=str(home), MSG_RAY_QUIET="1", RAY_AUTH_MODE="disabled")
    env.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return env


PREPARE_NEW = """
import json, sys, time, ray
from msg_ray.data import DataConfig, prepare
from msg_ray.train.prepare import ray_executor
corpus, storage, cpus = sys.argv[1], sys.argv[2], int(sys.argv[3])
ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
t = time.perf_counter()
d = prepare(DataConfig(source=corpus, tokenizer="gpt2", seq_len=int(sys.argv[-1]), storage_path=storage), executor=ray_executor())
s = d.stats
import msg_ray
row = {"seconds": time.perf_counter() - t, "tokens": s["train_tokens"] + s["valid_tokens"], "code": msg_ray.__file__}
print(json.dumps(row))
"""

PREPARE_OLD = """
import json, sys, time
from msg_ray.data import DataConfig, prepare
corpus, cache = sys.argv[1], sys.argv[2]
t = time.perf_counter()
d = prepare(DataConfig(source=corpus, tokenizer="gpt2", seq_len=int(sys.argv[-1]), cache_dir=cache))
s = d.stats
import msg_ray
row = {"seconds": time.perf_counter() - t, "tokens": s["train_tokens"] + s["valid_tokens"], "code": msg_ray.__file__}
print(json.dumps(row))
"""


def run_prepare(code: str, args: list[str], env: dict, cpus: int, pin: bool) -> dict:
    cmd = [sys.executable, "-c", code, *args, str(SEQ_LEN)]
    if pin:  # restrict the process tree (and the tokenizer's threads) to ``cpus`` cores: a ``cpus``-core machine
        cmd = ["taskset", "-c", ",".join(str(i) for i in range(cpus)), *cmd]
    load = os.getloadavg()[0]
    proc = subprocess.run(cmd, env=env, cwd=env["PYTHONPATH"], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}"}
    _check_code(json.loads(proc.stdout.strip().splitlines()[-1])["code"], env["PYTHONPATH"])
    # the machine's 1-minute load average before and after: on a shared machine it says how noisy the number is
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "load": [round(load, 1), round(os.getloadavg()[0], 1)]}


def _link_gpt2(cache: Path) -> None:
    """The old path's cache gets the shared GPT-2 tokenizer files (no fetch)."""
    from msg_ray.data import cache_root
    from msg_ray.data.builtin import ensure

    (cache / "tokenizers").mkdir(parents=True, exist_ok=True)
    if not (cache / "tokenizers" / "gpt2").exists():
        (cache / "tokenizers" / "gpt2").symlink_to(ensure("gpt2", cache_root()))


def tile_shards(storage: Path, k: int, out: Path) -> Path:
    """A prepared folder whose train split lists every train shard of ``storage``'s one prepared folder ``k``
    times (the same files, linked): a ``k`` times larger corpus for the reader, without tokenising it. Only the
    worker's memory and start-up are measured on it."""
    src = next(p for p in storage.iterdir() if (p / "manifest.json").is_file())
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for name in ("tokenizer.json", "train", "valid", "test"):
        if (src / name).exists():
            (out / name).symlink_to(src / name)
    m = json.loads((src / "manifest.json").read_text())
    train = m["splits"]["train"]
    train["shards"] = train["shards"] * k
    train["blocks"], train["tokens"] = train["blocks"] * k, train["tokens"] * k
    m["key"] += f"-x{k}"
    (out / "manifest.json").write_text(json.dumps(m))
    return out


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def run_train(pythonpath: str, home: Path, corpus: Path, data_sets: list[str], name: str, steps: int) -> dict:
    """``msg-ray train`` with 2 workers; peak RSS / anonymous RSS per Ray Train worker, time to the first step."""
    import psutil

    cmd = [
        sys.executable,
        "-m",
        "msg_ray.cli",
        "train",
        "--schedule",
        "mini-full-gpt",
        "--arch",
        "gpt",
        "--data",
        str(corpus),
        "--tokenizer",
        "gpt2",
        "--workers",
        "2",
        "--steps",
        str(steps),
        "--name",
        name,
        "--set",
        f"data.seq_len={SEQ_LEN}",
        "--set",
        "log_every=1",
        "--set",
        "export_hf=false",
    ]
    for item in data_sets:
        cmd += ["--set", item]
    env = _env(pythonpath, home)
    probe = [sys.executable, "-c", "import msg_ray; print(msg_ray.__file__)"]
    _check_code(
        subprocess.run(probe, env=env, cwd=pythonpath, capture_output=True, text=True).stdout.strip(), pythonpath
    )
    start = time.perf_counter()
    # cwd: the checkout under test, which ``python -m`` (and Ray's workers after it) put first on sys.path
    proc = subprocess.Popen(cmd, env=env, cwd=pythonpath, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peaks: dict[int, tuple[int, ...]] = {}
    first: list[float] = []
    tail: list[str] = []

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                kids = root.children(recursive=True)
            except psutil.NoSuchProcess:
                break
            for p in kids:
                try:
                    if "TrainWorker" not in " ".join(p.cmdline()):
                        continue
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                now = [_status_kb(p.pid, k) for k in ("VmRSS", "RssAnon", "RssFile", "RssShmem")]
                old = peaks.get(p.pid, (0, 0, 0, 0))
                peaks[p.pid] = tuple(max(a, b) for a, b in zip(old, now, strict=True))
            time.sleep(0.25)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    for line in proc.stdout:
        tail = (tail + [line.rstrip()])[-20:]
        if not first and re.search(r"\] stage \d+/\d+ .* step \d+/", line):
            first.append(time.perf_counter() - start)
    proc.wait()
    thread.join()
    if proc.returncode != 0:
        return {"error": " | ".join(tail[-3:])}
    if os.environ.get("BENCH_DATA_DEBUG"):
        print("sampled", {pid: v for pid, v in peaks.items()}, "\n".join(tail), flush=True)
    top = sorted(peaks.values(), reverse=True)[:2]
    return {
        "load": round(os.getloadavg()[0], 1),
        "first_step_s": first[0] if first else None,
        "total_s": time.perf_counter() - start,
        "worker_rss_mb": [round(r[0] / 1024) for r in top],
        "worker_anon_mb": [round(r[1] / 1024) for r in top],
        "worker_file_mb": [round(r[2] / 1024) for r in top],  # mapped files: libraries, touched shard pages
        "worker_shmem_mb": [round(r[3] / 1024) for r in top],  # shared memory: Ray's object store mappings
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.1], help="corpus sizes in GB")
    parser.add_argument("--cpus", type=int, nargs="+", default=[1, 2], help="CPU counts for prepare")
    parser.add_argument("--work", default="/tmp/msg_ray_bench_data", help="corpora, shards, runs (kept)")
    parser.add_argument("--old", default="", help="a checkout of the old main (git worktree add /tmp/oldmain main)")
    parser.add_argument("--old-sizes", type=float, nargs="*", default=None, help="sizes for the old path (all)")
    parser.add_argument(
        "--prepare-cpus-for",
        type=float,
        nargs="*",
        default=None,
        help="sizes at which to measure prepare with every --cpus (default all; else only the max)",
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument(
        "--tile", type=int, nargs="*", default=[], help="also train on the new shards listed K times (memory only)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the shards/caches after measuring")
    parser.add_argument("--reuse", action="store_true", help="train on kept shards/caches without preparing again")
    parser.add_argument("--no-train", action="store_true", help="measure prepare only")
    parser.add_argument("--old-cpus", type=int, nargs="*", default=None, help="CPU counts for the old path")
    parser.add_argument("--old-only", action="store_true", help="measure only the old path (needs --old)")
    parser.add_argument("--out", default="", help="append result rows (JSON lines) here")
    parser.add_argument(
        "--pin-new", action="store_true", help="also pin the new path's prepare to C cores (as a C-core machine)"
    )
    args = parser.parse_args(argv)
    if args.old_only and not args.old:
        parser.error("--old-only needs --old (a checkout of the old path)")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes:
        corpus = work / f"corpus-{size:g}GB.txt"
        t = time.perf_counter()
        make_corpus(corpus, size)
        print(f"corpus {corpus}: {corpus.stat().st_size / 1e9:.2f} GB ({time.perf_counter() - t:.0f} s)", flush=True)
        cpus = args.cpus if args.prepare_cpus_for is None or size in args.prepare_cpus_for else [max(args.cpus)]
        paths = [] if args.old_only else [("new", str(ROOT))]
        if args.old and (args.old_sizes is None or size in args.old_sizes):
            paths.append(("old", args.old))
        for which, pythonpath in paths:
            n_before = len(rows)
            home = work / f"home-{which}-{size:g}"
            shutil.rmtree(home, ignore_errors=True)
            row = {"path": which, "size_gb": size, "corpus_bytes": corpus.stat().st_size}
            counts = cpus if which == "new" or args.old_cpus is None else args.old_cpus
            stores = {c: work / f"store-{which}-{size:g}-c{c}" for c in counts}
            reuse = args.reuse and any(stores[counts[0]].glob("*/manifest.json"))
            for c in [] if reuse else counts:  # the first count's shards / cache are kept for training
                storage = stores[c]
                shutil.rmtree(storage, ignore_errors=True)
                if which == "new":
                    r = run_prepare(
                        PREPARE_NEW, [str(corpus), str(storage), str(c)], _env(pythonpath, home), c, args.pin_new
                    )
                else:
                    _link_gpt2(storage)
                    r = run_prepare(PREPARE_OLD, [str(corpus), str(storage)], _env(pythonpath, home), c, True)
                row[f"prepare_{c}cpu"] = r
                print(which, size, c, "cpu prepare", r, flush=True)
                if c != counts[0]:
                    shutil.rmtree(storage, ignore_errors=True)
            storage = stores[counts[0]]
            if args.no_train:
                rows.append(row)
                _append(args.out, rows[n_before:])
                if not args.keep:
                    shutil.rmtree(storage, ignore_errors=True)
                continue
            data_sets = [f"data.storage_path={storage}"] if which == "new" else [f"data.cache_dir={storage}"]
            row["train"] = run_train(pythonpath, home, corpus, data_sets, f"bench-{which}-{size:g}", args.steps)
            print(which, size, "train", row["train"], flush=True)
            rows.append(row)
            for k in args.tile if which == "new" else []:
                tiled = tile_shards(storage, k, work / f"tiled-{size:g}-x{k}")
                size_k = round(size * k, 3)
                tile_row = {"path": f"new, shards x{k}", "size_gb": size_k, "corpus_bytes": corpus.stat().st_size * k}
                sets = [f"data.shards={tiled}"]
                tile_row["train"] = run_train(pythonpath, home, corpus, sets, f"bench-tiled-{size:g}-{k}", args.steps)
                print(which, size, f"x{k} train", tile_row["train"], flush=True)
                rows.append(tile_row)
                shutil.rmtree(tiled, ignore_errors=True)
            _append(args.out, rows[n_before:])
            if not args.keep:
                shutil.rmtree(storage, ignore_errors=True)
            shutil.rmtree(home, ignore_errors=True)
    print(table(rows))
    return 0


def _append(out: str, rows: list[dict]) -> None:
    if out:
        with open(out, "a") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)


def _tps(r: dict | None) -> str:
    if not r:
        return "-"
    if "error" in r:
        return "error"
    return f"{r['tokens'] / r['seconds'] / 1e3:,.0f}k"


def table(rows: list[dict]) -> str:
    head = "| path | corpus | tokens | prepare 1 CPU tok/s | prepare 2 CPU tok/s | worker RSS peak MB | worker anon MB | first step s |"
    out = [head, "|" + "---|" * 8]
    for r in rows:
        tokens = next((p["tokens"] for k, p in r.items() if k.startswith("prepare_") and "tokens" in p), None)
        tr = r.get("train", {"error": "not run"})
        rss = "error" if "error" in tr else "/".join(map(str, tr["worker_rss_mb"]))
        anon = "error" if "error" in tr else "/".join(map(str, tr["worker_anon_mb"]))
        first = "error" if "error" in tr else f"{tr['first_step_s']:.1f}" if tr["first_step_s"] else "-"
        out.append(
            f"| {r['path']} | {r['corpus_bytes'] / 1e9:.2f} GB | {tokens / 1e6:,.1f}M | {_tps(r.get('prepare_1cpu'))} | "
            f"{_tps(r.get('prepare_2cpu'))} | {rss} | {anon} | {first} |"
            if tokens
            else f"| {r['path']} | {r['corpus_bytes'] / 1e9:.2f} GB | - | - | - | {rss} | {anon} | {first} |"
        )
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
