"""Image datasets as `datasets.Dataset` objects of uint8 bytes, plus the batch collator."""

from .images import (
    FASHION_MNIST_LABELS,
    ImageCollator,
    ImageRows,
    arrays_to_dataset,
    dataset_arrays,
    load_digits_dataset,
    load_fashion_mnist,
    load_idx_dataset,
    load_image_dataset,
    load_named_image_dataset,
    read_idx,
    sample_nbytes,
)

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
