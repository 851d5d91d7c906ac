"""The built-in Tune search spaces, one study per module (``msg-ray tune --space <name>``).

In a checkout they are read from this folder; an installed msg_ray ships them as the ``msg_ray.tune_spaces``
package (``pyproject.toml`` maps this folder onto it). Shared run settings: ``msg_ray.tune.space.MINI_RUN``.
"""
