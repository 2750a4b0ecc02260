"""Dataset rows to one model-ready batch on a device: the one path every extra forward takes."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from accelerate.utils import send_to_device


def collate_rows(dataset: Any, collator: Callable[[list], dict], indices: Iterable[int], device: Any) -> dict:
    """The collated rows ``indices`` of ``dataset``, moved to ``device``."""
    return send_to_device(collator([dataset[int(i)] for i in indices]), device)
