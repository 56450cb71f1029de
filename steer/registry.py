"""A tiny name -> object registry used for every variant chosen by name.

Modelled on verl's ``register_policy_loss``: variants register themselves with a decorator, and a lookup of an
unknown name raises a ``KeyError`` that lists the valid names, so a typo in a config fails with the fix in the
message instead of deep inside the training loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects (usually functions). ``kind`` names the registry in error messages."""

    def __init__(self, kind: str, choices: tuple[str, ...] | None = None):
        """``choices``: the names a config may give (``steer.choices``); registering any other name is an error, so
        a variant cannot exist without its config field accepting it."""
        self.kind = kind
        self.choices = choices
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")`` adds the decorated object under ``name``."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            if self.choices is not None and name not in self.choices:
                raise ValueError(f"{self.kind} {name!r} is not declared in steer.choices: add it there first")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; valid names: {', '.join(sorted(self._items))}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
