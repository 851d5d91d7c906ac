"""msg_ray: Masked Structural Growth pretraining. The pure-torch core is re-exported here."""

from msg_ray.growth import grow
from msg_ray.model import GrowableModel, GrowableTransformer, LlamaTransformer, ModelConfig, build_model
from msg_ray.structure import Structure

__all__ = [
    "GrowableModel",
    "GrowableTransformer",
    "LlamaTransformer",
    "ModelConfig",
    "Structure",
    "build_model",
    "grow",
]
