"""The completion marker of a finished run: written last by the atomic finish, trusted by ``push`` and resume."""

from __future__ import annotations

import json
import os

MARKER_NAME = ".hf_budgetcl_complete"


def marker_path(output_dir: str) -> str:
    return os.path.join(output_dir, MARKER_NAME)


def read_marker(output_dir: str) -> dict | None:
    """The marker of a finished run in ``output_dir``: ``{"complete": true, "files": [...]}`` (None if absent)."""
    try:
        with open(marker_path(output_dir)) as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("complete") is True else None


def is_complete_run(output_dir: str) -> bool:
    """A marker, and every file it lists still there."""
    marker = read_marker(output_dir)
    return marker is not None and all(os.path.isfile(os.path.join(output_dir, n)) for n in marker.get("files", []))
