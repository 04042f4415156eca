"""Re-evaluate a checkpoint on its run's saved test split, or on any ImageFolder.

    python -m training.evaluate --checkpoint runs/sign-digits-efficientnet_lite0/best.pt
    python -m training.evaluate --checkpoint RUN/best.pt --data path/to/folder --out eval/
    python -m training.evaluate --checkpoint RUN/best.pt --tta all   # multi-crop table: top-1 vs cost
    python -m training.evaluate --checkpoint RUN/best.pt --image-size 272 --crop-pct 1.0   # another geometry

Runs the checkpoint's own Classifier (``crop`` per image, ``classify`` per batch), exactly as the
service does; test-time augmentation views are crops from that same Preprocess (``tta_crops``).
A hands-mode checkpoint (``--hands``) is scored on whole images through the Classifier's hands
pipeline (``training.hand_crops``): every image counts, one with no hand found as "no gesture".
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from gesture_core.class_names import name_key, some_of
from gesture_core.classifier import Classifier, load_verified_classifier
from gesture_core.cli import (
    CommandParser,
    check_default_writable,
    check_output_among_no_photos,
    check_output_outside_datasets,
    check_output_spares_inputs,
    checkpoint_arg,
    command,
    first_free,
    output_arg,
    trained_on,
)
from gesture_core.preprocess import TTA_MODES, tta_modes, tta_view_count
from training import cli
from training.data import (
    DatasetError,
    Sample,
    Splits,
    check_split_readable,
    failure_reports,
    is_presplit,
    load_folder,
    skipped_images_note,
    split_folders,
    videos_hint,
)
from training.duplicates import identical_sets
from training.hand_crops import HandCropCache, crop_samples, format_no_hand, frame_metrics, frame_mistakes, frame_outputs
from training.open_set import evaluate_open_set, format_unknown, unknown_samples
from training.prepare import as_image_folder, resolve_data_dir
from training.report import classification_metrics, format_summary, plot_mistakes, top_mistakes, write_json, write_report
from training.run_lock import check_not_in_use
from training.served import crop_batches, served_outputs

TTA_CHOICES = (*TTA_MODES, "all")


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="python -m training.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=checkpoint_arg("best.pt"), required=True, help="RUN/best.pt, or the run folder RUN")
    p.add_argument("--data", type=cli.input_path("a dataset folder, archive or catalogue name"), default=None, help="ImageFolder to evaluate as a whole, or a pre-split dataset's test/, or a zip or tar of either, its URL, or a catalogue name (default: the run's saved test split)")
    p.add_argument("--split", choices=("test", "val", "train"), default=None, help="which saved split, without --data (default: test)")
    p.add_argument("--out", type=output_arg("folder"), default=None,
                   help="report folder (default: RUN/eval-<split or folder name>, numbered if it holds a report of other data)")
    p.add_argument("--batch-size", type=cli.int_at_least(1), default=64, help="images per forward pass")
    p.add_argument("--workers", type=cli.workers, default=2, help="data-loading processes (0: decode in this process)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA when available")
    p.add_argument("--tta", choices=TTA_CHOICES, default="none",
                   help="test-time augmentation: flip, 5crop/10crop (AlexNet), multiscale (3 scales x flip); all: a table of every mode")
    p.add_argument("--threshold", type=cli.float_in(0.0, 1.0, high_inclusive=True), default=None,
                   help="'no gesture' below this calibrated score, 0-1 (default: the checkpoint's threshold)")
    p.add_argument("--image-size", type=cli.image_size, default=None,
                   help="see the model at this input size, same crop share (default: the checkpoint's)")
    p.add_argument("--crop-pct", type=cli.float_in(0.05, 1.0, high_inclusive=True), default=None,
                   help="centre crop's share of the shorter side, 1.0 for all of it (default: the checkpoint's)")
    p.add_argument("--unknown", type=cli.input_path("a folder of images"), metavar="DIR", default=None,
                   help="folder of gestures the model never learned (one folder per gesture, or the images directly; or videos of them, read frame by frame): how many are rejected, and the worst cases")
    return p


SPLITS_SEEN = {
    "train": "the images the model trained on: the score is inflated by them (the test split is the one it never saw)",
    "val": "the images that chose the best epoch and calibrated the temperature and threshold: the score, and the "
           "\"no gesture\" figures above all, are optimistic (the test split is the one they never saw)",
}


def select_samples(checkpoint: Path, classes: list[str], data: str | None, split: str) -> tuple[list[Sample], list[dict[str, str]], str]:
    """(samples, skipped files, name) for a folder, or for the run's saved split."""
    if data is not None:
        samples, skipped = load_folder(data, classes)
        present = {s.label for s in samples}
        if samples and (absent := [name for i, name in enumerate(classes) if i not in present]):
            warnings.warn(f"{data} has no images of the model's class(es) {some_of(absent)}: their rows show support 0, and top-1 "
                          "measures the other classes alone", stacklevel=2)
        return samples, skipped, Path(data).name
    if split in SPLITS_SEEN:  # its figures are no test: "--split val" was reported as one, in silence
        warnings.warn(f"--split {split}: {SPLITS_SEEN[split]}", stacklevel=2)
    split_file = checkpoint.parent / "split.json"
    if not split_file.exists():
        raise DatasetError(f"{split_file} not found: pass --data FOLDER to evaluate on a folder")
    splits = Splits.load(split_file)
    if splits.classes != classes:
        raise DatasetError(f"{split_file} classes {splits.classes} differ from the checkpoint's {classes}")
    if not (samples := getattr(splits, split)):  # "no images to evaluate in test" did not say why, or what else to do
        others = ", ".join(f"--split {name} ({len(getattr(splits, name)):,} images)" for name in ("val", "test") if name != split and getattr(splits, name))
        raise DatasetError(f"the run's {split} split is empty ({split_file}; trained with --{split}-split 0?): pass "  # val or test: train never is
                           f"{others + ' or ' if others else ''}--data FOLDER")
    check_split_readable(samples, split, split_file, f"put the dataset back at {splits.root} (or a link to it) to evaluate this split, "
                         "or pass --data FOLDER to evaluate a folder (images the run trained on are counted in a warning)")
    return samples, [], split


