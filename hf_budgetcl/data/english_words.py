"""A generic English word list shipped with the package (SCOWL, from Debian's ``wamerican`` word lists).

It serves two purposes: a text corpus for tokenizers that must split any later task's English sensibly, and the
list of real words that synthetic letter strings must avoid (``is_english_word``). The list holds lowercase a-z
words of 2-8 letters of SCOWL size 35 plus every 2-4 letter entry of size 50 (abbreviations and names included,
case-folded), so every short string that could read as a word is in it. Notice: ``wordlists/english_words.LICENSE``.
"""

from __future__ import annotations

import functools
import os

WORDS_FILE = os.path.join(os.path.dirname(__file__), "wordlists", "english_words.txt")


@functools.cache
def english_words() -> tuple[str, ...]:
    """The words, lowercase and sorted (about 27,000)."""
    with open(WORDS_FILE, encoding="utf-8") as f:
        return tuple(w for w in (line.strip() for line in f) if w and not w.startswith("#"))


@functools.cache
def _word_set() -> frozenset[str]:
    return frozenset(english_words())


def is_english_word(text: str) -> bool:
    """Whether ``text`` (any case) is in the list."""
    return text.lower() in _word_set()
