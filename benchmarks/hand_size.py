"""Accuracy against hand size: whole-frame input (letterbox) against hand crops (--hands), on
synthetic 640x480 frames made of real ASL hand photos pasted at several sizes onto real scenes.

    .venv/bin/python -m benchmarks.hand_size --quick      # 4 letters, 40 photos each, 5 sizes (minutes on 2 cores)
    .venv/bin/python -m benchmarks.hand_size              # 6 letters, all 120 photos each, 8 sizes

Honest split: each letter's photos (the signer's 200x200 video frames) are split by training's own
grouped split (``--group-by frames``: blocks of neighbouring frame numbers), so no test photo, nor a
frame next to one, is ever pasted into a training frame. Scenes are split too: even-numbered
background photos (ASL 'nothing' frames and flower photos) for training, odd ones for the test.

Sizes: a whole 200x200 photo fits the 4:3 frame up to 75% of the frame's width (hands of about a
quarter of it). Larger hands are a photo larger than the frame, of which the frame shows a random
window that keeps the whole hand in view: the hand is found on the photo alone (the scene's ground
truth) with the project's HandLocaliser, its landmarks' extent grown by HAND_MARGIN. Test photos whose
hand is not found alone, or does not fit the frame at the largest size, are left out of those sizes
(counted in the title), and the test photos shown there are the same at each of them; the table adds
the largest whole-photo size on those same photos, to compare like with like.

Training frames paste each training photo at random sizes (log-uniform over the test sizes' range,
up to the largest at which the frame still shows the photo's whole hand, or the whole photo when no
hand is found on it alone) and places. Both models are trained the same way, linear probes on cached features (``--freeze
backbone --augment none``), one on the whole frame (``--crop letterbox``) and one on hand crops
(``--hands``). Each test photo is then pasted once at every size, and both models are scored there
through their Classifier (as the service answers): a hand crop model answers "no gesture" where the
detector finds no hand, which counts as a miss (there is no 'nothing' class here). The hand width
is measured on the found hands (the landmarks' horizontal extent), as docs/hands.md's table does.

Frames, runs and hand_size.json go to OUT (default runs/hand-size); runs are read back if already there.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from benchmarks.common import check_input_size, csv_list, describe_machine, emit, note
from benchmarks.recipes import REPO, SHARED_DATA, run_finetune
from benchmarks.whole_frame import images_in, paste_at_random, placements, scene_frame
from gesture_core.classifier import Classifier, load_classifier
from gesture_core.cli import CommandParser, command
from gesture_core.hands import HandLocaliser
from gesture_core.images import read_rgb
from training.cli import backbone_name, image_size, int_at_least, seed, workers
from training.data import Sample, load_folder
from training.evaluate import evaluate_samples
from training.grouping import assign_groups, grouped_split
from training.hand_crops import HandCropCache, frame_metrics, frame_outputs

FRAME_W, FRAME_H = 640, 480
# The pasted photo's side as a share of the frame width; the hand itself spans about a third of the
# photo's width (landmarks), so these are hands of about 5-50% of the frame's width. A whole 200x200
# photo fits a 4:3 frame up to 0.75 of its width; above that the frame shows a window of the photo
# that keeps the hand, as found on the photo alone, wholly in view (``hand_on_photo``).
SIDES = (0.12, 0.18, 0.25, 0.35, 0.5, 0.75, 1.0, 1.4)
QUICK_SIDES = (0.12, 0.25, 0.5, 0.75, 1.4)
# What must stay in view: the landmarks' extent grown by this share of its larger side on every side
# (the landmarks are joints: the skin reaches past the knuckles and the fingertips' points).
HAND_MARGIN = 0.1
LETTERS = "A,B,C,L,V,Y"
QUICK_LETTERS = "A,C,V,Y"
MODES = {"whole frame (letterbox)": ["--crop", "letterbox"], "hand crops (--hands)": ["--hands"]}
COLUMNS = [("side", "photo side, % of frame width", ".0f"), ("photos", "test photos", "s"), ("hand_width", "hand width, % of frame (median)", ".1f"),
           ("n", "test frames", "d"), ("whole_frame", "whole frame top-1", ".1%"), ("hands", "hand crops top-1", ".1%"),
           ("gain_pt", "hand crops - whole frame, points", "+.1f"), ("no_hand", "no hand found", ".1%"),
           ("hands_found_top1", "hand crops top-1 where a hand was found", ".1%")]  # fmt: skip


# --------------------------------------------------------------------------- the frames


def split_photos(source: Path, letters: list[str], per_class: int, seed: int) -> dict[str, dict[str, list[str]]]:
    """{train|val|test: {letter: photo paths}}, by training's grouped split on frame numbers."""
    by_class = {letter: [str(p) for p in images_in(source / letter)[:per_class]] for letter in letters}
    grouping = assign_groups(by_class, "frames")
    return grouped_split(by_class, grouping, val_split=0.1, test_split=0.25, test_per_class=None, seed=seed)


