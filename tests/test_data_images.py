"""Image loaders, idx parsing, imagefolder conversion and the collator."""

from __future__ import annotations

import gzip
import os
import warnings

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset

from hf_budgetcl.data.idx import (
    FASHION_MNIST_LABELS,
    load_fashion_mnist,
    load_idx_dataset,
    read_idx,
)
from hf_budgetcl.data.image_collator import ImageCollator
from hf_budgetcl.data.image_datasets import (
    load_digits_dataset,
    load_image_dataset,
    load_named_image_dataset,
)
from hf_budgetcl.data.image_rows import (
    ImageRows,
    arrays_to_dataset,
    dataset_arrays,
    sample_nbytes,
)


def _write_idx(path, array: np.ndarray, compress: bool = True) -> None:
    """Hand-written idx encoder (uint8 payload), independent of the reader under test."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + np.ascontiguousarray(array, np.uint8).tobytes()
    with gzip.open(path, "wb") if compress else open(path, "wb") as f:
        f.write(raw)


def _tiny_fmnist(root, compress: bool = True):
    """A 12-image 'Fashion-MNIST' whose pixel value encodes the file position, classes interleaved."""
    ext = ".gz" if compress else ""
    labels = np.array([0, 1, 0, 2, 1, 0, 2, 2, 0, 1, 1, 0], np.uint8)
    images = np.stack([np.full((4, 5), i * 10, np.uint8) for i in range(len(labels))])
    for split in ("train", "t10k"):
        _write_idx(os.path.join(root, f"{split}-images-idx3-ubyte{ext}"), images, compress)
        _write_idx(os.path.join(root, f"{split}-labels-idx1-ubyte{ext}"), labels, compress)
    return images, labels


# ---------------------------------------------------------------------------------------------------------- digits
def test_digits_shapes_dtype_labels_and_determinism():
    train, test = load_digits_dataset(test_fraction=0.2, seed=0)
    assert len(train) + len(test) == 1797
    assert train.features["pixel_values"].shape == (1, 8, 8)
    assert train.features["pixel_values"].dtype == "uint8"
    assert isinstance(train.features["label"], ClassLabel) and train.features["label"].num_classes == 10
    x, y = dataset_arrays(train)
    assert x.dtype == np.uint8 and x.shape == (len(train), 1, 8, 8) and x.max() == 255 and x.min() == 0
    assert set(np.unique(y)) == set(range(10))
    # stratified: every class has ~20% of its images in test
    _, yt = dataset_arrays(test)
    assert np.all(np.abs(np.bincount(yt) / (np.bincount(yt) + np.bincount(y)) - 0.2) < 0.02)
    # values follow round(x * 255 / 16) of sklearn's 0..16 images
    assert set(np.unique(x)) <= {round(v * 255 / 16) for v in range(17)}
    train2, test2 = load_digits_dataset(test_fraction=0.2, seed=0)
    assert np.array_equal(dataset_arrays(test2)[0], dataset_arrays(test)[0])
    assert not np.array_equal(dataset_arrays(load_digits_dataset(seed=1)[1])[1], yt)


def test_sample_nbytes_matches_real_bytes():
    train, _ = load_digits_dataset()
    row = train[0]
    assert sample_nbytes(row) == np.asarray(row["pixel_values"], np.uint8).nbytes + 8 == 64 + 8
    assert sample_nbytes({"pixel_values": torch.zeros(3, 32, 32, dtype=torch.uint8), "label": 1}) == 3 * 32 * 32 + 8


def test_arrays_round_trip_respects_select():
    images = np.random.RandomState(0).randint(0, 256, (10, 3, 4, 5)).astype(np.uint8)
    ds = arrays_to_dataset(images, np.arange(10) % 3)
    x, y = dataset_arrays(ds.select([7, 2, 5]))
    assert np.array_equal(x, images[[7, 2, 5]]) and list(y) == [1, 2, 2]
    assert np.array_equal(np.asarray(ds[4]["pixel_values"], np.uint8), images[4])


def test_image_rows_read_the_same_rows_and_batches_as_the_dataset():
    train, _ = load_digits_dataset()
    train.info.dataset_name = "digits"
    rows = ImageRows.from_dataset(train.select([5, 0, 9]))
    assert len(rows) == 3 and rows.info.dataset_name == "digits"
    for i, source in enumerate([5, 0, 9]):
        assert rows[i]["pixel_values"].dtype == np.uint8  # the stored bytes, not upcast
        assert np.array_equal(rows[i]["pixel_values"], np.asarray(train[source]["pixel_values"]))
        assert rows[i]["label"] == train[source]["label"]
        assert sample_nbytes(rows[i]) == sample_nbytes(train[source])
    collate = ImageCollator()
    via_rows = collate([rows[2], rows[0]])
    via_dataset = collate(train.with_format("numpy").__getitems__([9, 5]))
    assert torch.equal(via_rows["pixel_values"], via_dataset["pixel_values"])
    assert torch.equal(via_rows["labels"], via_dataset["labels"])
    with pytest.raises(ValueError, match="read-only"):
        rows[0]["pixel_values"][0, 0, 0] = 1  # a row is a view of the shared array
    source = np.zeros((2, 1, 2, 2), np.uint8)
    ImageRows(source, np.zeros(2, np.int64))
    assert source.flags.writeable  # the caller's array is left as it was
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        ImageRows(np.zeros((3, 1, 2, 2), np.uint8), np.zeros(2, np.int64))


# ---------------------------------------------------------------------------------------------------------- idx
@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip(tmp_path, compress):
    images = np.random.RandomState(1).randint(0, 256, (7, 6, 5)).astype(np.uint8)
    labels = np.array([3, 1, 4, 1, 5, 9, 2], np.uint8)
    _write_idx(tmp_path / "img", images, compress)
    _write_idx(tmp_path / "lbl", labels, compress)
    assert np.array_equal(read_idx(tmp_path / "img"), images)
    x, y = dataset_arrays(load_idx_dataset(tmp_path / "img", tmp_path / "lbl"))
    assert np.array_equal(x[:, 0], images) and np.array_equal(y, labels)


def test_corrupt_idx_raises_value_error_naming_file(tmp_path):
    good = np.zeros((4, 3, 3), np.uint8)
    _write_idx(tmp_path / "ok.gz", good)
    (tmp_path / "truncated.gz").write_bytes(gzip.compress(gzip.decompress((tmp_path / "ok.gz").read_bytes())[:-5]))
    (tmp_path / "badmagic").write_bytes(b"\x12\x34\x08\x03" + b"\x00" * 20)
    (tmp_path / "badgzip.gz").write_bytes(b"\x1f\x8b" + b"garbage")
    for name in ("truncated.gz", "badmagic", "badgzip.gz"):
        with pytest.raises(ValueError, match=name):
            read_idx(tmp_path / name)
    _write_idx(tmp_path / "lbl.gz", np.zeros(3, np.uint8))  # 3 labels for 4 images
    with pytest.raises(ValueError, match="lbl.gz"):
        load_idx_dataset(tmp_path / "ok.gz", tmp_path / "lbl.gz")


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_per_class_keeps_first_images_in_file_order(tmp_path, compress):
    images, labels = _tiny_fmnist(tmp_path, compress)
    train, test = load_fashion_mnist(root=tmp_path, per_class_train=2, per_class_test=3)
    x, y = dataset_arrays(train)
    expected = [0, 1, 2, 3, 4, 6]  # first two of classes 0, 1, 2, in file order
    assert list(y) == list(labels[expected]) and np.array_equal(x[:, 0], images[expected])
    assert list(train.features["label"].names) == list(FASHION_MNIST_LABELS)
    assert np.bincount(dataset_arrays(test)[1]).tolist() == [3, 3, 3]
    assert len(load_fashion_mnist(root=tmp_path)[0]) == 12


def test_fashion_mnist_missing_files_message(tmp_path, monkeypatch):
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError) as info:
        load_fashion_mnist()
    msg = str(info.value)
    assert "nowhere" in msg and "apt-get install dataset-fashion-mnist" in msg and "FASHION_MNIST_DIR" in msg
    assert "\n" not in msg


def test_fashion_mnist_env_var(tmp_path, monkeypatch):
    _tiny_fmnist(tmp_path)
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path))
    assert len(load_named_image_dataset("fashion_mnist", per_class_train=1)[0]) == 3


def test_real_fashion_mnist_fmd5_subset(monkeypatch):
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    try:
        train, test = load_fashion_mnist(per_class_train=1000, per_class_test=500)
    except FileNotFoundError as err:
        pytest.skip(str(err))
    x, y = dataset_arrays(train)
    xt, yt = dataset_arrays(test)
    assert x.shape == (10000, 1, 28, 28) and xt.shape == (5000, 1, 28, 28) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [1000] * 10 and np.bincount(yt).tolist() == [500] * 10
    assert x.min() == 0 and x.max() == 255
    # file order: the kept images are exactly the first 1000 of each class in the raw file
    assert train.cache_files == []  # built in memory: nothing written to the HF cache
    from hf_budgetcl.data.idx import _fashion_mnist_root, _find_idx

    base = _fashion_mnist_root(None)
    raw_x = read_idx(_find_idx(base, "train-images-idx3-ubyte"))
    raw_y = read_idx(_find_idx(base, "train-labels-idx1-ubyte"))
    keep = np.sort(np.concatenate([np.flatnonzero(raw_y == c)[:1000] for c in range(10)]))
    assert np.array_equal(x[:, 0], raw_x[keep]) and np.array_equal(y, raw_y[keep])


# ---------------------------------------------------------------------------------------------------------- imagefolder
@pytest.fixture
def image_folder(tmp_path):
    from PIL import Image

    root = tmp_path / "imgs"
    for c, cls in enumerate(("class_a", "class_b")):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((10, 12, 3), 50 * c + i, np.uint8)).save(root / cls / f"{i}.png")
    (root / "class_b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return root


def test_imagefolder_skips_corrupt_with_one_warning(image_folder):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train, test = load_image_dataset(str(image_folder), split_test=None)
    skip_warnings = [w for w in caught if "unreadable" in str(w.message)]
    assert len(skip_warnings) == 1 and "skipped 1 " in str(skip_warnings[0].message)
    assert test is None
    assert list(train.features["label"].names) == ["class_a", "class_b"]
    x, y = dataset_arrays(train)
    assert x.shape == (6, 3, 10, 12) and x.dtype == np.uint8
    assert sorted(y.tolist()) == [0, 0, 0, 1, 1, 1]
    assert all(np.all(x[i] // 50 == y[i]) for i in range(6))  # pixels came from the right class folder


def test_imagefolder_resize_channels_and_carved_test_split(image_folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train, test = load_image_dataset(str(image_folder), image_size=8, channels=1, test_fraction=0.34)
    assert train.features["pixel_values"].shape == (1, 8, 8) == test.features["pixel_values"].shape
    assert np.bincount(dataset_arrays(test)[1]).tolist() == [1, 1]
    assert len(train) == 4


def test_image_dataset_errors(image_folder, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"'category'.*available columns.*'image'.*'label'"):
            load_image_dataset(str(image_folder), label_column="category", split_test=None)
        with pytest.raises(ValueError, match="available splits"):
            load_image_dataset(str(image_folder))  # no test split and no test_fraction
    # string labels in a saved dataset are rejected, naming the column
    pixels = [np.zeros((4, 4, 3), np.uint8)] * 2
    Dataset.from_dict({"img": pixels, "kind": ["a", "b"]}).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(ValueError, match="'kind'.*non-negative integers"):
        load_image_dataset(str(tmp_path / "saved"), image_column="img", label_column="kind", split_test=None)
    Dataset.from_dict({"img": pixels, "y": [0, -1]}).save_to_disk(str(tmp_path / "neg"))
    with pytest.raises(ValueError, match="'y'"):
        load_image_dataset(str(tmp_path / "neg"), image_column="img", label_column="y", split_test=None)
    Dataset.from_dict({"img": pixels, "y": [0, 2]}).save_to_disk(str(tmp_path / "ok"))
    train, _ = load_image_dataset(str(tmp_path / "ok"), image_column="img", label_column="y", split_test=None)
    assert train.features["pixel_values"].shape == (3, 4, 4) and dataset_arrays(train)[1].tolist() == [0, 2]


def test_named_dispatch_digits():
    train, _ = load_named_image_dataset("digits", test_fraction=0.5)
    assert len(train) in (898, 899, 900)


# ---------------------------------------------------------------------------------------------------------- collator
def test_collator_scaling_shapes_and_input_types():
    rows = [
        {"pixel_values": np.full((1, 28, 28), 255, np.uint8), "label": 3},
        {"pixel_values": torch.zeros(1, 28, 28, dtype=torch.uint8), "label": 1},
        {"pixel_values": np.full((1, 28, 28), 51, np.uint8).tolist(), "label": 0},
    ]
    batch = ImageCollator()(rows)
    x = batch["pixel_values"]
    assert x.dtype == torch.float32 and x.shape == (3, 1, 28, 28)
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [3, 1, 0]
    assert x[0].eq(1).all() and x[1].eq(0).all() and torch.allclose(x[2], torch.full_like(x[2], 0.2))


def test_collator_pad_channels_resize_normalise():
    rows = [{"pixel_values": np.full((1, 28, 28), 255, np.uint8), "label": 0}] * 2
    x = ImageCollator(pad=2, channels=3)(rows)["pixel_values"]
    assert x.shape == (2, 3, 32, 32)
    assert x[:, :, :2].eq(0).all() and x[:, :, :, -2:].eq(0).all() and x[:, :, 2:30, 2:30].eq(1).all()
    assert torch.equal(x[:, 0], x[:, 2])
    y = ImageCollator(resize=16, mean=(0.5,), std=(0.5,))(rows)["pixel_values"]
    assert y.shape == (2, 1, 16, 16) and torch.allclose(y, torch.ones_like(y))
    with pytest.raises(ValueError):
        ImageCollator(channels=1).process(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))


def test_collator_on_real_dataset_rows():
    train, _ = load_digits_dataset()
    batch = ImageCollator(channels=3)([train[i] for i in range(4)])
    x = batch["pixel_values"]
    assert x.shape == (4, 3, 8, 8) and 0 <= x.min() <= x.max() <= 1
    assert batch["labels"].tolist() == [train[i]["label"] for i in range(4)]
