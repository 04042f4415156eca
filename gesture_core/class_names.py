"""Reading class names as words: the folder names users give their classes are the only description
of them, and some choices depend on it (no flips for left/right classes, "no gesture" classes)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Sequence


def class_name(folder: str) -> str:
    """The class a folder name stands for: its Unicode NFC form, as macOS writes "ñandú" decomposed (NFD)
    where Linux and Windows write it composed; both are one class."""
    return unicodedata.normalize("NFC", folder)


# Characters that act on the terminal or the line rather than show: control characters and line
# separators (a newline starts a line of its own, an escape sequence can clear the screen or recolour
# what follows), the marks that reverse or isolate the direction of the text after them
# ("x\u202egpj.exe" shows as "xexe.jpg"), and the characters Unicode draws as nothing (its
# Default_Ignorable_Code_Point, but the joiners and variation selectors that emoji and some scripts
# need): "fist" and "fist\u200b" showed as two classes of one name. A class name may hold none of them;
# a file name may, and reports write it escaped.
LINE_BREAKS = "\x00-\x1f\x7f-\x9f\u2028\u2029"
DIRECTION_MARKS = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
INVISIBLE = ("\u00ad\u034f\u115f\u1160\u17b4\u17b5\u180e\u180f\u200b\u2060-\u2065\u206a-\u206f\u3164\ufeff\uffa0\ufff0-\ufff8"
             "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e001f\U000e0080-\U000e00ff\U000e01f0-\U000e0fff")
UNSHOWN = re.compile(f"[{LINE_BREAKS}{DIRECTION_MARKS}{INVISIBLE}]")


def escape_unshown(text: str) -> str:
    """``text`` with the characters of ``UNSHOWN`` written as escapes (``\\n``, ``\\x1b``, ``\\u202e``),
    as reports and log lines show what a user or a client named."""
    return UNSHOWN.sub(lambda found: found.group().encode("unicode_escape").decode("ascii"), text)


def unwritable_characters(name: str) -> str | None:
    """What in ``name`` no class name may hold, and why, or None. A class name is printed in tables,
    logs, CSV reports and the webcam overlay, and sent in JSON answers: a newline, tab, escape or other
    control character would break a row or drive the terminal, and a byte that is not UTF-8 (which
    Python keeps as a lone surrogate, from an old archive's Latin-1 names) cannot be written at all:
    the test report's plot raised after training, and OpenCV's overlay text crashed the webcam demo."""
    if found := UNSHOWN.search(name):
        if re.match(f"[{LINE_BREAKS}]", found.group()):
            return "a control character (a newline, tab or escape), which would break every table, log and overlay that names the class"
        if re.match(f"[{DIRECTION_MARKS}]", found.group()):
            return "a mark that reverses the direction of the text after it (U+202E and the like), which would show the class as another name"
        return "a character that shows as nothing (a zero-width space, soft hyphen or the like), which would show two classes as one name"
    if not name.strip():
        return "nothing but spaces, which shows as no name at all"
    if any(unicodedata.category(c) == "Cs" for c in name):
        return "bytes that are not UTF-8 (as in an old archive's Latin-1 names), which no report, JSON answer or overlay can write"
    return None


def names_unwritable(names: list[str]) -> str | None:
    """``'a', 'b' hold <why>`` for the names that hold what the first unwritable one holds; None if none does."""
    reasons = [(name, why) for name in names if (why := unwritable_characters(name))]
    if not reasons:
        return None
    first = reasons[0][1]
    shown = ", ".join(repr(name) for name, why in reasons if why == first)
    return f"{shown if len(shown) <= 160 else shown[:160] + '...'} hold {first}"  # a checkpoint's names may be of any length


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


def terminal_width(text: str) -> int:
    """The columns ``text`` takes in a terminal: two for the wide characters of East Asian scripts and
    emoji, none for combining marks, variation selectors, skin tones and what a zero-width joiner joins
    to the character before it ("👍🏽" and "👨‍👩‍👧" are one glyph of two columns). ``len`` counted "✋"
    as one column and "ĉ" written with a combining mark as two, and a table with such class names lost
    its columns."""
    width, joined, narrow_before = 0, False, False
    for char in text:
        if char == "\u200d" or joined:  # a joiner, or what it joins: drawn within the glyph before it
            joined = char == "\u200d"
            continue
        if char == "\ufe0f":  # emoji presentation: a narrow symbol before it ("✌️") is drawn wide
            width, narrow_before = width + narrow_before, False
            continue
        if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf") or "\U0001f3fb" <= char <= "\U0001f3ff":
            continue
        narrow_before = unicodedata.east_asian_width(char) not in ("W", "F")
        width += 1 if narrow_before else 2
    return width


def pad(text: str, width: int) -> str:
    """``text`` left-aligned in ``width`` terminal columns (``terminal_width``), as ``f"{text:<{width}}"`` does for ASCII."""
    return text + " " * max(0, width - terminal_width(text))


def some_of(names: Sequence[str], shown: int = 10) -> str:
    """``names`` comma-separated, the first ``shown`` of them and how many more: a warning that listed
    every class of a 2,000-class set was one line of 22 KB."""
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


# Cyrillic and Greek letters drawn as Latin ones, once case-folded (Cyrillic В, Н, М, Т and Greek Β, Η, Κ, Μ,
# Ν, Τ look Latin only in capitals, and fold to these): "fіst" with a Ukrainian і reads as "fist".
LOOK_ALIKE = str.maketrans(
    "аеорсухіјѕԁһӏԛԝүвнмткαβεζηικμνορτυχ",
    "aeopcyxijsdhlqwybhmtkabezhikmnoptux",
)
CONFUSABLE_SCRIPTS = ("LATIN", "CYRILLIC", "GREEK")  # the alphabets whose letters pass for one another


def as_latin(name: str) -> str:
    """``name`` (case-folded) with the Cyrillic and Greek letters that pass for Latin ones made Latin."""
    return name.casefold().translate(LOOK_ALIKE)


def mixed_scripts(name: str) -> str | None:
    """How ``name`` mixes Latin, Cyrillic and Greek letters ("Latin and Cyrillic letters (Cyrillic і)"), or None: one alphabet
    per name is how people type, so a mix is most likely a look-alike letter from another keyboard layout."""
    scripts: dict[str, list[str]] = {}
    for char in unicodedata.normalize("NFKC", name):  # fullwidth letters as their plain ones
        script = unicodedata.name(char, "").split(" ")[0]
        if char.isalpha() and script in CONFUSABLE_SCRIPTS:
            scripts.setdefault(script, []).append(char)
    if len(scripts) < 2:
        return None
    fewest = min(scripts, key=lambda script: (len(scripts[script]), script == "LATIN"))  # a tie names the letters not Latin
    return f"{' and '.join(s.title() for s in scripts)} letters ({fewest.title()} {''.join(dict.fromkeys(scripts[fewest]))})"
