"""Rendered English words (an OCR-VQA analogue): a real word drawn by PIL in a Debian DejaVu font.

Each image shows one word of :data:`WORDS` (4-7 letters) in one of the DejaVu faces that ``fonts-dejavu-core``
ships, with a random offset and text/background colours. It is drawn at 4x the target size and downsampled, so
the letters stay smooth at 32x32. Train and test images never share their rendering parameters (word, face, offset,
colours), so the held-out images are new images of known words.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Real words only (the stage-1 base reads random letter strings): the answer space of the task.
WORDS: tuple[str, ...] = (
    "apple", "bread", "chair", "cloud", "dance", "earth", "field", "garden",
    "house", "light", "money", "night", "paper", "river", "stone", "water",
)  # fmt: skip
# The faces of Debian's fonts-dejavu-core (always installed with it; the other DejaVu faces are optional).
FONT_FACES: tuple[str, ...] = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf")
FONT_DIRS: tuple[str, ...] = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/TTF", "/usr/share/fonts/dejavu")
_SCALE = 4  # drawn at 4x and downsampled


def find_dejavu_font(face: str = "DejaVuSans.ttf") -> str:
    """Path of a DejaVu face: ``$DEJAVU_FONT_DIR``, else Debian's and other distributions' font folders."""
    dirs = [os.environ["DEJAVU_FONT_DIR"]] if os.environ.get("DEJAVU_FONT_DIR") else list(FONT_DIRS)
    for d in dirs:
        path = os.path.join(d, face)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"font {face} not found in {', '.join(dirs)}: install it with `apt-get install fonts-dejavu-core` "
        "or set DEJAVU_FONT_DIR to a folder holding the DejaVu .ttf files"
    )


@dataclass(frozen=True)
class WordRendering:
    """Everything that decides one image: equal parameters give equal pixels."""

    word: str
    face: str
    dx: int  # offset of the text from the centre, in target pixels
    dy: int
    ink: tuple[int, int, int]
    paper: tuple[int, int, int]


def draw_word(r: WordRendering, image_size: int = 32) -> Image.Image:
    """The RGB ``image_size``² image of one rendering: the word as wide as 90% of the image, centred, then offset."""
    side = image_size * _SCALE
    font = _font(r.face, side)
    img = Image.new("RGB", (side, side), r.paper)
    draw = ImageDraw.Draw(img)
    x = side / 2 + r.dx * _SCALE
    y = side / 2 + r.dy * _SCALE
    draw.text((x, y), r.word, fill=r.ink, font=font, anchor="mm")
    return img.resize((image_size, image_size), Image.Resampling.LANCZOS)


@functools.lru_cache(maxsize=32)
def _font(face: str, side: int) -> ImageFont.FreeTypeFont:
    """The face at the size that makes the widest word of the list fill 90% of ``side``: one size per face."""
    path = find_dejavu_font(face)
    probe = ImageFont.truetype(path, 100)
    widest = max(probe.getlength(w) for w in WORDS)
    return ImageFont.truetype(path, max(int(100 * 0.9 * side / widest), 4))


def sample_renderings(n: int, rng: np.random.Generator, image_size: int, exclude=frozenset()) -> list[WordRendering]:
    """``n`` renderings with uniform words and faces, offsets within an eighth of the image, dark ink on light
    paper; none of them in ``exclude`` (the training renderings, when drawing the test set)."""
    shift = max(image_size // 8, 1)
    out: list[WordRendering] = []
    taken = set(exclude)
    while len(out) < n:
        r = WordRendering(
            word=WORDS[int(rng.integers(len(WORDS)))],
            face=FONT_FACES[int(rng.integers(len(FONT_FACES)))],
            dx=int(rng.integers(-shift, shift + 1)),
            dy=int(rng.integers(-shift, shift + 1)),
            ink=tuple(int(v) for v in rng.integers(0, 90, size=3)),
            paper=tuple(int(v) for v in rng.integers(170, 256, size=3)),
        )
        if r not in taken:
            taken.add(r)
            out.append(r)
    return out
