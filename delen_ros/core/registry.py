"""A named registry that fails loudly: duplicate names and unknown names raise, listing the known.

Models' architectures, policies and energy meters are all looked up by the short strings that
parameters and CLIs carry; one small class keeps their error behaviour the same.
"""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

__all__ = ['Registry']

T = TypeVar('T')


class Registry(Generic[T]):
    """Objects of one ``kind`` by name.

    >>> r = Registry('colour'); _ = r.add('red', 1); r.get('red')
    1
    >>> r.get('blue')
    Traceback (most recent call last):
    KeyError: "unknown colour 'blue'; known: ['red']"
    """

    def __init__(self, kind: str, *, reserved: tuple[str, ...] = ()):
        self.kind = kind
        self._reserved = reserved
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        """Register ``item`` as ``name``; an empty, reserved or duplicate name raises ``ValueError``."""
        if not name or not isinstance(name, str):
            raise ValueError(f'{self.kind} name must be a non-empty string, got {name!r}')
        if name in self._reserved or name in self._items:
            raise ValueError(f'{self.kind} {name!r} is already registered (known: {self.names()})')
        self._items[name] = item
        return item

    def decorator(self, name: str) -> Callable[[T], T]:
        """``@registry.decorator('name')`` registers what it decorates."""
        if not name or not isinstance(name, str):
            raise ValueError(f'{self.kind} name must be a non-empty string, got {name!r}')
        return lambda item: self.add(name, item)

    def get(self, name: str) -> T:
        """The item registered as ``name``; unknown names raise ``KeyError`` listing the known ones."""
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(f'unknown {self.kind} {name!r}; known: {self.names()}') from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