def background_photos(asl: Path, flowers: Path, count: int) -> list[Path]:
    """``count`` scenes, half empty ASL frames and half flower photos, interleaved."""
    empty, flower = images_in(asl / "nothing")[: count // 2], images_in(flowers)[:: max(1, len(images_in(flowers)) // (count // 2))][: count // 2]
    return [p for pair in zip(empty, flower, strict=False) for p in pair]


def write_frame(path: Path, frame: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])


Box = tuple[float, float, float, float]


def hand_on_photo(localiser: HandLocaliser, photo: np.ndarray, margin: float = HAND_MARGIN) -> Box | None:
    """The hand on the photo alone (the scene's ground truth), as (x0, y0, x1, y1) shares of the photo: the best
    hand's landmark extent grown by ``margin`` of its larger side, clipped to the photo; None when none is found."""
    hands = localiser.find(photo)
    if not hands or hands[0].landmarks is None:
        return None
    points = np.asarray(hands[0].landmarks)
    low, high = points.min(0), points.max(0)
    grow = margin * float((high - low).max())
    height, width = photo.shape[:2]
    scale = np.array([width, height], dtype=float)
    low, high = np.clip((low - grow) / scale, 0, 1), np.clip((high + grow) / scale, 0, 1)
    return (float(low[0]), float(low[1]), float(high[0]), float(high[1]))


def side_px(share: float) -> int:
    return round(FRAME_W * share)


def shows(side: int, keep: Box | None) -> bool:
    """Whether a 640x480 frame can show a ``side``² paste of a photo whole, or else its hand ``keep`` whole."""
    return placements(side, keep, (FRAME_W, FRAME_H)) is not None


def paste_scene(scene: Path, photo: np.ndarray, side: int, rng: np.random.Generator, keep: Box | None) -> np.ndarray:
    frame = scene_frame(scene, (FRAME_W, FRAME_H))
    paste_at_random(frame, photo, side, rng, keep)
    return frame


def synthesize(photos: dict[str, dict[str, list[str]]], scenes: list[Path], out: Path, *, sides: tuple[float, ...],
               pastes: int, seed: int, localiser: HandLocaliser) -> dict:  # fmt: skip
    """OUT/{train,val}/<letter>/ (each photo ``pastes`` times at random sizes) and OUT/sizes/<side>/<letter>/
    (each test photo once per size), on the split's own scenes; OUT/test holds every size (finetune's test).

    Sizes the whole photo does not fit are shown through a window that keeps the photo's hand in view, so
    they need the hand found on the photo alone: a training photo's sizes are drawn log-uniformly over the
    test sizes' range, up to the largest at which the frame can still show its whole hand (the whole photo,
    when no hand is found on it). Those sizes' test frames are made of the test photos whose hand is found
    alone and fits the frame at the largest size, the same photos at each (named in the returned summary)."""
    rng = np.random.default_rng(seed)
    train_scenes, test_scenes = scenes[0::2], scenes[1::2]
    low, high = np.log(min(sides)), np.log(max(sides))
    hands = {path: hand_on_photo(localiser, read_rgb(path)) for split in photos.values() for paths in split.values() for path in paths}
    truncated = Counter()
    for split in ("train", "val"):
        for letter, paths in photos[split].items():
            for i, path in enumerate(paths):
                photo, keep = read_rgb(path), hands[path]
                for k in range(pastes):
                    scene = train_scenes[rng.integers(len(train_scenes))]
                    side = side_px(float(np.exp(rng.uniform(low, high))))
                    if not shows(side, keep):  # drawn again until shown: log-uniform up to this photo's limit
                        truncated["no hand found alone" if keep is None else "hand too big for the frame"] += 1
                        while not shows(side, keep):
                            side = side_px(float(np.exp(rng.uniform(low, high))))
                    write_frame(out / split / letter / f"{letter}_{i}_{k}.jpg", paste_scene(scene, photo, side, rng, keep))
    largest = side_px(max(sides))
    windowed, skipped = [], Counter()
    for letter, paths in photos["test"].items():
        for i, path in enumerate(paths):
            photo, keep = read_rgb(path), hands[path]
            shown_large = shows(largest, keep)
            if shown_large:
                windowed.append(f"{letter}_{i}")
            elif not shows(largest, None):
                skipped["no hand found alone" if keep is None else "hand too big for the frame"] += 1
            for side_share in sides:
                side = side_px(side_share)
                if not shows(side, None) and not shown_large:
                    continue  # a window needs this photo at every such size: the same test photos at each
                frame = paste_scene(test_scenes[rng.integers(len(test_scenes))], photo, side, rng, keep)
                name = f"{letter}_{i}_{round(100 * side_share)}.jpg"
                write_frame(out / "sizes" / f"{round(100 * side_share)}" / letter / name, frame)
                write_frame(out / "test" / letter / name, frame)
    return {"splits": {s: {c: len(v) for c, v in d.items()} for s, d in photos.items()},
            "hand not found alone": {s: sum(hands[p] is None for v in d.values() for p in v) for s, d in photos.items()},
            "training draws redrawn smaller": dict(truncated), "test photos windowed": windowed,
            "test photos not windowed": dict(skipped)}  # fmt: skip