def split_folder(data: str | None) -> str | None:
    """--data as given, or DATA/test for a pre-split dataset (DATA/{train,test}/<class>): its train/ and
    test/ are splits, not classes, and its test split is what a model of it is scored on (as training
    takes the same folder: training.data.load_splits). An archive, its URL or a catalogue name is the
    folder training reads it from."""
    if data is not None:
        data = str(resolve_data_dir(data))
    if data is None or not is_presplit(Path(data)):
        return data
    folders = split_folders(Path(data))
    others = " or ".join(str(folders[split]) for split in ("train", "val") if split in folders)
    print(f"--data {data} is a pre-split dataset (train/, test/): evaluating its test split, {folders['test']} "
          f"(pass --data {others} for another split)")
    return str(folders["test"])


def file_keys(paths: Iterable[str]) -> set[str]:
    """One key per file however its path is spelt (relative, absolute, through a symlinked folder);
    each folder is resolved once, since a dataset holds many files per folder."""
    real = functools.cache(os.path.realpath)
    return {os.path.join(real(os.path.dirname(os.path.abspath(p))), os.path.basename(p)) for p in paths}


def warn_if_trained_on(samples: list[Sample], checkpoint: Path) -> None:
    """A warning when --data holds images the run trained on, or validated on, or copies of them (the same bytes
    under another name, or a link to one): the model has seen them, so their score says little about new images.
    Only the paths were compared: a folder of links to, or copies of, training images was scored without a word."""
    splits = run_splits(checkpoint)
    seen = {name: len(keys) for name, keys in seen_by_the_run(samples, splits, ("train", "val")).items()}
    gone = f", found by their place in the run's dataset folder, {splits.root}, gone since" if splits and dataset_gone(splits) else ""
    listed = f"({checkpoint.parent / 'split.json'} lists them{gone})"
    if trained := seen.get("train"):
        warnings.warn(f"{trained:,} of the {len(samples):,} images evaluated are the run's training images, or copies of them "
                      f"{listed}: the score is inflated by them; evaluate images the run did not train on (without --data: its "
                      "saved test split)", stacklevel=2)
    if validated := seen.get("val"):
        warnings.warn(f"{validated:,} of the {len(samples):,} images evaluated are the run's validation images, or copies of them "
                      f"{listed}, which chose its best epoch and calibrated its threshold: the score is optimistic for them", stacklevel=2)


