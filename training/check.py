"""Check an image dataset before training on it: what is there, and what will go wrong.

    python -m training.check datasets/my-gestures
    python -m training.check ../shared/data/sign-digits --json report.json

Reads the folder exactly as training does (``training.data.scan_class_folders``: the ImageFolder
layout ``ROOT/<class>/<img>`` or the pre-split ``ROOT/{train,val,test}/<class>/<img>``), then
decodes every image once to report classes and counts, the imbalance ratio, corrupt, unreadable
and non-image files, exact duplicates (content hash) within a class, across classes and across
splits (train/test leakage), image sizes and colour modes, and oversized outliers.

Exit status: 0 when the folder can be trained on (warnings or not), 1 for fatal problems (no
images, a single class, a split that training with no flags refuses), 2 for bad arguments (a DIR that is not a folder, as in training).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import statistics
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from gesture_core.class_names import name_key, pad, some_of, terminal_width
from gesture_core.cli import (
    CommandParser,
    check_output_outside_datasets,
    command,
    output_arg,
)
from gesture_core.images import DECODED_FORMATS, ImageDecodeError, decode_rgb, probe_image, read_image_file
from gesture_core.preprocess import TINY_SIDE
from gesture_core.rejection import find_reject_classes
from gesture_core.runtime import MOST_THREADS
from training.calibrate import DEFAULT_TARGET_RECALL, gestures_needed, without_threshold
from training.cli import input_path, int_at_least
from training.config import TrainConfig
from training.data import (
    SPLIT_FOLDERS,
    SPLITS,
    DatasetError,
    a_dataset_folder_hint,
    classes_missing_from_train,
    empty_classes_problem,
    folders_beside_splits,
    is_presplit,
    mixed_script_names,
    names_alike,
    names_grouped,
    passed_over,
    refuse_a_run_folder,
    scan_class_folders,
    split_folders,
    splits_inside_classes,
)
from training.data import printable_path as printable  # non-UTF-8 names, made printable and JSON-safe
from training.grouping import MIN_RECORDINGS, assign_groups, grouped_split, sequences
from training.prepare import read_marker, resolve_data_dir, videos_notes

FEW_IMAGES = 20  # below this a class is too small to learn and to test reliably
IMBALANCE_WARN = 3.0  # max/min class size
OUTLIER_FACTOR = 16  # pixel count this many times the median: a stray full-resolution photo
LARGE_SIDE = 4000
THUMB = 16  # grayscale thumbnail side for comparing neighbouring frames
NEAR_IDENTICAL = 6.0  # mean absolute thumbnail difference (0-255): frames of a still scene; unrelated photos differ by 15+
_DEFAULTS = TrainConfig()
DEFAULT_SPLIT = {"val_split": _DEFAULTS.val_split, "test_split": _DEFAULTS.test_split, "test_per_class": _DEFAULTS.test_per_class, "seed": _DEFAULTS.seed}


@dataclass
class ImageInfo:
    path: str
    split: str
    label: str
    sha256: str = ""
    format: str = ""
    mode: str = ""
    width: int = 0
    height: int = 0
    error: str | None = None
    thumb: np.ndarray | None = None  # THUMB x THUMB grayscale, when decoded


def is_utf8_name(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def inspect_image(path: str, split: str, label: str, *, decode: bool) -> ImageInfo:
    """Hash, header and (unless ``decode`` is False) a full decode of one file the scan accepted."""
    info = ImageInfo(path, split, label)
    try:
        data = read_image_file(path)
        info.sha256 = hashlib.sha256(data).hexdigest()
        info.format, (info.width, info.height) = probe_image(data)
        with Image.open(io.BytesIO(data), formats=DECODED_FORMATS) as img:  # the readers probe_image allowed
            info.mode = img.mode
        if decode:
            # Reduced-size JPEG decoding still reads every byte, so truncation and garbage surface here.
            rgb = decode_rgb(data, min_side=64)
            info.thumb = cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), (THUMB, THUMB), interpolation=cv2.INTER_AREA).astype(np.float32)
    except ImageDecodeError as err:
        info.error = str(err)
    except OSError as err:
        info.error = f"unreadable: {err.strerror or err}"
    return info


def scan(root: Path) -> tuple[str, dict[str, dict[str, list[str]]], list[dict], list[dict]]:
    """(layout, {split: {class: [paths]}}, skipped, ignored) via training.data's scanner."""
    refuse_a_run_folder(root)
    skipped: list[dict] = []
    ignored: list[dict] = []
    if is_presplit(root):
        parts = {s: scan_class_folders(folder, skipped, ignored) for s, folder in split_folders(root).items()}
        return "presplit", parts, skipped, ignored
    return "imagefolder", {"all": scan_class_folders(root, skipped, ignored)}, skipped, ignored


