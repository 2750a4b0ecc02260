"""The ``torch_dtype`` option both recipes share: one field, one help text, one check."""

from __future__ import annotations

from dataclasses import field
from typing import Any


def torch_dtype_field(auto_means: str, extra_help: str = "") -> Any:
    """A ``torch_dtype: str = ...`` dataclass field, default ``auto``; ``auto_means`` says what auto loads in."""
    return field(
        default="auto",
        metadata={
            "help": f"auto | bfloat16 | float16 | float32: dtype the model loads in (auto: {auto_means}){extra_help}."
        },
    )


def check_torch_dtype(value: str) -> None:
    """A typo is a one-line error at parse time, not after the data has loaded."""
    from ..models.loading import resolve_dtype  # torch: imported when a recipe parses, not when its module loads

    resolve_dtype(value, field="torch_dtype")
