"""Image classification data as `datasets.Dataset` objects holding the exact bytes a replay memory stores.

Every loader returns ``(train, test)`` datasets with two columns:

* ``pixel_values``: ``datasets.Array3D(shape=(C, H, W), dtype="uint8")``, the raw image bytes;
* ``label``: ``ClassLabel`` (names where known) or ``Value("int64")``; always a non-negative integer.

Keeping images as uint8 (not float tensors) means memory budgets counted in bytes are honest: a stored sample costs
``C*H*W + 8`` bytes (:func:`sample_nbytes`). Scaling to [0, 1], padding, resizing and normalisation happen per batch in
:class:`ImageCollator`.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
from datasets import ClassLabel, Dataset

from ..utils.errors import ConfigError
from .idx import load_fashion_mnist
from .image_rows import arrays_to_dataset, dataset_arrays


def _stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class deterministic split; indices come back sorted so both splits keep the source order."""
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.RandomState(seed)
    test: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        test.append(rng.permutation(idx)[: int(round(len(idx) * test_fraction))])
    test_idx = np.sort(np.concatenate(test)) if test else np.array([], dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return train_idx, test_idx


# --------------------------------------------------------------------------------------------------------------------
# scikit-learn digits
# --------------------------------------------------------------------------------------------------------------------
def load_digits_dataset(test_fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset]:
    """scikit-learn's 1,797 real 8x8 digits as 1x8x8 uint8 images, split per class deterministically.

    sklearn stores intensities 0..16; they are mapped to 0..255 with ``round(x * 255 / 16)``.
    """
    from sklearn.datasets import load_digits  # optional dependency ("data" extra)

    bunch = load_digits()
    images = np.round(bunch.images * 255.0 / 16.0).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = _stratified_split(labels, test_fraction, seed)
    names = [str(i) for i in range(10)]
    return (
        arrays_to_dataset(images[train_idx], labels[train_idx], names),
        arrays_to_dataset(images[test_idx], labels[test_idx], names),
    )


# --------------------------------------------------------------------------------------------------------------------
# Any image dataset: local imagefolder, save_to_disk directory, or HF dataset name/path
# --------------------------------------------------------------------------------------------------------------------
def _has_images(path: str) -> bool:
    from datasets.packaged_modules.imagefolder.imagefolder import IMAGE_EXTENSIONS

    exts = {e.lower() for e in IMAGE_EXTENSIONS}
    return any(os.path.splitext(f)[1].lower() in exts for _, _, files in os.walk(path) for f in files)


def _load_raw(name_or_path: str, **kwargs: Any) -> Any:
    from datasets import load_dataset, load_from_disk

    if os.path.isdir(name_or_path):
        if any(os.path.isfile(os.path.join(name_or_path, m)) for m in ("dataset_dict.json", "state.json")):
            return load_from_disk(name_or_path)
        if _has_images(name_or_path):
            return load_dataset("imagefolder", data_dir=name_or_path, **kwargs)
    return load_dataset(name_or_path, **kwargs)


def _to_array(value: Any, mode: str | None, size: tuple[int, int] | None) -> np.ndarray:
    """Decode one image cell (PIL image, ``{"bytes", "path"}`` dict or array) to uint8 CHW; raises if unreadable."""
    from PIL import Image

    if isinstance(value, Mapping):  # Image(decode=False) cell
        img = Image.open(io.BytesIO(value["bytes"])) if value.get("bytes") else Image.open(value["path"])
    elif isinstance(value, Image.Image):
        img = value
    else:  # already an array: HWC or HW (C first when it has 1 or 3 leading channels)
        arr = np.asarray(value)
        if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
            arr = arr.transpose(1, 2, 0)
        img = Image.fromarray(arr.squeeze(-1) if arr.ndim == 3 and arr.shape[-1] == 1 else arr.astype(np.uint8))
    img.load()  # force decoding so corrupt files fail here, inside the caller's try
    img = img.convert(mode or ("L" if img.mode in ("1", "L", "I", "I;16", "F") else "RGB"))
    if size is not None and img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _convert_split(
    ds: Dataset,
    where: str,
    image_column: str | None,
    label_column: str,
    size: tuple[int, int] | None,
    channels: int | None,
) -> tuple[Dataset, int]:
    """Convert one split; returns the converted dataset and the number of unreadable images skipped."""
    from datasets import Image as ImageFeature

    cols = list(ds.column_names)
    if label_column not in cols:
        raise ConfigError(f"label column {label_column!r} not found in {where}; available columns: {cols}")
    if image_column is None:
        image_column = next((c for c in cols if isinstance(ds.features[c], ImageFeature)), None)
        image_column = image_column or next((c for c in ("image", "img", "pixel_values") if c in cols), None)
    if image_column not in cols:
        raise ConfigError(f"image column {image_column!r} not found in {where}; available columns: {cols}")
    if isinstance(ds.features[image_column], ImageFeature):
        ds = ds.cast_column(image_column, ImageFeature(decode=False))  # decode ourselves to skip corrupt files

    label_feature = ds.features[label_column]
    names = list(label_feature.names) if isinstance(label_feature, ClassLabel) else None
    mode = {1: "L", 3: "RGB", None: None}.get(channels, "?")
    if mode == "?":
        raise ConfigError(f"channels must be 1, 3 or None, got {channels}")

    images: list[np.ndarray] = []
    labels: list[int] = []
    skipped = 0
    for row in ds:
        label = row[label_column]
        if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)) or label < 0:
            raise ConfigError(
                f"label column {label_column!r} in {where} must hold non-negative integers, got {label!r}"
            )
        try:
            arr = _to_array(row[image_column], mode, size)
        except Exception:  # PIL raises several types (UnidentifiedImageError, OSError, SyntaxError, ValueError)
            skipped += 1
            continue
        if mode is None:
            mode = "L" if arr.shape[0] == 1 else "RGB"  # first image fixes the channel count for the whole set
        if size is None:
            size = tuple(arr.shape[1:])  # type: ignore[assignment]
        elif arr.shape[1:] != tuple(size):
            raise ConfigError(f"images in {where} differ in size ({tuple(size)} vs {arr.shape[1:]}); pass image_size=")
        images.append(arr)
        labels.append(int(label))
    if not images:
        raise ConfigError(f"no readable images in {where} (skipped {skipped})")
    return arrays_to_dataset(np.stack(images), np.asarray(labels), names), skipped


