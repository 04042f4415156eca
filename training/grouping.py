"""Grouped splits: images that were taken together go to the same split.

Frames of one recording (or photos of one burst) look alike, so a frame-by-frame split puts
near-twins on both sides and validation and test scores come out too high. Here each image gets a
group key, and validation and test take whole groups:

- ``session``: the capture tool's names, ``<class>-<YYYYmmdd-HHMMSS>...-<n>.jpg`` (one group per session, and
  per source file for a video's frames: ``session_of``);
- ``folders``: each subfolder of a class folder (``fist/clip07/0001.jpg``: a video's frames, one
  person's or one day's photos) is one group, past a wrapper folder all of the class's images share;
- ``frames``: numbered frame sequences, a name with a running number (``A1008.jpg``, ``IMG_1118.JPG``,
  ``0001.png``, ``rec2-0017-left.jpg``, ``left (17).jpg``; a sequence per subfolder and per recording
  the rest of the name tells apart): each sequence whole in a class of MIN_RECORDINGS or more, else cut
  into SEQUENCE_BLOCKS contiguous blocks per class;
- a regular expression (``--group-by REGEX``): its first capture group (or the whole match) on the
  file's path inside its class folder;
- ``none``: every image is its own group (the old frame-by-frame split);
- ``auto`` (the default): ``session``, ``folders`` or ``frames``, the first that describes the files,
  else ``none``.

A class with a single group (one recording) cannot be split honestly: it is split in file order
instead (train first, then val, then test, as the last part of a recording is held out) and named in
a warning. A class with more groups, but too few for each of train, val and test, is an error.
"""

from __future__ import annotations

import contextlib
import math
import re
import shlex
import signal
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gesture_core.class_names import some_of

GROUP_BY_RULES = ("auto", "none", "session", "folders", "frames")
# service.webcam.capture: <class>-<YYYYmmdd-HHMMSS>p<pid>-<n> from a camera (p<pid> since 2026-12-04), and
# <class>-<YYYYmmdd-HHMMSS>s<source>-<n> from a file or folder (since 2026-12-06), whose group is the source alone
SESSION_NAME = re.compile(r"-(\d{8}-\d{6})(p\d+|s[0-9a-f]{10})?-\d+$")
DIGIT_RUNS = re.compile(r"\d+")
SEQUENCE_BLOCKS = 20  # blocks per class: 10% val and 20% test are then 2 and 4 whole blocks
AUTO_COVERAGE = 0.9  # a rule applies when it names at least this share of the images
MIN_FRAMES_PER_STEM = 5  # fewer files per stem are numbered photos, not frame sequences
MIN_RECORDINGS = 3  # a class of this many sequences keeps each whole: one each for train, val and test
# A --group-by pattern's time over the names: a plain one groups a million names in 4.8 s (whole assign_groups, Zen 4)
REGEX_SECONDS, REGEX_SECONDS_PER_NAME = 10.0, 1e-4


class DatasetError(ValueError):
    """A dataset that cannot be trained on (or split honestly); the message says why and what to do.

    Defined here, where the splits are made, and imported by training.data with everything else."""


@dataclass
class Grouping:
    """Which rule grouped the images, and each image's group within its class."""

    rule: str  # none | session | frames | regex
    description: str
    groups: dict[str, dict[str, str]]  # class -> path -> group key
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"rule": self.rule, "description": self.description, "warnings": self.warnings}


def check_group_by(text: str) -> str:
    """``text`` if it is a rule name or a regular expression that compiles, else ValueError."""
    if text in GROUP_BY_RULES:
        return text
    if not text.strip():  # it matched every name alike: each class one group, so no honest split at all
        raise ValueError(f"--group-by {shlex.quote(text)}: an empty pattern; pass a regular expression that finds the recording in "
                         f"the file name, or one of {', '.join(GROUP_BY_RULES)}")
    try:
        re.compile(text)
    except re.error as err:
        raise ValueError(f"--group-by {shlex.quote(text)}: not a valid regular expression ({err}); or choose one of {', '.join(GROUP_BY_RULES)}") from None
    return text


