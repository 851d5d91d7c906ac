"""The growth operators, registered with ``msg_ray.operators.base`` (one line each).

To add an operator: write its module in this package (a fill function and an ``Operator`` declaring the
dimensions it grows, whether it attaches masks, whether it claims function preservation, and the layout of the
optimizer state it leaves), then register it below. ``msg_ray.growth.grow`` dispatches on the registry; CLI
choices, schedule validation and Tune spaces read ``operator_names()``.
"""

from msg_ray.operators.base import Operator, get_operator, operator_names, register
from msg_ray.operators.gstack import GSTACK
from msg_ray.operators.hypercloning import HYPERCLONING, HYPERCLONING_NOISE
from msg_ray.operators.lemon import LEMON
from msg_ray.operators.msg import MSG, NOMASK
from msg_ray.operators.net2net import BERT2BERT_AKI, NET2NET

register(MSG)
register(NET2NET)
register(NOMASK)
register(GSTACK)
register(HYPERCLONING)
register(LEMON)
register(BERT2BERT_AKI)
register(HYPERCLONING_NOISE)

__all__ = ["Operator", "get_operator", "operator_names", "register"]