# --------------------------------------------------------------------------- scoring


def whole_frame_top1(classifier: Classifier, samples: list[Sample]) -> float:
    metrics, _ = evaluate_samples(classifier, samples, workers=0)
    return metrics["top1"]


def hand_crops_scores(classifier: Classifier, samples: list[Sample]) -> dict[str, float]:
    """Top-1 over every frame, the share with no hand, top-1 where a hand was found, and the median hand width."""
    cache = HandCropCache(classifier.data_config, localiser=lambda: classifier.localiser)
    outputs = frame_outputs(classifier, samples, cache, desc="frames")
    metrics = frame_metrics(classifier, outputs)
    found = ~outputs.no_hand
    hit = outputs.probs.argmax(1) == outputs.targets
    widths = []
    for entry in cache.entries(samples):
        if entry.hands and entry.hands[0].landmarks is not None:
            xs = [x for x, _ in entry.hands[0].landmarks]
            widths.append((max(xs) - min(xs)) / FRAME_W)
    return {"top1": metrics["top1"], "no_hand": float(outputs.no_hand.mean()),
            "found_top1": float(hit[found].mean()) if found.any() else None,
            "hand_width": 100 * float(np.median(widths)) if widths else None}  # fmt: skip


def train(data: Path, runs: Path, mode: str, args: argparse.Namespace) -> tuple[Path, float | None]:
    out = runs / f"{data.name}-{'hands' if '--hands' in MODES[mode] else 'letterbox'}-{args.epochs}ep-{args.image_size}px"
    cmd = [sys.executable, "-m", "training.finetune", "--data", str(data), *MODES[mode], "--group-by", "none",
           "--backbone", args.backbone, "--freeze", "backbone", "--augment", "none", "--epochs", str(args.epochs), "--image-size", str(args.image_size),
           "--workers", str(args.workers), "--seed", str(args.seed), "--out", str(out)]  # fmt: skip
    _, wall = run_finetune(cmd, out, quiet=True)
    return out / "best.pt", wall