def load_image_dataset(
    name_or_path: str,
    split_train: str = "train",
    split_test: str | None = "test",
    image_column: str | None = None,
    label_column: str = "label",
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    test_fraction: float | None = None,
    seed: int = 0,
    dataset_config: str | None = None,
) -> tuple[Dataset, Dataset | None]:
    """Load any image classification set as uint8 ``pixel_values`` + ``label`` datasets.

    ``name_or_path``: a local directory of images (``imagefolder``: ``<dir>/<class>/*.png`` or ``train/``/``test/``
    sub-folders), a ``save_to_disk`` directory, or any name/path ``datasets.load_dataset`` understands.

    * ``dataset_config``: the Hub dataset's configuration (``load_dataset(name, dataset_config)``).
    * ``image_column``: defaults to the first ``datasets.Image`` column (else ``image``/``img``/``pixel_values``).
    * ``image_size`` (int or (H, W)) resizes with PIL bilinear; without it all images must share one size.
    * ``channels``: 1 (grayscale) or 3 (RGB); default: the mode of the first readable image.
    * When ``split_test`` is missing from the source and ``test_fraction`` is given, a per-class deterministic split
      of the train split is used; ``split_test=None`` returns ``None`` as the test set.

    Unreadable or corrupt images are **skipped, not fatal**: a continual stream should survive one bad file in a
    scraped folder. They are counted and a single ``warnings.warn`` reports the total. Missing label/image columns or
    labels that are not non-negative integers raise ``ValueError`` naming the column.
    """
    raw = _load_raw(os.fspath(name_or_path), **({"name": dataset_config} if dataset_config else {}))
    splits = list(raw.keys()) if hasattr(raw, "keys") else ["train"]
    get = (lambda s: raw[s]) if hasattr(raw, "keys") else (lambda s: raw)
    if split_train not in splits:
        raise ConfigError(f"split {split_train!r} not found in {name_or_path!r}; available splits: {splits}")
    size = (image_size, image_size) if isinstance(image_size, int) else (tuple(image_size) if image_size else None)

    train, skipped = _convert_split(
        get(split_train), f"{name_or_path!r}[{split_train}]", image_column, label_column, size, channels
    )
    # the test split must match the train images' shape exactly: resized only to an explicit image_size
    c, h, w = train.features["pixel_values"].shape
    test: Dataset | None = None
    if split_test is not None and split_test in splits:
        where = f"{name_or_path!r}[{split_test}]"
        test, n = _convert_split(get(split_test), where, image_column, label_column, size, c)
        if tuple(test.features["pixel_values"].shape[1:]) != (h, w):
            raise ConfigError(
                f"images in {where} differ in size from the train split's ({tuple(test.features['pixel_values'].shape[1:])}"
                f" vs {(h, w)}); pass image_size="
            )
        skipped += n
    elif split_test is not None and test_fraction is not None:
        images, labels = dataset_arrays(train)
        tr, te = _stratified_split(labels, test_fraction, seed)
        names = getattr(train.features["label"], "names", None)
        train, test = (
            arrays_to_dataset(images[tr], labels[tr], names),
            arrays_to_dataset(images[te], labels[te], names),
        )
    elif split_test is not None:
        raise ConfigError(
            f"split {split_test!r} not found in {name_or_path!r}; available splits: {splits} "
            "(set test_fraction, e.g. --test_fraction 0.2, to hold out part of the train split)"
        )
    if skipped:
        warnings.warn(f"load_image_dataset({name_or_path!r}): skipped {skipped} unreadable image(s)", stacklevel=2)
    return train, test


def load_named_image_dataset(name: str, **kwargs: Any) -> tuple[Dataset, Dataset | None]:
    """``"digits"`` -> :func:`load_digits_dataset`, ``"tinted_digits"`` -> its per-class tinted copy,
    ``"fashion_mnist"`` -> :func:`load_fashion_mnist`, anything else -> :func:`load_image_dataset`; keyword arguments
    go to the chosen loader."""
    key = name.lower().replace("-", "_")
    if key == "digits":
        return load_digits_dataset(**kwargs)
    if key == "tinted_digits":
        from .tinted_digits import load_tinted_digits_dataset

        return load_tinted_digits_dataset(**kwargs)
    if key in ("fashion_mnist", "fmnist"):
        return load_fashion_mnist(**kwargs)
    return load_image_dataset(name, **kwargs)