def _stray_entries(root: Path, layout: str) -> list[dict]:
    """Files beside the class folders: training never sees them."""
    splits = split_folders(root) if layout == "presplit" else {}
    tops = list(splits.values()) if layout == "presplit" else [root]
    stray = []
    for top in tops:
        for entry, is_dir in _entries(top):
            if not is_dir and not passed_over(entry.name, folder=False):
                stray.append({"path": printable(entry.path), "reason": "file outside any class folder (not used)"})
    if layout == "presplit":
        for entry, is_dir in _entries(root):
            if entry.name not in {folder.name for folder in splits.values()} and not passed_over(entry.name, folder=is_dir):
                stray.append({"path": printable(entry.path), "reason": "not train/, val/ or test/ (not used)"})
    return stray


def _entries(folder: Path) -> list[tuple[os.DirEntry, bool]]:
    """(entry, is it a folder) by name, leaving out links that lead nowhere: a link to itself made
    check stop with "Too many levels of symbolic links", where training warns of it as a broken link
    and goes on (so does check, from the same scanner)."""
    entries = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        try:
            entries.append((entry, entry.is_dir()))
        except OSError:
            continue
    return entries


def _deeper(paths: dict[str, dict[str, list[str]]], root: Path, layout: str) -> list[tuple[str, str, str]]:
    """(class, its sub-folder, path) of each image below a class folder's own level."""
    deep, folders = [], split_folders(root) if layout == "presplit" else {}
    for split, by_class in paths.items():
        base = folders.get(split, root)
        for label, files in by_class.items():
            # below the class folder as it is on disk: its name may be decomposed (NFD), where the label is composed
            parts = ((p, Path(p).relative_to(base).parts[1:]) for p in files)
            deep += [(label, below[0], p) for p, below in parts if len(below) > 1]
    return deep


def _same_subfolders(deep: list[tuple[str, str, str]], classes: Iterable[str]) -> list[str]:
    """The sub-folder names every class folder holds, when they all hold the same two or more: people
    or sessions (fist/anna, palm/anna), or the gestures themselves one level too deep (anna/fist,
    bob/fist), which trains a model to tell the people apart. Only the user can tell which."""
    names: dict[str, set[str]] = {label: set() for label in classes}
    for label, folder, _ in deep:
        names[label].add(folder)
    sets = list(names.values())
    shared = sets[0] if len(sets) > 1 and all(found == sets[0] for found in sets) else set()
    return sorted(printable(name) for name in shared) if len(shared) > 1 else []