def assign_groups(by_class: dict[str, list[str]], group_by: str = "auto") -> Grouping:
    """Group every image of ``by_class`` ({class: [paths]}) by the rule ``group_by``."""
    if group_by == "none":
        return _each_alone(by_class)
    named = {"session": _by_session, "folders": _by_folder, "frames": _by_frames}
    if group_by in named:
        return _describing_some(named[group_by](by_class), by_class)
    if group_by == "auto":
        for rule in (_by_session, _by_folder, _by_frames):
            grouping = rule(by_class)
            if _coverage(grouping, by_class) >= AUTO_COVERAGE and _looks_grouped(grouping):
                return grouping
        return _each_alone(by_class, "no capture sessions or numbered frame sequences in the file names: images split one by one")
    return _by_regex(by_class, group_by)


RULE_FINDS = {"session": "a capture-tool name (<class>-<session>-<n>.jpg)", "folders": "in a sub-folder of its class folder",
              "frames": "a numbered frame (a running number in the name)"}


def _describing_some(grouping: Grouping, by_class: dict[str, list[str]]) -> Grouping:
    """``grouping``, made by a rule the user named; a DatasetError when it groups no image, where the split went
    image by image under a start-up line that described the rule's groups."""
    if by_class and any(by_class.values()) and _coverage(grouping, by_class) == 0:
        example = Path(next(p for paths in by_class.values() for p in paths)).name
        raise DatasetError(f"--group-by {grouping.rule}: no image is {RULE_FINDS[grouping.rule]} (e.g. {example}); "
                           f"use one of {', '.join(GROUP_BY_RULES)}, or a regular expression that finds the recording in the name")
    return grouping


def _each_alone(by_class: dict[str, list[str]], description: str = "--group-by none: images split one by one") -> Grouping:
    return Grouping("none", description, {c: {p: p for p in paths} for c, paths in by_class.items()})


def _name(path: str) -> str:
    return Path(path).stem


def session_of(stem: str) -> str | None:
    """The capture session a file name (without its suffix) belongs to, or None for another name."""
    if not (match := SESSION_NAME.search(stem)):
        return None
    started, source = match.groups()
    return source if source and source.startswith("s") else started + (source or "")


def _by_session(by_class: dict[str, list[str]]) -> Grouping:
    groups = {}
    for cls, paths in by_class.items():
        groups[cls] = {p: session_of(_name(p)) or p for p in paths}
    return Grouping("session", "capture sessions (<class>-<session>-<n>.jpg): each session stays in one split", groups)


def _by_folder(by_class: dict[str, list[str]]) -> Grouping:
    groups = {cls: _folder_groups(paths, cls) for cls, paths in by_class.items()}
    example = next((f"{cls}/{key}/" for cls, members in groups.items() for p, key in members.items() if key != p), "<class>/<folder>/")
    return Grouping("folders", f"subfolders of the class folders (e.g. {example}): each subfolder stays in one split", groups)


def _folder_groups(paths: list[str], cls: str) -> dict[str, str]:
    """{path: its group}: the first folder under the class folder, past the folders every subfoldered
    image shares ("fist/images/clip07/0001.jpg" -> "images/clip07" when all of fist's are in images/);
    an image in the class folder itself is its own group."""
    folders = {p: _subfolder(p, cls).split("/") for p in paths if _subfolder(p, cls)}
    shared = 0
    while folders and all(len(parts) > shared + 1 for parts in folders.values()) and len({parts[shared] for parts in folders.values()}) == 1:
        shared += 1  # a wrapper folder that every image of the class is in: it tells no recording from another
    return {p: "/".join(folders[p][:shared + 1]) if p in folders else p for p in paths}


def _subfolder(path: str, cls: str) -> str:
    """The folder of ``path`` inside its class folder ("clip07", "anna/day2"), "" when it lies in the class folder itself."""
    folder = str(Path(_relative_name(path, cls)).parent)
    return "" if folder == "." else folder


