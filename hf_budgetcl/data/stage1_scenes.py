"""Synthetic alignment data for a stage-1 (pretraining) VLM base: PIL-drawn scenes with captions and general QA.

A scene is 1-3 simple shapes (6 kinds, 12 colours, 2 sizes) in distinct cells of a 3×3 grid, on a named background
colour with a mild gradient and pixel noise, and in some scenes a random string of 2-4 capital letters written across
one grid row. The letter strings are never English words (every candidate is checked against the packaged SCOWL
list, :mod:`~hf_budgetcl.data.english_words`), so a continual "read the word" task on real words stays disjoint
from this data. No continual stream's images (easy-vqa, Fashion-MNIST, digits) are used: everything is drawn here.

Everything is a function of ``(seed, split, index)``: the same arguments give the same scenes, pixels, questions and
answers on every machine with the same Pillow (the font is Pillow's bundled one, not a system font).
"""

from __future__ import annotations

import functools
import io
import string
from collections.abc import Sequence
from dataclasses import dataclass

import datasets
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..utils.errors import ConfigError
from .english_words import is_english_word
from .vqa import vqa_features

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (245, 225, 30),
    "orange": (250, 140, 20),
    "purple": (130, 40, 170),
    "pink": (250, 140, 200),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
    "brown": (120, 70, 30),
    "cyan": (40, 215, 225),
}
SIZES: tuple[str, ...] = ("small", "large")
# Reading order of the 3×3 grid; the letters take a whole row.
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right",
)  # fmt: skip
ROWS: tuple[str, ...] = ("top", "middle", "bottom")
NUMBERS: tuple[str, ...] = ("zero", "one", "two", "three")
QUESTION_TYPES: tuple[str, ...] = ("caption", "color", "shape", "position", "count", "size", "letters", "background")
NO_LETTERS = "none"
SPLITS = {"train": 0, "test": 1}
# Colours closer than this (RGB Euclidean) are not put on each other: the named colour must stay visible.
MIN_CONTRAST = 130.0
RENDER_SCALE = 4  # drawn at 4× and box-downsampled: clean edges at 32 px


@dataclass(frozen=True)
class SceneShape:
    shape: str
    color: str
    size: str
    position: str  # one of POSITIONS


@dataclass(frozen=True)
class Scene:
    background: str
    shapes: tuple[SceneShape, ...]
    letters: str | None = None
    letters_color: str | None = None
    letters_row: str | None = None  # one of ROWS

    def caption(self) -> str:
        """``"a large red circle at the top left and a small blue star on the right, on a gray background"``;
        shapes in reading order, then the letters."""
        parts = [f"a {s.size} {s.color} {s.shape} {where_phrase(s.position)}" for s in self.shapes]
        if self.letters:
            row = "in the middle" if self.letters_row == "middle" else f"at the {self.letters_row}"
            parts.append(f"the letters {self.letters} in {self.letters_color} {row}")
        listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        return f"{listed}, on a {self.background} background"


def where_phrase(position: str) -> str:
    """``"at the top left"``, ``"on the left"``, ``"in the center"``: a grid cell as a caption or question says it."""
    if position in ("left", "right"):
        return f"on the {position}"
    if position == "center":
        return "in the center"
    return f"at the {position}"


def _distance(a: str, b: str) -> float:
    return float(np.linalg.norm(np.subtract(COLORS[a], COLORS[b])))


def random_letters(rng: np.random.Generator, min_len: int = 2, max_len: int = 4) -> str:
    """2-4 random capital letters that are not an English word (nor abbreviation or name) in the packaged list."""
    while True:
        n = int(rng.integers(min_len, max_len + 1))
        text = "".join(rng.choice(list(string.ascii_uppercase), size=n))
        if not is_english_word(text):
            return text


def sample_scene(rng: np.random.Generator, letters_fraction: float = 0.4) -> Scene:
    """A random scene: background, 1-3 shapes with distinct (shape, colour) in distinct cells, maybe letters."""
    background = str(rng.choice(list(COLORS)))
    visible = [c for c in COLORS if _distance(c, background) >= MIN_CONTRAST]
    cells = list(range(len(POSITIONS)))
    letters = letters_color = letters_row = None
    if rng.random() < letters_fraction:
        row = int(rng.integers(len(ROWS)))
        letters_row, letters = ROWS[row], random_letters(rng)
        letters_color = str(rng.choice(visible))
        cells = [c for c in cells if c // 3 != row]
    n = int(rng.integers(1, 4))
    chosen = sorted(int(c) for c in rng.choice(cells, size=n, replace=False))
    shapes: list[SceneShape] = []
    for cell in chosen:
        while True:
            shape, color = str(rng.choice(SHAPES)), str(rng.choice(visible))
            if all((s.shape, s.color) != (shape, color) for s in shapes):
                break
        shapes.append(SceneShape(shape, color, str(rng.choice(SIZES)), POSITIONS[cell]))
    return Scene(background, tuple(shapes), letters, letters_color, letters_row)


@functools.cache
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)  # Pillow's bundled font: the same on every machine


