"""Pure-torch downstream fine-tuning on a GrowableModel: perplexity, LM fine-tuning, sequence classification.

No Ray, DeepSpeed or MLflow here (``msg_ray.compare.evaluate`` adds loading, tasks and logging). The classifier
reads the model's final hidden states (``hidden_states``: the model's own modules run up to, not including, the
tied output projection), pools them (BERT: the first, ``[CLS]``, position; GPT: the mean over real tokens, since
a causal model's first position sees nothing) and puts a linear head on top; the whole model is fine-tuned.
Everything runs on the model's device (``model_device``): data stays on the CPU and batches are moved there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from msg_ray.model import GrowableModel
from msg_ray.train.lr import LRSchedule
from msg_ray.train.optim import adamw
from msg_ray.train.steps import run_steps


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    steps: int = 200
    lr: float = 1e-4
    batch_size: int = 16
    weight_decay: float = 0.01
    warmup_steps: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"FinetuneConfig.{name} must be an int >= 1, got {v!r}")
        if not self.lr > 0:
            raise ValueError(f"FinetuneConfig.lr must be > 0, got {self.lr!r}")
        if self.warmup_steps < 0 or self.weight_decay < 0:
            raise ValueError("FinetuneConfig.warmup_steps and weight_decay must be >= 0")


def model_device(model: nn.Module) -> torch.device:
    """Where ``model`` computes (its first parameter's device); batches are moved there, results come back."""
    return next(model.parameters()).device


def hidden_states(
    model: GrowableModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:  # [B, T] -> [B, T, H]
    """The model's last hidden states (causal LMs: right padding is never attended to by real tokens)."""
    return model.hidden(input_ids, None if model.causal else attention_mask)


class SequenceClassifier(nn.Module):
    """Pretrained body + linear head over the pooled hidden state."""

    def __init__(self, body: GrowableModel, num_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.body, self.num_labels = body, num_labels
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(body.structure.hidden_dim, num_labels)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:  # -> [B, C]
        return self.head(self.drop(pooled_states(self.body, input_ids, attention_mask)))


def pooled_states(model: GrowableModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """One vector per sequence, [B, T] -> [B, H]: BERT the first (``[CLS]``) state, causal LMs the mean over real
    tokens (a causal model's first position sees nothing)."""
    h = hidden_states(model, input_ids, None if model.causal else attention_mask)
    if not model.causal:
        return h[:, 0]
    m = attention_mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


def _optimizer(module: nn.Module, cfg: FinetuneConfig) -> tuple[torch.optim.Optimizer, LRSchedule]:
    """AdamW (fine-tuning betas 0.9/0.999; no decay for biases and norms) and its LR: linear warm-up, then linear
    decay to 0 at ``cfg.steps`` (the usual fine-tuning schedule), from the one LR module."""
    opt = adamw(module, cfg.lr, cfg.weight_decay, betas=(0.9, 0.999))
    lr = LRSchedule(
        lr=cfg.lr, total_steps=cfg.steps, warmup_steps=max(1, cfg.warmup_steps), decay="linear", min_ratio=0.0
    )
    return opt, lr


@torch.no_grad()
def perplexity(model: GrowableModel, blocks: torch.Tensor, batch_size: int = 32) -> float:
    """exp(mean next-token cross-entropy) over all predicted tokens of ``blocks`` [N, T] (GPT)."""
    if not model.causal:
        raise ValueError(f"perplexity needs a causal LM (arch gpt or llama), got arch {model.arch!r}")
    if blocks.dim() != 2 or len(blocks) == 0:
        raise ValueError(f"blocks must be a non-empty [N, T] tensor, got shape {tuple(blocks.shape)}")
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        ids = blocks[i : i + batch_size].long().to(model_device(model))
        logits = model(ids)
        n = ids[:, 1:].numel()
        total += model.loss(logits, ids).item() * n
        count += n
    return math.exp(total / count)


def finetune_lm(model: GrowableModel, blocks: torch.Tensor, cfg: FinetuneConfig) -> list[float]:
    """Continue causal-LM training on ``blocks`` for ``cfg.steps`` steps (in place); returns the losses."""
    gen = torch.Generator().manual_seed(cfg.seed)
    opt, lr = _optimizer(model, cfg)
    dev = model_device(model)
    batches = (
        blocks[torch.randint(len(blocks), (cfg.batch_size,), generator=gen)].long().to(dev) for _ in iter(int, 1)
    )
    return run_steps(
        model, opt, batches, lambda ids: model.loss(model(ids), ids), steps=cfg.steps, lr_at=lr, grad_clip=1.0
    )


@dataclass
class Encoded:
    """A tokenised classification split: ``input_ids``/``attention_mask`` [N, T] long, ``labels`` [N] long."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def encode(tokenizer, examples: list[tuple[str, int]], seq_len: int, cls_id: int, sep_id: int, pad_id: int) -> Encoded:
    """``[CLS] text [SEP]`` truncated/padded to ``seq_len`` with a ``tokenizers.Tokenizer``."""
    if seq_len < 3:
        raise ValueError(f"seq_len must be >= 3, got {seq_len}")
    encs = tokenizer.encode_batch([t for t, _ in examples], add_special_tokens=False)
    ids = torch.full((len(examples), seq_len), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), seq_len), dtype=torch.long)
    for i, enc in enumerate(encs):
        row = [cls_id, *enc.ids[: seq_len - 2], sep_id]
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return Encoded(ids, mask, torch.tensor([y for _, y in examples], dtype=torch.long))


def train_classifier(clf: SequenceClassifier, train: Encoded, cfg: FinetuneConfig) -> list[float]:
    """Fine-tune body + head with cross-entropy for ``cfg.steps`` mini-batches (sampled with replacement)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    opt, lr = _optimizer(clf, cfg)
    batches = (torch.randint(len(train), (cfg.batch_size,), generator=gen) for _ in iter(int, 1))

    dev = model_device(clf)

    def loss_fn(idx: torch.Tensor) -> torch.Tensor:
        logits = clf(train.input_ids[idx].to(dev), train.attention_mask[idx].to(dev))
        return F.cross_entropy(logits.float(), train.labels[idx].to(dev))

    return run_steps(clf, opt, batches, loss_fn, steps=cfg.steps, lr_at=lr, grad_clip=1.0)


@torch.no_grad()
def predict(clf: SequenceClassifier, data: Encoded, batch_size: int = 64) -> torch.Tensor:
    clf.eval()
    dev = model_device(clf)
    out = [
        clf(data.input_ids[i : i + batch_size].to(dev), data.attention_mask[i : i + batch_size].to(dev)).argmax(-1)
        for i in range(0, len(data), batch_size)
    ]
    return torch.cat(out).cpu()


def classification_metrics(pred: torch.Tensor, gold: torch.Tensor, num_labels: int) -> dict[str, float]:
    """Accuracy, macro-F1 and (binary tasks) positive-class F1 and Matthews correlation."""
    cm = torch.zeros(num_labels, num_labels, dtype=torch.float64)  # rows gold, cols predicted
    cm.index_put_((gold.long(), pred.long()), torch.ones(len(gold), dtype=torch.float64), accumulate=True)
    tp = cm.diag()
    prec = tp / cm.sum(0).clamp_min(1e-12)
    rec = tp / cm.sum(1).clamp_min(1e-12)
    f1 = torch.where(prec + rec > 0, 2 * prec * rec / (prec + rec).clamp_min(1e-12), torch.zeros_like(tp))
    out = {"accuracy": float(tp.sum() / cm.sum()), "macro_f1": float(f1.mean())}
    if num_labels == 2:
        (tn, fp), (fn, tp1) = cm.tolist()
        denom = math.sqrt((tp1 + fp) * (tp1 + fn) * (tn + fp) * (tn + fn))
        out["f1"] = float(f1[1])
        out["mcc"] = (tp1 * tn - fp * fn) / denom if denom > 0 else 0.0
    return out
