"""BlockLoader: MLM masking statistics, determinism by seed, disjoint rank shards, exact resume."""

from __future__ import annotations

import os

import pytest
import torch

os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("MSG_RAY_QUIET", "1")

from msg_ray.data import IGNORE_INDEX, BlockLoader, DataConfig, prepare  # noqa: E402


def _ids_blocks(n: int, t: int = 8) -> torch.Tensor:
    """Block i holds token ids i*t .. i*t+t-1, so a batch reveals which blocks it contains."""
    return torch.arange(n * t, dtype=torch.int32).reshape(n, t)


def _mlm_loader(blocks: torch.Tensor, **kw) -> BlockLoader:
    args = {"batch_size": 8, "objective": "mlm", "mask_id": 2, "vocab_size": 5000, "special_ids": [0, 1, 2, 3, 4]}
    return BlockLoader(blocks, **{**args, **kw})


def test_mlm_ratio_80_10_10_on_real_text() -> None:
    data = prepare(DataConfig(source="wikitext2", tokenizer="gpt2", seq_len=64))
    kw = {"batch_size": 64, "seed": 3, "rank": 0, "world_size": 1}
    clm = BlockLoader(data.train_blocks, objective="clm", **kw)
    mlm = BlockLoader(
        data.train_blocks,
        objective="mlm",
        mask_id=data.mask_id,
        vocab_size=data.vocab_size,
        special_ids=data.special_ids,
        mlm_probability=0.15,
        **kw,
    )
    orig, inp, lab = [], [], []
    for _ in range(40):  # 40 x 64 x 64 = 164k tokens
        c, m = next(clm), next(mlm)
        assert torch.equal(c["labels"], c["input_ids"]) and c["input_ids"].dtype == torch.long
        orig.append(c["input_ids"]), inp.append(m["input_ids"]), lab.append(m["labels"])
    orig, inp, lab = torch.cat(orig), torch.cat(inp), torch.cat(lab)
    special = torch.isin(orig, torch.tensor(data.special_ids))
    chosen = lab != IGNORE_INDEX
    assert special.any() and not (chosen & special).any()  # EOS present and never masked
    assert torch.equal(lab[chosen], orig[chosen])  # labels = original ids where chosen, -100 elsewhere
    assert torch.equal(inp[~chosen], orig[~chosen])  # unchosen positions untouched
    ratio = chosen.sum().item() / (~special).sum().item()
    assert abs(ratio - 0.15) < 0.005, ratio
    n = chosen.sum().item()
    to_mask = (inp[chosen] == data.mask_id).float().sum().item() / n
    kept = (inp[chosen] == orig[chosen]).float().sum().item() / n
    replaced = 1 - to_mask - kept
    assert abs(to_mask - 0.8) < 0.01 and abs(kept - 0.1) < 0.01 and abs(replaced - 0.1) < 0.01
    random_ids = inp[chosen & (inp != data.mask_id) & (inp != orig)]
    assert not torch.isin(random_ids, torch.tensor(data.special_ids)).any()


def test_determinism_by_seed() -> None:
    blocks = _ids_blocks(64)
    a, b, c = _mlm_loader(blocks, seed=1), _mlm_loader(blocks, seed=1), _mlm_loader(blocks, seed=2)
    for _ in range(20):  # crosses epoch boundaries (8 batches per epoch)
        x, y, z = next(a), next(b), next(c)
        assert torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(x["labels"], y["labels"])
    assert not torch.equal(x["input_ids"], z["input_ids"])


def test_epochs_reshuffle_and_cover_all_blocks() -> None:
    loader = BlockLoader(_ids_blocks(32), batch_size=4, seed=0)
    epochs = [[next(loader)["input_ids"][:, 0] // 8 for _ in range(8)] for _ in range(2)]
    first, second = (torch.cat(e) for e in epochs)
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(32))
    assert not torch.equal(first, second) and loader.epoch == 1


@pytest.mark.parametrize("world", [2, 3])
def test_rank_shards_disjoint(world: int) -> None:
    blocks = _ids_blocks(50)
    seen = []
    for rank in range(world):
        loader = BlockLoader(blocks, batch_size=4, seed=7, rank=rank, world_size=world)
        ids = torch.cat([next(loader)["input_ids"][:, 0] // 8 for _ in range(loader.batches_per_epoch)])
        seen.append(set(ids.tolist()))
        assert len(seen[-1]) == loader.batches_per_epoch * 4
    assert all(not (seen[i] & seen[j]) for i in range(world) for j in range(i + 1, world))
    # MLM masks differ across ranks even for the same step.
    r0, r1 = (next(_mlm_loader(_ids_blocks(64), rank=r, world_size=2)) for r in (0, 1))
    assert not torch.equal(r0["labels"] != IGNORE_INDEX, r1["labels"] != IGNORE_INDEX)


def test_resume_exact() -> None:
    blocks = _ids_blocks(64)
    for kw in ({}, {"rank": 1, "world_size": 2}):
        run = _mlm_loader(blocks, seed=5, **kw)
        for _ in range(11):
            next(run)
        state = run.state_dict()
        resumed = _mlm_loader(blocks, seed=5, **kw)
        resumed.load_state_dict(state)
        for _ in range(9):
            x, y = next(run), next(resumed)
            assert torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(x["labels"], y["labels"])
    with pytest.raises(ValueError, match="seed"):
        _mlm_loader(blocks, seed=6).load_state_dict(state)
    # Another world size: the position converts by samples consumed (2 ranks x 8 = 16 per step).
    two = BlockLoader(blocks, batch_size=4, seed=5, world_size=2)
    for _ in range(3):
        next(two)
    one = BlockLoader(blocks, batch_size=4, seed=5, world_size=1)
    one.load_state_dict(two.state_dict())
    assert (one.epoch, one.step) == (0, 6)


def test_loader_errors() -> None:
    with pytest.raises(ValueError, match="cannot fill one batch"):
        BlockLoader(_ids_blocks(10), batch_size=4, world_size=3)
    with pytest.raises(ValueError, match="rank"):
        BlockLoader(_ids_blocks(10), batch_size=1, rank=2, world_size=2)
    with pytest.raises(ValueError, match="mask_id"):
        BlockLoader(_ids_blocks(10), batch_size=1, objective="mlm")