def run_splits(checkpoint: Path) -> Splits | None:
    """The run's saved split, or None where split.json is missing or unreadable: it only feeds warnings and checks."""
    try:
        return Splits.load(checkpoint.parent / "split.json")
    except (OSError, DatasetError):
        return None


def dataset_gone(splits: Splits) -> bool:
    return not os.path.isdir(splits.root)


def seen_by_the_run(samples: list[Sample], splits: Splits | None, names: tuple[str, ...]) -> dict[str, set[str]]:
    """Which of ``samples`` are, or copy, images of the run's splits ``names``, by split (as ``file_keys``): the
    same file however its path is spelt, or the same bytes (``identical_sets``, which reads only files that
    share their size with another). Empty without a saved split (``run_splits``)."""
    if splits is None:
        return {}
    evaluated = file_keys(s.path for s in samples)
    seen = {name: file_keys(s.path for s in getattr(splits, name)) for name in names}
    copies = identical_sets(sorted(evaluated.union(*seen.values())))
    found = {name: (evaluated & keys) | {path for group in copies if keys.intersection(group) for path in group if path in evaluated}
             for name, keys in seen.items()}
    if dataset_gone(splits):  # the dataset moved: its files are nowhere to compare, but their places in it are
        found = {name: keys | at_their_places(samples, getattr(splits, name), splits.root) for name, keys in found.items()}
    return found


def at_their_places(samples: list[Sample], split: list[Sample], root: str) -> set[str]:
    """Which of ``samples`` (as ``file_keys``) lie where one of ``split`` lay inside its dataset folder ``root``, gone
    since: class folder and file name ("fist/IMG_1.jpg", "train/fist/IMG_1.jpg"). Evaluating the moved dataset, as
    the error for a gone folder advised, scored its training images without a word."""
    places = {Path(os.path.relpath(s.path, root)).parts for s in split}
    depths = {len(place) for place in places}
    return file_keys(s.path for s in samples if any(Path(s.path).parts[-depth:] in places for depth in depths))


def check_unknown(folder: str, unknown: list[Sample], classifier: Classifier, checkpoint: Path) -> None:
    """A DatasetError when --unknown holds gestures the model learned: "answered 'no gesture'" would count
    its right answers as failures, so no figure from such a folder means what the report says. Refused,
    not warned: the check takes a second, before the evaluation, and the fix (another folder) is plain.
    A folder named after a reject class is fine: its images should be answered "no gesture"."""
    learned = {name_key(c) for c in classifier.classes} - {name_key(c) for c in classifier.rejection.reject_classes}
    subfolders = {name_key(d.name) for d in Path(folder).iterdir() if d.is_dir()}
    if named := sorted(learned & subfolders):
        raise DatasetError(f"{folder} has folder(s) named after gestures the model learned: {', '.join(named)}; "
                           "pass a folder of gestures it never learned")
    if seen := len(set().union(*seen_by_the_run(unknown, run_splits(checkpoint), ("train", "val", "test")).values())):  # copies and links too
        raise DatasetError(f"{seen:,} of the {len(unknown):,} images in {folder} are the run's own images of the classes it learned, "
                           f"or copies of them ({checkpoint.parent / 'split.json'} lists them); pass a folder of gestures it never learned")


def data_source(data: str | None, split: str) -> str:
    """What a report is of, stored in it: the data folder, or the run's saved split (relative: a run folder may move)."""
    return str(Path(data).resolve()) if data is not None else f"the run's {split} split (split.json)"


