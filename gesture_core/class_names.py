"""Reading class names as words: the folder names users give their classes are the only description
of them, and some choices depend on it (no flips for left/right classes, "no gesture" classes)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection


def class_name(folder: str) -> str:
    """The class a folder name stands for: its Unicode NFC form, as macOS writes "ñandú" decomposed (NFD)
    where Linux and Windows write it composed; both are one class."""
    return unicodedata.normalize("NFC", folder)


def has_control_characters(name: str) -> bool:
    """A newline, tab, escape or other control character: a class name is printed in tables, logs,
    CSV reports and the webcam overlay, where one would break a row or drive the terminal."""
    return any(unicodedata.category(c) == "Cc" for c in name)


def name_key(name: str) -> str:
    """A class name as names are compared for sameness: "Fist", "fist" and a decomposed spelling are one gesture."""
    return class_name(name).casefold()


WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")


def name_words(name: str) -> list[str]:
    """Lower-case words of a class name in snake_case, kebab-case, camelCase or with spaces:
    "swipeLeft" -> swipe, left; "point_right2" -> point, right, 2; "00-No Gesture" -> 00, no, gesture."""
    return [w.lower() for w in WORD.findall(name)]


def unglue(word: str, firsts: Collection[str], seconds: Collection[str]) -> list[str] | None:
    """A lower-case word written as two glued ones, the first from ``firsts`` and the second from
    ``seconds`` ("nogesture" -> no, gesture), else None. Only known pairs split, so that "bright"
    and "note" stay words."""
    for first in firsts:
        if word.startswith(first) and word[len(first):] in seconds:
            return [first, word[len(first):]]
    return None
