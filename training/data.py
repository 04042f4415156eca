"""Finding images, splitting them reproducibly, and feeding them to the model.

Layouts: ``ROOT/<class>/<img>`` (ImageFolder) or pre-split ``ROOT/{train,val,test}/<class>/<img>``.
A folder is scanned once: each file's header is probed (no full decode) so non-images, 0-byte and
truncated files are skipped up front and reported, never crashing a run hours later.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import stat
import unicodedata
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from gesture_core.class_names import as_latin, class_name, escape_unshown, mixed_scripts, name_key, names_unwritable, some_of
from gesture_core.images import (
    IMAGE_SUFFIXES,
    PHOTO_FILE_SUFFIXES,
    PHOTO_SUFFIXES_NOT_DECODED,
    SUPPORTED,
    TRUNCATED_JPEG,
    VIDEO_FILE_SUFFIXES,
    VIDEO_FRAME_EVERY,
    ImageDecodeError,
    check_dimensions,
    decode_rgb,
    jpeg_is_complete,
    probe_image,
    read_image_file,
    unsupported_format,
)
from gesture_core.interrupts import STOP_SIGNALS
from training.duplicates import copies_warnings, identical_sets, keep_copies_together
from training.grouping import DatasetError, assign_groups, grouped_split

VIDEO_TO_FRAMES = "python -m service.webcam.capture --source VIDEO --headless --label CLASS --out DATASET"
SPLITS = ("train", "val", "test")
# The folder names a pre-split dataset may give each split: Roboflow exports train/valid/test, and Keras
# examples use validation/. Training reads them as train, val and test.
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
# What an OS, an archiver or a NAS writes among photos without a leading dot, and is never a class or a
# photo of one. They are passed over like hidden ones (.DS_Store, .ipynb_checkpoints, .Trashes) and
# listed as ignored. A zip made on macOS holds __MACOSX/ beside the class folders, which trained as a
# class of its own (or stopped the run as an empty one); Synology writes @eaDir/ into every photo
# folder with smaller JPEG copies of each photo, which trained as more photos of the class and
# leaked across splits. Matched without regard to case, as Windows and macOS name them.
SYSTEM_FOLDERS = {name.casefold(): reason for names, reason in (
    (("__MACOSX",), "macOS archive metadata"),
    (("@eaDir", "#recycle", "#snapshot", "@Recycle", "@Recently-Snapshot"), "NAS thumbnails or recycle bin (Synology, QNAP)"),
    (("$RECYCLE.BIN", "System Volume Information", "RECYCLER", "lost+found"), "drive's system folder"),
    (("__pycache__",), "Python cache"),
) for name in names}
SYSTEM_FILES = {name.casefold(): "Windows folder thumbnails or settings" for name in ("Thumbs.db", "ehthumbs.db", "desktop.ini")}


@dataclass(frozen=True)
class Sample:
    path: str
    label: int


@dataclass
class Splits:
    root: str
    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}
    layout: str = "imagefolder"
    grouping: dict = field(default_factory=dict)  # training.grouping.Grouping.to_json(): rule, description, warnings

    def counts(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in SPLITS}

    def to_json(self) -> dict:
        rel = lambda samples: [[os.path.relpath(s.path, self.root), s.label] for s in samples]  # noqa: E731
        return {
            "root": os.path.abspath(self.root),
            "layout": self.layout,
            "classes": self.classes,
            **{name: rel(getattr(self, name)) for name in SPLITS},
            "skipped": self.skipped,
            "grouping": self.grouping,
        }

    @classmethod
    def from_json(cls, d: dict, root: str | None = None) -> Splits:
        root, classes = root or d["root"], d["classes"]
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise TypeError(f"classes must be a list of names, got {classes!r:.80}")

        def load(name: str) -> list[Sample]:
            samples = [Sample(os.path.join(root, p), int(y)) for p, y in d[name]]
            if wrong := [s for s in samples if not 0 <= s.label < len(classes)]:  # -1 was left out unsaid, 99 a reshape error
                raise ValueError(f"{name} lists {wrong[0].path} with label {wrong[0].label}, not one of the {len(classes)} classes' 0-{len(classes) - 1}")
            return samples

        return cls(root, classes, load("train"), load("val"), load("test"), d.get("skipped", []), d["layout"], d.get("grouping", {}))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path: Path) -> Splits:
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError) as err:
            raise DatasetError(f"{path} is not a split file written by training.finetune ({type(err).__name__}: {err})") from None


def unreadable(paths: Iterable[str]) -> list[str]:
    """The files among ``paths`` this process cannot open: moved or deleted since the split was made,
    or, on another machine, not at the path rank 0 found them."""
    return [p for p in paths if not os.access(p, os.R_OK)]


def check_split_readable(samples: Sequence[Sample], what: str, split_file: Path, hint: str) -> None:
    """A DatasetError when not one of a saved split's images can be opened any more: each would be
    skipped as a failed decode, and the command would go on with nothing."""
    if samples and len(missing := unreadable(s.path for s in samples)) == len(samples):
        raise DatasetError(f"none of the {len(samples):,} {what} images {split_file} lists can be opened (e.g. {missing[0]}): "
                           f"moved since training? {hint}")


def warn_of_images_gone(splits: Splits, split_file: Path) -> frozenset[str]:
    """A resumed run skips the images of its split that were moved or deleted since; said at start-up, with
    the split each was in, where each would only be one more failed decode in the final report. Returns them."""
    gone = {name: missing for name in SPLITS if (missing := unreadable(s.path for s in getattr(splits, name)))}
    if gone:
        counts = ", ".join(f"{len(missing):,} of {len(getattr(splits, name)):,} {name}" for name, missing in gone.items())
        example = next(iter(gone.values()))[0]
        warnings.warn(f"images {split_file} lists cannot be opened any more ({counts}; e.g. {example}): moved or deleted since "
                      "the split, they are skipped", stacklevel=2)
    return frozenset(path for missing in gone.values() for path in missing)


def warn_of_classes_added(splits: Splits, split_file: Path) -> None:
    """A resumed run trains on the split it started with: a class folder, or images in a class folder, added
    since were left out without a word. Said, so the user can start a new run to train them."""
    root = Path(splits.root)
    try:
        folders = split_folders(root) if splits.layout == "presplit" else {"train": root}
    except DatasetError:
        return
    known = set(splits.classes)
    if added := sorted({class_name(d.name) for d in _class_folders(folders["train"])} - known):
        warnings.warn(f"{folders['train']} has class folder(s) {some_of(added)} that {split_file} does not know: a resumed run trains on "
                      "the split it started with; start a new run to train them", stacklevel=2)
    listed = {os.path.normpath(s.path) for name in SPLITS for s in getattr(splits, name)}
    known_folders = [d for folder in folders.values() for d in _class_folders(folder) if class_name(d.name) in known]
    unlisted = set(_image_names(known_folders)) - listed  # few: only these are read, and those skipped at the split still fail
    if new := sorted(path for path in unlisted if check_image_file(path) is None):
        warnings.warn(f"{len(new):,} image(s) in class folders that {split_file} does not list (e.g. {new[0]}), added since the "
                      "split: a resumed run trains and tests on the split it started with; start a new run to use them", stacklevel=2)


def _class_folders(folder: Path) -> list[Path]:
    return [d for d in _subfolders(folder) if not passed_over(d.name, folder=True)]


def _image_names(class_folders: Iterable[Path]) -> Iterator[str]:
    """Every file with an image extension under ``class_folders``, by name alone (nothing is read)."""
    for folder in class_folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = [d for d in dirnames if not passed_over(d, folder=True)]
            yield from (os.path.normpath(os.path.join(dirpath, n)) for n in filenames
                        if Path(n).suffix.lower() in IMAGE_SUFFIXES and not passed_over(n, folder=False))


def is_presplit(root: Path) -> bool:
    """True for ``ROOT/{train,val,test}/<class>/<img>`` (val optional, or valid/ or validation/), False
    for a plain ImageFolder."""
    return {"train", "test"} <= {d.name.lower() for d in _subfolders(root)}


def splits_inside_classes(root: Path) -> str | None:
    """A warning where every class folder of ``root`` holds its own train/ and test/ (``fist/train/``): the
    layout turned inside out. Each class's images are then split again, and the folders' split is lost."""
    folders = _class_folders(root)
    if len(folders) < 2 or not all(is_presplit(folder) for folder in folders):
        return None
    train, test = (next(d.name for d in _subfolders(folders[0]) if d.name.lower() == split) for split in ("train", "test"))
    return (f"every class folder holds its own {train}/ and {test}/ (e.g. {folders[0].name}/{train}/): they are read as one "
            "set of images per class and split again here; for the folders' own split, make it train/<class>/ and "
            "test/<class>/ (docs/datasets.md)")


def _subfolders(root: Path) -> list[Path]:
    """The folders in ``root``, by name. A split folder is found whatever its case: Kaggle's Train/ and Test/
    were trained as two classes named Train and Test, on Linux alone (macOS and Windows match names either way)."""
    return sorted(d for d in root.iterdir() if d.is_dir()) if root.is_dir() else []


def split_folders(root: Path) -> dict[str, Path]:
    """{split: its folder} of a pre-split ``root``, val/ as any of its names (``SPLIT_FOLDERS``); a
    DatasetError where two folders claim one split, as neither can be the one meant."""
    found = {}
    for split, names in SPLIT_FOLDERS.items():
        if len(present := [d for d in _subfolders(root) if d.name.lower() in names]) > 1:
            raise DatasetError(f"{root}: {' and '.join(f'{p.name}/' for p in present)} are both a {split} split: merge them into one, "
                               "or move one away")
        if present:
            found[split] = present[0]
    return found


def passed_over(name: str, *, folder: bool) -> str | None:
    """Why a file or folder of this name is never read as a class or an image ("hidden folder", "macOS
    archive metadata", ...), or None for one that is."""
    if name.startswith("."):
        return "hidden folder" if folder else "hidden file"
    return (SYSTEM_FOLDERS if folder else SYSTEM_FILES).get(name.casefold())


def scan_class_folders(root: Path, skipped: list[dict[str, str]], ignored: list[dict[str, str]] | None = None) -> dict[str, list[str]]:
    """{class name: [valid image paths]}; invalid files are appended to ``skipped``.

    ``ignored`` (optional) collects what is passed over silently: hidden and system files and folders
    (``passed_over``), and symlinked folders (never followed).
    """
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder")
    entries = list(root.iterdir())
    if ignored is not None:
        _note_ignored(str(root), [d.name for d in entries if d.is_dir() and not d.is_symlink()], [f.name for f in entries if not f.is_dir()], ignored)
    folders = sorted(d.name for d in entries if d.is_dir() and not passed_over(d.name, folder=True))
    note_broken_links(root, skipped)
    if not folders:
        raise DatasetError(f"{root} has no class folders; expected {root}/<class>/<image> (ImageFolder layout)"
                           + (a_class_folder_hint(root, entries) or videos_hint(entries) or archives_hint(entries)))
    if unwritable := names_unwritable(folders):
        raise DatasetError(f"{root}: class folder name(s) {unwritable}: rename them")
    if overlap := linked_into_each_other(root, folders):
        raise DatasetError(overlap)
    first_skipped = len(skipped)
    by_class: dict[str, list[str]] = {}
    spellings: dict[str, list[str]] = {}
    for folder in folders:
        name = class_name(folder)
        spellings.setdefault(name, []).append(folder)
        by_class.setdefault(name, []).extend(_valid_images(root / folder, skipped, ignored))
    if merged := [name for name, found in spellings.items() if len(found) > 1]:
        warnings.warn(f"{root}: class folder(s) {', '.join(merged)} exist in two Unicode spellings (composed and decomposed, as macOS "
                      "writes names), which look the same: each is read as one class, with the images of both", stacklevel=2)
    _require_more_images_than_videos(root, by_class, skipped[first_skipped:])
    return dict(sorted(by_class.items()))


def _require_more_images_than_videos(root: Path, by_class: dict[str, list[str]], skipped: list[dict[str, str]]) -> None:
    """A DatasetError where the images are no more than the videos skipped beside them: a cover photo in each class
    folder of recordings had the videos skipped (a folder of videos alone is read frame by frame), and a run
    trained on the five covers alone."""
    videos = sum(Path(entry["path"]).suffix.lower() in VIDEO_FILE_SUFFIXES for entry in skipped)
    images = [os.path.relpath(path, root) for paths in by_class.values() for path in paths]
    if images and len(images) <= videos:
        raise DatasetError(f"{root} holds {videos} video(s) and {len(images)} image(s) ({some_of(images)}): the videos' frames are "
                           f"read only where no image is beside them; move the images out, or save the frames as images ({VIDEO_TO_FRAMES})")


def linked_into_each_other(root: Path, folders: list[str]) -> str | None:
    """Why class folders that are links cannot be read as classes, or None: one that leads to the dataset
    folder (or above it) would hold every class's images, and two that lead to one folder (or one inside
    the other) would give each image two labels. A link to a folder elsewhere (another drive) is a class."""
    links = [folder for folder in folders if (root / folder).is_symlink()]
    if not links:  # folders of their own: neither holds another
        return None
    real = {folder: Path(os.path.realpath(root / folder)) for folder in folders}
    top = Path(os.path.realpath(root))
    for link in links:
        if top.is_relative_to(real[link]):
            return (f"{root}: class folder {link!r} is a link to {real[link]}, the dataset folder or one above it: it would hold every "
                    "class's images, each with a second label; remove the link")
        for other, target in real.items():
            if other != link and (real[link].is_relative_to(target) or target.is_relative_to(real[link])):
                return (f"{root}: class folder {link!r} is a link to {real[link]}, which is class folder {other!r} or holds or lies in it: "
                        "their images would have two labels each; remove the link, or make it a folder of its own")
    return None


def a_class_folder_hint(root: Path, entries: list[Path]) -> str:
    """"; it holds N images itself, as a class folder does: the dataset is the folder above it" for a
    class folder given as the dataset (``--data my-gestures/fist``), or ""."""
    images = sum(path.suffix.lower() in IMAGE_SUFFIXES and not passed_over(path.name, folder=False) for path in entries)
    if not images:
        return ""
    siblings = [d.name for d in root.resolve().parent.iterdir() if d.is_dir() and not passed_over(d.name, folder=True)]
    above = f", {root.resolve().parent}, whose folders {', '.join(sorted(siblings)[:5])}{' …' if len(siblings) > 5 else ''} are the classes"
    return f"; it holds {images:,} image(s) itself, as a class folder does: the dataset is the folder above it{above if len(siblings) > 1 else ''}"


def a_dataset_folder_hint(root: Path, images: list[str]) -> str:
    """"; its sub-folders A, B hold its images: if they are the classes, the dataset is ROOT/FOLDER" for
    a dataset given one level too high (``--data datasets`` holding ``my-gestures/<class>/``), or ""."""
    parts = [Path(os.path.relpath(path, root)).parts for path in images]
    inner = sorted({(p[0], p[1]) for p in parts if len(p) > 2})  # (the one class folder, a sub-folder) as they are on disk
    if len(inner) < 2:
        return ""
    names = [sub for _, sub in inner]
    return (f"; its sub-folders {', '.join(names[:5])}{' …' if len(names) > 5 else ''} hold its images: if they are the classes, "
            f"the dataset is {root / inner[0][0]}")


def note_broken_links(root: Path, skipped: list[dict[str, str]]) -> None:
    """A symlink in the dataset folder whose target is gone (an unmounted drive, a moved folder) is
    most likely a class folder: it is skipped like a bad file, and said at start-up, since a run
    without it trains a model that lacks a whole class."""
    broken = sorted(d for d in root.iterdir() if d.is_symlink() and not d.exists() and not passed_over(d.name, folder=True))
    for link in broken:
        skipped.append({"path": printable_path(str(link)), "reason": f"broken symlink: its target {printable_path(os.readlink(link))} does not exist"})
    if broken:
        warnings.warn(f"{root}: {len(broken)} broken symlink(s), not read (a class folder on an unmounted drive?): "
                      f"{', '.join(printable_path(d.name) for d in broken[:5])}{' …' if len(broken) > 5 else ''}", stacklevel=3)


def scan_images(root: Path, skipped: list[dict[str, str]]) -> list[str]:
    """Every valid image under ``root``, whatever the layout: directly in it, in class folders, or
    deeper; invalid files are appended to ``skipped``. A symlinked folder directly in ``root`` is
    followed (as scan_class_folders follows a symlinked class folder); deeper ones are not."""
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder")
    linked = sorted(d for d in root.iterdir() if d.is_symlink() and d.is_dir() and not passed_over(d.name, folder=True))
    found = _valid_images(root, skipped) + [path for folder in linked for path in _valid_images(folder, skipped)]
    if not found:
        raise DatasetError(no_images(root, skipped, "in it and its subfolders"))
    return found


def no_images(root: Path, skipped: list[dict[str, str]], where: str) -> str:
    """Why a dataset has nothing to train on, and what to do with the videos it holds, if any."""
    if note := skipped_images_note(skipped):  # "no images found" beside a folder of .png files did not say why
        return f"{root}: no usable images {where}{note}" + videos_hint([entry["path"] for entry in skipped])
    return (f"{root}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))}, {where})"
            + videos_hint([entry["path"] for entry in skipped]))


def skipped_images_note(skipped: list[dict[str, str]]) -> str:
    """": N image file(s) skipped, e.g. PATH: REASON" for the image files among ``skipped``, or ""."""
    images = [entry for entry in skipped if Path(entry["path"]).suffix.lower() in PHOTO_FILE_SUFFIXES]
    return f": {len(images)} image file(s) skipped, e.g. {images[0]['path']}: {images[0]['reason']}" if images else ""


# The dataset archives --data takes (training.prepare.prepare_archive unpacks them).
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def archives_hint(paths: list[str] | list[Path]) -> str:
    """Where a folder with no class folders holds a dataset archive: pass that file instead."""
    archives = sorted(Path(path) for path in paths if Path(path).name.lower().endswith(ARCHIVE_SUFFIXES) and Path(path).is_file())
    if not archives:
        return ""
    which = f"the archives {', '.join(a.name for a in archives[:3])}: pass one of them" if len(archives) > 1 else f"the archive {archives[0].name}: pass it"
    return f"; it holds {which} instead ({archives[0]}), to be unpacked into datasets/"


def videos_hint(paths: list[str] | list[Path]) -> str:
    """What to do with the videos of a folder that --data could not read as recordings (they lie beside
    the class folders, or among photos): sort them, or save their frames."""
    videos = sum(Path(path).suffix.lower() in VIDEO_FILE_SUFFIXES for path in paths)
    return (f"; it holds {videos} video file(s): put them in one folder per class (<class>/take1.mp4), with no photo beside "
            f"them, and --data reads every {VIDEO_FRAME_EVERY}th frame of each; or save their frames as images ({VIDEO_TO_FRAMES}, for each)") if videos else ""


def _valid_images(folder: Path, skipped: list[dict[str, str]], ignored: list[dict[str, str]] | None = None) -> list[str]:
    found = []
    def unreadable_folder(err: OSError) -> None:  # os.walk skips it silently: a class folder one may not read looked empty
        skipped.append({"path": printable_path(str(err.filename)), "reason": f"unreadable folder: {err.strerror}"})

    # followlinks=False: a symlink loop cannot recurse forever.
    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable_folder, followlinks=False):
        if ignored is not None:
            _note_ignored(dirpath, dirnames, filenames, ignored)
        dirnames[:] = sorted(d for d in dirnames if not passed_over(d, folder=True))
        for name in sorted(filenames):
            if passed_over(name, folder=False):
                continue
            path = os.path.join(dirpath, name)
            reason = check_image_file(path)
            if reason is None:
                found.append(path)
            else:
                skipped.append({"path": printable_path(path), "reason": reason})
    return found


