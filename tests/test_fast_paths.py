"""The model's fast paths compute what the plain paths computed: BERT's MLM head on labelled positions only, the
bf16 cross-entropy without an fp32 copy of the logits, grouped-query attention inside SDPA, cached rotary tables."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from msg_ray import build_model
from msg_ray.archs.llama import LlamaAttention, apply_rotary, rotary_tables
from msg_ray.masked_layers import VOCAB_KEYS, cross_entropy, padded_vocab
from msg_ray.structure import Structure

V = 96


def _mlm_batch(g: torch.Generator, B: int = 3, T: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, V, (B, T), generator=g)
    labels = torch.randint(0, V, (B, T), generator=g).masked_fill(torch.rand(B, T, generator=g) > 0.15, -100)
    labels[0, 0] = 5  # at least one labelled position
    return ids, labels


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_bert_head_on_labelled_positions_gives_the_same_loss_and_gradients(dtype):
    g = torch.Generator().manual_seed(0)
    model = build_model("bert", Structure(32, 64, 2, 2), vocab_size=V, max_seq_len=16, head_dim=16, seed=0)
    model = model.to(dtype)
    ids, labels = _mlm_batch(g)
    runs = []
    for kw in ({}, {"labels": labels}):
        model.zero_grad()
        logits = model(ids, **kw)
        loss = model.loss(logits, labels)
        loss.backward()
        runs.append((logits, loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (full, loss_full, grad_full), (sel, loss_sel, grad_sel) = runs
    assert sel.shape == (int((labels != -100).sum()), V) and full.shape == (3, 16, V)
    assert torch.equal(sel, full[labels != -100]) or dtype == torch.float32  # fp32 GEMMs may block rows apart
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    assert loss_sel.dtype == dtype and abs(loss_sel - loss_full).item() <= tol
    for n in grad_full:
        assert torch.allclose(grad_sel[n], grad_full[n], rtol=0, atol=tol), n


def test_gpt_and_llama_ignore_labels_in_forward():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (2, 8), generator=g)
    for arch in ("gpt", "llama"):
        model = build_model(arch, Structure(32, 64, 2, 1), vocab_size=V, max_seq_len=8, head_dim=16, seed=0)
        assert torch.equal(model(ids, labels=ids), model(ids))


def test_bf16_cross_entropy_matches_the_fp32_reduction_chunk_by_chunk(monkeypatch):
    import msg_ray.masked_layers as ML

    monkeypatch.setattr(ML, "CE_CHUNK_ELEMENTS", 5 * V)  # chunks of 5 rows: the split is exercised
    g = torch.Generator().manual_seed(2)
    logits = (torch.randn(23, V, generator=g) * 4).bfloat16()
    labels = torch.randint(0, V, (23,), generator=g)
    labels[[1, 7, 8, 22]] = -100
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    loss = cross_entropy(a, labels)
    ref = F.cross_entropy(b.float(), labels, ignore_index=-100)  # the old path: a whole fp32 copy
    (loss * 3).backward()
    (ref * 3).backward()
    assert loss.dtype == torch.float32 and abs(loss - ref).item() <= 1e-6
    assert a.grad.dtype == torch.bfloat16
    assert ((a.grad.float() - b.grad.float()).abs() - 2**-8 * b.grad.float().abs()).max().item() <= 1e-7
    assert a.grad[1].abs().max().item() == 0.0  # ignored rows get no gradient
    assert torch.isnan(cross_entropy(logits, torch.full((23,), -100)))  # as F.cross_entropy with no valid row


def test_fp64_logits_stay_fp64_in_the_loss():
    model = build_model("gpt", Structure(32, 64, 2, 1), vocab_size=V, max_seq_len=8, head_dim=16, seed=0).double()
    ids = torch.randint(0, V, (2, 8), generator=torch.Generator().manual_seed(3))
    assert model.loss(model(ids), ids).dtype == torch.float64


@pytest.mark.parametrize("in_sdpa", [True, False])  # False: the path CUDA takes where flash cannot run
@pytest.mark.parametrize("group", [2, 4])
def test_grouped_query_attention_in_sdpa_equals_repeated_key_value_heads(group, in_sdpa, monkeypatch):
    import msg_ray.archs.llama as llama

    monkeypatch.setattr(llama, "_sdpa_takes_gqa", lambda *a: in_sdpa)
    torch.manual_seed(4)
    attn = LlamaAttention(32, 4, 8, group, dropout=0.0).double()
    x = torch.randn(2, 10, 32, dtype=torch.float64)
    rope = rotary_tables(10, 8, 10000.0, x.device, x.dtype)
    B, T, n, d = 2, 10, 4, 8
    q = apply_rotary(attn.q(x).view(B, T, n, d).transpose(1, 2), *rope)
    k = apply_rotary(attn.k(x).view(B, T, n // group, d).transpose(1, 2), *rope)
    v = attn.v(x).view(B, T, n // group, d).transpose(1, 2)
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # the old path (repeat_kv)
    old = attn.o(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, n * d))
    new = attn(x, rope, None, None)
    assert (new - old).abs().max().item() <= 1e-14


def test_rotary_tables_are_cached_per_device_and_dtype_and_sliced_exactly():
    model = build_model("llama", Structure(32, 64, 2, 1), vocab_size=V, max_seq_len=16, head_dim=8, seed=0)
    cos, sin = model._rope(10, torch.device("cpu"), torch.float32)
    ref_cos, ref_sin = rotary_tables(10, 8, model.config.rope_theta, torch.device("cpu"), torch.float32)
    assert torch.equal(cos, ref_cos) and torch.equal(sin, ref_sin)
    cos2, _ = model._rope(16, torch.device("cpu"), torch.float32)
    assert cos2.data_ptr() == cos.data_ptr()  # the same table, not recomputed
    model._rope(16, torch.device("cpu"), torch.float64)
    assert len(model._rope_cache) == 2
    assert not any("rope" in k for k in model.state_dict())  # not a buffer: checkpoints and exports unchanged
    fresh = build_model("llama", Structure(32, 64, 2, 1), vocab_size=V, max_seq_len=16, head_dim=8, seed=0)
    with torch.inference_mode():  # tables first made under inference_mode still serve a training forward
        fresh(torch.zeros(1, 4, dtype=torch.long))
    ids = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(5))
    fresh.loss(fresh(ids), ids).backward()


@pytest.mark.parametrize("arch", ["gpt", "bert", "llama"])
def test_padded_vocabulary_rows_are_never_used_and_old_checkpoints_load(arch):
    model = build_model(arch, Structure(32, 64, 2, 1), vocab_size=V, max_seq_len=16, head_dim=16, seed=0)
    assert padded_vocab(V) == 128 and model.tok_emb.weight.shape == (128, 32)
    ids = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(6))
    labels = ids.masked_fill(torch.rand(2, 16, generator=torch.Generator().manual_seed(7)) > 0.5, -100)
    logits = model(ids)
    assert logits.shape == (2, 16, V)  # sliced back to the true vocabulary
    model.loss(logits, labels).backward()
    for key in VOCAB_KEYS:
        if key in dict(model.named_parameters()):
            grad = dict(model.named_parameters())[key].grad
            assert grad[V:].abs().max().item() == 0.0 and grad[:V].abs().max().item() > 0, key
    unpadded = {k: v[:V] if k in VOCAB_KEYS else v for k, v in model.state_dict().items()}  # pre-padding layout
    fresh = build_model(arch, Structure(32, 64, 2, 1), vocab_size=V, max_seq_len=16, head_dim=16, seed=1)
    fresh.load_state_dict(unpadded)
    assert torch.equal(fresh(ids), model(ids))