@command
def main(argv: list[str] | None = None) -> int:
    p = CommandParser(prog="python -m benchmarks.hand_size", description=__doc__.split("\n\n")[0])
    p.add_argument("--asl", type=Path, default=SHARED_DATA / "asl-alphabet", help="the ASL alphabet photos (hands, and 'nothing' scenes)")
    p.add_argument("--flowers", type=Path, default=SHARED_DATA / "flowers", help="flower photos (scenes)")
    p.add_argument("--quick", action="store_true", help=f"letters {QUICK_LETTERS}, 40 photos each, sizes {QUICK_SIDES}, 1 paste")
    p.add_argument("--letters", type=csv_list(), default=None, help=f"comma-separated classes (default {LETTERS}; --quick {QUICK_LETTERS})")
    p.add_argument("--per-class", type=int_at_least(1), default=None, help="photos per letter (default all 120; --quick 40)")
    p.add_argument("--pastes", type=int_at_least(1), default=None, help="training frames per training photo (default 2; --quick 1)")
    p.add_argument("--epochs", type=int_at_least(1), default=30, help="linear-probe epochs (cached features: cheap)")
    p.add_argument("--image-size", type=image_size, default=128, help="model input size, both modes")
    p.add_argument("--backbone", type=backbone_name, default="efficientnet_lite0", help="the model the documented figures were measured with")
    p.add_argument("--workers", type=workers, default=2, help="data-loading processes per run")
    p.add_argument("--seed", type=seed, default=0, help="split, frames and training")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "hand-size", help="frames, runs and hand_size.json")
    args = p.parse_args(argv)
    check_input_size(p, [args.backbone], args.image_size)
    for folder in (args.asl, args.flowers):
        if not folder.is_dir():
            p.error(f"{folder}: not a folder (the shared data lives in ../shared/data)")
    letters = args.letters or (QUICK_LETTERS if args.quick else LETTERS).split(",")
    if missing := [letter for letter in letters if not (args.asl / letter).is_dir()]:
        p.error(f"--letters {', '.join(missing)}: not in {args.asl}; choose from {', '.join(sorted(d.name for d in args.asl.iterdir() if d.is_dir()))}")
    per_class = args.per_class or (40 if args.quick else 120)
    pastes = args.pastes or (1 if args.quick else 2)
    sides = QUICK_SIDES if args.quick else SIDES
    data = args.out / f"data-{''.join(letters)}-{per_class}pc-{pastes}x-s{args.seed}-to{round(100 * max(sides))}"
    if not (data / "done").exists():
        started = time.perf_counter()
        photos = split_photos(args.asl, letters, per_class, args.seed)
        summary = synthesize(photos, background_photos(args.asl, args.flowers, 120), data, sides=sides, pastes=pastes,
                             seed=args.seed, localiser=HandLocaliser())  # fmt: skip
        (data / "done").write_text(json.dumps(summary) + "\n")
        note(f"frames written to {data} in {time.perf_counter() - started:.0f} s")
    summary = json.loads((data / "done").read_text())
    models = {mode: train(data, args.out / "runs", mode, args) for mode in MODES}
    whole, hands = (load_classifier(models[mode][0], "cpu", engine="torch") for mode in MODES)
    windowed = set(summary["test photos windowed"])
    largest_whole = max(side for side in sides if side_px(side) <= FRAME_H)
    rows = []
    for side in sides:
        samples, _ = load_folder(data / "sizes" / f"{round(100 * side)}", whole.classes)
        subsets = [("all", samples)] if side_px(side) <= FRAME_H else []
        if side_px(side) > FRAME_H or (side == largest_whole and len(windowed) < len(samples)):
            # the windowed sizes' photos; at the largest whole-photo size too, to compare like with like
            subsets.append(("hand found alone", [s for s in samples if Path(s.path).stem.rsplit("_", 1)[0] in windowed]))
        for photos, subset in subsets:
            scores = hand_crops_scores(hands, subset)
            whole_top1 = whole_frame_top1(whole, subset)
            rows.append({"side": 100 * side, "photos": photos, "hand_width": scores["hand_width"], "n": len(subset),
                         "whole_frame": whole_top1, "hands": scores["top1"], "gain_pt": 100 * (scores["top1"] - whole_top1),
                         "no_hand": scores["no_hand"], "hands_found_top1": scores["found_top1"]})  # fmt: skip
    windowed_letters = Counter(name.split("_")[0] for name in windowed)
    title = (f"Accuracy against hand size: {len(letters)} ASL letters ({', '.join(letters)}), photos per split {summary['splits']}, "
             f"{FRAME_W}x{FRAME_H} frames, linear probes of efficientnet_lite0 at {args.image_size} px, {args.epochs} epochs; "
             f"training wall s: {', '.join(f'{m} {w:.0f}' for m, (_, w) in models.items() if w is not None)} ({describe_machine()}). "
             f"Photos with no hand found on the photo alone, per split: {summary['hand not found alone']}; training draws "
             f"redrawn smaller: {summary['training draws redrawn smaller']}. Sizes above {100 * largest_whole:.0f}% show a window of "
             f"the photo: {len(windowed)} test photos ({dict(sorted(windowed_letters.items()))}); not shown there: "
             f"{summary['test photos not windowed']}")  # fmt: skip
    (args.out / f"{data.name}.json").write_text(json.dumps({"title": title, "rows": rows}, indent=1))
    emit(rows, COLUMNS, as_json=False, title=title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
