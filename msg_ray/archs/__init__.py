"""The built-in architectures, registered with ``msg_ray.architecture`` (one line each).

To add an architecture: write its model (a ``GrowableModel`` using the shared mask attributes) and its
``Architecture`` declaration in modules of this package, then register it below.
"""

from msg_ray.architecture import register
from msg_ray.archs.gpt_bert import BERT, GPT
from msg_ray.archs.llama_spec import LLAMA

register(GPT)
register(BERT)
register(LLAMA)
