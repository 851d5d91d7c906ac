"""The paper's structure 4-tuple: (hidden_dim, ffn_dim, head_num, layer_num), validated."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

DIMENSIONS = ("hidden_dim", "ffn_dim", "head_num", "layer_num")


@dataclass(frozen=True)
class Structure:
    """A Transformer structure as in MSG table 2, e.g. ``Structure(512, 768, 8, 3)``.

    The attention head size is *not* part of the structure: it is fixed (``head_dim``,
    default 64) and decoupled from ``hidden_dim`` as in the paper's appendix A.
    """

    hidden_dim: int
    ffn_dim: int
    head_num: int
    layer_num: int

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"Structure.{f.name} must be an int, got {value!r}")
            if value <= 0:
                raise ValueError(f"Structure.{f.name} must be positive, got {value}")

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.hidden_dim, self.ffn_dim, self.head_num, self.layer_num)

    @classmethod
    def parse(cls, value: Structure | dict | list | tuple | str) -> Structure:
        """Build from a Structure, a dict, a 4-sequence or a string like ``"(512,768,8,3)"``."""
        if isinstance(value, Structure):
            return value
        if isinstance(value, dict):
            unknown = set(value) - set(DIMENSIONS)
            if unknown:
                raise ValueError(f"Structure: unknown field(s) {sorted(unknown)}; expected {DIMENSIONS}")
            missing = [d for d in DIMENSIONS if d not in value]
            if missing:
                raise ValueError(f"Structure: missing field(s) {missing}")
            return cls(**{d: value[d] for d in DIMENSIONS})
        if isinstance(value, str):
            parts = [p for p in value.strip().strip("()[]").replace(" ", "").split(",") if p]
            try:
                value = [int(p) for p in parts]
            except ValueError as e:
                raise ValueError(f"Structure: cannot parse {value!r} as 4 ints") from e
        if isinstance(value, (list, tuple)):
            if len(value) != 4:
                raise ValueError(f"Structure needs 4 values {DIMENSIONS}, got {len(value)}: {value!r}")
            return cls(*value)
        raise ValueError(f"Structure: cannot build from {type(value).__name__} {value!r}")

    def grown_dims(self, target: Structure) -> list[str]:
        """Names of the dimensions that grow from ``self`` to ``target``; raises if any shrinks."""
        for d in DIMENSIONS:
            if getattr(target, d) < getattr(self, d):
                raise ValueError(
                    f"growth may not shrink {d}: {getattr(self, d)} -> {getattr(target, d)} ({self} -> {target})"
                )
        return [d for d in DIMENSIONS if getattr(target, d) > getattr(self, d)]

    def __str__(self) -> str:
        return "({},{},{},{})".format(*self.as_tuple())
