"""The last evaluation's accuracy per class and the names of the classes: what the model card's per-class table and
the compare plot show."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any


def final_class_accuracies(results: Mapping[str, Any]) -> dict[int, float]:
    """Class id -> accuracy of a run's last evaluation (``results.json``), in the order the stream brought the
    classes (ids sorted where the stream gives no usable order); empty without per-class accuracies."""
    curve = results.get("curve") or []
    per_class = (curve[-1].get("per_class") if curve else None) or {}
    final = {int(k): v for k, v in per_class.items() if str(k).lstrip("-").isdigit()}
    class_order = (results.get("stream") or {}).get("params", {}).get("class_order")  # a user's JSON may hold anything
    order = list(dict.fromkeys(c for c in class_order if c in final)) if isinstance(class_order, list) else []
    order += sorted(set(final) - set(order))
    return {c: final[c] for c in order}


def class_names_from_id2label(id2label: Mapping[Any, Any] | None) -> dict[int, str] | None:
    """A config's ``id2label`` as {id: name}, or None when it holds only transformers' placeholders (``LABEL_0``)."""
    names = {int(k): str(v) for k, v in (id2label or {}).items()}
    return None if all(v == f"LABEL_{k}" for k, v in names.items()) else names


def class_names_in(output_dir: str | os.PathLike) -> dict[int, str] | None:
    """The class names a run saved with its model (``config.json``'s ``id2label``), or None where it saved none."""
    path = os.path.join(output_dir, "config.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return class_names_from_id2label(json.load(f).get("id2label"))