def _size_stats(infos: list[ImageInfo]) -> dict:
    ok = [i for i in infos if i.error is None]
    if not ok:
        return {}
    widths, heights = [i.width for i in ok], [i.height for i in ok]
    pixels = sorted(i.width * i.height for i in ok)
    median_px = statistics.median(pixels)
    outliers = [i for i in ok if i.width * i.height > OUTLIER_FACTOR * median_px or max(i.width, i.height) > LARGE_SIDE]
    sizes = Counter(f"{i.width}x{i.height}" for i in ok)
    return {
        "width": {"min": min(widths), "median": statistics.median(widths), "max": max(widths)},
        "height": {"min": min(heights), "median": statistics.median(heights), "max": max(heights)},
        "distinct_sizes": len(sizes),
        "common_sizes": sizes.most_common(5),
        "formats": dict(Counter(i.format for i in ok).most_common()),
        "modes": dict(Counter(i.mode for i in ok).most_common()),
        "large": [
            {"path": printable(i.path), "size": f"{i.width}x{i.height}", "bytes": os.path.getsize(i.path)} for i in outliers
        ],
        "tiny": [{"path": printable(i.path), "size": f"{i.width}x{i.height}"} for i in ok if min(i.width, i.height) < TINY_SIDE],
    }


def _duplicates(infos: list[ImageInfo], root: Path) -> dict:
    groups: dict[str, list[ImageInfo]] = defaultdict(list)
    for info in infos:
        if info.error is None:
            groups[info.sha256].append(info)
    out = {"groups": [], "within_class": 0, "across_classes": 0, "across_splits": 0, "extra_copies": 0}
    for members in groups.values():
        if len(members) < 2:
            continue
        labels, splits = {m.label for m in members}, {m.split for m in members}
        kinds = []
        if len(labels) > 1:
            kinds.append("across_classes")
        if len(splits) > 1:
            kinds.append("across_splits")
        if not kinds:
            kinds.append("within_class")
        for kind in kinds:
            out[kind] += 1
        out["extra_copies"] += len(members) - 1
        out["groups"].append({"kinds": kinds, "files": [printable(os.path.relpath(m.path, root)) for m in members]})
    out["groups"].sort(key=lambda g: ("within_class" in g["kinds"], g["files"]))
    return out


def _neighbour_twins(infos: list[ImageInfo], layout: str) -> dict:
    """Near-identical neighbouring frames (numbered sequences, training.grouping) and how many pairs a split
    puts on two sides: the folders' own split for a pre-split layout, else training's default grouped split."""
    by_path = {i.path: i for i in infos if i.thumb is not None}
    by_class: dict[str, list[str]] = defaultdict(list)
    for info in by_path.values():
        by_class[info.label].append(info.path)
    pairs = [(a, b) for cls, paths in by_class.items() for run in sequences(paths, cls).values() for a, b in zip(run, run[1:], strict=False)
             if float(np.abs(by_path[a].thumb - by_path[b].thumb).mean()) < NEAR_IDENTICAL]  # fmt: skip
    named = lambda pair: [printable(os.path.basename(p)) for p in pair]  # noqa: E731
    out = {"pairs": len(pairs), "examples": [named(pair) for pair in pairs[:3]]}
    if layout == "presplit":
        side = {p: i.split for p, i in by_path.items()}
        out["straddling"] = sum(side[a] != side[b] for a, b in pairs)
        return out
    for rule in ("auto", "none"):
        try:
            grouping = assign_groups(dict(by_class), rule)
            parts = grouped_split(dict(by_class), grouping, **DEFAULT_SPLIT)
        except DatasetError:  # the default's, training's own error: _default_split_problem
            continue
        side = {p: split for split, classes in parts.items() for paths in classes.values() for p in paths}
        straddling = [(a, b) for a, b in pairs if side[a] != side[b]]
        out[f"straddling_{rule}"] = len(straddling)
        if rule == "auto":  # "none" is no default: it was named as one where auto's split failed
            out["default_rule"] = grouping.rule
            if straddling:  # the example was any near pair, one that straddled nothing; and a class of one session needs another
                out["examples"] = [named(pair) for pair in straddling[:3]]
                out["one_recording"] = sorted({by_path[a].label for a, _ in straddling if len(set(grouping.groups[by_path[a].label].values())) == 1})
    return out