def _by_frames(by_class: dict[str, list[str]]) -> Grouping:
    """Each recording (sequence) whole where a class has MIN_RECORDINGS of them; else, one long recording
    (the shared ASL frames, a phone's IMG_1118.JPG...), contiguous blocks of it. Takes were cut into blocks
    whatever their number, so a take's frames sat in train, val and test."""
    groups, block_sizes, example, cut = {}, [], "", []
    for cls, paths in by_class.items():
        groups[cls] = {p: p for p in paths}
        recordings = sequences(paths, cls)
        kept_whole = len(recordings) >= MIN_RECORDINGS
        block = len(paths) if kept_whole else max(1, math.ceil(len(paths) / SEQUENCE_BLOCKS))
        block_sizes += [] if kept_whole else [block]
        if recordings and not kept_whole:  # (class, how many, whether they are clips in folders)
            cut.append((f"{cls} ({len(recordings)})", any("/" in stem for stem in recordings)))
        for stem, frames in recordings.items():
            example = example or Path(frames[0]).name
            for rank, path in enumerate(frames):
                groups[cls][path] = f"{stem}#{rank // block}"
    whole = len(by_class) - len(block_sizes)  # the classes not cut into blocks
    described = [f"each recording whole in {whole} class(es) of {MIN_RECORDINGS} or more"] if whole else []
    if block_sizes:
        sizes = "-".join(str(n) for n in sorted({min(block_sizes), max(block_sizes)}))
        described.append(f"blocks of {sizes} neighbouring frame{'' if sizes == '1' else 's'} (at most {SEQUENCE_BLOCKS} blocks per class) "
                         f"in {len(block_sizes)} class(es) of fewer recordings")
    # Said where the sequences are known recordings: clips in folders (a video's frames), or takes in the other classes.
    # One numbered sequence per class and no folders is most often a camera's counter (IMG_1118.JPG): photos, not a take.
    short = [name for name, in_folders in cut if in_folders or whole]
    warnings = [f"fewer than {MIN_RECORDINGS} recordings in class(es) {some_of(short)}: their val and test are blocks of a recording "
                "whose other blocks are trained on, so they score higher than new recordings will; record more takes for an honest test"] if short else []
    return Grouping("frames", f"numbered frame sequences (a running number in the name, e.g. {example}): {'; '.join(described)}, "
                    "each in one split", groups, warnings)  # fmt: skip


def sequences(paths: Iterable[str], cls: str) -> dict[str, list[str]]:
    """{stem: paths in running-number order} for the numbered file names (``running_numbers``); frames in different
    subfolders of the class folder ``cls`` are different sequences ("clip1/0001.png" is not next to "clip2/0002.png")."""
    by_folder: dict[str, list[str]] = {}
    for path in paths:
        by_folder.setdefault(_subfolder(path, cls), []).append(path)
    by_stem: dict[str, list[tuple[int, str]]] = {}
    for folder, members in by_folder.items():
        numbered = running_numbers([_name(p) for p in members])
        for path in members:
            if (found := numbered.get(_name(path))) is not None:
                by_stem.setdefault("/".join(filter(None, (folder, found[0]))), []).append((found[1], path))
    return {stem: [p for _, p in sorted(frames)] for stem, frames in by_stem.items()}


def running_numbers(names: Iterable[str]) -> dict[str, tuple[str, int]]:
    """{name: (stem, running number)} for the names that hold a number. Names alike but for their
    digits share a pattern, and its running number is the last run of digits that differs between
    them: the frame counter of "rec2-0017-left", "clip_017_640x480" or "left (17)", not the constant
    "480" after it (the last run, for a name alone in its pattern). The stem is the name without it,
    so that each recording is a sequence of its own: "rec2-*-left", or "A" for "A1008"."""
    patterns: dict[str, list[tuple[str, list[re.Match]]]] = {}
    for name in names:
        if runs := list(DIGIT_RUNS.finditer(name)):
            patterns.setdefault(DIGIT_RUNS.sub("0", name), []).append((name, runs))
    numbered = {}
    for members in patterns.values():
        count = len(members[0][1])
        varying = [i for i in range(count) if len({int(runs[i].group()) for _, runs in members}) > 1]
        at = varying[-1] if varying else count - 1
        for name, runs in members:
            run, rest = runs[at], name[runs[at].end():]
            numbered[name] = (name[:run.start()] + (f"*{rest}" if rest else ""), int(run.group()))
    return numbered


