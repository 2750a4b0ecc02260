"""A dataclass field that takes its default and help from another dataclass's field of the same meaning.

The run config exposes the settings of SAR and aL, and the VLM recipe those of the tiny builders, as flags of their
own; mirroring them keeps one default and one help text for each.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def mirrored_field(source: type, name: str, topic: str) -> Any:
    """``field(default=<source.name's default>, metadata={"help": "<topic>: <its help>"})``."""
    original = {f.name: f for f in dataclasses.fields(source)}[name]
    if original.default is dataclasses.MISSING:
        raise TypeError(f"{source.__name__}.{name} has no default to mirror")
    return dataclasses.field(default=original.default, metadata={"help": f"{topic}: {original.metadata['help']}"})
