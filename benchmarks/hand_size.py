"""Accuracy against hand size: whole-frame input (letterbox) against hand crops (--hands), on
synthetic 640x480 frames made of real ASL hand photos pasted at several sizes onto real scenes.

    .venv/bin/python -m benchmarks.hand_size --quick      # 4 letters, 40 photos each, 4 sizes (minutes on 2 cores)
    .venv/bin/python -m benchmarks.hand_size              # 6 letters, all 120 photos each, 6 sizes

Honest split: each letter's photos (the signer's 200x200 video frames) are split by training's own
grouped split (``--group-by frames``: blocks of neighbouring frame numbers), so no test photo, nor a
frame next to one, is ever pasted into a training frame. Scenes are split too: even-numbered
background photos (ASL 'nothing' frames and flower photos) for training, odd ones for the test.

Training frames paste each training photo at random sizes (log-uniform over the test sizes' range)
and places. Both models are trained the same way, linear probes on cached features (``--freeze
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
from pathlib import Path

import cv2
import numpy as np

from benchmarks.common import describe_machine, emit, note
from benchmarks.recipes import REPO, SHARED_DATA, run_finetune
from benchmarks.whole_frame import images_in, paste_at_random, scene_frame
from gesture_core.classifier import Classifier, load_classifier
from gesture_core.cli import command
from gesture_core.images import read_rgb
from training.data import Sample, load_folder
from training.evaluate import evaluate_samples
from training.grouping import assign_groups, grouped_split
from training.hand_crops import HandCropCache, frame_metrics, frame_outputs

FRAME_W, FRAME_H = 640, 480
# The pasted photo's side as a share of the frame width; the hand itself spans about 0.36 of the
# photo's width (median, landmarks), so these are hands of about 4-27% of the frame's width. A whole
# 200x200 photo fits a 4:3 frame up to 0.75 of its width.
SIDES = (0.12, 0.18, 0.25, 0.35, 0.5, 0.75)
QUICK_SIDES = (0.12, 0.25, 0.5, 0.75)
LETTERS = "A,B,C,L,V,Y"
QUICK_LETTERS = "A,C,V,Y"
MODES = {"whole frame (letterbox)": ["--crop", "letterbox"], "hand crops (--hands)": ["--hands"]}
COLUMNS = [("side", "photo side, % of frame width", ".0f"), ("hand_width", "hand width, % of frame (median)", ".1f"),
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


def synthesize(photos: dict[str, dict[str, list[str]]], scenes: list[Path], out: Path, *, sides: tuple[float, ...],
               pastes: int, seed: int) -> None:  # fmt: skip
    """OUT/{train,val}/<letter>/ (each photo ``pastes`` times at random sizes) and OUT/sizes/<side>/<letter>/
    (each test photo once per size), on the split's own scenes; OUT/test holds every size (finetune's test)."""
    rng = np.random.default_rng(seed)
    train_scenes, test_scenes = scenes[0::2], scenes[1::2]
    low, high = np.log(min(sides)), np.log(max(sides))
    for split in ("train", "val"):
        for letter, paths in photos[split].items():
            for i, path in enumerate(paths):
                for k in range(pastes):
                    frame = scene_frame(train_scenes[rng.integers(len(train_scenes))], (FRAME_W, FRAME_H))
                    side = min(FRAME_H, round(FRAME_W * float(np.exp(rng.uniform(low, high)))))
                    paste_at_random(frame, read_rgb(path), side, rng)
                    write_frame(out / split / letter / f"{letter}_{i}_{k}.jpg", frame)
    for letter, paths in photos["test"].items():
        for i, path in enumerate(paths):
            for side_share in sides:
                frame = scene_frame(test_scenes[rng.integers(len(test_scenes))], (FRAME_W, FRAME_H))
                paste_at_random(frame, read_rgb(path), min(FRAME_H, round(FRAME_W * side_share)), rng)
                name = f"{letter}_{i}_{round(100 * side_share)}.jpg"
                write_frame(out / "sizes" / f"{round(100 * side_share)}" / letter / name, frame)
                write_frame(out / "test" / letter / name, frame)


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
           "--freeze", "backbone", "--augment", "none", "--epochs", str(args.epochs), "--image-size", str(args.image_size),
           "--workers", str(args.workers), "--seed", str(args.seed), "--out", str(out)]  # fmt: skip
    _, wall = run_finetune(cmd, out, quiet=True)
    return out / "best.pt", wall


@command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.hand_size", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    p.add_argument("--asl", type=Path, default=SHARED_DATA / "asl-alphabet", help="the ASL alphabet photos (hands, and 'nothing' scenes)")
    p.add_argument("--flowers", type=Path, default=SHARED_DATA / "flowers", help="flower photos (scenes)")
    p.add_argument("--quick", action="store_true", help=f"letters {QUICK_LETTERS}, 40 photos each, sizes {QUICK_SIDES}, 1 paste")
    p.add_argument("--letters", default=None, help=f"comma-separated classes (default {LETTERS}; --quick {QUICK_LETTERS})")
    p.add_argument("--per-class", type=int, default=None, help="photos per letter (default all 120; --quick 40)")
    p.add_argument("--pastes", type=int, default=None, help="training frames per training photo (default 2; --quick 1)")
    p.add_argument("--epochs", type=int, default=30, help="linear-probe epochs (cached features: cheap)")
    p.add_argument("--image-size", type=int, default=128, help="model input size, both modes")
    p.add_argument("--workers", type=int, default=2, help="data-loading processes per run")
    p.add_argument("--seed", type=int, default=0, help="split, frames and training")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "hand-size", help="frames, runs and hand_size.json")
    args = p.parse_args(argv)
    for folder in (args.asl, args.flowers):
        if not folder.is_dir():
            p.error(f"{folder}: not a folder (the shared data lives in ../shared/data)")
    letters = (args.letters or (QUICK_LETTERS if args.quick else LETTERS)).split(",")
    if missing := [letter for letter in letters if not (args.asl / letter).is_dir()]:
        p.error(f"--letters {', '.join(missing)}: not in {args.asl}; choose from {', '.join(sorted(d.name for d in args.asl.iterdir() if d.is_dir()))}")
    per_class = args.per_class or (40 if args.quick else 120)
    pastes = args.pastes or (1 if args.quick else 2)
    sides = QUICK_SIDES if args.quick else SIDES
    data = args.out / f"data-{''.join(letters)}-{per_class}pc-{pastes}x-s{args.seed}"
    if not (data / "done").exists():
        started = time.perf_counter()
        photos = split_photos(args.asl, letters, per_class, args.seed)
        synthesize(photos, background_photos(args.asl, args.flowers, 120), data, sides=sides, pastes=pastes, seed=args.seed)
        (data / "done").write_text(json.dumps({s: {c: len(v) for c, v in d.items()} for s, d in photos.items()}) + "\n")
        note(f"frames written to {data} in {time.perf_counter() - started:.0f} s")
    models = {mode: train(data, args.out / "runs", mode, args) for mode in MODES}
    whole, hands = (load_classifier(models[mode][0], "cpu", engine="torch") for mode in MODES)
    rows = []
    for side in sides:
        samples, _ = load_folder(data / "sizes" / f"{round(100 * side)}", whole.classes)
        scores = hand_crops_scores(hands, samples)
        whole_top1 = whole_frame_top1(whole, samples)
        rows.append({"side": 100 * side, "hand_width": scores["hand_width"], "n": len(samples), "whole_frame": whole_top1,
                     "hands": scores["top1"], "gain_pt": 100 * (scores["top1"] - whole_top1), "no_hand": scores["no_hand"],
                     "hands_found_top1": scores["found_top1"]})  # fmt: skip
    split_counts = json.loads((data / "done").read_text())
    title = (f"Accuracy against hand size: {len(letters)} ASL letters ({', '.join(letters)}), photos per split {split_counts}, "
             f"{FRAME_W}x{FRAME_H} frames, linear probes of efficientnet_lite0 at {args.image_size} px, {args.epochs} epochs; "
             f"training wall s: {', '.join(f'{m} {w:.0f}' for m, (_, w) in models.items() if w is not None)} ({describe_machine()})")  # fmt: skip
    (args.out / f"{data.name}.json").write_text(json.dumps({"title": title, "rows": rows}, indent=1))
    emit(rows, COLUMNS, as_json=False, title=title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