def _default_split_findings(infos: list[ImageInfo], per_split: dict[str, dict[str, int]], layout: str) -> tuple[str | None, list[str]]:
    """(why training with no flags stops at its split (training.data's grouped split, --group-by auto), or None; what
    it warns of there: the split's warnings in its words, and its threshold warning by its rule). Check said "OK to train" on captures of two sessions in a class, which training
    then refused, and said nothing of one session a class or too few photos for a threshold, which training warns of."""
    if layout == "presplit" and "val" in per_split:  # its folders are the split
        return None, _threshold_warnings(per_split["val"])
    by_class: dict[str, list[str]] = defaultdict(list)
    for info in infos:
        if layout != "presplit" or info.split == "train":
            by_class[info.label].append(info.path)
    split = DEFAULT_SPLIT if layout != "presplit" else {**DEFAULT_SPLIT, "test_split": 0.0, "test_per_class": None}  # val carved from train/
    try:
        grouping = assign_groups(dict(by_class), "auto")
        parts = grouped_split(dict(by_class), grouping, **split)
    except DatasetError as err:
        return f"training with the default split stops: {err}", []
    return None, [*grouping.warnings, *_threshold_warnings({cls: len(paths) for cls, paths in parts["val"].items()})]


def _threshold_warnings(val_counts: dict[str, int]) -> list[str]:
    """Training's "too few validation gesture images" warning, before training: with fewer validation gestures than a
    threshold needs, only a "no gesture" class's predictions say "no gesture", and without one nothing does."""
    reject = find_reject_classes(list(val_counts))
    gestures = sum(n for cls, n in val_counts.items() if cls not in reject)
    if gestures >= (needed := gestures_needed(DEFAULT_TARGET_RECALL)):
        return []
    more = "add photos" if reject else "add photos, or a class named none"
    return [f"validation would hold {gestures} photos of gestures, too few for a \"no gesture\" threshold (at least {needed} needed, "
            f"more the more of them the model gets wrong): {without_threshold(reject)}; {more}"]


def build_report(root: Path, *, decode: bool = True, workers: int = 2) -> dict:
    """The whole report as a JSON-ready dict; ``report["fatal"]`` lists what makes training impossible."""
    root = Path(root)
    report: dict = {"root": printable(str(root.resolve())), "fatal": [], "warnings": []}
    try:
        layout, paths, skipped, ignored = scan(root)
    except DatasetError as err:
        report["fatal"].append(str(err))
        return report
    report["layout"] = layout
    jobs = [(p, split, label) for split, by_class in paths.items() for label, files in by_class.items() for p in files]
    with ThreadPoolExecutor(max(1, workers)) as pool:  # decoding releases the GIL
        infos = list(tqdm(pool.map(lambda j: inspect_image(*j, decode=decode), jobs), total=len(jobs),
                          desc="checking", unit="img", disable=None, leave=False))  # fmt: skip
    skipped += [{"path": printable(i.path), "reason": i.error} for i in infos if i.error is not None]
    good = [i for i in infos if i.error is None]

    per_split = {split: {label: 0 for label in by_class} for split, by_class in paths.items()}
    for info in good:
        per_split[info.split][info.label] += 1
    totals: Counter = Counter()
    for counts in per_split.values():
        totals.update(counts)
    classes = sorted(totals)
    deep = _deeper(paths, root, layout)
    inside_out = splits_inside_classes(root) if layout != "presplit" else None  # training says the same at start-up
    report.update(
        classes=classes,
        counts={c: totals[c] for c in classes},
        splits=per_split if layout == "presplit" else None,
        images=sum(totals.values()),
        imbalance_ratio=_imbalance(totals),
        skipped=sorted(skipped, key=lambda s: s["path"]),
        skipped_by_reason=dict(Counter(_reason_kind(s["reason"]) for s in skipped).most_common()),
        ignored=ignored + _stray_entries(root, layout),
        nested=[printable(p) for _, _, p in deep],
        same_subfolders=[] if inside_out else _same_subfolders(deep, classes),  # train/ and test/ are not people
        non_utf8_names=[printable(i.path) for i in infos if not is_utf8_name(i.path)]
        + [s["path"] for s in skipped if "\ufffd" in s["path"]],
        image_stats=_size_stats(infos),
        duplicates=_duplicates(infos, root),
        neighbour_twins=_neighbour_twins(good, layout),
        recordings=_recordings(root),
    )
    report["fatal"] += _fatal(report, root, per_split, layout)
    if not report["fatal"]:
        problem, split_warnings = _default_split_findings(good, per_split, layout)
        report["fatal"] += [problem] if problem else []
        report["warnings"] += split_warnings
    report["warnings"] += _warnings(report, per_split, layout)
    if layout == "presplit" and (beside := folders_beside_splits(root)):  # training passes them over too, with a warning
        report["warnings"].append(f"folder(s) {', '.join(map(printable, beside))} beside train/ and test/ are not read: a class meant for train/?")
    if inside_out:
        report["warnings"].append(inside_out)
    reasons = Counter(i["reason"] for i in report["ignored"])
    report["notes"] = [f"ignored: {n} {r}" for r, n in reasons.most_common()]
    if recordings := report["recordings"]:
        report["notes"].append(f"frames of {recordings['videos']} video(s) of {recordings['source']}, every {recordings['every']}th (one in 1/6 s above 30 fps), "
                               f"one sub-folder per recording: training keeps each recording in one split where a class has "
                               f"{MIN_RECORDINGS} or more (fewer are split in blocks of neighbouring frames, and named)")
        if notes := videos_notes(recordings["unreadable"], recordings["cut_short"]):
            report["warnings"].append(f"{recordings['source']}: {notes}")
    return report


