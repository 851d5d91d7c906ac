"""Named registries: architectures, growth operators and Tune space kinds are each looked up by name here.

An item carries its ``name``; a name is registered once; a name not registered is a ValueError listing the known
ones, worded by each registry (its callers' tests and users' errors quote that wording).
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar


class Named(Protocol):
    name: str


T = TypeVar("T", bound=Named)


class Registry(Generic[T]):
    """Items by ``name``. ``what`` names an item in the duplicate error; ``unknown`` is the error for a name not
    registered, a format string with ``{name!r}`` and ``{names}``."""

    def __init__(self, what: str, unknown: str) -> None:
        self.what, self.unknown = what, unknown
        self._items: dict[str, T] = {}

    def register(self, item: T) -> T:
        """Add ``item`` (a name may be registered once); returns it, so it can decorate or wrap a definition."""
        if item.name in self._items:
            raise ValueError(f"{self.what} {item.name!r} is already registered")
        self._items[item.name] = item
        return item

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)

    def get(self, name: str) -> T:
        """The item registered as ``name``; ValueError naming the known ones otherwise."""
        if name not in self._items:
            raise ValueError(self.unknown.format(name=name, names=self.names()))
        return self._items[name]

    def values(self) -> tuple[T, ...]:
        return tuple(self._items.values())

    def __contains__(self, name: object) -> bool:
        return name in self._items