def _note_ignored(dirpath: str, dirnames: list[str], filenames: list[str], ignored: list[dict[str, str]]) -> None:
    for name in dirnames:
        path = os.path.join(dirpath, name)
        if reason := passed_over(name, folder=True):
            ignored.append({"path": printable_path(path), "reason": reason})
        elif os.path.islink(path):
            ignored.append({"path": printable_path(path), "reason": "symlinked folder (not followed)"})
    ignored.extend({"path": printable_path(os.path.join(dirpath, n)), "reason": reason}
                   for n in filenames if (reason := passed_over(n, folder=False)))


def check_image_file(path: str) -> str | None:
    """None if ``path`` looks like a decodable image, else the reason it is skipped."""
    suffix = Path(path).suffix.lower()
    if suffix in VIDEO_FILE_SUFFIXES:
        return f"a video: save its frames as images first ({VIDEO_TO_FRAMES}; docs/datasets.md)"
    if suffix in PHOTO_SUFFIXES_NOT_DECODED:
        return unsupported_format(PHOTO_SUFFIXES_NOT_DECODED[suffix], f"save it as JPEG or PNG first ({SUPPORTED} are read)")
    if suffix not in IMAGE_SUFFIXES:
        return "not an image file extension"
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return "not a regular file (FIFO, socket or device)"  # opening a FIFO would block forever
        data = read_image_file(path)
    except OSError as err:
        return f"unreadable: {err.strerror or err}"
    except ImageDecodeError as err:
        return str(err)
    if not data:
        return "empty file (0 bytes)"
    try:
        fmt, (width, height) = probe_image(data)
        check_dimensions(width, height)
        if fmt == "JPEG" and not jpeg_is_complete(data):
            return TRUNCATED_JPEG
    except ImageDecodeError as err:
        return str(err)
    return None