def _recordings(root: Path) -> dict | None:
    """Where a dataset was extracted from videos (training.prepare.prepare_videos): its source, the
    number of videos and the frame step. Its sub-folders, one per recording, are then the tool's own
    layout, not a user's to be warned about."""
    extracted = read_marker(root) or {}
    if "videos" not in extracted:
        return None
    takes = Counter(_video_class(name) for name in extracted["videos"])
    return {"source": extracted["source"], "videos": len(extracted["videos"]), "every": extracted["every"],
            "unreadable": extracted.get("unreadable", []), "cut_short": extracted.get("cut_short", []),
            "few_takes": sorted(cls for cls, n in takes.items() if n < MIN_RECORDINGS)}


def _video_class(name: str) -> str:
    """The class of a video of a folder of recordings: ``fist/take1.mp4``, or ``train/fist/take1.mp4``."""
    parts = PurePosixPath(name).parts
    return parts[1] if any(parts[0] in aliases for aliases in SPLIT_FOLDERS.values()) and len(parts) > 2 else parts[0]


def _imbalance(totals: Counter) -> float | None:
    nonzero = [n for n in totals.values() if n]
    return round(max(nonzero) / min(nonzero), 2) if len(nonzero) >= 2 else None


_REASON_KINDS = (
    ("a video:", "video (save its frames as images first)"),
    ("unsupported image format", "unsupported format"),
    ("file extension", "non-image"),
    ("not a recognised image", "non-image"),
    ("empty file", "empty (0 bytes)"),
    ("truncated", "truncated"),
    ("broken symlink", "broken symlink"),
    ("unreadable", "unreadable"),
    ("regular file", "not a regular file"),
    ("aspect ratio", "extreme aspect ratio"),
    ("too large", "too large"),
    ("above the limit", "too large"),
)


def _reason_kind(reason: str) -> str:
    return next((kind for key, kind in _REASON_KINDS if key in reason), "corrupt")


