"""``tinted_digits``: scikit-learn's digits in colour, one fixed tint per class (issue #18).

Each grey 8x8 digit becomes RGB by multiplying it with its class's tint, ``round(grey * tint / 255)`` per channel. On
a class-incremental stream the colour statistics of the input then change at every task switch, which is what
BatchNorm's running statistics are suspected to lag behind. Same images, labels and train/test split as ``digits``
(:func:`~hf_budgetcl.data.image_datasets.load_digits_dataset`); only the pixels are tinted.
"""

from __future__ import annotations

import numpy as np
from datasets import Dataset

from .image_rows import arrays_to_dataset, dataset_arrays

# matplotlib's tab10 palette: ten tints distinct in hue, none of them black (a black tint would erase its digit).
CLASS_TINTS = np.array(
    [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ],
    dtype=np.int64,
)


def tint(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Grey uint8 images ``(N, 1, H, W)`` -> RGB uint8 ``(N, 3, H, W)``, ``round(grey * tint[label] / 255)``."""
    colours = CLASS_TINTS[np.asarray(labels) % len(CLASS_TINTS)][:, :, None, None]  # (N, 3, 1, 1)
    # integer rounding (half up), so the result does not depend on floating point
    return ((images.astype(np.int64) * colours * 2 + 255) // 510).astype(np.uint8)


def tinted(dataset: Dataset) -> Dataset:
    """A grey image dataset of :mod:`~hf_budgetcl.data.image_rows`' form, tinted per class, same names and order."""
    images, labels = dataset_arrays(dataset)
    return arrays_to_dataset(tint(images, labels), labels, getattr(dataset.features["label"], "names", None))


def load_tinted_digits_dataset(test_fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset]:
    """``digits``' train and test splits (same rows, same order) as 3x8x8 images tinted per class."""
    from .image_datasets import load_digits_dataset

    train, test = load_digits_dataset(test_fraction, seed)
    return tinted(train), tinted(test)
