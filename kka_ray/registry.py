"""Name -> factory registries through which backends (datasets, detectors, models) plug in."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of factories; `@REG.register("name")` adds one. `REG.declare("name", "module")` names one
    whose module is imported on first use: a process that needs one backend (a Ray Train worker fitting one
    detector) does not pay for importing the others' libraries, seconds per process on a small CPU."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._modules: dict[str, str] = {}  # declared, not imported yet

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return add

    def declare(self, name: str, module: str) -> None:
        if name in self._items or name in self._modules:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._modules[name] = module

    def get(self, name: str) -> T:
        if name not in self._items and name in self._modules:
            importlib.import_module(self._modules[name])  # its @register fills the entry
            if name not in self._items:
                raise RuntimeError(f"{self._modules[name]} was declared to register {self.kind} {name!r} but "
                                   "did not")
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {', '.join(self.names())}") from None

    def check(self, name: str) -> str:
        """For config validators: the name if registered, else a ValueError listing the registered ones."""
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; registered: {', '.join(self.names())}")
        return name

    def names(self) -> list[str]:
        return sorted({*self._items, *self._modules})

    def __contains__(self, name: str) -> bool:
        return name in self._items or name in self._modules
