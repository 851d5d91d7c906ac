"""What a run does once the divergence guard (``msg_ray.train.divergence``) fired: stop, or roll back.

``on_divergence: stop`` (or no rollbacks left, or no checkpoint before the diverged step) raises
``TrainingDiverged`` with a one-line hint. ``on_divergence: rollback`` picks the newest loadable checkpoint taken
before the diverged step (``checkpoint.newest``; every rank scans the same folders in the same order, so all ranks
pick the same one) and the run continues from it with its LR scaled by ``rollback_lr_factor`` per rollback.
"""

from __future__ import annotations

from pathlib import Path

from msg_ray.train import checkpoint
from msg_ray.train.divergence import Diverged
from msg_ray.train.reporting import DIVERGED, TrainingDiverged


class Recovery:
    """The rollback policy of one run and the rollbacks it has taken (persisted in every checkpoint)."""

    def __init__(self, *, on_divergence: str, max_rollbacks: int, lr_factor: float, storage: Path, rank: int) -> None:
        self.on_divergence, self.max_rollbacks = on_divergence, max_rollbacks
        self.factor, self.storage, self.rank = lr_factor, storage, rank
        self.rollbacks = 0

    @property
    def lr_factor(self) -> float:
        """The LR multiplier after the rollbacks so far (``rollback_lr_factor ** rollbacks``)."""
        return self.factor**self.rollbacks

    def target(self, d: Diverged, last_finite_step: int) -> checkpoint.Loaded:
        """The checkpoint to roll back to after ``d``; raises TrainingDiverged when the run must stop instead."""
        loaded = None
        if self.on_divergence == "rollback" and self.rollbacks < self.max_rollbacks:
            loaded = checkpoint.newest(self.storage, self.rank, before_step=d.step)
        if loaded is None:
            raise TrainingDiverged(
                f"{self.message(d, last_finite_step)}. Lower engine.lr or raise warmup_steps (or set "
                "on_divergence=rollback); the checkpoints hold only finite states."
            )
        return loaded

    @staticmethod
    def message(d: Diverged, last_finite_step: int) -> str:
        return f"{DIVERGED}: {d}; finite up to step {last_finite_step}"