def printable_path(path: str) -> str:
    """``path`` as reports print it: a non-UTF-8 name made valid (JSON must hold it), and the characters
    of ``UNSHOWN`` written as escapes (``\\n``, ``\\x1b``, ``\\u202e``)."""
    text = path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return escape_unshown(text)


def empty_classes_problem(root: Path, empty: list[str]) -> str:
    """What is wrong with class folders that gave no image: unreadable to this user (os.walk saw them as
    empty, and "add images" was the advice), or empty of usable images."""
    if unreadable := [c for c in empty if (root / c).is_dir() and not os.access(root / c, os.R_OK | os.X_OK)]:
        return f"class folder(s) this user cannot read: {', '.join(unreadable)} (Permission denied): give read access (chmod -R a+rX) or remove them"
    return f"class folder(s) with no usable images: {', '.join(empty)} (training refuses them: remove them or add images)"


def refuse_a_run_folder(root: Path) -> None:
    """A DatasetError for a training run's folder given as the data: it trained on its report folders
    (eval-*, visualize-*) as classes, with no validation or test images, and exited 0."""
    if (root / "config.json").is_file() and (root / "best.pt").is_file():
        trained_on = ""
        with contextlib.suppress(OSError, ValueError, AttributeError):
            if data := json.loads((root / "config.json").read_text()).get("data"):
                trained_on = f" ({data})"
        raise DatasetError(f"{root} is a training run's folder (best.pt, config.json), not a dataset: pass the dataset "
                           f"it was trained on{trained_on}, a folder of class folders")


