"""Downstream evaluation data: seeded classification splits (perplexity uses ``prepare(...).valid_blocks``).

- ``load_classification("movie_snippets" | "bbc_news", seed)`` -> ``{"train"|"dev"|"test": [(text, label)]}``:
  stratified 80/10/10 splits fixed by ``seed``. movie_snippets is binary by the sign of the mean human score
  (score 0 dropped: 10,566 sentences); bbc_news is 5-way (`BBC_CLASSES` order, 2,127 articles). Exact duplicate
  texts are dropped first (98 BBC articles, 2 snippets), so no text is in two splits.
- Held out of pretraining: `DataConfig(source="bbc_news" | "movie_snippets", split_seed=seed)` pretrains on the
  train part only (its dev part is the validation split, its test part is never trained on), so pretrain with
  the same ``split_seed`` as the ``seed`` used here. WikiText-2 (the usual pretraining text) contains neither.
"""

from __future__ import annotations

from msg_ray.data.builtin import BBC_CLASSES, labelled_records, labelled_splits
from msg_ray.data.cache import cache_root

CLASSIFICATION_TASKS = {"movie_snippets": ("negative", "positive"), "bbc_news": BBC_CLASSES}


def load_classification(name: str, seed: int = 0, cache_dir: str | None = None) -> dict[str, list[tuple[str, int]]]:
    """Fixed, seeded, stratified train/dev/test splits of a built-in classification task."""
    if name not in CLASSIFICATION_TASKS:
        raise ValueError(f"unknown classification task {name!r}; choose from {sorted(CLASSIFICATION_TASKS)}")
    texts, labels = labelled_records(name, cache_root(cache_dir))
    parts = labelled_splits(labels, seed)
    return {split: [(texts[i], labels[i]) for i in idx] for split, idx in parts.items()}


def num_labels(name: str) -> int:
    """Number of classes of a classification task."""
    if name not in CLASSIFICATION_TASKS:
        raise ValueError(f"unknown classification task {name!r}; choose from {sorted(CLASSIFICATION_TASKS)}")
    return len(CLASSIFICATION_TASKS[name])
