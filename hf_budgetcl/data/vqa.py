"""Visual-question-answering instruction streams as ``datasets.Dataset``.

Every loader returns rows ``image`` (``datasets.Image``, decoded lazily to PIL), ``question``, ``answer``,
``concept`` (str) and ``label`` (int64 id of the concept: the "class" of the continual stream).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import datasets
import numpy as np

from ..utils.errors import ConfigError

# Fixed concept orders: ``label`` is the index in these tuples.
EASY_VQA_ANSWER_TYPES: tuple[str, ...] = ("shape", "color", "yes_no")
EASY_VQA_ANSWERS: tuple[str, ...] = (
    "circle", "rectangle", "triangle",
    "red", "green", "blue", "black", "gray", "teal", "brown", "yellow",
    "yes", "no",
)  # fmt: skip
_ANSWER_TYPE = {a: "shape" for a in EASY_VQA_ANSWERS[:3]} | {a: "color" for a in EASY_VQA_ANSWERS[3:11]}
_ANSWER_TYPE |= {"yes": "yes_no", "no": "yes_no"}


def easy_vqa_concepts(concepts: str = "answer_type") -> tuple[str, ...]:
    """Concept names in label order: 3 answer types (``"answer_type"``) or the 13 answers (``"answer"``)."""
    if concepts == "answer_type":
        return EASY_VQA_ANSWER_TYPES
    if concepts == "answer":
        return EASY_VQA_ANSWERS
    raise ConfigError(f"concepts must be 'answer_type' or 'answer', got {concepts!r}")


def vqa_features(names: Sequence[str]) -> datasets.Features:
    """The columns of every VQA dataset here: image, question, answer, concept, and the concept as a label."""
    return datasets.Features(
        {
            "image": datasets.Image(),
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "concept": datasets.Value("string"),
            "label": datasets.ClassLabel(names=list(names)),
        }
    )


def load_easy_vqa(
    split: str = "train", max_images: int | None = None, seed: int = 0, concepts: str = "answer_type"
) -> datasets.Dataset:
    """easy-vqa (synthetic shapes, 64×64 PNGs) from the ``easy_vqa`` package, fully offline.

    ``concepts="answer_type"``: label 0 shape / 1 color / 2 yes_no; ``"answer"``: one concept per answer in
    :data:`EASY_VQA_ANSWERS` order. ``max_images`` keeps a seeded random subset of images and all their questions;
    rows keep the package's question order. Images are file paths decoded on access (≈ 0.1 s for 38k rows).
    """
    import easy_vqa  # optional dependency (extra "data")

    if split not in ("train", "test"):
        raise ConfigError(f"easy-vqa has splits 'train' and 'test', got {split!r}")
    names = easy_vqa_concepts(concepts)
    questions, answers, image_ids = getattr(easy_vqa, f"get_{split}_questions")()
    paths = getattr(easy_vqa, f"get_{split}_image_paths")()
    keep = np.ones(len(questions), dtype=bool)
    if max_images is not None and max_images < len(paths):
        chosen = np.random.default_rng(seed).choice(sorted(paths), size=max_images, replace=False)
        keep = np.isin(np.asarray(image_ids), chosen)
    rows = np.flatnonzero(keep)
    concept = [_ANSWER_TYPE[answers[i]] if concepts == "answer_type" else answers[i] for i in rows]
    index = {c: k for k, c in enumerate(names)}
    data = {
        "image": [{"path": paths[image_ids[i]], "bytes": None} for i in rows],
        "question": [questions[i] for i in rows],
        "answer": [answers[i] for i in rows],
        "concept": concept,
        "label": [index[c] for c in concept],
    }
    return datasets.Dataset.from_dict(data, features=vqa_features(names))


def load_vqa_dataset(
    name_or_path: str | os.PathLike,
    split: str = "train",
    image_column: str = "image",
    question_column: str = "question",
    answer_column: str = "answer",
    concept_column: str = "concept",
    allow_external_paths: bool = False,
) -> tuple[datasets.Dataset, list[str]]:
    """Load a VQA set and map its concepts to integer labels (sorted concept names).

    ``name_or_path``: a local ``.jsonl`` file (the image column holds paths relative to the file), a local
    imagefolder directory (images + ``metadata.jsonl`` with ``file_name``), or a Hub dataset name. Returns the
    dataset with the standard columns (see module docstring) and the concept names in label order.

    Local image paths must resolve (symlinks followed) inside the dataset's folder: no absolute paths, no ``..``
    escape, unless ``allow_external_paths`` (a jsonl's paths only; imagefolder's own loader refuses such names).
    """
    path = os.fspath(name_or_path)
    if os.path.isfile(path):
        raw = _load_local("json", path, data_files=path, split="train")
        _require(raw, [image_column], path)
        root = os.path.dirname(os.path.abspath(path))
        raw = raw.map(
            lambda im: {image_column: _resolve(im, root, path, allow_external_paths)}, input_columns=[image_column]
        )
    elif os.path.isdir(path):
        raw = _load_local("imagefolder", path, data_dir=path, split=split)
        if not allow_external_paths and image_column in raw.column_names:
            paths = raw.cast_column(image_column, datasets.Image(decode=False))[image_column]
            for image in paths:
                _check_inside(image.get("path") if isinstance(image, Mapping) else None, path, path)
    elif _looks_local(path):
        raise FileNotFoundError(f"VQA dataset not found: {path}")
    else:
        raw = datasets.load_dataset(path, split=split)
    _require(raw, [image_column, question_column, answer_column, concept_column], path)
    columns = {image_column: "image", question_column: "question", answer_column: "answer", concept_column: "concept"}
    ds = raw.select_columns(list(columns)).rename_columns({k: v for k, v in columns.items() if k != v})
    names = sorted({str(c) for c in ds["concept"]})
    index = {c: k for k, c in enumerate(names)}
    ds = ds.map(  # input_columns: the images are neither decoded nor re-encoded
        lambda q, a, c: {"question": str(q), "answer": str(a), "concept": str(c), "label": index[str(c)]},
        input_columns=["question", "answer", "concept"],
    )
    ds = ds.cast(vqa_features(names))
    return ds, names


def _require(ds: datasets.Dataset, columns: Sequence[str], source: str) -> None:
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise ConfigError(f"column(s) {missing} missing from {source}; available: {ds.column_names}")


def _load_local(kind: str, source: str, **kwargs: Any) -> datasets.Dataset:
    """``datasets.load_dataset`` on a local file or folder; an empty or malformed one is a one-line error."""
    try:
        raw = datasets.load_dataset(kind, **kwargs)
    except StopIteration:  # the json builder's answer to an empty file
        raise ConfigError(f"dataset: {source} holds no rows") from None
    except datasets.exceptions.DatasetGenerationError as err:
        cause = err.__cause__ or err
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise ConfigError(f"dataset: {source} is malformed ({reason})") from None
    if len(raw) == 0:
        raise ConfigError(f"dataset: {source} holds no rows")
    return raw


def _check_inside(image_path: str | None, root: str, source: str) -> None:
    if not image_path:
        return
    real, base = os.path.realpath(image_path), os.path.realpath(root)
    if os.path.commonpath([real, base]) != base:
        raise ConfigError(
            f"dataset: image {image_path!r} in {source} is outside the dataset folder {root} "
            "(pass --allow_external_paths true to read it)"
        )


def _resolve(image: Any, root: str, source: str, allow_external: bool) -> Any:
    """A jsonl's image path, relative to the file's folder; refused outside it unless ``allow_external``."""
    if isinstance(image, Mapping) and image.get("path") and not image.get("bytes"):
        return {**image, "path": _resolve(image["path"], root, source, allow_external)}
    if not isinstance(image, str):
        return image
    if os.path.isabs(image) and not allow_external:
        raise ConfigError(
            f"dataset: image path {image!r} in {source} is absolute; paths are relative to the file's folder "
            "(pass --allow_external_paths true to read it)"
        )
    resolved = os.path.join(root, image)
    if not allow_external:
        _check_inside(resolved, root, source)
    return resolved


def _looks_local(path: str) -> bool:
    """A path-like string (absolute, relative with ./, or with a file suffix) rather than ``owner/name``."""
    return os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1 or path.endswith(".jsonl")


def vqa_sample_nbytes(row: Mapping[str, Any]) -> int:
    """Bytes one row takes in replay memory: the image as stored, question and answer (UTF-8), 8 for the label.

    The image counts as its encoded file bytes where those exist (``{"bytes"}`` or ``{"path"}`` as stored by
    ``datasets.Image(decode=False)``, or a PIL image opened from a file), else as uint8 H×W×C.
    """
    image = row["image"]
    text = len(str(row["question"]).encode()) + len(str(row["answer"]).encode())
    return _image_nbytes(image) + text + 8


def _image_nbytes(image: Any) -> int:
    if isinstance(image, Mapping):
        if image.get("bytes"):
            return len(image["bytes"])
        return os.path.getsize(image["path"])
    if isinstance(image, (bytes, bytearray)):
        return len(image)
    if isinstance(image, (str, os.PathLike)):
        return os.path.getsize(image)
    filename = getattr(image, "filename", "")
    if filename and os.path.isfile(filename):
        return os.path.getsize(filename)
    fp = getattr(image, "fp", None)
    if isinstance(fp, io.BytesIO):
        return len(fp.getvalue())
    return int(np.asarray(image, dtype=np.uint8).nbytes)
