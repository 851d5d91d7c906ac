"""Deterministic, rank-sharded, resumable batch iterator over packed token blocks, with BERT-style MLM masking.

Each epoch permutes all blocks with a permutation seeded by ``(seed, epoch)``; rank ``r`` of ``w`` takes every
``w``-th entry of it (trimmed so all ranks have the same count, hence step in lockstep and never overlap). The
permutation is a keyed Feistel network evaluated per batch (`BlockPermutation`), so no per-epoch index array of
the whole corpus is held in memory: a worker's memory does not grow with the corpus. MLM masking is drawn from a
generator seeded by ``(seed, epoch, rank, step)``, so a resumed run sees exactly the same batches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

IGNORE_INDEX = -100  # torch.nn.functional.cross_entropy's default ignore_index


def _mix(*parts: object) -> int:
    """A 63-bit seed from several integers (stable across processes and Python versions, unlike hash())."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


_M64 = np.uint64((1 << 64) - 1)


class BlockPermutation:
    """A seeded bijection of ``[0, n)``: a 4-round Feistel network on the smallest even bit width covering ``n``,
    cycle-walked back into range (at most ~4 rounds of walking on average). Evaluated on index arrays, O(len)."""

    def __init__(self, n: int, seed: int) -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.n = n
        self.half = max(1, ((n - 1).bit_length() + 1) // 2)
        self.mask = np.uint64((1 << self.half) - 1)
        self.keys = [np.uint64(_mix(seed, "feistel", r)) for r in range(4)]

    def _f(self, x: np.ndarray, key: np.uint64) -> np.ndarray:
        z = x + key  # splitmix64 finaliser: uint64 arithmetic wraps, which is the point
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return (z ^ (z >> np.uint64(31))) & self.mask

    def _once(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> np.uint64(self.half), x & self.mask
        for key in self.keys:
            left, right = right, left ^ self._f(right, key)
        return (left << np.uint64(self.half)) | right

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            x = self._once(np.asarray(idx, dtype=np.uint64))
            out_of_range = x >= self.n
            while out_of_range.any():
                x[out_of_range] = self._once(x[out_of_range])
                out_of_range = x >= self.n
        return x.astype(np.int64)


def mask_tokens(
    input_ids: torch.Tensor,
    *,
    mask_id: int,
    candidate_ids: torch.Tensor,
    special_ids: torch.Tensor,
    probability: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking (paper section 4.1): pick ``probability`` of non-special positions; of those 80% -> [MASK],
    10% -> a random non-special token, 10% unchanged. Labels hold the original id there and -100 elsewhere."""
    special = torch.isin(input_ids, special_ids)
    chosen = (torch.rand(input_ids.shape, generator=generator) < probability) & ~special
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    how = torch.rand(input_ids.shape, generator=generator)
    random_ids = candidate_ids[torch.randint(len(candidate_ids), input_ids.shape, generator=generator)]
    inputs = torch.where(chosen & (how < 0.8), torch.full_like(input_ids, mask_id), input_ids)
    inputs = torch.where(chosen & (how >= 0.8) & (how < 0.9), random_ids, inputs)
    return inputs, labels


class BlockLoader:
    """Infinite iterator of ``{"input_ids": [B, T] long, "labels": [B, T] long}`` batches for one rank.

    ``blocks``: an ``[N, T]`` tensor or anything indexable like one (`shards.ShardedBlocks`, memory-mapped).
    ``objective="clm"``: labels equal input_ids (the model shifts). ``"mlm"``: masked inputs, labels -100 where
    not masked; needs ``mask_id``, ``vocab_size`` and ``special_ids`` (never masked, never drawn as random).
    ``tokens_seen`` / ``passes`` count what all ranks together consumed (passes: over the split's blocks).
    """

    def __init__(
        self,
        blocks: Any,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        objective: str = "clm",
        mask_id: int | None = None,
        vocab_size: int | None = None,
        special_ids: Iterable[int] = (),
        mlm_probability: float = 0.15,
    ) -> None:
        if blocks.dim() != 2 or blocks.shape[0] == 0:
            raise ValueError(f"blocks must be a non-empty [N, seq_len] tensor, got shape {tuple(blocks.shape)}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if objective not in ("clm", "mlm"):
            raise ValueError(f"objective must be 'clm' or 'mlm', got {objective!r}")
        self.per_rank = blocks.shape[0] // world_size
        self.batches_per_epoch = self.per_rank // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{blocks.shape[0]} blocks cannot fill one batch of {batch_size} on each of {world_size} ranks"
            )
        self.blocks, self.batch_size, self.seed = blocks, batch_size, seed
        self.rank, self.world_size, self.objective = rank, world_size, objective
        self.mlm_probability = mlm_probability
        if objective == "mlm":
            self._init_mlm(mask_id, vocab_size, special_ids, mlm_probability)
        self.epoch, self.step = 0, 0
        self._perm: BlockPermutation | None = None

    def _init_mlm(self, mask_id: int | None, vocab_size: int | None, special_ids: Iterable[int], p: float) -> None:
        if mask_id is None or vocab_size is None:
            raise ValueError("objective 'mlm' needs mask_id and vocab_size")
        if not 0.0 < p < 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1), got {p}")
        self.mask_id = mask_id
        self.special_ids = torch.tensor(sorted(set(special_ids) | {mask_id}), dtype=torch.long)
        every = torch.arange(vocab_size, dtype=torch.long)
        self.candidate_ids = every[~torch.isin(every, self.special_ids)]

    def _indices(self) -> torch.Tensor:
        """Block ids of this rank's current batch: entries ``(step * B + i) * w + rank`` of the epoch's permutation."""
        if self._perm is None:
            self._perm = BlockPermutation(int(self.blocks.shape[0]), _mix(self.seed, self.epoch))
        pos = (self.step * self.batch_size + np.arange(self.batch_size)) * self.world_size + self.rank
        return torch.from_numpy(self._perm(pos))

    @property
    def samples_seen(self) -> int:
        """Blocks consumed by all ranks together since the start of training."""
        return (self.epoch * self.batches_per_epoch + self.step) * self.batch_size * self.world_size

    @property
    def tokens_seen(self) -> int:
        return self.samples_seen * int(self.blocks.shape[1])

    @property
    def passes(self) -> float:
        """Passes over the split (epochs, fractional): > 1 means blocks are being repeated."""
        return self.samples_seen / int(self.blocks.shape[0])

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.step >= self.batches_per_epoch:
            self.epoch, self.step, self._perm = self.epoch + 1, 0, None
        input_ids = self.blocks[self._indices()].long()
        if self.objective == "clm":
            batch = {"input_ids": input_ids, "labels": input_ids.clone()}
        else:
            gen = torch.Generator().manual_seed(_mix(self.seed, self.epoch, self.rank, self.step, "mlm"))
            inputs, labels = mask_tokens(
                input_ids,
                mask_id=self.mask_id,
                candidate_ids=self.candidate_ids,
                special_ids=self.special_ids,
                probability=self.mlm_probability,
                generator=gen,
            )
            batch = {"input_ids": inputs, "labels": labels}
        self.step += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Position to resume from (the same on every rank)."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "seed": self.seed,
            "num_blocks": int(self.blocks.shape[0]),
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "samples_in_epoch": self.step * self.batch_size * self.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at ``state``. With a different batch size or world size the position is converted by samples
        consumed in the epoch (exact when divisible, else rounded down: a few blocks are seen twice)."""
        for key in ("seed", "num_blocks"):
            mine = self.seed if key == "seed" else int(self.blocks.shape[0])
            if state[key] != mine:
                raise ValueError(f"loader state has {key}={state[key]}, this loader has {mine}")
        self.epoch, self._perm = int(state["epoch"]), None
        if state["batch_size"] == self.batch_size and state["world_size"] == self.world_size:
            self.step = int(state["step"])
        else:
            self.step = min(state["samples_in_epoch"] // (self.batch_size * self.world_size), self.batches_per_epoch)