def _to_samples(by_class: dict[str, list[str]], classes: list[str]) -> list[Sample]:
    index = {c: i for i, c in enumerate(classes)}
    return [Sample(p, index[c]) for c, paths in by_class.items() for p in paths]


def _require_trainable(by_class: dict[str, list[str]], root: Path) -> None:
    empty = [c for c, paths in by_class.items() if not paths]
    if empty:
        raise DatasetError(f"{root}: {empty_classes_problem(root, empty)}")
    if len(by_class) < 2:
        raise DatasetError(f"{root}: only one class ({', '.join(by_class)}); a classifier needs at least two class folders"
                           + a_dataset_folder_hint(root, [path for paths in by_class.values() for path in paths]))


def load_splits(
    root: str | os.PathLike,
    *,
    val_split: float = 0.1,
    test_split: float = 0.2,
    test_per_class: int | None = None,
    seed: int = 0,
    group_by: str = "auto",
) -> Splits:
    """Scan ``root`` and split it per class, by group (training.grouping: ``group_by`` is a rule or a regex)."""
    root = Path(root)
    refuse_a_run_folder(root)
    skipped: list[dict[str, str]] = []
    if is_presplit(root):
        if beside := folders_beside_splits(root):  # most likely a class meant for train/: the model would lack it
            warnings.warn(f"{root}: folder(s) {', '.join(beside)} beside train/ and test/ are not read: a pre-split layout takes its "
                          "classes from train/, val/ and test/ only", stacklevel=2)
        if test_per_class is not None:
            warnings.warn(f"{root} is pre-split: its test/ folder is the test set, and --test-per-class {test_per_class} is not used", stacklevel=2)
        folders = split_folders(root)
        parts = {s: scan_class_folders(folder, skipped) for s, folder in folders.items()}
        classes = sorted(parts["train"])
        _require_trainable(parts["train"], folders["train"])
        _warn_of_names_alike(classes, folders["train"])
        _check_same_classes(parts, classes, root)
        grouping = assign_groups(parts["train"], group_by)
        copies = identical_sets(path for by_class in parts.values() for paths in by_class.values() for path in paths)
        moved: list[tuple[str, str]] = []
        if "val" not in parts:
            carved = grouped_split(parts["train"], grouping, val_split=val_split, test_split=0.0, test_per_class=None, seed=seed)
            moved = keep_copies_together(carved, copies)  # only the val carved here; the folder's own test/ stays as it is
            parts["train"], parts["val"] = carved["train"], carved["val"]
        grouping.warnings += copies_warnings(parts, copies, moved, root, presplit=True)
        samples = {s: _to_samples(parts[s], classes) for s in SPLITS}
        return Splits(str(root), classes, samples["train"], samples["val"], samples["test"], skipped, "presplit", grouping.to_json())
    by_class = scan_class_folders(root, skipped)
    if not any(by_class.values()):
        raise DatasetError(no_images(root, skipped, "in its class folders"))
    _require_trainable(by_class, root)
    classes = sorted(by_class)
    _warn_of_names_alike(classes, root)
    if split_named := sorted(set(classes) & set(SPLITS)):  # half a pre-split layout: trained as a class, without a word
        warnings.warn(f"{root} has class folder(s) named {', '.join(split_named)}, trained as classes: a pre-split layout "
                      f"needs both train/ and test/ (docs/datasets.md)", stacklevel=2)
    if inside_out := splits_inside_classes(root):
        warnings.warn(f"{root}: {inside_out}", stacklevel=2)
    grouping = assign_groups(by_class, group_by)
    parts = grouped_split(by_class, grouping, val_split=val_split, test_split=test_split, test_per_class=test_per_class, seed=seed)
    copies = identical_sets(path for paths in by_class.values() for path in paths)
    grouping.warnings += copies_warnings(parts, copies, keep_copies_together(parts, copies), root, presplit=False)
    samples = {s: _to_samples(parts[s], classes) for s in SPLITS}
    return Splits(str(root), classes, samples["train"], samples["val"], samples["test"], skipped, "imagefolder", grouping.to_json())


