"""Image classification data as `datasets.Dataset` objects holding the exact bytes a replay memory stores.

Every loader returns ``(train, test)`` datasets with two columns:

* ``pixel_values``: ``datasets.Array3D(shape=(C, H, W), dtype="uint8")``, the raw image bytes;
* ``label``: ``ClassLabel`` (names where known) or ``Value("int64")``; always a non-negative integer.

Keeping images as uint8 (not float tensors) means memory budgets counted in bytes are honest: a stored sample costs
``C*H*W + 8`` bytes (:func:`sample_nbytes`). Scaling to [0, 1], padding, resizing and normalisation happen per batch in
:class:`ImageCollator`.
"""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from datasets import Array3D, ClassLabel, Dataset, DatasetInfo, Features, Value
from datasets.table import InMemoryTable

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

FASHION_MNIST_LABELS = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
LABEL_NBYTES = 8  # labels are stored as int64

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


# --------------------------------------------------------------------------------------------------------------------
# numpy <-> datasets
# --------------------------------------------------------------------------------------------------------------------
def arrays_to_dataset(
    images: np.ndarray, labels: np.ndarray, label_names: Sequence[str] | None = None
) -> Dataset:
    """Build a ``Dataset`` from uint8 images ``(N, C, H, W)`` and integer labels ``(N,)``.

    Goes through pyarrow directly (~8x faster than ``Dataset.from_dict`` on 60k images).
    """
    images = np.ascontiguousarray(images, dtype=np.uint8)
    labels = np.asarray(labels, dtype=np.int64)
    if images.ndim != 4 or len(images) != len(labels):
        raise ValueError(f"expected images (N, C, H, W) and labels (N,), got {images.shape} and {labels.shape}")
    label_feature = ClassLabel(names=list(label_names)) if label_names is not None else Value("int64")
    features = Features({"pixel_values": Array3D(shape=images.shape[1:], dtype="uint8"), "label": label_feature})
    nested: pa.Array = pa.array(images.reshape(-1))
    for dim in reversed(images.shape[1:]):
        nested = pa.FixedSizeListArray.from_arrays(nested, dim)
    table = pa.table({"pixel_values": nested, "label": pa.array(labels, pa.int64())}).cast(features.arrow_schema)
    return Dataset(InMemoryTable(table), info=DatasetInfo(features=features))


def dataset_arrays(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images uint8 (N, C, H, W), labels int64 (N,))`` of a dataset made by this module, fast.

    Reads the Arrow storage directly: ``with_format("numpy")`` would upcast the pixels to int64 and is ~10x slower.
    Respects ``select``/``shuffle`` index mappings; the returned arrays are writable copies.
    """
    shape = tuple(ds.features["pixel_values"].shape)
    table = ds.with_format("arrow")[:]
    col = table.column("pixel_values").combine_chunks()
    values = col.storage if isinstance(col, pa.ExtensionArray) else col
    for _ in shape:
        values = values.flatten()  # flatten honours slicing offsets
    # copies: Arrow buffers are read-only and torch.from_numpy warns on them
    images = values.to_numpy(zero_copy_only=False).astype(np.uint8, copy=True).reshape((len(table), *shape))
    labels = table.column("label").to_numpy().astype(np.int64, copy=True)
    return images, labels


class ImageRows(torch.utils.data.Dataset):
    """A dataset made by this module, held as two numpy arrays, for the training loop's row reads.

    ``datasets`` formats every row it reads from Arrow (about 2 ms per batch of 16, and 1 ms per single row), which on
    8x8 to 28x28 images is as long as the training step itself. These arrays hold the same uint8 bytes (nothing is
    upcast), and a batch read costs ~0.1 ms. Rows are ``{"pixel_values": uint8 (C, H, W), "label": int}``, as from the
    dataset; ``info`` is the dataset's (the model card names the dataset from it).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, info: DatasetInfo | None = None):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        # Rows are views of one array: read-only, so a collator writing into a row cannot corrupt the data.
        self.images, self.labels, self.info = images.view(), labels, info or DatasetInfo()
        self.images.flags.writeable = False

    @classmethod
    def from_dataset(cls, ds: Dataset) -> ImageRows:
        images, labels = dataset_arrays(ds)
        return cls(images, labels, ds.info)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"pixel_values": self.images[index], "label": int(self.labels[index])}


def sample_nbytes(row: Mapping[str, Any]) -> int:
    """Bytes one row occupies in a replay memory: the uint8 image (``C*H*W``) plus 8 bytes for its int64 label.

    Python/Arrow object overhead is deliberately not counted: it depends on the container, not on the sample.
    """
    pixels = row["pixel_values"]
    n = pixels.numel() if isinstance(pixels, torch.Tensor) else np.asarray(pixels).size
    return int(n) + LABEL_NBYTES


