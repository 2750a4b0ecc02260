"""Writing a file so that a reader sees either the old file or the complete new one, never half of it."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import Any


def write_json_atomic(
    path: str | os.PathLike, value: Any, default: Callable[[Any], Any] | None = None, indent: int | None = None
) -> None:
    """Write ``value`` as JSON to ``path`` through a temporary file in the same folder, synced, then renamed."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(value, f, default=default, indent=indent)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
