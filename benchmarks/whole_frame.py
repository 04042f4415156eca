"""Whole-frame input against the centre crop, on synthetic webcam-shaped data: hand photos from a
shared set pasted anywhere on wide (4:3) backgrounds, so some hands sit where the centre square of
the frame does not reach. Trains one model per ``--crop`` mode on the same frames and split, and
prints test top-1 for each, with the share of hand area the centre square cuts off.

    .venv/bin/python -m benchmarks.whole_frame                                    # 40 per class, 3 epochs, 128 px
    .venv/bin/python -m benchmarks.whole_frame --probe --epochs 30              # small: linear probes on cached features
    .venv/bin/python -m benchmarks.whole_frame --as-is --source ../shared/data/flowers --probe --epochs 30   # real photos, no pasting

The frames go to OUT/data (made once, seeded); runs to OUT/runs/<crop>, read back if already there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np

from benchmarks.common import check_input_size, csv_list, describe_machine, emit
from benchmarks.recipes import REPO, SHARED_DATA, quick_subset, run_finetune
from gesture_core.cli import CommandParser, command
from gesture_core.images import IMAGE_SUFFIXES, read_rgb
from gesture_core.preprocess import CROP_MODES
from training.cli import backbone_name, image_size, int_at_least, seed, workers

FRAME_W, FRAME_H = 320, 240  # 4:3, a webcam's shape
HAND_HEIGHT = (0.35, 0.6)  # of the frame height
COLUMNS = [("crop", "crop", "s"), ("test_top1", "test top-1", ".2%"), ("best_epoch", "best epoch", "d"), ("wall_s", "wall s", ".0f")]


def images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def scene_frame(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A background photo as a (width, height) frame."""
    return cv2.resize(read_rgb(path), size, interpolation=cv2.INTER_AREA)


def placements(side: int, keep: tuple[float, float, float, float] | None, frame_size: tuple[int, int]) -> list[tuple[int, int]] | None:
    """Where a ``side``² photo's top-left may go in a (width, height) frame, as [(x_low, x_high), (y_low, y_high)]
    (inclusive): wholly inside the frame along an axis where it fits; where it does not, overhanging the frame
    (negative offsets) so that ``keep``, a box (x0, y0, x1, y1) in shares of the photo, stays wholly in view.
    ``None`` when the photo does not fit and ``keep`` is None or larger than the frame along an axis."""
    ranges = []
    for axis, dim in enumerate(frame_size):
        if side <= dim:
            ranges.append((0, dim - side))
            continue
        if keep is None:
            return None
        start, end = int(np.floor(keep[axis] * side)), int(np.ceil(keep[axis + 2] * side))  # keep's pixels in the photo
        low, high = max(dim - side, -start), min(0, dim - end)
        if low > high:
            return None
        ranges.append((low, high))
    return ranges


def paste_at_random(frame: np.ndarray, photo: np.ndarray, side: int, rng: np.random.Generator,
                    keep: tuple[float, float, float, float] | None = None, at_edge: bool = False) -> tuple[int, int]:  # fmt: skip
    """``photo`` resized to ``side``² and pasted, in place, at a random place: wholly inside ``frame``, or where it
    is larger than the frame, a random window of it that keeps ``keep`` (see ``placements``) wholly in view.
    ``at_edge``: against the frame's left or right edge, at random (the farthest x along that axis).
    Returns the photo's top-left (x, y) in frame pixels, negative where it overhangs. Raises ValueError when
    no place shows what must be kept."""
    height, width = frame.shape[:2]
    ranges = placements(side, keep, (width, height))
    if ranges is None:
        raise ValueError(f"a {side}px photo does not fit a {width}x{height} frame with {keep} kept in view")
    x, y = (int(rng.integers(low, high + 1)) for low, high in ranges)
    if at_edge:
        x = ranges[0][int(rng.integers(2))]
    resized = cv2.resize(photo, (side, side), interpolation=cv2.INTER_AREA)
    frame[max(0, y) : min(height, y + side), max(0, x) : min(width, x + side)] = resized[max(0, -y) : height - y, max(0, -x) : width - x]
    return x, y


