"""Name -> constructor registries: the only module-level state in facerec (STYLE.md principle 2).

The registries are filled where their parts live: importing `facerec.losses` registers the losses and importing
`facerec.models` the backbones (their builders, `build_loss` and `FaceEmbedder`, import those packages).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps a short, lowercase, CLI-friendly name to a class or factory function."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator that adds a constructor under `name`; registering a name twice is an error."""

        def add(ctor: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = ctor
            return ctor

        return add

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of {self.names()}") from None

    def build(self, name: str, **kwargs: Any) -> T:
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def describe(self) -> dict[str, str]:
        """Name -> first line of the constructor's docstring, for `facerec list`."""
        out = {}
        for name in self.names():
            doc = (self._entries[name].__doc__ or "").strip().splitlines()
            out[name] = doc[0] if doc else ""
        return out

    def __contains__(self, name: str) -> bool:
        return name in self._entries


LOSSES: Registry = Registry("loss")
BACKBONES: Registry = Registry("backbone")
