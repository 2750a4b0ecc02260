"""Range checks for every number of a configuration dataclass, in one place.

A dataclass states the range of its numbers in a ``RANGES`` class variable, ``{"fisher_ema": "(0, 1]", ...}`` (not
in field metadata: HfArgumentParser passes that on to argparse), inherited fields included. Every float must be
finite, whatever its range. ``None`` means "not set".
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

from .errors import ConfigError

RANGES: dict[str, Callable[[float], bool]] = {
    "> 0": lambda v: v > 0,
    ">= 0": lambda v: v >= 0,
    ">= 1": lambda v: v >= 1,
    "(0, 1)": lambda v: 0 < v < 1,
    "(0, 1]": lambda v: 0 < v <= 1,
    "[0, 1]": lambda v: 0 <= v <= 1,
    "[0, 1)": lambda v: 0 <= v < 1,
}


def check_numbers(obj: Any, ranges: Mapping[str, str]) -> None:
    """Raise :class:`ConfigError` naming the first field of dataclass ``obj`` that is NaN, infinite or out of range."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name, None)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value):
            raise ConfigError(f"{f.name} must be a finite number, got {value}")
        rule = ranges.get(f.name)
        if rule is not None and not RANGES[rule](value):
            raise ConfigError(
                f"{f.name} must be in {rule}, got {value}" if "," in rule else f"{f.name} must be {rule}, got {value}"
            )