def _shape_points(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    if shape == "triangle":
        return [(cx, cy - r), (cx + r * 0.95, cy + r * 0.8), (cx - r * 0.95, cy + r * 0.8)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r * 0.7, cy), (cx, cy + r), (cx - r * 0.7, cy)]
    if shape == "star":
        angles = np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        return [(cx + float(q * np.cos(a)), cy - float(q * np.sin(a))) for q, a in zip(radii, angles)]
    return None


def render_scene(scene: Scene, rng: np.random.Generator, image_size: int = 32) -> Image.Image:
    """Draw ``scene`` as an ``image_size``² RGB image (gradient and noise drawn from ``rng``)."""
    side = image_size * RENDER_SCALE
    cell = side / 3
    base = np.asarray(COLORS[scene.background], dtype=np.float32)
    ramp = np.linspace(-1.0, 1.0, side, dtype=np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    gradient = np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None]
    canvas = np.clip(base + rng.uniform(10, 25) * gradient[..., None], 0, 255).astype(np.uint8)
    image = Image.fromarray(canvas, "RGB")
    draw = ImageDraw.Draw(image)
    for s in scene.shapes:
        k = POSITIONS.index(s.position)
        jitter = rng.uniform(-0.07, 0.07, size=2) * cell
        cx, cy = (k % 3 + 0.5) * cell + jitter[0], (k // 3 + 0.5) * cell + jitter[1]
        r = cell * (0.42 if s.size == "large" else 0.24)
        fill = COLORS[s.color]
        points = _shape_points(s.shape, cx, cy, r)
        if points is not None:
            draw.polygon(points, fill=fill)
        elif s.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif s.shape == "square":
            h = r * 0.85
            draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
        else:  # cross
            w = r * 0.32
            draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
            draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    if scene.letters:
        row = ROWS.index(scene.letters_row)
        size = int(cell * 0.95)
        while size > 4:  # largest font whose text fits the row
            left, top, right, bottom = draw.textbbox((0, 0), scene.letters, font=_font(size))
            if right - left <= side * 0.94 and bottom - top <= cell * 0.85:
                break
            size -= 2
        font = _font(size)
        left, top, right, bottom = draw.textbbox((0, 0), scene.letters, font=font)
        x = (side - (right - left)) / 2 - left
        y = (row + 0.5) * cell - (bottom - top) / 2 - top
        draw.text((x, y), scene.letters, fill=COLORS[scene.letters_color], font=font)
    small = np.asarray(image.resize((image_size, image_size), Image.Resampling.BOX), dtype=np.float32)
    noisy = small + rng.normal(0.0, 4.0, size=small.shape)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), "RGB")


def scene_question(scene: Scene, qtype: str, rng: np.random.Generator) -> tuple[str, str]:
    """``(question, answer)`` of type ``qtype`` about ``scene``, with a template (and shape asked about) from
    ``rng``. Only unambiguous questions are asked: a shape is named by its kind only if no other shape shares it."""
    shape = scene.shapes[int(rng.integers(len(scene.shapes)))]
    kinds = [s.shape for s in scene.shapes]
    colors = [s.color for s in scene.shapes]
    named = f"the {shape.color} {shape.shape}"

    def pick(options: Sequence[str]) -> str:
        return str(options[int(rng.integers(len(options)))])

    if qtype == "caption":
        question = pick(("Describe the image.", "Write a short caption for the image.", "What does the image show?"))
        return question, scene.caption()
    if qtype == "color":
        options = [f"What color is the shape {where_phrase(shape.position)}?"]
        if kinds.count(shape.shape) == 1:
            options.append(f"What color is the {shape.shape}?")
        return pick(options), shape.color
    if qtype == "shape":
        options = [f"What shape is {where_phrase(shape.position)}?", f"Which shape is {where_phrase(shape.position)}?"]
        if colors.count(shape.color) == 1:
            options.append(f"Which shape is {shape.color}?")
        return pick(options), shape.shape
    if qtype == "position":
        return pick((f"Where is {named}?", f"In which part of the image is {named}?")), shape.position
    if qtype == "count":
        question = pick(("How many shapes are there?", "How many shapes are in the image?", "Count the shapes."))
        return question, NUMBERS[len(scene.shapes)]
    if qtype == "size":
        return pick((f"Is {named} small or large?", f"What size is {named}?")), shape.size
    if qtype == "letters":
        question = pick(("What letters are written?", "What is written in the image?", "Read the letters."))
        return question, scene.letters or NO_LETTERS
    if qtype == "background":
        return pick(("What color is the background?", "What is the background color?")), scene.background
    raise ConfigError(f"question type must be one of {QUESTION_TYPES}, got {qtype!r}")


