"""Fashion-MNIST and other IDX files (the format of MNIST-style datasets), read without network access."""

from __future__ import annotations

import gzip
import os
import subprocess
from collections.abc import Sequence

import numpy as np
from datasets import Dataset

from ..utils.errors import ConfigError
from .image_rows import arrays_to_dataset, first_per_class_indices

FASHION_MNIST_LABELS = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


_FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


# --------------------------------------------------------------------------------------------------------------------
# idx files (MNIST / Fashion-MNIST)
# --------------------------------------------------------------------------------------------------------------------
def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one idx file (gzip-compressed or not, detected from its magic bytes) into a numpy array.

    Raises ``ValueError`` naming the file when the header, dtype code or payload size is wrong.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise ConfigError(f"corrupt idx file {path!r}: {err}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise ConfigError(f"corrupt idx file {path!r}: bad header {raw[:4]!r}")
    ndim, dtype = raw[3], np.dtype(_IDX_DTYPES[raw[2]])
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ConfigError(f"corrupt idx file {path!r}: truncated header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ConfigError(f"corrupt idx file {path!r}: {len(raw)} bytes, header {shape} implies {expected}")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def load_idx_dataset(
    images_path: str | os.PathLike,
    labels_path: str | os.PathLike,
    label_names: Sequence[str] | None = None,
    per_class: int | None = None,
) -> Dataset:
    """Pair an idx3 image file ``(N, H, W)`` with an idx1 label file ``(N,)`` into one ``Dataset``.

    ``per_class`` keeps the first n images of each class in file order.
    """
    images, labels = read_idx(images_path), read_idx(labels_path)
    img_name, lbl_name = os.fspath(images_path), os.fspath(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ConfigError(
            f"corrupt idx file {img_name!r}: expected uint8 (N, H, W), got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
        raise ConfigError(
            f"corrupt idx file {lbl_name!r}: expected {len(images)} integer labels, got {labels.dtype} {labels.shape}"
        )
    if (labels < 0).any():
        raise ConfigError(f"corrupt idx file {lbl_name!r}: negative labels")
    keep = first_per_class_indices(labels, per_class)
    return arrays_to_dataset(images[keep][:, None], labels[keep], label_names)


def _fashion_mnist_root(root: str | os.PathLike | None) -> str:
    if root is not None:
        return os.fspath(root)
    if os.environ.get("FASHION_MNIST_DIR"):
        return os.environ["FASHION_MNIST_DIR"]
    try:  # where Debian's dataset-fashion-mnist put the files
        cmd = ["dpkg", "-L", "dataset-fashion-mnist"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
        for line in out.split():
            if line.endswith("train-images-idx3-ubyte.gz"):
                return os.path.dirname(line)
    except OSError:  # no dpkg on this system
        pass
    return "/usr/share/datasets/fashion-mnist"


def _find_idx(root: str, stem: str) -> str:
    # .gz as shipped, plain after gunzip, and the "train-images.idx3-ubyte" spelling of some mirrors
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if os.path.isfile(os.path.join(root, name)):
            return os.path.join(root, name)
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}[.gz] not found in {root!r}: install it with"
        " `apt-get install dataset-fashion-mnist` or set FASHION_MNIST_DIR (or root=) to a directory of idx files"
    )


def load_fashion_mnist(
    root: str | os.PathLike | None = None, per_class_train: int | None = None, per_class_test: int | None = None
) -> tuple[Dataset, Dataset]:
    """Real Fashion-MNIST (1x28x28 uint8, 10 named classes) from the original idx files.

    ``root``: argument, else ``$FASHION_MNIST_DIR``, else the location ``dpkg -L dataset-fashion-mnist`` reports.
    ``per_class_*``: keep the first n images of each class in file order (FM-D5: 1000 train / 500 test); a class with
    fewer images keeps all it has.
    """
    base = _fashion_mnist_root(root)
    out = []
    for split, n in (("train", per_class_train), ("test", per_class_test)):
        img_stem, lbl_stem = _FMNIST_FILES[split]
        out.append(load_idx_dataset(_find_idx(base, img_stem), _find_idx(base, lbl_stem), FASHION_MNIST_LABELS, n))
    return out[0], out[1]
