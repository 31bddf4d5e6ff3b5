"""A name → builder registry, shared by the encoder and fusion registries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

B = TypeVar("B", bound=Callable)


class Registry(Generic[B]):
    """Builders registered by name; a duplicate name is rejected, an unknown one named."""

    def __init__(self, kind: str):
        self.kind = kind
        self._builders: dict[str, B] = {}

    def register(self, name: str) -> Callable[[B], B]:
        def add(builder: B) -> B:
            if name in self._builders:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._builders[name] = builder
            return builder

        return add

    def extra(self, own_package: str) -> dict[str, B]:
        """The builders registered from outside ``own_package`` (a user's code): what a
        worker process, which imported only the package, must be handed."""
        return {n: b for n, b in self._builders.items()
                if not getattr(b, "__module__", "").startswith(own_package)}

    def adopt(self, builders: dict[str, B]) -> None:
        """Register the ``builders`` this process does not have yet (see ``extra``)."""
        for name, builder in builders.items():
            self._builders.setdefault(name, builder)

    def names(self) -> list[str]:
        return sorted(self._builders)

    def get(self, name: str) -> B:
        if name not in self._builders:
            raise ValueError(f"unknown {self.kind} {name!r}: registered {self.kind}s are {self.names()}")
        return self._builders[name]
