"""Image datasets as `datasets.Dataset` objects of uint8 bytes, plus the batch collator."""

from .idx import FASHION_MNIST_LABELS, load_fashion_mnist, load_idx_dataset, read_idx
from .image_collator import ImageCollator
from .image_datasets import (
    load_digits_dataset,
    load_image_dataset,
    load_named_image_dataset,
)
from .image_rows import ImageRows, arrays_to_dataset, dataset_arrays, sample_nbytes

__all__ = [
    "FASHION_MNIST_LABELS",
    "ImageCollator",
    "ImageRows",
    "arrays_to_dataset",
    "dataset_arrays",
    "load_digits_dataset",
    "load_fashion_mnist",
    "load_idx_dataset",
    "load_image_dataset",
    "load_named_image_dataset",
    "read_idx",
    "sample_nbytes",
]
