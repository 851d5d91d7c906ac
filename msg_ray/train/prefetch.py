"""Batches on the engine's device one step ahead, without a host sync: ``DevicePrefetcher`` wraps a resumable
batch iterator (``msg_ray.data.BlockLoader``).

On CUDA each batch (a dict of CPU tensors, ``input_ids``/``labels`` [B, T] int64) is pinned and copied with
``non_blocking=True`` on a side stream while the current step computes; the step's stream waits on that copy
(``wait_stream``, a device-side dependency, not a host sync) and the tensors are marked as used by it
(``record_stream``) so the caching allocator does not reuse their memory early. On the CPU nothing is pinned or
copied: the wrapper only keeps the resume position right.

Resume position: one batch is always drawn ahead, so the wrapped loader sits one batch past what training used.
``state_dict`` returns the position *before* the batch held ahead (what a checkpoint must record), and
``load_state_dict`` drops that batch, so a resumed or rolled-back run sees exactly the batches an uninterrupted
one does.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

Batch = dict[str, torch.Tensor]


class DevicePrefetcher:
    """``next()`` gives the next batch on ``device``; the one after it is already on its way."""

    def __init__(self, loader: Any, device: torch.device | str) -> None:
        self.loader, self.device = loader, torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(device=self.device) if self.cuda else None
        self._ahead: tuple[dict[str, Any], Batch] | None = None  # (loader position before it, batch)

    def __iter__(self) -> Iterator[Batch]:
        return self

    def _fetch(self) -> tuple[dict[str, Any], Batch]:
        position = self.loader.state_dict()
        batch = next(self.loader)
        if self.cuda:
            with torch.cuda.stream(self.stream):  # H2D copy overlaps the step running on the default stream
                batch = {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in batch.items()}
        return position, batch

    def __next__(self) -> Batch:
        if self._ahead is None:
            self._ahead = self._fetch()
        batch = self._ahead[1]
        if self.cuda:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self.stream)  # device-side order: the step reads the batch after its copy
            for t in batch.values():
                t.record_stream(current)
        self._ahead = self._fetch()
        return batch

    @property
    def samples_seen(self) -> int:
        """Blocks all ranks together have trained on: the loader's count less the batch held ahead."""
        held = self.loader.batch_size * self.loader.world_size if self._ahead is not None else 0
        return self.loader.samples_seen - held

    @property
    def tokens_seen(self) -> int:
        return self.samples_seen * int(self.loader.blocks.shape[1])

    @property
    def passes(self) -> float:
        """Passes over the split (epochs, fractional): > 1 means blocks are being repeated."""
        return self.samples_seen / int(self.loader.blocks.shape[0])

    def state_dict(self) -> dict[str, Any]:
        """The loader position of the first batch training has not used."""
        return self._ahead[0] if self._ahead is not None else self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._ahead = None
        self.loader.load_state_dict(state)