def _fatal(report: dict, root: Path, per_split: dict[str, dict[str, int]], layout: str) -> list[str]:
    if report["images"] == 0:
        return [f"{root}: no usable images"]
    with_images = [c for c, n in report["counts"].items() if n]
    if len(with_images) < 2:
        return [f"{root}: only one class with images ({', '.join(with_images)}); a classifier needs at least two"
                + a_dataset_folder_hint(root, report["nested"])]
    if layout == "presplit" and (missing := classes_missing_from_train(per_split, root)):  # training refuses these
        return missing
    trained_on = per_split["train" if layout == "presplit" else "all"]
    empty = sorted(c for c, n in trained_on.items() if n == 0)
    if empty:
        return [empty_classes_problem(split_folders(root)["train"] if layout == "presplit" else root, empty)]
    return []


def _warnings(report: dict, per_split: dict[str, dict[str, int]], layout: str) -> list[str]:
    w = []
    small = {c: n for c, n in report["counts"].items() if n < FEW_IMAGES}
    if small:
        w.append(f"{len(small)} class(es) with fewer than {FEW_IMAGES} images: "
                 + some_of([f"{c} ({n})" for c, n in sorted(small.items(), key=lambda kv: kv[1])]))  # fmt: skip
    ratio = report["imbalance_ratio"]
    if ratio is not None and ratio > IMBALANCE_WARN:
        w.append(
            f"class imbalance {ratio:g}:1 (largest/smallest); consider --class-weights or collecting more of the small classes"
        )
    if same := names_grouped(report["classes"], name_key):
        w.append("class names that differ only in case: " + "; ".join(" and ".join(names) for names in same)
                 + ": on macOS and Windows they are one folder, so a copy of this dataset there merges them")
    if alike := [names for names in names_alike(report["classes"]) if len({name_key(n) for n in names}) > 1]:  # not case alone
        w.append("class names that differ only in spaces, separators, character width or look-alike letters: "
                 + "; ".join(" and ".join(map(repr, names)) for names in alike) + ": each is trained as a class of its own (one gesture "
                 "in two folders?); rename one to the other")
    if mixed := mixed_script_names(report["classes"]):
        w.append(mixed)
    if layout == "presplit":
        w += _split_warnings(per_split)
    elif set(report["classes"]) & set(SPLITS):
        w.append(
            f"class folders named {', '.join(sorted(set(report['classes']) & set(SPLITS)))}: a pre-split layout needs both train/ and test/"
        )
    dup = report["duplicates"]
    if dup["across_splits"]:
        w.append(f"train/test leakage: {dup['across_splits']} image(s) appear in more than one split (identical content)")
    if dup["across_classes"]:
        w.append(f"{dup['across_classes']} set(s) of identical images appear under more than one class (conflicting labels)")
    if dup["within_class"]:
        w.append(f"{dup['within_class']} group(s) of identical images within a class (harmless, but they inflate the counts)")
    w += _twin_warnings(report["neighbour_twins"], report["recordings"])
    if report["skipped"]:
        kinds = ", ".join(f"{n} {k}" for k, n in report["skipped_by_reason"].items())
        w.append(f"{len(report['skipped'])} file(s) skipped: {kinds}")
    large = report["image_stats"].get("large", [])
    if large:
        w.append(f"{len(large)} image(s) far larger than the rest (slow to decode): "
                 + ", ".join(f"{Path(x['path']).name} {x['size']}" for x in large[:5]) + (" ..." if len(large) > 5 else ""))  # fmt: skip
    if tiny := report["image_stats"].get("tiny", []):  # trained on all the same, scaled up to the input size
        w.append(f"{len(tiny)} image(s) under {TINY_SIDE} px on a side, scaled up many times to the model's input: "
                 + ", ".join(f"{Path(x['path']).name} {x['size']}" for x in tiny[:5]) + (" ..." if len(tiny) > 5 else ""))  # fmt: skip
    if report["nested"] and not report["recordings"]:
        w.append(
            f"{len(report['nested'])} image(s) in sub-folders deeper than the layout (used, labelled by their top class folder)"
        )
    if (shared := report["same_subfolders"]) and not report["recordings"]:
        shown = ", ".join(shared[:6]) + (", ..." if len(shared) > 6 else "")
        w.append(f"every class folder holds the same sub-folders ({shown}): taken as people or sessions, each kept in one split; "
                 f"if they are the gestures, the classes are one level down: make it <gesture>/<person>/<image>")
    if report["non_utf8_names"]:
        w.append(
            f"{len(report['non_utf8_names'])} file name(s) are not valid UTF-8 (shown with \ufffd); training reads them, but other tools may not"
        )
    return w