def stage1_scenes(
    n_images: int,
    split: str = "train",
    seed: int = 0,
    image_size: int = 32,
    questions_per_image: int | None = 3,
    letters_fraction: float = 0.4,
    caption_fraction: float = 1.0,
) -> datasets.Dataset:
    """Rows ``image``, ``question``, ``answer``, ``concept`` (the question type) and ``label`` (its index in
    :data:`QUESTION_TYPES`), the columns of the VQA loaders.

    Each image gets its caption (with probability ``caption_fraction``) and ``questions_per_image`` further questions of distinct random types (the
    letters question always among them when letters are written, so reading gets enough signal); ``None``: one
    question of every type (a held-out set scored per type; the letters question only where letters are written). ``split`` ("train" or "test") selects an independent
    random stream, so the two never share a generator state.
    """
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    if n_images < 1:
        raise ConfigError(f"n_images must be >= 1, got {n_images}")
    others = QUESTION_TYPES[1:]
    if questions_per_image is not None and not 0 <= questions_per_image <= len(others):
        raise ConfigError(f"questions_per_image must be in [0, {len(others)}] or None, got {questions_per_image}")
    rows: dict[str, list] = {k: [] for k in ("image", "question", "answer", "concept", "label")}
    for index in range(n_images):
        rng = np.random.default_rng([seed, SPLITS[split], index])
        scene = sample_scene(rng, letters_fraction)
        buffer = io.BytesIO()
        render_scene(scene, rng, image_size).save(buffer, format="PNG")
        image = {"bytes": buffer.getvalue(), "path": None}  # encoded once, shared by the image's rows
        if questions_per_image is None:  # held-out: reading is scored where something is written
            types = [t for t in QUESTION_TYPES if t != "letters" or scene.letters]
        else:
            types = [t for t in others if t != "letters" or not scene.letters]
            picked = [str(t) for t in rng.choice(types, size=questions_per_image, replace=False)]
            if scene.letters:
                picked = ["letters", *picked[: questions_per_image - 1]] if questions_per_image else []
            captioned = caption_fraction >= 1 or rng.random() < caption_fraction
            types = ["caption"] * captioned + sorted(picked, key=QUESTION_TYPES.index)
        for qtype in types:
            question, answer = scene_question(scene, qtype, rng)
            rows["image"].append(image)
            rows["question"].append(question)
            rows["answer"].append(answer)
            rows["concept"].append(qtype)
            rows["label"].append(QUESTION_TYPES.index(qtype))
    return datasets.Dataset.from_dict(rows, features=vqa_features(QUESTION_TYPES))


# The attribute targets of the vision-tower pretraining: one categorical per entry, index 0 meaning "none".
ATTRIBUTE_CLASSES: tuple[tuple[str, int], ...] = (
    ("background", len(COLORS)),
    *((f"shape@{p}", len(SHAPES) + 1) for p in POSITIONS),
    *((f"color@{p}", len(COLORS) + 1) for p in POSITIONS),
    *((f"size@{p}", len(SIZES) + 1) for p in POSITIONS),
    ("letters_row", len(ROWS) + 1),
    ("letters_color", len(COLORS) + 1),
)


def scene_attributes(scene: Scene) -> list[int]:
    """The scene as :data:`ATTRIBUTE_CLASSES` targets: background colour, per grid cell the shape, colour and size
    (0 = empty cell, else 1 + index), and the letters' row and colour (0 = no letters)."""
    colors, cells = list(COLORS), {s.position: s for s in scene.shapes}
    per_cell = [
        [0 if p not in cells else 1 + table.index(getattr(cells[p], field)) for p in POSITIONS]
        for field, table in (("shape", SHAPES), ("color", colors), ("size", SIZES))
    ]
    letters = (
        [0, 0] if not scene.letters else [1 + ROWS.index(scene.letters_row), 1 + colors.index(scene.letters_color)]
    )
    return [colors.index(scene.background), *per_cell[0], *per_cell[1], *per_cell[2], *letters]


def stage1_attribute_images(
    n_images: int, split: str = "train", seed: int = 0, image_size: int = 32, letters_fraction: float = 0.4
) -> tuple[list[Image.Image], np.ndarray]:
    """The images of :func:`stage1_scenes` (same arguments, same pixels) and their :func:`scene_attributes`,
    ``(n_images, len(ATTRIBUTE_CLASSES))``: the supervised targets a vision tower is pretrained on."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    images, attributes = [], []
    for index in range(n_images):
        rng = np.random.default_rng([seed, SPLITS[split], index])
        scene = sample_scene(rng, letters_fraction)
        images.append(render_scene(scene, rng, image_size))
        attributes.append(scene_attributes(scene))
    return images, np.asarray(attributes, dtype=np.int64)


def stage1_corpus(dataset: datasets.Dataset) -> list[str]:
    """The distinct questions and answers of a stage-1 set (tokenizer training text)."""
    return sorted(set(dataset["question"])) + sorted(set(dataset["answer"]))
