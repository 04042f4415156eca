"""Identical image files (the same bytes) in a dataset, and what the split does with them.

A photo saved twice in one class (scraped sets have them: flowers has a sunflower in two files) can
land in train and in test; the test then scores an image the model trained on. A photo saved under
two classes teaches two answers for one image. ``training.check`` lists both; the split keeps the
copies of one class in one split and warns of the rest. Only files that share their size with
another are read and hashed, so a dataset without copies costs one ``stat`` per file.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from gesture_core.class_names import some_of

SPLIT_ORDER = ("train", "val", "test")  # a copy joins the first of these that holds one of its twins


def identical_sets(paths: Iterable[str]) -> list[list[str]]:
    """Sets of two or more files with the same bytes; unreadable files are left to the loader's report."""
    by_size: dict[int, list[str]] = defaultdict(list)
    for path in paths:
        try:
            by_size[os.path.getsize(path)].append(path)
        except OSError:
            continue
    by_digest: dict[str, list[str]] = defaultdict(list)
    for same_size in (group for group in by_size.values() if len(group) > 1):
        for path in same_size:
            if (digest := _digest(path)) is not None:
                by_digest[digest].append(path)
    return [group for group in by_digest.values() if len(group) > 1]


def _digest(path: str) -> str | None:
    try:
        with open(path, "rb") as file:
            return hashlib.file_digest(file, "sha256").hexdigest()
    except OSError:
        return None


def keep_copies_together(parts: dict[str, dict[str, list[str]]], copies: list[list[str]]) -> list[tuple[str, str]]:
    """Move each copy of a class's image into the first split (train, val, test) that holds one, in place.

    ``parts`` is {split: {class: paths}}; returns the (split, class) each moved file came from."""
    where = {path: (split, cls) for split, by_class in parts.items() for cls, paths in by_class.items() for path in paths}
    moved: list[tuple[str, str]] = []
    for group in copies:
        for cls in {where[p][1] for p in group if p in where}:
            members = [p for p in group if where.get(p, ("", None))[1] == cls]
            home = min((where[p][0] for p in members), key=SPLIT_ORDER.index)
            for path in members:
                if (split := where[path][0]) != home:
                    parts[split][cls].remove(path)
                    parts[home][cls].append(path)
                    moved.append((split, cls))
    return moved


def copies_warnings(parts: dict[str, dict[str, list[str]]], copies: list[list[str]], moved: list[tuple[str, str]], root: Path, *,
                    presplit: bool) -> list[str]:  # fmt: skip
    """Start-up warnings on identical files: those moved beside their twin (``keep_copies_together``), naming a class
    left with no val or test image; those under two classes; and (in a folder's own train/ and test/, which are left
    as they are) test images of a class that are its training images."""
    classes_of = {path: cls for by_class in parts.values() for cls, paths in by_class.items() for path in paths}
    split_of = {path: split for split, by_class in parts.items() for paths in by_class.values() for path in paths}
    out = []
    if moved:
        # A still scene saved frame after frame is one file many times over: its class lost every held-out frame.
        emptied = sorted({f"{cls} ({split})" for split, cls in moved if not parts[split][cls]})
        out.append(f"{len(moved)} held-out image(s) had an identical copy in another split of their class and joined it, so "
                   "no image is both trained on and measured (python -m training.check lists the copies)"
                   + (f"; that left no image to measure in {some_of(emptied)}: add images that are not copies" if emptied else ""))  # fmt: skip
    if conflicting := [group for group in copies if len({classes_of.get(p) for p in group}) > 1]:
        shown = some_of([" = ".join(os.path.relpath(p, root) for p in group) for group in conflicting])
        out.append(f"{len(conflicting)} image(s) saved under more than one class teach two answers for one picture: {shown}; "
                   "keep each in its one right class")  # fmt: skip
    leaked = sum(1 for group in copies for cls in {classes_of.get(p) for p in group}
                 if len(sides := {split_of.get(p) for p in group if classes_of.get(p) == cls}) > 1 and "test" in sides)
    if presplit and leaked:
        out.append(f"{leaked} image(s) of test/ are also in train/ (the same bytes): the test score counts them as seen "
                   "images; delete the copies from one of the folders (python -m training.check lists them)")  # fmt: skip
    return out