def _twin_warnings(twins: dict, recordings: dict | None) -> list[str]:
    if not twins.get("pairs"):
        return []
    example = " ~ ".join(twins["examples"][0])
    found = f"{twins['pairs']} pair(s) of near-identical neighbouring frames (e.g. {example})"
    if twins.get("straddling"):
        return [f"{found}: {twins['straddling']} of them straddle train/, val/ and test/, so the test shows frames the model has "
                "nearly seen; split whole recordings between the folders"]  # fmt: skip
    if twins.get("straddling_auto"):
        advice = "name files <recording>-<n> or pass --group-by REGEX to keep recordings whole"
        if twins.get("one_recording"):  # their files already name their recording: there is only the one
            advice = (f"record another session of {some_of(twins['one_recording'])}: a class of one recording is split in file order, "
                      "its val and test beside its training frames")
        elif recordings and recordings["few_takes"]:  # frames the tool named itself, from too few videos: renaming is no help
            advice = (f"record more takes of {some_of(recordings['few_takes'])}: a class with fewer than {MIN_RECORDINGS} videos is split "
                      "in blocks of neighbouring frames, and each video stays whole in one split with more")
        return [f"{found}: {twins['straddling_auto']} would straddle train/val/test in training's default split "
                f"(--group-by auto: {twins['default_rule']}); {advice}"]  # fmt: skip
    if twins.get("straddling_none") and "default_rule" in twins:
        return [f"{found}: a frame-by-frame split (--group-by none) would put {twins['straddling_none']} of them on both sides "
                f"of a split; keep the default --group-by auto ({twins['default_rule']}), which keeps them together"]  # fmt: skip
    return []


def _split_warnings(per_split: dict[str, dict[str, int]]) -> list[str]:
    w = []
    train = set(per_split.get("train", {}))
    for split, counts in per_split.items():
        if split != "train" and set(counts) != train:
            if missing := sorted(train - set(counts)):
                w.append(f"{split}/ lacks class(es) present in train/: {', '.join(missing)}")
        empty = sorted(c for c, n in counts.items() if n == 0)
        if empty:
            w.append(f"{split}/ has empty class folder(s): {', '.join(empty)}")
    if "val" not in per_split:
        w.append("no val/ folder: training carves validation images out of train/")
    return w


# --------------------------------------------------------------------------- output


