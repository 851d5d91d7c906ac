"""Benchmark the model's fast paths against the paths they replaced: step time (forward + backward) old vs new.

One row per change of issue 26 item 7, each on a mini model on the CPU:

- ``mlm-positions``: BERT's MLM head and loss on the labelled (15 %) positions only, vs on every position;
- ``rope-cache``: Llama's rotary tables made once per (device, dtype), vs made in every forward;
- ``gqa-sdpa``: grouped-query attention inside SDPA (``enable_gqa``), vs ``repeat_interleave`` of k and v;
- ``vocab-pad``: vocabulary tables padded to a multiple of 64 rows (logits sliced), vs the odd vocabulary;
- ``bf16-loss``: cross-entropy of bf16 logits reduced in fp32 chunk by chunk, vs an fp32 copy of the logits
  (a bf16 GPT step: the only row that runs in bf16).

The old paths live here only, swapped in for the duration of their measurement (the model keeps no dead code).
All variants run in one process, interleaved round by round in shuffled order; each cell is the median over the
rounds of one step's CPU seconds (``time.process_time`` with one torch thread: time spent waiting for a core on a
shared machine is not counted, which wall-clock medians on a loaded 2-core box were dominated by). "MiB kept": the storages autograd keeps
from the forward for the backward (parameters included), counted once per storage in one step.

    python -m benchmarks.bench_model               # 15 rounds (~2 min on 1 thread)
    python -m benchmarks.bench_model --rounds 5    # quicker, noisier
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from msg_ray.archs import transformer as transformer_mod
from msg_ray.archs.llama import LlamaAttention, LlamaTransformer, apply_rotary, rotary_tables
from msg_ray.masked_layers import _c
from msg_ray.model import build_model
from msg_ray.structure import Structure

MINI = Structure(128, 512, 4, 4)
HEAD_DIM, SEQ, BATCH, VOCAB = 32, 128, 16, 4000  # 4000: not a multiple of 64, so padding has work to do


# -- the old paths ----------------------------------------------------------------------------------------------
def _old_gqa_forward(self, x, rope, head_mask, out_mask):  # LlamaAttention.forward before enable_gqa
    B, T, _ = x.shape
    n, d, g = self.head_num, self.head_dim, self.group
    q = apply_rotary(self.q(x).view(B, T, n, d).transpose(1, 2), *rope)
    k = apply_rotary(self.k(x).view(B, T, n // g, d).transpose(1, 2), *rope)
    v = self.v(x).view(B, T, n // g, d).transpose(1, 2)
    if g > 1:
        k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    y = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=True)
    c_heads = None if head_mask is None else head_mask.value.repeat_interleave(d)
    return self.o(y.transpose(1, 2).reshape(B, T, n * d), _c(out_mask), c_heads)


def _old_rope(self, seq_len, device, dtype):  # rotary tables made in every forward
    return rotary_tables(seq_len, self.config.head_dim, self.config.rope_theta, device, dtype)


def _old_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # causal loss with an fp32 logits copy
    labels = F.pad(labels[:, 1:], (0, 1), value=-100)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)


@contextlib.contextmanager
def _swapped(owner: object, name: str, value: object) -> Iterator[None]:
    old = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)


# -- the cases: (old step, new step) ----------------------------------------------------------------------------
Step = Callable[..., None]  # step(saved=None); saved: a dict that collects the storages kept for the backward


def _keep(saved: dict[int, int]):
    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        saved[st.data_ptr()] = st.nbytes()
        return t

    return torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)


def _ids(seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(seed))


def _step(model, forward: Callable[[], torch.Tensor]) -> Step:
    def run(saved: dict[int, int] | None = None) -> None:
        model.zero_grad(set_to_none=True)
        with _keep(saved) if saved is not None else contextlib.nullcontext():
            loss = forward()
        loss.backward()

    return run


def _wrap(step: Step, *swaps: tuple[object, str, object]) -> Step:
    def run(saved: dict[int, int] | None = None) -> None:
        with contextlib.ExitStack() as stack:
            for owner, name, value in swaps:
                stack.enter_context(_swapped(owner, name, value))
            step(saved)

    return run


def _mlm_positions() -> tuple[Step, Step]:
    model = build_model("bert", MINI, vocab_size=VOCAB, max_seq_len=SEQ, head_dim=HEAD_DIM, seed=0)
    ids = _ids(1)
    labels = ids.masked_fill(torch.rand(BATCH, SEQ, generator=torch.Generator().manual_seed(2)) > 0.15, -100)
    old = _step(model, lambda: model.loss(model(ids), labels))
    new = _step(model, lambda: model.loss(model(ids, labels=labels), labels))
    return old, new


def _llama(kv_group_size: int = 1):
    return build_model(
        "llama", MINI, vocab_size=VOCAB, max_seq_len=SEQ, head_dim=HEAD_DIM, kv_group_size=kv_group_size, seed=0
    )


def _rope_cache() -> tuple[Step, Step]:
    model, ids = _llama(), _ids(3)
    new = _step(model, lambda: model.loss(model(ids), ids))
    return _wrap(new, (LlamaTransformer, "_rope", _old_rope)), new


def _gqa() -> tuple[Step, Step]:
    model, ids = _llama(kv_group_size=2), _ids(4)
    new = _step(model, lambda: model.loss(model(ids), ids))
    return _wrap(new, (LlamaAttention, "forward", _old_gqa_forward)), new


def _vocab_pad() -> tuple[Step, Step]:
    with _swapped(transformer_mod, "padded_vocab", lambda v: v):
        unpadded = build_model("gpt", MINI, vocab_size=VOCAB, max_seq_len=SEQ, head_dim=HEAD_DIM, seed=0)
    padded = build_model("gpt", MINI, vocab_size=VOCAB, max_seq_len=SEQ, head_dim=HEAD_DIM, seed=0)
    assert unpadded.tok_emb.weight.shape[0] == VOCAB < padded.tok_emb.weight.shape[0]
    ids = _ids(5)
    old = _step(unpadded, lambda: unpadded.loss(unpadded(ids), ids))
    new = _step(padded, lambda: padded.loss(padded(ids), ids))
    return old, new


def _bf16_loss() -> tuple[Step, Step]:
    model = build_model("gpt", MINI, vocab_size=VOCAB, max_seq_len=SEQ, head_dim=HEAD_DIM, seed=0).bfloat16()
    ids = _ids(6)
    old = _step(model, lambda: _old_loss(model(ids), ids))
    new = _step(model, lambda: model.loss(model(ids), ids))
    return old, new


CASES = {
    "mlm-positions": _mlm_positions,
    "rope-cache": _rope_cache,
    "gqa-sdpa": _gqa,
    "vocab-pad": _vocab_pad,
    "bf16-loss": _bf16_loss,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps = {(case, which): fn for case in args.cases for which, fn in zip(("old", "new"), CASES[case](), strict=True)}
    saved = {k: {} for k in steps}  # storages the forward keeps for the backward (parameters included): bytes
    for key, fn in steps.items():  # warm-up (allocator, kernels, caches), then one step that counts what it keeps
        fn()
        fn(saved[key])
    times: dict[tuple[str, str], list[float]] = {k: [] for k in steps}
    order = list(steps)
    for _ in range(args.rounds):
        random.shuffle(order)
        for key in order:
            t0 = time.process_time()
            steps[key]()
            times[key].append(time.process_time() - t0)
    print(
        f"mini models {MINI.as_tuple()} head_dim {HEAD_DIM}, batch {BATCH} x seq {SEQ}, vocab {VOCAB}; CPU, "
        f"{args.threads} thread(s), CPU time, median of {args.rounds} interleaved rounds (forward + backward)\n"
    )
    print("| change | old ms/step | new ms/step | time | old MiB kept | new MiB kept |")
    print("|---|---:|---:|---:|---:|---:|")
    for case in args.cases:
        old, new = (statistics.median(times[case, w]) * 1e3 for w in ("old", "new"))
        kept = [sum(saved[case, w].values()) / 2**20 for w in ("old", "new")]
        print(f"| {case} | {old:.1f} | {new:.1f} | {100 * (new - old) / old:+.1f} % | {kept[0]:.1f} | {kept[1]:.1f} |")


if __name__ == "__main__":
    main()