def report_folder(args: argparse.Namespace, name: str, source: str, suffix: str) -> Path:
    """--out, or RUN/eval-<name><suffix>, numbered (-2, -3, ...) as training numbers a taken run folder when
    that one holds a report of other data: x1/test and x2/test both made RUN/eval-test, each replacing
    the other's report. A report of the same data is replaced, as re-evaluating it should."""
    if args.out:
        return Path(args.out)
    base = args.checkpoint.parent / f"eval-{name}{suffix}"
    candidate = first_free(base, lambda folder: takes_report_of(folder, source))
    if candidate != base:
        print(f"{base} holds the report of {report_source(base)}: this one goes to {candidate}/")
    return candidate


def takes_report_of(folder: Path, source: str) -> bool:
    """Whether ``folder`` may hold the report of ``source``: new, empty, or holding one of the same data."""
    if not folder.exists():
        return True
    return folder.is_dir() and (not any(folder.iterdir()) or report_source(folder) == source)


def report_source(folder: Path) -> str:
    """The data an earlier report in ``folder`` is of; a report from before reports named it (or no report) is taken for other data."""
    try:
        return str(json.loads((folder / "metrics.json").read_text())["source"])
    except (OSError, ValueError, TypeError, KeyError):
        return "data it does not name"


def evaluate_samples(classifier: Classifier, samples: list[Sample], *, batch_size: int = 64, workers: int = 2, tta: str = "none") -> tuple[dict[str, Any], list[str]]:
    """(metrics, paths that failed to decode) for labelled samples, through the Classifier's own pipeline:
    the checkpoint's Preprocess crops each image (in the loader's workers), ``Classifier.classify`` runs
    the crops, as the service and the webcam do.

    With ``tta`` other than "none", each image is seen as ``tta_view_count(tta)`` views and the
    probabilities are averaged over them; the scores ranked are the log of the (mean) probabilities.
    """
    views = tta_view_count(tta)
    scores, targets, failed = [], [], []
    for crops, target, _ in crop_batches(classifier, samples, tta, batch_size, workers, failed):
        probs = classifier.classify(list(crops.reshape(-1, *crops.shape[2:])))
        scores.append(np.log(probs.reshape(len(crops), views, -1).mean(1).clip(1e-12)))
        targets.append(target)
    if not scores:  # every file failed to decode
        scores, targets = [np.zeros((0, len(classifier.classes)))], [np.zeros(0, np.int64)]
    metrics = classification_metrics(np.concatenate(scores), np.concatenate(targets), classifier.classes)
    return metrics, failed


MIRRORING_TTA = ("flip", "10crop", "multiscale")  # each adds the mirror image of its views


def tta_modes_for(classifier: Classifier) -> tuple[tuple[str, ...], str | None]:
    """The TTA modes that suit the model, and why the others do not (None when all do): a whole-frame model takes no
    crops; a model trained without flips (direction-sensitive classes: left is not right) takes no mirror images,
    which averaged a left-pointing hand with a right-pointing one, in silence."""
    modes, why = tta_modes(classifier.data_config), []
    if modes != TTA_MODES:
        why.append(f"{classifier.backbone} sees whole frames ({classifier.data_config.crop}): the crop modes do not apply")
    if classifier.train_config.get("flip") == "off":
        modes = tuple(m for m in modes if m not in MIRRORING_TTA)
        why.append("it was trained without flips (--flip off): a mirror image may mean another class, left for right")
    return modes, "; ".join(why) or None


def tta_table(classifier: Classifier, samples: list[Sample], modes=TTA_MODES, *, batch_size: int = 64, workers: int = 2) -> tuple[list[dict[str, Any]], dict[str, tuple[dict[str, Any], list[str]]]]:
    """(one row per TTA mode: views per image (the cost multiplier), top-1/top-5, change vs no TTA, time;
    {mode: evaluate_samples result})."""
    rows, results = [], {}
    for mode in modes:
        start = time.perf_counter()
        results[mode] = evaluate_samples(classifier, samples, batch_size=batch_size, workers=workers, tta=mode)
        seconds = time.perf_counter() - start
        metrics = results[mode][0]
        rows.append({"tta": mode, "views": tta_view_count(mode), "top1": metrics["top1"], "top5": metrics["top5"], "n": metrics["n"],
                     "seconds": round(seconds, 2), "ms_per_image": round(1000 * seconds / max(1, metrics["n"]), 2)})
    base = next((r["top1"] for r in rows if r["tta"] == "none"), None)
    for r in rows:
        r["delta_top1"] = None if base is None or r["top1"] is None else r["top1"] - base
    return rows, results


