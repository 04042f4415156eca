"""How fast the hand localiser is, and how small a hand it finds, on 640x480 frames.

    .venv/bin/python -m benchmarks.hands                       # speed with 1 and 2 LiteRT threads, then the size table
    .venv/bin/python -m benchmarks.hands --threads 1 --frames 100 --no-sizes

Speed: a 640x480 scene (an empty frame of the ASL set) with one ASL hand photo pasted at 280x280 px;
per call, the median and 90th percentile of palm detection alone, the landmark model alone, ``find``
(both), and ``HandTracker.update`` over a video of that hand held still (a pixel of jitter and sensor
noise per frame) and of the hand sliding across the frame, with how often palm detection ran.

Sizes: the first photo of 15 ASL letters pasted at several sizes onto two scenes (an empty ASL frame
and a flower photo), and onto the first in grey as a grayscale camera gives it; how many hands ``find``
returns, against the hand's width as a share of the frame.
Needs the models (python -m training.prepare hand-models) and ai-edge-litert (the [hands] extra).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from benchmarks.common import csv_list, describe_machine, emit, existing_folder, note
from benchmarks.recipes import SHARED_DATA
from gesture_core.cli import CommandParser, command
from gesture_core.hands import HandLocaliser, HandTracker, palm_to_square
from gesture_core.runtime import MOST_THREADS
from training.cli import int_at_least

FRAME_W, FRAME_H = 640, 480
LETTERS = "ABCDEFGHIKLOVWY"
SPEED_SIDE = 280
SIZE_SIDES = (80, 120, 160, 240, 360)
SPEED_COLUMNS = [("threads", "LiteRT threads", "d"), ("step", "step", "s"), ("median_ms", "median ms", ".1f"),
                 ("p90_ms", "p90 ms", ".1f"), ("fps", "frames/s", ".0f"), ("palm_per_100", "palm detections per 100 frames", ".0f")]  # fmt: skip
SIZE_COLUMNS = [("side", "photo side px", "d"), ("hand_width", "hand width, % of frame", ".0f"), ("scene", "scene", "s"),
                ("found", "hands found", "s")]  # fmt: skip


def read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def first_image(folder: Path) -> Path:
    return sorted(folder.iterdir())[0]


def scenes(asl: Path) -> dict[str, np.ndarray]:
    found = {"empty ASL frame": first_image(asl / "nothing"), "flowers": first_image(SHARED_DATA / "flowers" / "daisy")}
    return {name: cv2.resize(read_rgb(path), (FRAME_W, FRAME_H)) for name, path in found.items() if path.exists()}


def paste(background: np.ndarray, photo: np.ndarray, side: int, x: int, y: int) -> np.ndarray:
    frame = background.copy()
    frame[y : y + side, x : x + side] = cv2.resize(photo, (side, side), interpolation=cv2.INTER_AREA)
    return frame


def in_grey(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` as a grayscale camera would give it: one channel, repeated in all three."""
    return cv2.cvtColor(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


def video(background: np.ndarray, photo: np.ndarray, frames: int, *, sliding: bool) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    clips = []
    for i in range(frames):
        x = 40 + (2 * i) % (FRAME_W - SPEED_SIDE - 80) if sliding else 300 + i % 3
        frame = paste(background, photo, SPEED_SIDE, x, 140 + i % 2).astype(np.int16)
        clips.append(np.clip(frame + rng.integers(-4, 5, frame.shape), 0, 255).astype(np.uint8))
    return clips


def timed(call: Callable[[], object], repeats: int) -> list[float]:
    call()  # warm-up: the first invoke plans XNNPACK's kernels
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def speed_row(threads: int, step: str, seconds: list[float], palm_calls: int | None = None) -> dict:
    median = float(np.median(seconds))
    return {"threads": threads, "step": step, "median_ms": 1e3 * median, "p90_ms": 1e3 * float(np.percentile(seconds, 90)),
            "fps": 1.0 / float(np.mean(seconds)), "palm_per_100": None if palm_calls is None else 100 * palm_calls / len(seconds)}  # fmt: skip


def speed_rows(models: Path | None, threads: int, frame: np.ndarray, clips: dict[str, list[np.ndarray]], frames: int, every: int) -> list[dict]:
    localiser = HandLocaliser(models, threads=threads)
    palms = localiser.detect_palms(frame)
    if not palms:
        raise ValueError("the benchmark's hand was not found; the models or the data differ from the measured ones")
    square = palm_to_square(palms[0])
    rows = [
        speed_row(threads, "palm detection", timed(lambda: localiser.detect_palms(frame), frames)),
        speed_row(threads, "landmark model (one hand)", timed(lambda: localiser.hand_in(frame, square), frames)),
        speed_row(threads, "find: palm + landmarks", timed(lambda: localiser.find(frame), frames)),
    ]
    for name, clip in clips.items():
        tracker = HandTracker(localiser, redetect_every=every)
        before, seconds = localiser.palm_calls, []
        for rgb in clip:
            start = time.perf_counter()
            tracker.update(rgb)
            seconds.append(time.perf_counter() - start)
        rows.append(speed_row(threads, f"tracker, {name} (re-detect every {every})", seconds, localiser.palm_calls - before))
    return rows


def size_rows(models: Path | None, asl: Path) -> list[dict]:
    localiser = HandLocaliser(models, threads=1)
    photos = [read_rgb(first_image(asl / letter)) for letter in LETTERS]
    # the hand's width in the photo alone, from its landmarks (the photo is 200 px wide)
    widths = [np.ptp(np.array(hands[0].landmarks)[:, 0]) / photo.shape[1] for photo in photos if (hands := localiser.find(photo))]
    backgrounds = scenes(asl)
    # the same frames from a grayscale camera (infrared, night mode): MediaPipe's palm detector works on colour
    views = {**{scene: (background, False) for scene, background in backgrounds.items()},
             "empty ASL frame, in grey": (backgrounds["empty ASL frame"], True)}  # fmt: skip
    rows = []
    for side in SIZE_SIDES:
        x, y = FRAME_W - side - 40, FRAME_H - side - 20
        for scene, (background, grey) in views.items():
            found = sum(bool(localiser.find(in_grey(frame) if grey else frame))
                        for frame in (paste(background, photo, side, x, y) for photo in photos))
            rows.append({"side": side, "hand_width": 100 * float(np.median(widths)) * side / FRAME_W, "scene": scene,
                         "found": f"{found} of {len(photos)}"})  # fmt: skip
    return rows


@command
def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(prog="python -m benchmarks.hands", description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=csv_list(int_at_least(1, MOST_THREADS)), default="1,2", help="LiteRT thread counts to time, comma-separated (default: 1,2)")
    parser.add_argument("--frames", type=int_at_least(1), default=200, help="calls per timed step and frames per video (default: 200)")
    parser.add_argument("--redetect-every", type=int_at_least(1), default=10, help="HandTracker's redetect_every (default: 10)")
    parser.add_argument("--models", type=existing_folder, help="folder with the .tflite files (default: the cache, where prepare puts them)")
    parser.add_argument("--no-sizes", action="store_true", help="time only; skip the hand-size table")
    parser.add_argument("--json", action="store_true", help="JSON lines instead of tables")
    args = parser.parse_args(argv)
    asl = SHARED_DATA / "asl-alphabet"
    if not asl.is_dir():
        parser.error(f"{asl} not found: the benchmark pastes the ASL alphabet's photos (../shared/data)")
    background = scenes(asl)["empty ASL frame"]
    photo = read_rgb(first_image(asl / "A"))
    frame = paste(background, photo, SPEED_SIDE, 300, 140)
    clips = {"still hand": video(background, photo, args.frames, sliding=False),
             "sliding hand": video(background, photo, args.frames, sliding=True)}  # fmt: skip
    note(f"machine: {describe_machine()}")
    rows = [row for threads in args.threads for row in speed_rows(args.models, threads, frame, clips, args.frames, args.redetect_every)]
    emit(rows, SPEED_COLUMNS, as_json=args.json, title=f"Hand localiser per 640x480 frame ({describe_machine()})")
    if not args.no_sizes:
        emit(size_rows(args.models, asl), SIZE_COLUMNS, as_json=args.json, title="Hands found against hand size (find, 15 ASL letters)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