def format_report(r: dict) -> str:
    lines = [f"dataset {r['root']}"]
    if "layout" not in r:
        return "\n".join(lines + [f"FATAL: {f}" for f in r["fatal"]])
    lines.append(f"layout: {r['layout']}, {len(r['classes'])} classes, {r['images']:,} usable images"
                 + (f", imbalance {r['imbalance_ratio']:g}:1" if r["imbalance_ratio"] is not None else ""))  # fmt: skip
    width = max((terminal_width(c) for c in r["classes"]), default=5)
    if r["splits"]:
        names = list(r["splits"])
        lines.append(f"  {'class':{width}s} " + " ".join(f"{s:>6s}" for s in names) + "   total")
        for c in r["classes"]:
            lines.append(
                f"  {pad(c, width)} " + " ".join(f"{r['splits'][s].get(c, 0):6d}" for s in names) + f"  {r['counts'][c]:6d}"
            )
    else:
        for c in r["classes"]:
            lines.append(f"  {pad(c, width)} {r['counts'][c]:6d}")
    s = r["image_stats"]
    if s:
        lines.append(f"sizes: width {s['width']['min']}-{s['width']['max']} (median {s['width']['median']:g}), "
                     f"height {s['height']['min']}-{s['height']['max']} (median {s['height']['median']:g}); "
                     f"{s['distinct_sizes']} distinct; most common " + ", ".join(f"{k} ({n})" for k, n in s["common_sizes"][:3]))  # fmt: skip
        lines.append("formats: " + ", ".join(f"{k} {n}" for k, n in s["formats"].items())
                     + "; modes: " + ", ".join(f"{k} {n}" for k, n in s["modes"].items()))  # fmt: skip
        for x in s["large"][:10]:
            lines.append(f"  large: {x['path']} {x['size']} ({x['bytes'] / 1e6:.1f} MB)")
    d = r["duplicates"]
    # the counts in brackets are of groups: one group of 18 copies in 3 classes read as "17 extra copies (1 across classes)"
    lines.append(f"duplicates (identical content): {len(d['groups'])} group(s) ({d['within_class']} within a class, {d['across_classes']} "
                 f"across classes, {d['across_splits']} across splits), {d['extra_copies']} extra copies")  # fmt: skip
    for g in d["groups"][:10]:
        lines.append(f"  {'/'.join(g['kinds'])}: " + "  ==  ".join(g["files"]))
    if len(d["groups"]) > 10:
        lines.append(f"  ... {len(d['groups']) - 10} more (see --json)")
    for item in r["skipped"][:20]:
        lines.append(f"  skipped: {item['path']}: {item['reason']}")
    if len(r["skipped"]) > 20:
        lines.append(f"  ... {len(r['skipped']) - 20} more skipped (see --json)")
    lines += [f"note: {n}" for n in r.get("notes", [])]
    lines += [f"WARNING: {w}" for w in r["warnings"]]
    lines += [f"FATAL: {f}" for f in r["fatal"]]
    if not r["fatal"]:
        lines.append("OK to train" + (" (read the warnings above)" if r["warnings"] else ""))
    return "\n".join(lines)


@command
def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(prog="python -m training.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=input_path("a dataset folder, archive or catalogue name"), metavar="DIR", help="ImageFolder or pre-split train/val/test folder, a zip or tar of one or its "
                        "URL, or a catalogue name: the folder training reads (archives are unpacked into datasets/)")
    parser.add_argument("--json", type=output_arg("file", replaces=(".json",)), metavar="FILE", help="also write the full report as JSON")
    parser.add_argument("--fast", action="store_true", help="read headers only, skip the full decode of each image")
    parser.add_argument("--workers", type=int_at_least(1, MOST_THREADS), default=min(4, os.cpu_count() or 1), help="decoding threads")
    args = parser.parse_args(argv)
    try:  # the folder that finetune --data trains on: an archive or its URL unpacked, a catalogue name prepared
        args.dir = resolve_data_dir(args.dir, "DIR")
    except DatasetError as err:  # a typo in the path is the user's mistake, as in finetune --data
        parser.error(str(err))
    if args.json:  # its JSON replaced a photo of the class folder it was written into
        try:
            check_output_outside_datasets("--json", args.json, [args.dir])  # writable: checked by output_arg
        except ValueError as err:
            parser.error(str(err))
    report = build_report(args.dir, decode=not args.fast, workers=args.workers)
    print(format_report(report))
    if args.json:
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=1, ensure_ascii=False))
        except OSError as err:
            print(f"error: cannot write {args.json}: {err.strerror or err}", file=sys.stderr)
            return 1
    return 1 if report["fatal"] else 0


if __name__ == "__main__":
    sys.exit(main())