def synthesize(source: Path, backgrounds: Path, out: Path, per_class: int, seed: int, placement: str = "anywhere") -> float:
    """Write OUT/<class>/<class>_<i>.jpg; returns the mean share of hand area outside the frame's centre square.
    ``placement``: ``anywhere`` in the frame, or against its left or right ``edges`` (a hand pointing sideways)."""
    rng = np.random.default_rng(seed)
    scenes = images_in(backgrounds)
    cut = []
    for cls in sorted(p.name for p in source.iterdir() if p.is_dir()):
        (out / cls).mkdir(parents=True, exist_ok=True)
        for i, hand_path in enumerate(images_in(source / cls)[:per_class]):
            frame = scene_frame(scenes[rng.integers(len(scenes))], (FRAME_W, FRAME_H))
            side = int(FRAME_H * rng.uniform(*HAND_HEIGHT))
            x, _ = paste_at_random(frame, read_rgb(hand_path), side, rng, at_edge=placement == "edges")
            left = (FRAME_W - FRAME_H) // 2  # the centre square spans [left, left + FRAME_H)
            cut.append(1 - max(0, min(x + side, left + FRAME_H) - max(x, left)) / side)
            cv2.imwrite(str(out / cls / f"{cls}_{i}.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
    return float(np.mean(cut))


@command
def main(argv: list[str] | None = None) -> int:
    p = CommandParser(prog="python -m benchmarks.whole_frame", description=__doc__.split("\n\n")[0])
    p.add_argument("--source", type=Path, default=SHARED_DATA / "sign-digits", help="ImageFolder of hand photos")
    p.add_argument("--backgrounds", type=Path, default=SHARED_DATA / "flowers", help="folder of photos used as scenes")
    p.add_argument("--per-class", type=int_at_least(1), default=40, help="frames per class")
    p.add_argument("--epochs", type=int_at_least(1), default=3, help="per run")
    p.add_argument("--image-size", type=image_size, default=128, help="model input size")
    p.add_argument("--crops", type=csv_list(str, CROP_MODES), default=list(CROP_MODES), help=f"comma-separated, from {', '.join(CROP_MODES)}")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "whole-frame", help="frames, runs and whole_frame.json")
    p.add_argument("--backbone", type=backbone_name, default="efficientnet_lite0", help="the model the documented figures were measured with")
    p.add_argument("--workers", type=workers, default=2, help="data-loading processes per run")
    p.add_argument("--seed", type=seed, default=0, help="frames, split and training")
    p.add_argument("--placement", choices=("anywhere", "edges"), default="anywhere",
                   help="where the hands go: anywhere in the frame, or against its left or right edge (pointing sideways)")
    p.add_argument("--as-is", action="store_true", help="the source's own images (the first --per-class of each class, linked), "
                   "not pasted on scenes: what the whole frame costs or gains on real photos")
    p.add_argument("--probe", action="store_true", help="linear probe (--freeze backbone --augment none): the backbone's features of "
                   "each geometry, computed once, so many epochs cost little; a small CPU's version of the comparison")
    args = p.parse_args(argv)
    check_input_size(p, [args.backbone], args.image_size)
    for folder in (args.source, args.backgrounds):
        if not folder.is_dir():
            p.error(f"{folder}: not a folder (the shared data lives in ../shared/data)")
    if args.as_is:
        data = quick_subset(args.source, args.out / f"{args.source.name}-as-is-{args.per_class}", args.per_class)
        scene = f"{args.source.name} photos as they are"
    else:
        data = args.out / f"data-{args.per_class}-{args.seed}{'' if args.placement == 'anywhere' else '-edges'}"
        marker = data / "hand_area_cut_by_centre.txt"
        if not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(f"{synthesize(args.source, args.backgrounds, data, args.per_class, args.seed, args.placement):.4f}\n")
        scene = (f"{args.source.name} hands {'on' if args.placement == 'anywhere' else 'at the left or right edge of'} "
                 f"{FRAME_W}x{FRAME_H} scenes (the centre square cuts "
                 f"{float(marker.read_text()):.0%} of the hand area on average)")  # fmt: skip
    rows = []
    for crop in args.crops:
        kind = "probe" if args.probe else "finetune"
        out = args.out / "runs" / f"{data.name}-{crop}-{kind}-{args.per_class}pc-{args.epochs}ep-{args.image_size}px-s{args.seed}"
        probe = ["--freeze", "backbone", "--augment", "none"] if args.probe else []
        command = [sys.executable, "-m", "training.finetune", "--data", str(data), "--crop", crop, "--group-by", "none", *probe,
                   "--backbone", args.backbone, "--epochs", str(args.epochs), "--image-size", str(args.image_size), "--workers", str(args.workers),
                   "--seed", str(args.seed), "--out", str(out)]  # fmt: skip
        metrics, wall = run_finetune(command, out, quiet=True)
        rows.append({"crop": crop, "test_top1": metrics["test"]["top1"], "best_epoch": metrics["best_epoch"], "wall_s": wall})
    title = (f"Whole frame vs centre crop: {scene}, {args.per_class} per class, {args.epochs} epochs at {args.image_size} px"
             f"{', linear probe' if args.probe else ''} ({describe_machine()})")  # fmt: skip
    (args.out / f"{data.name}.json").write_text(json.dumps({"title": title, "rows": rows}, indent=1))
    emit(rows, COLUMNS, as_json=False, title=title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
