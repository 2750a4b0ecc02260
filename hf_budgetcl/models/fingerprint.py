"""Which weights a run started from: the base's path and a hash of its safetensors files.

Two builds of the stage-1 base with the same code and library versions can differ on another machine (float
reductions), so a table that merges runs must be able to tell the bases apart; results.json records this.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any


def weights_fingerprint(model_name_or_path: str) -> dict[str, Any]:
    """``{"path", "weights_sha256"}``: the sha256 (16 hex digits) over the folder's ``*.safetensors`` files in name
    order, or None for a Hub id or a folder without safetensors (nothing local to hash)."""
    folder = Path(model_name_or_path)
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return {"path": str(model_name_or_path), "weights_sha256": None}
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return {"path": str(folder), "weights_sha256": digest.hexdigest()[:16]}