def _stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class deterministic split; indices come back sorted so both splits keep the source order."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.RandomState(seed)
    test: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        test.append(rng.permutation(idx)[: int(round(len(idx) * test_fraction))])
    test_idx = np.sort(np.concatenate(test)) if test else np.array([], dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return train_idx, test_idx


def _first_per_class(labels: np.ndarray, n: int | None) -> np.ndarray:
    """Indices of the first ``n`` samples of every class, in file order (all when ``n`` is None)."""
    if n is None:
        return np.arange(len(labels))
    keep = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        keep[np.flatnonzero(labels == c)[:n]] = True
    return np.flatnonzero(keep)


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
        raise ValueError(f"corrupt idx file {path!r}: {err}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise ValueError(f"corrupt idx file {path!r}: bad header {raw[:4]!r}")
    ndim, dtype = raw[3], np.dtype(_IDX_DTYPES[raw[2]])
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"corrupt idx file {path!r}: truncated header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"corrupt idx file {path!r}: {len(raw)} bytes, header {shape} implies {expected}")
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
        raise ValueError(f"corrupt idx file {img_name!r}: expected uint8 (N, H, W), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"corrupt idx file {lbl_name!r}: expected {len(images)} integer labels, got {labels.dtype} {labels.shape}"
        )
    if (labels < 0).any():
        raise ValueError(f"corrupt idx file {lbl_name!r}: negative labels")
    keep = _first_per_class(labels, per_class)
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


# --------------------------------------------------------------------------------------------------------------------
# Any image dataset: local imagefolder, save_to_disk directory, or HF dataset name/path
# --------------------------------------------------------------------------------------------------------------------
def _has_images(path: str) -> bool:
    from datasets.packaged_modules.imagefolder.imagefolder import IMAGE_EXTENSIONS

    exts = {e.lower() for e in IMAGE_EXTENSIONS}
    return any(
        os.path.splitext(f)[1].lower() in exts for _, _, files in os.walk(path) for f in files
    )


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
    ds: Dataset, where: str, image_column: str | None, label_column: str,
    size: tuple[int, int] | None, channels: int | None,
) -> tuple[Dataset, int]:
    """Convert one split; returns the converted dataset and the number of unreadable images skipped."""
    from datasets import Image as ImageFeature

    cols = list(ds.column_names)
    if label_column not in cols:
        raise ValueError(f"label column {label_column!r} not found in {where}; available columns: {cols}")
    if image_column is None:
        image_column = next((c for c in cols if isinstance(ds.features[c], ImageFeature)), None)
        image_column = image_column or next((c for c in ("image", "img", "pixel_values") if c in cols), None)
    if image_column not in cols:
        raise ValueError(f"image column {image_column!r} not found in {where}; available columns: {cols}")
    if isinstance(ds.features[image_column], ImageFeature):
        ds = ds.cast_column(image_column, ImageFeature(decode=False))  # decode ourselves to skip corrupt files

    label_feature = ds.features[label_column]
    names = list(label_feature.names) if isinstance(label_feature, ClassLabel) else None
    mode = {1: "L", 3: "RGB", None: None}.get(channels, "?")
    if mode == "?":
        raise ValueError(f"channels must be 1, 3 or None, got {channels}")

    images: list[np.ndarray] = []
    labels: list[int] = []
    skipped = 0
    for row in ds:
        label = row[label_column]
        if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)) or label < 0:
            raise ValueError(f"label column {label_column!r} in {where} must hold non-negative integers, got {label!r}")
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
            raise ValueError(f"images in {where} differ in size ({tuple(size)} vs {arr.shape[1:]}); pass image_size=")
        images.append(arr)
        labels.append(int(label))
    if not images:
        raise ValueError(f"no readable images in {where} (skipped {skipped})")
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
) -> tuple[Dataset, Dataset | None]:
    """Load any image classification set as uint8 ``pixel_values`` + ``label`` datasets.

    ``name_or_path``: a local directory of images (``imagefolder``: ``<dir>/<class>/*.png`` or ``train/``/``test/``
    sub-folders), a ``save_to_disk`` directory, or any name/path ``datasets.load_dataset`` understands.

    * ``image_column``: defaults to the first ``datasets.Image`` column (else ``image``/``img``/``pixel_values``).
    * ``image_size`` (int or (H, W)) resizes with PIL bilinear; without it all images must share one size.
    * ``channels``: 1 (grayscale) or 3 (RGB); default: the mode of the first readable image.
    * When ``split_test`` is missing from the source and ``test_fraction`` is given, a per-class deterministic split
      of the train split is used; ``split_test=None`` returns ``None`` as the test set.

    Unreadable or corrupt images are **skipped, not fatal**: a continual stream should survive one bad file in a
    scraped folder. They are counted and a single ``warnings.warn`` reports the total. Missing label/image columns or
    labels that are not non-negative integers raise ``ValueError`` naming the column.
    """
    raw = _load_raw(os.fspath(name_or_path))
    splits = list(raw.keys()) if hasattr(raw, "keys") else ["train"]
    get = (lambda s: raw[s]) if hasattr(raw, "keys") else (lambda s: raw)
    if split_train not in splits:
        raise ValueError(f"split {split_train!r} not found in {name_or_path!r}; available splits: {splits}")
    size = (image_size, image_size) if isinstance(image_size, int) else (tuple(image_size) if image_size else None)

    train, skipped = _convert_split(
        get(split_train), f"{name_or_path!r}[{split_train}]", image_column, label_column, size, channels
    )
    # the test split must match the train images' shape exactly
    c, h, w = train.features["pixel_values"].shape
    test: Dataset | None = None
    if split_test is not None and split_test in splits:
        where = f"{name_or_path!r}[{split_test}]"
        test, n = _convert_split(get(split_test), where, image_column, label_column, (h, w), c)
        skipped += n
    elif split_test is not None and test_fraction is not None:
        images, labels = dataset_arrays(train)
        tr, te = _stratified_split(labels, test_fraction, seed)
        names = getattr(train.features["label"], "names", None)
        train, test = arrays_to_dataset(images[tr], labels[tr], names), arrays_to_dataset(images[te], labels[te], names)
    elif split_test is not None:
        raise ValueError(
            f"split {split_test!r} not found in {name_or_path!r}; available splits: {splits} "
            "(pass test_fraction= to carve one out of the train split, or split_test=None)"
        )
    if skipped:
        warnings.warn(f"load_image_dataset({name_or_path!r}): skipped {skipped} unreadable image(s)", stacklevel=2)
    return train, test


