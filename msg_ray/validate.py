"""Type checks of typed configs against their dataclass annotations (pure python).

A value of the wrong type (``--set engine.lr=fast``, ``workers=True``, a NaN) fails with one line naming the
field - ``RunConfig.engine.lr: must be a finite number, got 'fast'`` - before any range check inside a
``__post_init__`` can raise a TypeError on it. Annotations checked: ``int`` (bools refused), ``float`` (finite
ints or floats), ``bool``, ``str``, fixed-length ``tuple[...]`` and ``tuple[X, ...]`` of those, and ``X | None``;
other annotations (nested configs, ``Any``, mappings) are left to the class's own checks.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any


def check_types(obj: Any, prefix: str = "") -> None:
    """Raise ValueError ``<prefix><field>: must be ..., got <value>`` for the first field of dataclass ``obj``
    whose value does not match its annotation."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        _check(getattr(obj, f.name), hints.get(f.name, Any), f"{prefix}{f.name}")


def _check(v: Any, tp: Any, where: str) -> None:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if v is None and type(None) in args:
            return
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            _check(v, rest[0], where)
        return
    if tp is bool and not isinstance(v, bool):
        raise ValueError(f"{where}: must be true or false, got {v!r}")
    if tp is int and (isinstance(v, bool) or not isinstance(v, int)):
        raise ValueError(f"{where}: must be an int, got {v!r}")
    if tp is float and (isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)):
        raise ValueError(f"{where}: must be a finite number, got {v!r}")
    if tp is str and not isinstance(v, str):
        raise ValueError(f"{where}: must be a string, got {v!r}")
    if origin is tuple:
        if not isinstance(v, tuple | list):
            raise ValueError(
                f"{where}: must be a list of {len(args) if args[-1] is not Ellipsis else 'any'} values, got {v!r}"
            )
        if args[-1] is Ellipsis:
            args = (args[0],) * len(v)
        if len(v) != len(args):
            raise ValueError(f"{where}: must be a list of {len(args)} values, got {v!r}")
        for i, (x, t) in enumerate(zip(v, args, strict=True)):
            _check(x, t, f"{where}[{i}]")
