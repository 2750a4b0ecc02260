"""Registry of continual-learning methods; each lives in its own small module."""

from __future__ import annotations

from .base import ContinualMethod
from .er import ER
from .replay import Replay

METHODS: dict[str, type[ContinualMethod]] = {cls.name: cls for cls in (ER, Replay)}


def register_method(cls: type[ContinualMethod]) -> type[ContinualMethod]:
    METHODS[cls.name] = cls
    return cls


def get_method(name: str, **options) -> ContinualMethod:
    if name not in METHODS:
        raise ValueError(f"method: unknown method '{name}'; choose one of: {', '.join(sorted(METHODS))}")
    return METHODS[name](**options)


__all__ = ["ContinualMethod", "METHODS", "get_method", "register_method"]
