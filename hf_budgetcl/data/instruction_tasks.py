"""A multi-domain instruction stream (a small CoIN) from real offline data: one instruction task per domain.

Every task has its own instruction style (a few paraphrases, drawn with the seed) and its own answer space:

========== =========================================== ========================================================
task       data                                        answers
========== =========================================== ========================================================
shape      easy-vqa shape questions (its own phrasing) circle, rectangle, triangle
color      easy-vqa colour questions                   the 8 easy-vqa colours
yes_no     easy-vqa yes/no questions                   yes, no
fashion    Fashion-MNIST, "what garment is this?"      the 10 class names (t-shirt, trouser, ...)
digits     scikit-learn digits, "which digit ...?"     zero ... nine
words      a rendered English word (OCR-VQA analogue)  the 16 words of :data:`~.rendered_words.WORDS`
========== =========================================== ========================================================

Training images come from each source's training split and test images from its test split (digits: a fixed
stratified split; words: renderings never used in training), so every task has a held-out test set. Images are
RGB, ``image_size``² pixels. A task's rows depend only on the seed and its own name, not on which other tasks are
built. :func:`build_instruction_tasks` returns train and test ``datasets.Dataset``\\ s with the columns of
:mod:`hf_budgetcl.data.vqa` (``image``, ``question``, ``answer``, ``concept`` = the task name, ``label`` = its index
in the given task list).
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
from PIL import Image

from ..utils.errors import ConfigError
from .idx import FASHION_MNIST_LABELS
from .rendered_words import WORDS, draw_word, sample_renderings
from .vqa import _ANSWER_TYPE as ANSWER_TYPE
from .vqa import EASY_VQA_ANSWERS, vqa_features

Columns = dict[str, list[Any]]  # image (PIL), question, answer
Builder = Callable[[int, int, int, np.random.Generator], tuple[Columns, Columns]]

FASHION_ANSWERS: tuple[str, ...] = tuple(name.split("/")[0].lower() for name in FASHION_MNIST_LABELS)
DIGIT_NAMES: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FASHION_QUESTIONS = (
    "what garment is this?",
    "what kind of clothing is shown?",
    "name the fashion item in the picture.",
)
DIGIT_QUESTIONS = ("which digit is written?", "what digit is shown in the image?", "which number is handwritten here?")
WORD_QUESTIONS = (
    "what word is written in the image?",
    "read the text in the image.",
    "which word does the picture show?",
)


@dataclass(frozen=True)
class InstructionTask:
    name: str
    description: str
    answers: tuple[str, ...]  # the task's answer space
    build: Builder  # (n_train, n_test, image_size, rng) -> (train columns, test columns)


def _rgb(img: Image.Image, size: int) -> Image.Image:
    img = img.convert("RGB")
    return img if img.size == (size, size) else img.resize((size, size), Image.Resampling.BILINEAR)


def _pick(available: int, n: int, rng: np.random.Generator, field: str, task: str, split: str) -> np.ndarray:
    if n > available:
        raise ConfigError(f"{field}: task '{task}' has {available} {split} images, {n} asked")
    return rng.choice(available, size=n, replace=False)


def _paraphrases(templates: Sequence[str], n: int, rng: np.random.Generator) -> list[str]:
    return [templates[int(k)] for k in rng.integers(len(templates), size=n)]


@functools.lru_cache(maxsize=2)
def _easy_vqa_split(split: str) -> tuple[np.ndarray, list[str], list[str], list[str]]:
    """(answer type, question, answer, image path) of every easy-vqa question of ``split``, read from the package
    (``load_easy_vqa`` builds a 38k-row Dataset per call; three tasks need only the lists)."""
    import easy_vqa  # optional dependency (extra "data")

    questions, answers, image_ids = getattr(easy_vqa, f"get_{split}_questions")()
    paths = getattr(easy_vqa, f"get_{split}_image_paths")()
    kinds = np.asarray([ANSWER_TYPE[a] for a in answers])
    return kinds, list(questions), list(answers), [paths[i] for i in image_ids]


def _easy_vqa(concept: str) -> Builder:
    """easy-vqa's questions of one answer type, in the package's own phrasing; train images, then test images."""

    def build(n_train: int, n_test: int, image_size: int, rng: np.random.Generator) -> tuple[Columns, Columns]:
        out = []
        for split, n, field in (("train", n_train, "task_train_size"), ("test", n_test, "task_test_size")):
            kinds, questions, answers, paths = _easy_vqa_split(split)
            rows = np.flatnonzero(kinds == concept)
            chosen = rows[_pick(len(rows), n, rng, field, concept, split)]
            out.append(
                {
                    "image": [_rgb(Image.open(paths[i]), image_size) for i in chosen],
                    "question": [questions[i] for i in chosen],
                    "answer": [answers[i] for i in chosen],
                }
            )
        return out[0], out[1]

    return build


def _classification(task: str, load: Callable[[], Any], names: Sequence[str], questions: Sequence[str]) -> Builder:
    """An image-classification source (``load()``: ((train images, labels), (test images, labels)), uint8 NCHW) as
    an instruction task: the answer is the class name."""

    def build(n_train: int, n_test: int, image_size: int, rng: np.random.Generator) -> tuple[Columns, Columns]:
        out = []
        for (images, labels), n, split in zip(load(), (n_train, n_test), ("train", "test")):
            chosen = _pick(len(labels), n, rng, f"task_{split}_size", task, split)
            out.append(
                {
                    "image": [_rgb(Image.fromarray(images[i, 0]), image_size) for i in chosen],
                    "question": _paraphrases(questions, n, rng),
                    "answer": [names[int(labels[i])] for i in chosen],
                }
            )
        return out[0], out[1]

    return build


@functools.lru_cache(maxsize=1)  # read once per process: a second build (another seed) reuses the arrays
def _fashion() -> tuple[Any, Any]:
    from .idx import load_fashion_mnist
    from .image_rows import dataset_arrays

    return tuple(dataset_arrays(ds) for ds in load_fashion_mnist())  # uint8 (N, 1, 28, 28), labels


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[Any, Any]:
    from .image_datasets import load_digits_dataset
    from .image_rows import dataset_arrays

    # A fixed split: the same held-out digits for every seed.
    return tuple(dataset_arrays(ds) for ds in load_digits_dataset(test_fraction=0.2, seed=0))


def _words(n_train: int, n_test: int, image_size: int, rng: np.random.Generator) -> tuple[Columns, Columns]:
    train = sample_renderings(n_train, rng, image_size)
    test = sample_renderings(n_test, rng, image_size, exclude=frozenset(train))
    return tuple(  # type: ignore[return-value]
        {
            "image": [draw_word(r, image_size) for r in split],
            "question": _paraphrases(WORD_QUESTIONS, len(split), rng),
            "answer": [r.word for r in split],
        }
        for split in (train, test)
    )


TASKS: dict[str, InstructionTask] = {
    t.name: t
    for t in (
        InstructionTask("shape", "easy-vqa: which shape", EASY_VQA_ANSWERS[:3], _easy_vqa("shape")),
        InstructionTask("color", "easy-vqa: which colour", EASY_VQA_ANSWERS[3:11], _easy_vqa("color")),
        InstructionTask("yes_no", "easy-vqa: yes/no questions", EASY_VQA_ANSWERS[11:], _easy_vqa("yes_no")),
        InstructionTask(
            "fashion",
            "Fashion-MNIST: what garment",
            FASHION_ANSWERS,
            _classification("fashion", _fashion, FASHION_ANSWERS, FASHION_QUESTIONS),
        ),
        InstructionTask(
            "digits",
            "sklearn digits: which digit",
            DIGIT_NAMES,
            _classification("digits", _digits, DIGIT_NAMES, DIGIT_QUESTIONS),
        ),
        InstructionTask("words", "read a rendered English word (OCR-VQA analogue)", WORDS, _words),
    )
}


def parse_task_names(tasks: str | Sequence[str] | None) -> list[str]:
    """Task names from a comma list (or a sequence); ``None`` means all of :data:`TASKS` in registry order."""
    if tasks is None:
        return list(TASKS)
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else [str(t).strip() for t in tasks]
    if not names or any(not t for t in names):
        raise ConfigError(f"tasks: empty task name in {tasks!r}; give a comma list of: {', '.join(TASKS)}")
    unknown = [t for t in names if t not in TASKS]
    if unknown:
        raise ConfigError(f"tasks: unknown task '{unknown[0]}'; choose from: {', '.join(TASKS)}")
    duplicate = next((t for t in names if names.count(t) > 1), None)
    if duplicate is not None:
        raise ConfigError(f"tasks: task '{duplicate}' given twice")
    return names


def task_rng(name: str, seed: int) -> np.random.Generator:
    """A task's own generator: its rows do not depend on which other tasks are built, or in which order."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def build_task(
    name: str, train_size: int, test_size: int, image_size: int = 32, seed: int = 0
) -> tuple[Columns, Columns]:
    """Columns (``image``, ``question``, ``answer``) of one task's ``train_size`` training and ``test_size`` test rows."""
    (name,) = parse_task_names([name])
    for field, n in (("task_train_size", train_size), ("task_test_size", test_size)):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ConfigError(f"{field} must be a positive integer (an empty task has nothing to learn), got {n!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 8:
        raise ConfigError(f"task_image_size must be an integer >= 8, got {image_size!r}")
    return TASKS[name].build(int(train_size), int(test_size), int(image_size), task_rng(name, seed))


def build_instruction_tasks(
    tasks: str | Sequence[str] | None = None,
    train_size: int = 200,
    test_size: int = 50,
    image_size: int = 32,
    seed: int = 0,
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train, test) datasets of the given tasks, ``train_size`` / ``test_size`` rows each, task by task.

    ``label`` is the task's index in ``tasks`` (``ClassLabel`` names = the task names), ``concept`` its name; the
    stream decides the order in which the tasks arrive.
    """
    names = parse_task_names(tasks)
    splits: tuple[Columns, Columns] = ({}, {})
    for label, name in enumerate(names):
        for part, columns in zip(splits, build_task(name, train_size, test_size, image_size, seed)):
            n = len(columns["answer"])
            for key, values in (*columns.items(), ("concept", [name] * n), ("label", [label] * n)):
                part.setdefault(key, []).extend(values)
    features = vqa_features(names)
    return tuple(datasets.Dataset.from_dict(part, features=features) for part in splits)  # type: ignore[return-value]
