"""The multi-domain instruction tasks: samples checked against their sources, determinism, held-out images, errors.

A digit's answer is checked against the nearest scikit-learn digit, a rendered word's answer by template matching
(an OCR by correlation over every word, face and offset), so neither check reads the builder's own bookkeeping.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest

pytest.importorskip("easy_vqa")

from hf_budgetcl.data.instruction_tasks import (  # noqa: E402
    DIGIT_NAMES,
    FASHION_ANSWERS,
    TASKS,
    build_instruction_tasks,
    build_task,
    parse_task_names,
)
from hf_budgetcl.data.rendered_words import FONT_FACES, WORDS, WordRendering, draw_word, find_dejavu_font  # noqa: E402
from hf_budgetcl.utils.errors import ConfigError  # noqa: E402


def _digest(img) -> str:
    return hashlib.sha256(np.asarray(img).tobytes()).hexdigest()


def _png_digest(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return hashlib.sha256(buf.getvalue()).hexdigest()


@pytest.fixture(scope="module")
def two_tasks():
    """digits then words, 12 train / 8 test rows each, seed 3."""
    return build_instruction_tasks("digits,words", train_size=12, test_size=8, image_size=32, seed=3)


def test_a_digit_answer_is_the_name_of_the_nearest_sklearn_digit():
    from PIL import Image
    from sklearn.datasets import load_digits

    train, test = build_task("digits", 10, 10, image_size=32, seed=0)
    bunch = load_digits()
    source = (bunch.images * 255.0 / 16.0).reshape(len(bunch.images), -1)
    for img, answer, question in zip(
        train["image"] + test["image"], train["answer"] + test["answer"], train["question"]
    ):
        assert img.size == (32, 32) and img.mode == "RGB"
        small = np.asarray(img.convert("L").resize((8, 8), Image.Resampling.BOX), dtype=float).reshape(-1)
        nearest = int(np.argmin(((source - small) ** 2).sum(axis=1)))
        assert answer == DIGIT_NAMES[int(bunch.target[nearest])]
        assert "digit" in question or "number" in question


def test_a_rendered_word_answer_is_the_word_that_template_matching_reads():
    train, test = build_task("words", 8, 8, image_size=32, seed=5)

    def dark(img):  # ink darkness, standardised: colours and contrast differ between images
        g = np.asarray(img.convert("L"), dtype=float)
        d = g.max() - g
        return ((d - d.mean()) / (d.std() + 1e-9)).reshape(-1)

    keys, templates = [], []
    for word in WORDS:
        for face in FONT_FACES:
            t = dark(draw_word(WordRendering(word, face, 0, 0, (0, 0, 0), (255, 255, 255)), 32)).reshape(32, 32)
            for dx in range(-4, 5):
                for dy in range(-4, 5):
                    keys.append(word)
                    templates.append(np.roll(t, (dy, dx), axis=(0, 1)).reshape(-1))
    images, answers = train["image"] + test["image"], train["answer"] + test["answer"]
    scores = np.stack([dark(im) for im in images]) @ np.stack(templates).T
    read = [keys[k] for k in scores.argmax(axis=1)]
    assert read == answers
    assert len(set(answers)) > 1 and set(answers) <= set(WORDS)
    assert all(4 <= len(w) <= 7 and w.isalpha() for w in WORDS)


def test_easy_vqa_and_fashion_tasks_answer_within_their_own_answer_space():
    for name in ("shape", "color", "yes_no", "fashion"):
        train, test = build_task(name, 6, 4, image_size=16, seed=1)
        assert set(train["answer"]) | set(test["answer"]) <= set(TASKS[name].answers), name
        assert all(im.size == (16, 16) and im.mode == "RGB" for im in train["image"] + test["image"])
    fashion, _ = build_task("fashion", 6, 4, image_size=16, seed=1)
    pixels = np.stack([np.asarray(im) for im in fashion["image"]])
    assert (pixels[..., 0] == pixels[..., 2]).all()  # a grey image, made RGB
    assert set(FASHION_ANSWERS) >= {"t-shirt", "ankle boot"}


def test_each_task_has_its_own_instruction_style(two_tasks):
    questions = {}
    for name in TASKS:
        train, _ = build_task(name, 12, 2, seed=0)
        questions[name] = set(train["question"])
    for a in TASKS:
        for b in TASKS:
            if a < b:
                assert not questions[a] & questions[b], (a, b)
    assert len(questions["digits"]) > 1 and len(questions["words"]) > 1  # seeded paraphrases, not one string


def test_columns_labels_and_concepts_follow_the_task_list(two_tasks):
    train, test = two_tasks
    assert train.column_names == ["image", "question", "answer", "concept", "label"]
    assert train.features["label"].names == ["digits", "words"]
    assert len(train) == 24 and len(test) == 16
    for ds in (train, test):
        labels, concepts = np.asarray(ds["label"]), ds["concept"]
        assert [["digits", "words"][y] for y in labels] == concepts
        assert set(np.asarray(ds["answer"])[labels == 0]) <= set(DIGIT_NAMES)
        assert set(np.asarray(ds["answer"])[labels == 1]) <= set(WORDS)


def test_a_task_is_the_same_alone_as_in_a_stream_and_deterministic_under_its_seed(two_tasks):
    train, test = two_tasks
    alone_train, alone_test = build_task("words", 12, 8, image_size=32, seed=3)
    words = np.asarray(train["label"]) == 1
    assert [_png_digest(im) for im in alone_train["image"]] == [
        _png_digest(train[int(i)]["image"]) for i in np.flatnonzero(words)
    ]
    again = build_task("words", 12, 8, image_size=32, seed=3)
    other = build_task("words", 12, 8, image_size=32, seed=4)
    assert [_digest(im) for im in again[1]["image"]] == [_digest(im) for im in alone_test["image"]]
    assert [_digest(im) for im in other[0]["image"]] != [_digest(im) for im in alone_train["image"]]


@pytest.mark.parametrize("name", ["shape", "digits", "words"])
def test_train_and_test_images_are_disjoint(name):
    train, test = build_task(name, 40, 20, image_size=32, seed=2)
    train_images = {_digest(im) for im in train["image"]}
    assert not train_images & {_digest(im) for im in test["image"]}


def test_unknown_empty_or_repeated_task_names_and_empty_tasks_are_one_line_errors():
    with pytest.raises(ConfigError, match="tasks: unknown task 'sudoku'; choose from: shape"):
        parse_task_names("shape,sudoku")
    with pytest.raises(ConfigError, match="tasks: empty task name"):
        parse_task_names("shape,,digits")
    with pytest.raises(ConfigError, match="given twice"):
        parse_task_names(["digits", "digits"])
    with pytest.raises(ConfigError, match="task_train_size must be a positive integer"):
        build_task("digits", 0, 5)
    with pytest.raises(ConfigError, match=r"task_test_size: task 'digits' has \d+ test images, 1000 asked"):
        build_task("digits", 5, 1000)
    assert parse_task_names(None) == list(TASKS) and len(TASKS) >= 5


def test_a_missing_font_names_the_package_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("DEJAVU_FONT_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="apt-get install fonts-dejavu-core") as err:
        find_dejavu_font()
    assert "\n" not in str(err.value)
