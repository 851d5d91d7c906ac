"""msg_ray: Masked Structural Growth pretraining (pure-torch core re-exported here)."""

from msg_ray.structure import Structure

__all__ = ["Structure"]