def _by_regex(by_class: dict[str, list[str]], pattern: str) -> Grouping:
    regex = re.compile(pattern)
    groups, unmatched, total, name = {}, [], 0, ""
    limit = REGEX_SECONDS + REGEX_SECONDS_PER_NAME * sum(map(len, by_class.values()))
    try:
        with _stopped_after(limit):
            for cls, paths in by_class.items():
                groups[cls] = {}
                for path in paths:
                    total, name = total + 1, _relative_name(path, cls)
                    m = regex.search(name)
                    if m is None:
                        unmatched.append(path)
                        groups[cls][path] = path
                    else:
                        groups[cls][path] = next((g for g in m.groups() if g is not None), m.group(0))
    except _TooSlow:  # (a+)+$ on a 40-letter name backtracks for hours
        raise DatasetError(f"--group-by '{pattern}' ran for over {limit:.3g} s on the file names (stopped at {name!r}): nested "
                           f"repeats such as (a+)+ backtrack without end; simplify the pattern, or use one of {', '.join(GROUP_BY_RULES)}") from None
    if total and len(unmatched) == total:
        example = Path(next(p for paths in by_class.values() for p in paths)).name
        raise DatasetError(f"--group-by '{pattern}' matches no file name (e.g. {example}); use a pattern that finds the recording "
                            f"in the name, or one of {', '.join(GROUP_BY_RULES)}")  # fmt: skip
    grouping = Grouping("regex", f"--group-by '{pattern}': files with the same match stay in one split", groups)
    if unmatched:
        grouping.warnings.append(f"--group-by '{pattern}' matches no group in {len(unmatched)} file(s) (e.g. {Path(unmatched[0]).name}): each is its own group")
    return grouping


class _TooSlow(Exception):
    """Raised into a block that ran past its time."""


@contextlib.contextmanager
def _stopped_after(seconds: float) -> Iterator[None]:
    """Raise _TooSlow in the block after ``seconds``: Python's ``re`` checks for signals while it backtracks,
    so a SIGALRM stops a pattern that would not end. Signals reach only the main thread: elsewhere, and
    where there is no setitimer (Windows), the block runs without a limit."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise _TooSlow

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _relative_name(path: str, cls: str) -> str:
    """``path`` inside its class folder, the last folder named ``cls`` on the path ("fist/clip07/0001.jpg" -> "clip07/0001.jpg")."""
    parts = Path(path).parts
    folders = parts[:-1]
    if cls not in folders:
        return parts[-1]
    inside = len(folders) - folders[::-1].index(cls)  # the index after the class folder
    return "/".join(parts[inside:])


def _coverage(grouping: Grouping, by_class: dict[str, list[str]]) -> float:
    total = sum(len(paths) for paths in by_class.values())
    grouped = sum(1 for cls in grouping.groups.values() for path, key in cls.items() if key != path)
    return grouped / total if total else 0.0


def _looks_grouped(grouping: Grouping) -> bool:
    if grouping.rule == "folders":  # fewer than 3 per class: one wrapper folder ("fist/images/"), or no folder left for train, val or test
        return all(len(set(members.values())) >= 3 for members in grouping.groups.values())
    if grouping.rule != "frames":
        return True
    stems = Counter((cls, key.rsplit("#", 1)[0]) for cls, members in grouping.groups.items() for path, key in members.items() if key != path)
    files = sum(stems.values())
    return bool(stems) and files / len(stems) >= MIN_FRAMES_PER_STEM


def grouped_split(
    by_class: dict[str, list[str]],
    grouping: Grouping,
    *,
    val_split: float,
    test_split: float,
    test_per_class: int | None,
    seed: int,
) -> dict[str, dict[str, list[str]]]:
    """{split: {class: paths}}: per class, a seeded shuffle of whole groups, then test / val / train.

    Each held-out split takes groups while that brings its count closer to its share (at least one
    group when the share is not zero); train keeps the rest. Single-group classes are split in file
    order and recorded in ``grouping.warnings``.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, list[str]]] = {"train": {}, "val": {}, "test": {}}
    single: list[str] = []
    unmeasured: list[str] = []
    too_few: list[str] = []
    thin: list[str] = []  # classes whose held-out recordings leave training under half of their images
    for cls, paths in by_class.items():
        n_test = test_per_class if test_per_class is not None else round(test_split * len(paths))
        n_val = round(val_split * len(paths))
        if n_test + n_val >= len(paths):
            raise DatasetError(f"class {cls!r} has {len(paths)} images, too few for {n_test} test + {n_val} val + at least 1 train")
        if (test_per_class if test_per_class is not None else test_split) and not n_test:
            unmeasured.append(f"{cls} ({len(paths)})")
        members = _members(paths, grouping.groups[cls])
        if len(members) == 1 and n_test + n_val:
            single.append(cls)
            ordered = _file_order(paths)
            cut_train, cut_val = len(ordered) - n_test - n_val, len(ordered) - n_test
            out["train"][cls], out["val"][cls], out["test"][cls] = ordered[:cut_train], ordered[cut_train:cut_val], ordered[cut_val:]
            continue
        keys = [list(members)[i] for i in rng.permutation(len(members))]
        if len(keys) < 1 + bool(n_test) + bool(n_val):
            too_few.append(f"{cls} ({len(keys)})")
            continue
        out["test"][cls], keys = _take(keys, members, n_test, keep=1 + bool(n_val))
        out["val"][cls], keys = _take(keys, members, n_val, keep=1)
        out["train"][cls] = [p for key in keys for p in members[key]]
        if len(out["train"][cls]) < len(paths) / 2:
            thin.append(f"{cls} ({len(out['train'][cls])} of {len(paths)})")
    if too_few:  # every class at once: the first alone was named, and the next run stopped at the second
        raise DatasetError(_too_few_groups(too_few, grouping))
    if single:
        grouping.warnings.append(f"one recording (group) in class(es) {some_of(single)}: no honest split is possible, so their "
                                 "val and test are the last frames of that recording; record another session for a true test")  # fmt: skip
    if thin:  # three sessions a class, the README's least, train on one: val and test take a whole recording each
        grouping.warnings.append(f"class(es) {some_of(thin)} train on under half of their images: validation and test take whole "
                                 "recordings; record more sessions for more training images")  # fmt: skip
    if unmeasured:
        grouping.warnings.append(f"class(es) with too few images to hold one out for the test: {some_of(unmeasured)}; the model "
                                 f"learns them, but no figure measures them (add images: {test_split:.0%} of a class is its test)")  # fmt: skip
    return out