def load_named_image_dataset(name: str, **kwargs: Any) -> tuple[Dataset, Dataset | None]:
    """``"digits"`` -> :func:`load_digits_dataset`, ``"fashion_mnist"`` -> :func:`load_fashion_mnist`, anything else
    -> :func:`load_image_dataset`; keyword arguments go to the chosen loader."""
    key = name.lower().replace("-", "_")
    if key == "digits":
        return load_digits_dataset(**kwargs)
    if key in ("fashion_mnist", "fmnist"):
        return load_fashion_mnist(**kwargs)
    return load_image_dataset(name, **kwargs)


# --------------------------------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class ImageCollator:
    """Turn rows ``{"pixel_values": uint8 (C,H,W), "label": int}`` into a model batch.

    Steps, in order: scale to [0, 1] (integer input is divided by 255; floating input is taken as already scaled),
    zero ``pad`` on each side (FM-D5: 2, 28 -> 32), bilinear ``resize`` to (S, S), repeat a single channel to
    ``channels``, then ``(x - mean) / std``. Returns ``{"pixel_values": float32 (B,C,H,W), "labels": int64 (B,)}``.
    """

    pad: int = 0
    resize: int | None = None
    channels: int | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        pixels = [r["pixel_values"] for r in rows]
        if all(isinstance(p, torch.Tensor) for p in pixels):
            batch = torch.stack(pixels)
        else:
            batch = torch.from_numpy(np.stack([np.asarray(p) for p in pixels]))
        labels = torch.tensor([int(r["label"] if "label" in r else r["labels"]) for r in rows], dtype=torch.long)
        return {"pixel_values": self.process(batch), "labels": labels}

    def process(self, batch: torch.Tensor) -> torch.Tensor:
        """Apply the collator's transforms to an already stacked ``(B, C, H, W)`` tensor (e.g. a replay batch)."""
        x = batch.float() / 255.0 if not batch.is_floating_point() else batch.float()
        if self.pad:
            x = F.pad(x, (self.pad,) * 4)
        if self.resize is not None and tuple(x.shape[-2:]) != (self.resize, self.resize):
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        if self.channels is not None and x.shape[1] != self.channels:
            if x.shape[1] != 1:
                raise ValueError(f"cannot turn {x.shape[1]} channels into {self.channels}; only 1 -> N is supported")
            x = x.expand(-1, self.channels, -1, -1).contiguous()
        if self.mean is not None or self.std is not None:
            c = x.shape[1]
            mean = torch.as_tensor(self.mean if self.mean is not None else [0.0] * c, dtype=x.dtype).view(1, -1, 1, 1)
            std = torch.as_tensor(self.std if self.std is not None else [1.0] * c, dtype=x.dtype).view(1, -1, 1, 1)
            x = (x - mean) / std
        return x
