"""Downstream evaluation of any checkpoint or export folder, as Ray tasks, logged to the run that produced it.

- GPT: WikiText-2 valid/test perplexity zero-shot (``ppl_zs/*``) and after fine-tuning on WikiText-2 train
  (``ppl_ft/*``, paper table 5).
- BERT: fine-tune + test on ``movie_snippets`` (binary: accuracy, F1, MCC) and ``bbc_news`` (5-way: accuracy,
  macro-F1), one value per fine-tuning seed (paper appendix F: mean (std) over 3 seeds). ``cls_mode="probe"``
  scores a linear probe on the frozen model instead (``<task>/probe_*``, one value; any arch, e.g. GPT studies).
Results are ``{metric: [value per seed]}``. Text is tokenised with the producing run's tokenizer (its resolved
config travels in the checkpoint's ``meta.json``); a bare export folder needs ``EvalConfig.data``.

Each evaluation is one Ray task (``msg_ray.compare.resources``): a model trained on GPUs gets a GPU and is evaluated
there (``EvalConfig.use_gpu`` overrides). Ray is imported only where evaluations run in parallel (importing it costs
seconds).
"""

from __future__ import annotations

import copy
import json
import os
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from msg_ray.compare.finetune import (
    FinetuneConfig,
    SequenceClassifier,
    classification_metrics,
    encode,
    finetune_lm,
    model_device,
    perplexity,
    predict,
    train_classifier,
)
from msg_ray.compare.mlflow_io import append_metrics
from msg_ray.compare.probe import probe
from msg_ray.compare.resources import task_device, task_options, used_gpu
from msg_ray.data import DataConfig, prepare
from msg_ray.data.downstream import load_classification, num_labels
from msg_ray.data.tokenizer import tokenizer_digest
from msg_ray.export import load_exported
from msg_ray.model import GrowableModel, build_from_config
from msg_ray.structure import Structure
from msg_ray.train import checkpoint as C
from msg_ray.train.config import RunConfig

GPT_TASKS = ("wikitext2_ppl",)
BERT_TASKS = ("movie_snippets", "bbc_news")
EVAL_PREFIX = "eval/"
CLS_MODES = ("finetune", "probe")


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    tasks: tuple[str, ...] | None = None  # None: by arch (GPT_TASKS / BERT_TASKS)
    lm: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(steps=200, lr=1e-4, batch_size=16))
    cls: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(steps=300, lr=2e-4, batch_size=32))
    seeds: tuple[int, ...] = (0, 1, 2)  # fine-tuning seeds for the classification tasks
    cls_mode: str = "finetune"  # classification: "finetune" the whole model per seed, or a frozen linear "probe"
    lm_seeds: tuple[int, ...] = (0,)  # fine-tuning seeds for PPL-ft (one: the LM fine-tune is long and stable)
    cls_seq_len: int = 128
    max_eval_blocks: int | None = None  # cap on valid/test blocks for PPL (None: all)
    max_train_examples: int | None = None  # cap on classification train examples (None: all)
    split_seed: int | None = None  # None: the run's data.split_seed (keeps eval texts out of pretraining)
    data: dict[str, Any] | None = None  # DataConfig fields, for export folders that carry no run config
    threads: int = 1
    # evaluate on a GPU (one per Ray task): None: where the producing run trained (its config's use_gpu)
    use_gpu: bool | None = None

    def __post_init__(self) -> None:
        known = GPT_TASKS + BERT_TASKS
        if self.tasks is not None and (not self.tasks or set(self.tasks) - set(known)):
            raise ValueError(f"EvalConfig.tasks must be a non-empty subset of {known}, got {self.tasks!r}")
        if not self.seeds or not self.lm_seeds:
            raise ValueError("EvalConfig.seeds and lm_seeds must be non-empty")
        if self.cls_mode not in CLS_MODES:
            raise ValueError(f"EvalConfig.cls_mode must be one of {CLS_MODES}, got {self.cls_mode!r}")
        if self.cls_seq_len < 3:
            raise ValueError(f"EvalConfig.cls_seq_len must be >= 3, got {self.cls_seq_len}")
        if self.threads < 1:
            raise ValueError(f"EvalConfig.threads must be >= 1, got {self.threads}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalConfig:
        d = dict(d)
        for key in ("lm", "cls"):
            if isinstance(d.get(key), dict):
                d[key] = replace(getattr(cls(), key), **d[key])
        for key in ("tasks", "seeds", "lm_seeds"):
            if isinstance(d.get(key), list):
                d[key] = tuple(d[key])
        return cls(**d)


@dataclass
class LoadedModel:
    model: GrowableModel
    run_config: dict[str, Any] | None  # RunConfig.to_dict() of the producing run, when known
    run_id: str | None
    path: Path


def _locate(p: Path) -> tuple[Path | None, Path]:
    """(export folder or None, meta.json path) of a checkpoint or export folder; ValueError naming ``p`` when it
    is neither (checked before any Ray work starts)."""
    if (p / "export" / "config.json").is_file():
        return p / "export", p / "meta.json"
    if (p / "config.json").is_file():
        return p, p.parent / "meta.json"
    if (p / "meta.json").is_file() and (p / "model.pt").is_file():
        return None, p / "meta.json"
    raise ValueError(f"{p}: neither a checkpoint folder (meta.json + model.pt) nor an export (config.json + model.pt)")


def load_model(path: str | os.PathLike) -> LoadedModel:
    """A checkpoint folder (``meta.json`` + ``model.pt``, optional ``export/``) or an export folder."""
    p = Path(path)
    p_export, meta_file = _locate(p)
    try:
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_file}: not valid JSON ({e})") from e
    model = load_exported(p_export) if p_export is not None else _from_checkpoint(p, meta)
    run_id = meta.get("run_id", meta.get("mlflow_run_id"))  # checkpoints written before the key's rename
    return LoadedModel(model.eval(), meta.get("config"), run_id, p)


