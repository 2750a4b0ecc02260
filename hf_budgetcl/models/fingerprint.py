"""Which weights a run started from: the base's path and a hash of its safetensors files.

Two builds of the stage-1 base with the same code and library versions can differ on another machine (float
reductions), so a table that merges runs must be able to tell the bases apart; results.json records this.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

MAX_HASHED_BYTES = 1 << 30  # a 7B base would cost every start a 14 GB read: above this, sizes only


def weights_fingerprint(model_name_or_path: str, max_bytes: int = MAX_HASHED_BYTES) -> dict[str, Any]:
    """``{"path", "weights_sha256", "weights_bytes"}``: the sha256 (16 hex digits) over the folder's ``*.safetensors``
    files in name order. The hash is None for a Hub id or a folder without safetensors (nothing local to hash), and
    for weights larger than ``max_bytes`` (their size is still recorded)."""
    folder = Path(model_name_or_path)
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    size = sum(f.stat().st_size for f in files)
    if not files or size > max_bytes:
        return {"path": str(model_name_or_path), "weights_sha256": None, "weights_bytes": size}
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return {"path": str(folder), "weights_sha256": digest.hexdigest()[:16], "weights_bytes": size}