def names_alike(classes: Iterable[str]) -> list[list[str]]:
    """Groups of class names that are one name once case, spaces, '-', '_' and '.' are left out: "palm"
    and "palm " (a trailing space, unseen in every table), "thumbs_up", "thumbs-up" and "ThumbsUp",
    "Fist" and "fist", "ｆｉｓｔ" (fullwidth, as an East Asian keyboard types it) and "fist", and "fіst" (a
    Ukrainian і) and "fist". Each is trained as a class of its own, most likely one gesture in two folders."""
    return names_grouped(classes, alike_key)


def alike_key(name: str) -> str:
    """``name`` without case, spaces and separators, fullwidth forms and look-alike letters as plain Latin."""
    wide = as_latin(unicodedata.normalize("NFKC", name_key(name)))
    return re.sub(r"[\s_.-]+", "", wide) or wide


def names_grouped(classes: Iterable[str], key: Callable[[str], str]) -> list[list[str]]:
    """The groups of two or more class names that ``key`` makes one, in the order they come."""
    groups: dict[str, list[str]] = {}
    for name in classes:
        groups.setdefault(key(name), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def _warn_of_names_alike(classes: list[str], root: Path) -> None:
    if alike := names_alike(classes):
        warnings.warn(f"{root}: class folders {'; '.join(' and '.join(map(repr, names)) for names in alike)} differ only in case, "
                      "spaces, separators, character width or look-alike letters: each is trained as a class of its own (one gesture in "
                      "two folders?); rename one to the other", stacklevel=3)
    if mixed := mixed_script_names(classes):
        warnings.warn(f"{root}: {mixed}", stacklevel=3)


def mixed_script_names(classes: Iterable[str]) -> str | None:
    """A warning naming the class names that mix Latin, Cyrillic and Greek letters ("fіst"), or None."""
    if mixed := [f"{name!r} ({how})" for name in classes if (how := mixed_scripts(name))]:
        return (f"class name(s) {some_of(mixed)} mix alphabets: a letter from another keyboard layout that looks Latin makes a "
                "name that a typed one (--reject-class, an API client) never matches; retype it")
    return None


def folders_beside_splits(root: Path) -> list[str]:
    """The folders of a pre-split ``root`` other than train/, val/ and test/ (hidden and system ones aside)."""
    names = {name for names in SPLIT_FOLDERS.values() for name in names}
    return sorted(d.name for d in _subfolders(root) if d.name.lower() not in names and not passed_over(d.name, folder=True))


def classes_missing_from_train(classes_by_split: Mapping[str, Iterable[str]], root: Path) -> list[str]:
    """Why a pre-split folder cannot be trained on: a val/ or test/ class that train/ lacks (training.check says the same)."""
    train, folders = set(classes_by_split["train"]), split_folders(root)
    return [f"{folders.get(name, root / name)} has classes missing from {root}/train: {', '.join(sorted(set(names) - train))}"
            for name, names in classes_by_split.items() if set(names) - train]  # fmt: skip


def _check_same_classes(parts: dict[str, dict[str, list[str]]], classes: list[str], root: Path) -> None:
    if missing := classes_missing_from_train(parts, root):
        raise DatasetError(missing[0])
    folders = split_folders(root)
    for name, by_class in parts.items():
        if absent := [c for c in classes if not by_class.get(c)]:
            unseen = "the model is chosen and calibrated without them" if name == "val" else "the test does not measure them"
            warnings.warn(f"{folders[name]} has no images of {', '.join(absent)}: {unseen}", stacklevel=3)


def load_folder(root: str | os.PathLike, classes: Sequence[str]) -> tuple[list[Sample], list[dict[str, str]]]:
    """Every image of an ImageFolder, labelled with a model's class list (for evaluating a checkpoint)."""
    skipped: list[dict[str, str]] = []
    by_class = scan_class_folders(Path(root), skipped)
    unknown = sorted(set(by_class) - set(classes))
    if unknown:
        model_spelling = {alike_key(name): name for name in classes}
        alike = [f"{name!r} is {model_spelling[alike_key(name)]!r}" for name in unknown if alike_key(name) in model_spelling]
        hint = f"; spelt otherwise: {', '.join(alike)} in the model (rename the folders)" if alike else ""
        raise DatasetError(f"{root} has classes the model does not know: {', '.join(unknown)} (model classes: {', '.join(classes)}){hint}")
    return _to_samples({c: p for c, p in by_class.items()}, list(classes)), skipped


class ImageDataset(Dataset):
    """Decodes one sample and applies ``transform(rgb, seed)``.

    Items are indices or (index, seed) pairs from ``SeededSampler``: the per-sample seed makes
    augmentation reproducible whatever the number of workers, which is what makes --resume exact.
    A file that still fails to decode yields label -1 (ignored by the loss) and is reported.
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable[[np.ndarray, int], torch.Tensor], *, min_side: int | None = None,
                 placeholder_shape=(3, 224, 224), placeholder_dtype: torch.dtype = torch.float32):
        self.samples = list(samples)
        self.transform = transform
        self.min_side = min_side
        self.placeholder_shape = placeholder_shape
        self.placeholder_dtype = placeholder_dtype  # the transform's, so that a failed file batches with the others

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, index_seed(0, 0, item))
        sample = self.samples[index]
        try:
            return self.transform(decode_file(sample.path, self.min_side), seed), sample.label, index
        except (ImageDecodeError, OSError):
            return torch.zeros(self.placeholder_shape, dtype=self.placeholder_dtype), -1, index


def failure_reports(paths: Sequence[str], min_side: int | None = None) -> list[dict[str, str]]:
    """{"path", "reason"} for files that failed in an ImageDataset's loader. Its workers report only
    an index, so each file is decoded again here (failures are rare) to recover its real reason."""
    return [{"path": path, "reason": decode_failure(path, min_side)} for path in paths]


def decode_file(path: str, min_side: int | None = None) -> np.ndarray:
    return decode_rgb(read_image_file(path), min_side=min_side)


def decodes(path: str, min_side: int | None = None) -> bool:
    """Whether the loader would decode ``path``."""
    try:
        decode_file(path, min_side)
    except (ImageDecodeError, OSError):
        return False
    return True


def decode_failure(path: str, min_side: int | None = None) -> str:
    """Why ``path`` does not decode, as the loader would decode it."""
    try:
        decode_file(path, min_side)
    except ImageDecodeError as err:
        return str(err)
    except OSError as err:
        return f"unreadable: {err.strerror or err}"
    return "failed to decode during the run, decodes now (the file changed meanwhile)"


def index_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * 1_000_003 + epoch * 100_003 + index) % (2**31)


class SeededSampler(Sampler):
    """Yields (index, per-sample seed); the order and seeds depend only on (seed, epoch)."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(index_seed(self.seed, self.epoch, 0))
        order = torch.randperm(self.n, generator=g).tolist() if self.shuffle else range(self.n)
        return iter((i, index_seed(self.seed, self.epoch, i)) for i in order)


def leave_stop_signals_to_the_main_process(worker_id: int) -> None:
    """A data-loading worker ignores SIGTERM and SIGHUP. ``timeout``, systemd and ``kill -- -PGID`` signal the whole
    process group: the workers died of it first, and the main process reported "DataLoader worker killed by signal:
    Terminated: most likely out of memory" (or a traceback) instead of stopping as it does on SIGTERM. The main
    process stops them as at every end; the kernel's out-of-memory killer sends SIGKILL, which no process ignores."""
    for stop in STOP_SIGNALS:
        signal.signal(stop, signal.SIG_IGN)


def make_loader(dataset: ImageDataset, *, batch_size: int, workers: int, sampler: Sampler | None = None, pin_memory: bool = False, drop_last: bool = False) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        # An iterator draws its workers' base seed from this generator, and without one from the global RNG:
        # once per process with persistent workers, so a resumed run's dropout drew differently. The
        # augmentation is seeded per sample (SeededSampler), not by the workers' seed.
        generator=torch.Generator().manual_seed(0),
        worker_init_fn=leave_stop_signals_to_the_main_process,
    )