def format_tta_table(rows: list[dict[str, Any]]) -> str:
    """Markdown, like the GoogLeNet paper's table of crops vs error."""
    pct = lambda x: "n/a" if x is None else f"{100 * x:.2f}%"  # noqa: E731
    lines = ["| TTA | forward passes per image (cost) | top-1 | top-5 | Δ top-1 vs none | ms / image |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        delta = "" if r["delta_top1"] is None or r["tta"] == "none" else f"{100 * r['delta_top1']:+.2f} pt"
        lines.append(f"| {r['tta']} | {r['views']}x | {pct(r['top1'])} | {pct(r['top5'])} | {delta} | {r['ms_per_image']:.1f} |")
    return "\n".join(lines)


def checkpoint_suffix(checkpoint: Path) -> str:
    """"" for the run's model (best.pt); "-last" for last.pt, whose evaluation replaced best.pt's in the same folder."""
    return "" if checkpoint.name == "best.pt" else f"-{checkpoint.stem}"


# What an evaluation writes into --out; any of them already there is replaced. metrics.json first:
# ``fresh_report_folder`` removes it before the rest.
REPORT_FILES = ("metrics.json", "predictions.csv", "confusion_matrix.png", "test_mistakes.png", "unknown_worst.png", "tta.json", "tta.md")


def fresh_report_folder(out: Path) -> Path:
    """``out``, made, and without an earlier evaluation's report, whose metrics.json goes first: an evaluation
    stopped halfway left the earlier metrics.json beside its own predictions.csv, a report of two evaluations."""
    out.mkdir(parents=True, exist_ok=True)
    for name in REPORT_FILES:
        (out / name).unlink(missing_ok=True)
    return out


def check_replaces_only_a_report(out: Path) -> None:
    """A ValueError when --out holds files of a report's names that no evaluation wrote (a user's own
    metrics.json and predictions.csv were replaced); an earlier evaluation's report is replaced."""
    there = [name for name in REPORT_FILES if (out / name).exists()]
    if there and not is_evaluation_report(out / "metrics.json"):
        raise ValueError(f"--out {out} holds {', '.join(there)}, not from training.evaluate: its report would replace "
                         "them; pass a new or empty folder")


def is_evaluation_report(metrics: Path) -> bool:
    try:
        written = json.loads(metrics.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(written, dict) and {"checkpoint", "views_per_image"} <= written.keys()


@command
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.split and args.data:  # the split was ignored: the whole folder was evaluated
        parser.error(f"--split {args.split} picks one of the run's saved splits, and --data evaluates a folder instead: pass one of them")
    args.split = args.split or "test"
    # its best.pt changes with each better epoch: the report in its folder outlived the model it scored
    check_not_in_use(args.checkpoint.parent, "wait for it to end: its best.pt is replaced whenever an epoch does better")
    if args.out:  # the run's own folder held its training report, which this one replaced
        check_output_spares_inputs("--out", Path(args.out), {"--checkpoint": args.checkpoint})
        check_replaces_only_a_report(Path(args.out))
    else:  # the default folder's problem was said after the whole evaluation, with no word of --out
        check_default_writable("the report goes by default in the run's folder", args.checkpoint.parent)
    single = "none" if args.tta == "all" else args.tta
    # eager PyTorch, the reference engine: evaluation reproduces the run's own test metrics
    classifier = load_verified_classifier(args.checkpoint, args.device, engine="torch", input_size=args.image_size, crop_pct=args.crop_pct)
    if args.out:
        folders_read = [args.data and Path(args.data), args.unknown and Path(args.unknown), trained_on(classifier.train_config)]
        check_output_outside_datasets("--out", Path(args.out), folders_read)
        check_output_among_no_photos("--out", Path(args.out), REPORT_FILES)
    data = split_folder(args.data)
    samples, skipped, name = select_samples(args.checkpoint, classifier.classes, data, args.split)
    if not samples:
        raise DatasetError(f"no images to evaluate in {name}{skipped_images_note(skipped)}" + videos_hint([entry["path"] for entry in skipped]))
    if data is not None:
        warn_if_trained_on(samples, args.checkpoint)
    unknown_skipped: list[dict[str, str]] = []
    try:  # before the long part: a wrong --unknown folder fails in a second, not after the evaluation
        unknown = None if args.unknown is None else unknown_samples(as_image_folder(Path(args.unknown), loose=True), unknown_skipped)  # videos: their frames
        if unknown:
            check_unknown(args.unknown, unknown, classifier, args.checkpoint)
    except DatasetError as err:
        print(f"error: --unknown: {err}", file=sys.stderr)
        return 2
    source = data_source(data, args.split)
    if classifier.hands_mode:
        return evaluate_hands(classifier, samples, skipped + unknown_skipped, name, args, unknown, source)
    modes, why_not = tta_modes_for(classifier)
    if args.tta not in (*modes, "all"):
        raise ValueError(f"--tta {args.tta}: {why_not}; choose {' or '.join(modes)}")
    if args.tta == "all":
        if why_not:
            print(f"--tta all: {', '.join(modes)} ({why_not})")
        rows, results = tta_table(classifier, samples, modes, batch_size=args.batch_size, workers=args.workers)
        (metrics, failed), outputs = results["none"], None
    elif single == "none":  # read once: the metrics and the "no gesture" report from the same outputs
        rows, (outputs, failed) = None, served_outputs(classifier, samples, batch_size=args.batch_size, workers=args.workers)
        metrics = classification_metrics(outputs.logits, outputs.targets, classifier.classes)
    else:
        rows, (metrics, failed), outputs = None, evaluate_samples(classifier, samples, batch_size=args.batch_size, workers=args.workers, tta=single), None
    if len(failed) == len(samples):  # before the report: a folder of metrics over no image says nothing true
        first = failure_reports(failed[:1], classifier.data_config.resize_size)[0]
        raise DatasetError(f"none of the {len(samples):,} images of {name} could be decoded (e.g. {first['path']}: {first['reason']})")
    # a threshold of one's own is another report: it replaced the one at the model's own threshold
    threshold = "" if args.threshold is None else f"-threshold{args.threshold:g}"
    suffix = ("" if args.tta == "none" else f"-tta-{args.tta}") + geometry_suffix(args) + threshold
    out = fresh_report_folder(report_folder(args, name, source, suffix + checkpoint_suffix(args.checkpoint)))
    skipped += failure_reports(failed, classifier.data_config.resize_size)
    report = {"backbone": classifier.backbone, "classes": classifier.classes, "checkpoint": str(args.checkpoint), "data": name, "source": source,
              "tta": single, "views_per_image": tta_view_count(single), "data_config": classifier.data_config.to_dict(),
              "test": metrics, "skipped": skipped}
    title = f"{classifier.backbone} on {name}" + ("" if single == "none" else f", TTA {single} ({tta_view_count(single)} views/image)")
    if geometry_suffix(args):
        title += f", seen as {classifier.preprocess}"
    print(format_summary(metrics, f"{title}:"))  # first, as training prints it: the open-set lines follow it
    if single == "none":  # the open-set check decides as the service does: one view per image
        report["open_set"], outputs = evaluate_open_set(classifier, samples, threshold=args.threshold, out=out, workers=args.workers, data=name,
                                                        unknown=None if unknown is None else (args.unknown, unknown), known=outputs)
        report["test_mistakes"] = top_mistakes(samples, outputs, classifier.classes, classifier.rejection)
        plot_mistakes(out / "test_mistakes.png", report["test_mistakes"])
        failed_unknown = report["open_set"].get("unknown", {}).get("failed_to_decode", [])
        skipped += unknown_skipped + [{"path": path, "reason": "--unknown image that failed to decode"} for path in failed_unknown]
    if rows is not None:  # before metrics.json, which says the report is whole
        write_json(out / "tta.json", rows)
        (out / "tta.md").write_text(format_tta_table(rows) + "\n")
    write_report(out, report, classifier.classes)
    if rows is not None:
        print(f"\ntest-time augmentation on {name} ({metrics['n']} images):\n{format_tta_table(rows)}")
    if skipped:
        print(f"{len(skipped)} file(s) skipped (listed in {out / 'metrics.json'})")
    print(f"report in {out}/")
    return 0


def geometry_suffix(args: argparse.Namespace) -> str:
    """The report folder's mark for a geometry other than the checkpoint's, so it is not overwritten."""
    size = "" if args.image_size is None else f"-{args.image_size}px"
    return size + ("" if args.crop_pct is None else f"-crop{args.crop_pct:g}")


def evaluate_hands(classifier: Classifier, samples: list[Sample], skipped: list[dict[str, str]], name: str, args: argparse.Namespace,
                   unknown: list[Sample] | None, source: str) -> int:  # fmt: skip
    """A hands-mode checkpoint: frames through the Classifier's hands pipeline, hand crops from the
    cache (made by the classifier's own localiser where missing); the open-set report on the crops,
    and with ``unknown`` how many of those frames get "no gesture", as the service answers them."""
    if args.tta != "none":
        raise ValueError(f"--tta {args.tta}: test-time augmentation is not defined for a hands-mode model (trained with --hands); choose none")
    cache = HandCropCache(classifier.data_config, localiser=lambda: classifier.localiser)
    outputs = frame_outputs(classifier, samples, cache, batch_size=args.batch_size, threshold=args.threshold)
    metrics = frame_metrics(classifier, outputs)
    out = fresh_report_folder(report_folder(args, name, source, checkpoint_suffix(args.checkpoint)))
    skipped += [{"path": samples[i].path, "reason": cache.entry(samples[i].path).error} for i in outputs.failed]
    report = {"backbone": classifier.backbone, "classes": classifier.classes, "checkpoint": str(args.checkpoint), "data": name, "source": source,
              "tta": "none", "views_per_image": 1, "hands": True, "test": metrics, "skipped": skipped}
    print(format_summary(metrics, f"{classifier.backbone} on {name}, hand crops:"))
    print(format_no_hand(metrics))
    crops = crop_samples(samples, cache)
    if crops:
        report["open_set"], _ = evaluate_open_set(classifier, crops, threshold=args.threshold, out=out, workers=args.workers, data=name)
    if unknown:
        report.setdefault("open_set", {})["unknown"] = unknown_frames(classifier, unknown, cache, args)
        skipped += [{"path": path, "reason": "--unknown image that failed to decode"} for path in report["open_set"]["unknown"]["failed_to_decode"]]
    report["test_mistakes"] = frame_mistakes(classifier, samples, outputs)
    plot_mistakes(out / "test_mistakes.png", report["test_mistakes"])
    write_report(out, report, classifier.classes)
    if skipped:
        print(f"{len(skipped)} file(s) skipped (listed in {out / 'metrics.json'})")
    print(f"report in {out}/")
    return 0


def unknown_frames(classifier: Classifier, unknown: list[Sample], cache: HandCropCache, args: argparse.Namespace) -> dict[str, Any]:
    """--unknown for a hands-mode model: each image as the service answers it (its hands found, each
    hand's crop scored, ``decide_hands``): rejected when the frame's answer is "no gesture", because
    no hand was found or no hand was accepted."""
    frames = frame_outputs(classifier, unknown, cache, batch_size=args.batch_size, threshold=args.threshold, desc="unknown frames")
    rejected = sum(label is None for label in frames.labels)
    report = {"folder": str(args.unknown), "images": len(frames.labels), "rejected": rejected,
              "rejection_rate": rejected / len(frames.labels) if frames.labels else None, "no_hand": int(frames.no_hand.sum()),
              "threshold": classifier.rejection.threshold_or(args.threshold), "failed_to_decode": [unknown[i].path for i in frames.failed]}
    print(format_unknown(report, report["threshold"], f"; no hand found in {report['no_hand']}"))
    return report


if __name__ == "__main__":
    sys.exit(main())