def _members(paths: list[str], groups: dict[str, str]) -> dict[str, list[str]]:
    members: dict[str, list[str]] = {}
    for path in paths:
        members.setdefault(groups[path], []).append(path)
    return members


def _file_order(paths: list[str]) -> list[str]:
    """Running-number order where names are numbered (frame 9 before frame 10), else name order."""
    numbered = running_numbers(_name(p) for p in paths)

    def key(path: str):
        stem, number = numbered.get(_name(path), (_name(path), -1))
        return stem, number, path

    return sorted(paths, key=key)


def _take(keys: list[str], members: dict[str, list[str]], wanted: int, keep: int) -> tuple[list[str], list[str]]:
    """(paths of the groups taken for ``wanted`` images, keys left): groups in ``keys``' order while each brings
    the count closer to ``wanted``, leaving at least ``keep`` groups for the splits after. The first is the first
    group that fits (the smallest, where none does): recordings of 60 and 3 frames took the 60 for a validation of
    7 and left the class no training group, or trained on 15 frames and validated on 138."""
    if not wanted:
        return [], keys
    fitting = [key for key in keys if len(members[key]) / 2 <= wanted]
    first = fitting[0] if fitting else min(keys, key=lambda key: len(members[key]))
    keys = [first] + [key for key in keys if key != first]
    taken: list[str] = []
    for i, key in enumerate(keys):
        if len(keys) - i <= keep or (taken and len(taken) + len(members[key]) / 2 > wanted):
            return taken, keys[i:]
        taken += members[key]
    return taken, []


def _too_few_groups(classes: list[str], grouping: Grouping) -> str:
    return (f"class(es) {some_of(classes)} have too few groups ({grouping.rule}) for a test group, a validation group and a "
            "training group: add recordings, lower --val-split or --test-split (0 turns one off), or choose another --group-by")  # fmt: skip
