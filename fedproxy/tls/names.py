"""Server-name tables: exact names, ``*.example.com`` wildcards and a default (pure).

Matching follows RFC 6125 6.4.3 as browsers apply it: a wildcard stands for exactly one left-most label
(``*.example.com`` matches ``a.example.com``, not ``example.com`` nor ``a.b.example.com``). Names compare
case-insensitively with any trailing dot removed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

T = TypeVar("T")

DEFAULT_KEYS = ("*", "")  # keys that mean "any other name" in a config table


def normalize(name: str) -> str:
    """Lowercase, no trailing dot: the form names are stored and looked up in."""
    return name.strip().lower().rstrip(".")


class NameTable(Generic[T]):
    """``lookup(name)``: the exact entry, else the wildcard entry for its parent domain, else the default.

    The first value given for a name wins (config order), so an earlier certificate keeps a name it shares
    with a later one.
    """

    def __init__(self, entries: Iterable[tuple[str, T]] = (), default: T | None = None) -> None:
        self.exact: dict[str, T] = {}
        self.wildcard: dict[str, T] = {}  # "example.com" for "*.example.com"
        self.default = default
        for name, value in entries:
            self.add(name, value)

    def add(self, name: str, value: T) -> None:
        key = normalize(name)
        if key in DEFAULT_KEYS:
            if self.default is None:
                self.default = value
        elif key.startswith("*."):
            self.wildcard.setdefault(key[2:], value)
        else:
            self.exact.setdefault(key, value)

    def lookup(self, name: str | None) -> T | None:
        found = self.match(name)
        return self.default if found is None else found

    def match(self, name: str | None) -> T | None:
        """The exact or wildcard entry for ``name``; None when only the default would answer."""
        if not name:
            return None
        key = normalize(name)
        found = self.exact.get(key)
        if found is not None:
            return found
        _, dot, parent = key.partition(".")
        return self.wildcard.get(parent) if dot else None
