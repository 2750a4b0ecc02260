"""``tinted_digits``: the digits, the digits split, one fixed colour per class."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

from hf_budgetcl.data.image_datasets import load_digits_dataset, load_named_image_dataset
from hf_budgetcl.data.image_rows import dataset_arrays
from hf_budgetcl.data.tinted_digits import CLASS_TINTS, load_tinted_digits_dataset, tint
from hf_budgetcl.runs.image_classification import DataArguments, load_data


def test_a_known_pixel_of_a_known_class_has_the_hand_computed_colour():
    # sklearn's first digit is a 0 whose pixel (0, 3) is 13 of 16: grey round(13 * 255 / 16) = 207. Class 0's tint
    # (31, 119, 180) gives round(207 * 31 / 255) = round(25.16), round(96.60), round(146.12).
    image, label = load_digits().images[0], load_digits().target[0]
    assert (label, image[0, 3]) == (0, 13)
    grey = np.round(load_digits().images[:1] * 255 / 16).astype(np.uint8)[:, None]
    assert tint(grey, np.array([0]))[0, :, 0, 3].tolist() == [25, 97, 146]
    assert tint(grey, np.array([0]))[0, :, 0, 0].tolist() == [0, 0, 0]  # background stays black


def test_rounding_is_half_up_and_a_white_pixel_takes_the_tint():
    grey = np.array([[[[255, 1, 2]]]], dtype=np.uint8)
    # class 1's tint (255, 127, 14): 1 * 127 / 255 = 0.498 -> 0; 2 * 127 / 255 = 0.996 -> 1; 2 * 14 / 255 -> 0
    assert tint(grey, np.array([1]))[0, :, 0].tolist() == [[255, 1, 2], [127, 0, 1], [14, 0, 0]]


def test_same_rows_and_split_as_digits_only_tinted():
    grey_train, grey_test = load_digits_dataset()
    train, test = load_tinted_digits_dataset()
    for grey, colour in ((grey_train, train), (grey_test, test)):
        g, g_labels = dataset_arrays(grey)
        c, c_labels = dataset_arrays(colour)
        assert c.shape == (len(g), 3, 8, 8) and c_labels.tolist() == g_labels.tolist()
        assert colour.features["label"].names == grey.features["label"].names
        expected = np.floor(g.astype(float) * CLASS_TINTS[g_labels][:, :, None, None] / 255 + 0.5)
        assert np.array_equal(c, expected.astype(np.uint8))
    # the classes really differ in colour: each class's mean colour direction is its tint's
    c, labels = dataset_arrays(train)
    for k in range(10):
        mean = c[labels == k].reshape(-1, 3, 64).sum(axis=(0, 2)).astype(float)
        np.testing.assert_allclose(mean / mean.sum(), CLASS_TINTS[k] / CLASS_TINTS[k].sum(), atol=0.01)


def test_the_recipe_and_the_named_loader_know_it():
    train, test = load_data(DataArguments(dataset="tinted_digits"))
    assert train.features["pixel_values"].shape == (3, 8, 8) and len(test) == 359
    named, _ = load_named_image_dataset("tinted-digits")
    assert np.array_equal(dataset_arrays(named)[0], dataset_arrays(train)[0])