def _from_checkpoint(p: Path, meta: dict[str, Any]) -> GrowableModel:
    C.verify(p)  # sizes and checksums first: a damaged checkpoint is named before any data is prepared
    cfg = RunConfig.from_dict(meta["config"])
    vocab = prepare(cfg.data).vocab_size
    # dropout 0, as evaluation always built it (fine-tuning adds none of the pretraining's)
    mc = replace(cfg.model_config(vocab, Structure.parse(meta["structure"])), dropout=0.0)
    model = build_from_config(mc)
    state = C.read(p / "model.pt")
    model.load_state_dict({**state["params"], **state["buffers"]})
    return model


def _data_config(loaded: LoadedModel, cfg: EvalConfig):

    if cfg.data is not None:
        d = dict(cfg.data)
    elif loaded.run_config is not None:
        d = dict(loaded.run_config["data"])
    else:
        raise ValueError(f"{loaded.path}: no run config next to this export; pass EvalConfig.data (tokenizer, seq_len)")
    return DataConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def evaluate_model(loaded: LoadedModel, cfg: EvalConfig, device: torch.device | str = "cpu") -> dict[str, list[float]]:
    """Run every task of ``cfg`` for the loaded model on ``device``; ``{metric: [value per fine-tuning seed]}``."""
    torch.set_num_threads(cfg.threads)
    loaded.model.to(device)
    tasks = cfg.tasks or (GPT_TASKS if loaded.model.causal else BERT_TASKS)
    data_cfg = _data_config(loaded, cfg)
    out: dict[str, list[float]] = {}
    for task in tasks:
        if task == "wikitext2_ppl":
            out.update(evaluate_lm(loaded.model, data_cfg, cfg))
        else:
            out.update(evaluate_classification(loaded.model, task, data_cfg, cfg))
    return out


def evaluate_lm(model: GrowableModel, data_cfg, cfg: EvalConfig) -> dict[str, list[float]]:
    """PPL-zs and PPL-ft on WikiText-2 valid/test, tokenised like the pretraining run."""

    if not model.causal:
        raise ValueError(f"wikitext2_ppl needs a causal LM checkpoint (arch gpt or llama), got {model.arch!r}")
    wt = prepare(
        DataConfig(
            source="wikitext2", tokenizer=data_cfg.tokenizer, seq_len=data_cfg.seq_len, cache_dir=data_cfg.cache_dir
        )
    )
    digest = tokenizer_digest(wt.tokenizer)
    same = data_cfg.source == "wikitext2" or tokenizer_digest(prepare(data_cfg).tokenizer) == digest
    if not same or wt.vocab_size != model.config.vocab_size:  # a corpus-trained BPE differs per corpus
        raise ValueError(
            f"tokenizer {data_cfg.tokenizer!r} of source {data_cfg.source!r} is not the one WikiText-2 "
            "is tokenised with here; evaluate PPL on models pretrained with 'gpt2' or on wikitext2"
        )
    n = cfg.max_eval_blocks
    splits = {"valid": wt.valid_blocks[:n], "test": wt.test_blocks[:n]}
    out = {f"ppl_zs/{s}": [perplexity(model, b)] for s, b in splits.items()}
    for seed in cfg.lm_seeds:
        tuned = copy.deepcopy(model)
        finetune_lm(tuned, wt.train_blocks, replace(cfg.lm, seed=seed))
        for s, b in splits.items():
            out.setdefault(f"ppl_ft/{s}", []).append(perplexity(tuned, b))
    return out


def evaluate_classification(model: GrowableModel, task: str, data_cfg, cfg: EvalConfig) -> dict[str, list[float]]:
    """Fine-tune a classifier per seed on the task's train split, score it on the test split (``cls_mode="probe"``:
    a linear probe on the frozen model instead, ``msg_ray.compare.probe``)."""

    data = prepare(data_cfg)  # the pretraining run's tokenizer and special ids
    split_seed = data_cfg.split_seed if cfg.split_seed is None else cfg.split_seed
    splits = load_classification(task, seed=split_seed, cache_dir=data_cfg.cache_dir)
    seq_len = min(cfg.cls_seq_len, model.config.max_seq_len)
    args = (data.tokenizer, seq_len, data.cls_id, data.sep_id, data.pad_id)
    train = encode(args[0], splits["train"][: cfg.max_train_examples], *args[1:])
    test = encode(args[0], splits["test"], *args[1:])
    if cfg.cls_mode == "probe":  # one deterministic fit: no seeds, metrics named probe_* (not fine-tuning's)
        dev = encode(args[0], splits["dev"], *args[1:])
        scores = probe(model, {"train": train, "dev": dev, "test": test}, num_labels(task))
        return {f"{task}/probe_{k}": [v] for k, v in scores.items()}
    out: dict[str, list[float]] = {}
    for seed in cfg.seeds:
        torch.manual_seed(seed)
        clf = SequenceClassifier(copy.deepcopy(model), num_labels(task)).to(model_device(model))
        train_classifier(clf, train, replace(cfg.cls, seed=seed))
        for k, v in classification_metrics(predict(clf, test), test.labels, num_labels(task)).items():
            out.setdefault(f"{task}/{k}", []).append(v)
    return out


def evaluate_checkpoint(path: str | os.PathLike, cfg: EvalConfig | None = None, log: bool = True) -> dict[str, Any]:
    """Load, evaluate (on the GPU ``wants_gpu`` asks for, when this process has one) and (``log``) record the scores
    in the producing MLflow run; returns a summary dict."""
    cfg = cfg or EvalConfig()
    loaded = load_model(path)
    scores = evaluate_model(loaded, cfg, task_device(wants_gpu(path, cfg)))
    logged = log_scores(loaded, scores) if log else False
    return {
        "path": str(path),
        "run_id": loaded.run_id,
        "scores": scores,
        "logged": logged,
        "summary": summarize_scores(scores),
    }


def summarize_scores(scores: dict[str, list[float]]) -> dict[str, tuple[float, float]]:
    """{metric: (mean, std)} (std 0 for a single value)."""
    return {k: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0) for k, v in scores.items()}


def log_scores(loaded: LoadedModel, scores: dict[str, list[float]]) -> bool:
    """Write ``eval/<metric>`` (one point per seed, step = seed index) to the run that made the checkpoint.

    The run is reopened by id and closed again with the status it had, so a finished run stays FINISHED.
    """

    if loaded.run_config is None or loaded.run_id is None:
        return False
    series = {EVAL_PREFIX + k: list(enumerate(v)) for k, v in scores.items()}
    return append_metrics(loaded.run_config, loaded.run_id, series)


def evaluate_many(
    paths: list[str | os.PathLike], cfg: EvalConfig | None = None, *, log: bool = True, num_cpus: float = 1.0
) -> list[dict[str, Any]]:
    """Evaluate several checkpoints in parallel, one Ray task each (results in the order of ``paths``)."""
    import ray

    for p in paths:  # a wrong path is reported before Ray starts
        _locate(Path(p))
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"))
    cfg = cfg or EvalConfig()
    task = ray.remote(evaluate_checkpoint)
    opts = [eval_task_options(p, cfg, num_cpus) for p in paths]
    return ray.get([task.options(**o).remote(str(p), cfg, log) for p, o in zip(paths, opts, strict=True)])


def wants_gpu(path: str | os.PathLike, cfg: EvalConfig) -> bool:
    """``cfg.use_gpu``, or when None whether the run that wrote ``path`` trained on GPUs."""
    if cfg.use_gpu is not None:
        return cfg.use_gpu
    meta_file = _locate(Path(path))[1]
    try:
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    except json.JSONDecodeError:
        return False
    return used_gpu(meta.get("config"))


def eval_task_options(path: str | os.PathLike, cfg: EvalConfig, num_cpus: float = 1.0) -> dict[str, Any]:
    """Ray options of the task evaluating ``path``: ``num_cpus`` CPUs, and a GPU when ``wants_gpu``."""
    return task_options(wants_gpu(path, cfg), num_cpus=num_cpus, threads=cfg.threads)
