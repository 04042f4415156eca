"""Record your own gesture dataset from a webcam (or a video file) straight into the ImageFolder layout.

    python -m service.webcam.capture --out datasets/my-gestures --classes fist,palm,peace,none
    python -m service.webcam.capture --out datasets/my-gestures --classes fist,palm,peace,none --roi
    python -m service.webcam.capture --out datasets/my-gestures --source clip.mp4 --headless --every 5 --label palm

Live preview keys: 1-9 save one frame of that class (hold the key to save a stream), SPACE starts or
stops recording the selected class (one frame every --every frames), b records a timed burst of
--burst frames after a 3-second countdown, n does the same for the "no gesture" class (added as
``none`` when --classes has none of its names), r toggles the ROI box, u deletes the last saved image,
q or Esc quits. The overlay shows the class being recorded and how many images each class has.

Images go to OUT/<class>/<class>-<session>-<n>.jpg (the session of a video file is named after its
content, so the same video captured twice is one session: ``source_session``), opened with O_EXCL so an existing file is
never overwritten, and written whole or not at all: if the disk fills up the half-written file is
removed, capture stops with a clear message, and every image saved before stays. With ``--roi``
only the centred square (the same box the webcam demo classifies) is saved. Record a ``none``
class too (NONE_TIP says what goes in it): training calibrates the "no gesture" threshold on it.

Training reads these names: it keeps each session whole in one split (``--group-by auto``), so record
every class in at least three sessions (train, validation, test); with one session per class it can
only hold out the session's last frames, and says so. Name a class whose meaning has a direction
with the word (``point_left``, ``swipe_right``): training then turns horizontal flips off (``--flip auto``).
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from gesture_core.cli import EXIT_USAGE, CommandParser, DefaultsAndEpilogHelpFormatter, command, output_arg
from gesture_core.images import (  # IMAGE_SUFFIXES: the files training reads as images, counted as a class's photos
    FRAME_JPEG_QUALITY,
    IMAGE_SUFFIXES,
    VIDEO_FRAME_EVERY,
)
from gesture_core.preprocess import longer_side_at_most
from gesture_core.rejection import is_reject_name
from gesture_core.videos import frame_step
from service.webcam.demo import display_problem
from service.webcam.grabber import ended_early
from service.webcam.overlay import (
    DEFAULT_ROI,
    centred_roi,  # the webcam demo's box: captured crops match what it classifies
    drawable,
)
from service.webcam.sources import (
    SourceError,
    describe_source,
    is_live,
    open_source,
    parse_source,
    read_frames,
    separate_photos,
    source_folder,
)

MAX_KEYED_CLASSES = 9
COUNTDOWN_S = 3.0
NONE_TIP = ("tip: record a 'none' class too (key n: a 3-second countdown, then a burst): the empty scene, hands at rest or "
            "passing by, half-made signs and signs you do not train, other people. Training calibrates the 'no gesture' "
            "threshold on it (docs/no-gesture.md)")
HEADLESS_NONE_TIP = ("tip: record a 'none' class too (--label none, from a clip of no gesture): the empty scene, hands at rest "
                     "or passing by, half-made signs and signs you do not train, other people. Training calibrates the 'no "
                     "gesture' threshold on it (docs/no-gesture.md)")
_CLASS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")
_FONT = cv2.FONT_HERSHEY_SIMPLEX


class CaptureError(RuntimeError):
    """Capture cannot go on; ``str(err)`` says why and what was kept."""


# --------------------------------------------------------------------------- writing


def _write_exclusive(path: Path, data: bytes) -> None:
    """Create ``path`` (never an existing file) holding exactly ``data``."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())  # surface ENOSPC now, not at some later close


class ImageFolderWriter:
    """Saves frames as JPEGs under OUT/<class>/, never overwriting, counting what each class holds."""

    def __init__(self, out: Path, classes: list[str], *, quality: int = FRAME_JPEG_QUALITY, session: str | None = None):
        self.out, self.classes, self.quality = Path(out), list(classes), quality
        # The process id too: two captures started in the same second took one name, and their recordings became one group.
        self.session = session or f"{time.strftime('%Y%m%d-%H%M%S')}p{os.getpid()}"
        self.saved: list[Path] = []
        self.counts = {name: _count_images(self.out / name) for name in self.classes}
        # after this session's frames already there (the same video captured again), not through them one by one
        self._next = {name: _last_number(self.out / name, f"{name}-{self.session}-") for name in self.classes}

    def save(self, label: str, bgr: np.ndarray) -> Path:
        # at most 1024 px a side, as a folder of recordings' frames are: an 8000x6000 video was saved at full size
        ok, buf = cv2.imencode(".jpg", longer_side_at_most(bgr), [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise CaptureError(f"could not encode a {bgr.shape} frame as JPEG")
        data = buf.tobytes()
        try:  # created on first save: an empty class folder would make training refuse the dataset
            (self.out / label).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CaptureError(f"cannot create {self.out / label}: {err.strerror or err}") from None
        while True:
            self._next[label] += 1
            path = self.out / label / f"{label}-{self.session}-{self._next[label]:05d}.jpg"
            try:
                _write_exclusive(path, data)
                break
            except FileExistsError:
                continue  # another session (or a user's file) has this name: take the next one
            except OSError as err:
                if path.exists():
                    path.unlink(missing_ok=True)  # a truncated JPEG would poison the dataset
                raise CaptureError(self._stopped(err, path)) from None
        self.saved.append(path)
        self.counts[label] += 1
        return path

    def undo(self) -> Path | None:
        """Delete the most recent image of this session (only ever one we wrote)."""
        if not self.saved:
            return None
        path = self.saved.pop()
        path.unlink(missing_ok=True)
        self.counts[path.parent.name] -= 1
        return path

    def summary(self) -> str:
        return ", ".join(f"{name} {self.counts[name]}" for name in self.classes)

    def _stopped(self, err: OSError, path: Path) -> str:
        why = "disk full" if err.errno in (errno.ENOSPC, errno.EDQUOT) else (err.strerror or str(err))
        return (f"{why} while writing {path}; capture stopped. The {len(self.saved)} image(s) saved this session "
                f"and everything already in {self.out} are kept")  # fmt: skip


def source_session(spec: int | str | os.PathLike) -> str | None:
    """The session of the frames of a video file, an image sequence or a folder: named after what is read,
    so that capturing the same video twice puts both captures' frames in one session, and so in one split.
    As two sessions, near-copies of training frames sat in the test split and raised its score, with
    nothing said. A file's name comes from its content (a copy elsewhere is the same recording); the rest's
    from where they are. None for a camera or a stream, where every capture is a new recording."""
    if is_live(spec):
        return None
    source, digest = str(parse_source(spec)), hashlib.sha1()
    if os.path.isfile(source):  # not a device such as /dev/video0, which is a camera
        with open(source, "rb") as f:  # its first and last MiB and its size: quick, even for a long video
            size = os.fstat(f.fileno()).st_size
            digest.update(f.read(1 << 20) + str(size).encode())
            f.seek(max(0, size - (1 << 20)))
            digest.update(f.read(1 << 20))
            started = os.fstat(f.fileno()).st_mtime
    else:  # a folder, a glob or a numbered sequence
        digest.update(os.path.abspath(source).encode())
        started = time.time()
    return f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(started))}s{digest.hexdigest()[:10]}"


def _last_number(folder: Path, prefix: str) -> int:
    """The highest <n> of the files ``prefix<n>.jpg`` in ``folder`` (0 for none)."""
    try:
        names = [e.name for e in os.scandir(folder) if e.name.startswith(prefix) and e.name.endswith(".jpg")]
    except OSError:
        return 0
    return max((int(n) for name in names if (n := name[len(prefix):-4]).isdigit()), default=0)


def _count_images(folder: Path) -> int:
    try:
        return sum(1 for e in os.scandir(folder) if e.is_file() and Path(e.name).suffix.lower() in IMAGE_SUFFIXES)
    except OSError:
        return 0


def region(frame: np.ndarray, roi: float | None) -> np.ndarray:
    """What gets saved: the whole frame, or the centred ROI square."""
    if roi is None:
        return frame
    x0, y0, x1, y1 = centred_roi(frame.shape, roi)
    return frame[y0:y1, x0:x1]


# --------------------------------------------------------------------------- headless


def capture_headless(cap: cv2.VideoCapture, writer: ImageFolderWriter, label: str, *, every: int, roi: float | None,
                     max_images: int | None, description: str = "the source", log=print) -> int:  # fmt: skip
    """Save every ``every``-th frame as ``label``; returns how many were saved. What the source held
    but could not be read (a video cut short, images that do not decode) is said, as the webcam says it."""
    saved, read = 0, 0
    for index, frame in enumerate(read_frames(cap)):
        read = index + 1
        if index % every:
            continue
        writer.save(label, region(frame, roi))
        saved += 1
        if max_images is not None and saved >= max_images:
            break
    else:  # the source ended: did it end early?
        if note := ended_early(cap, read, description):
            print(f"warning: {note}", file=sys.stderr)
    log(f"saved {saved} image(s) of {label!r} to {writer.out / label}; totals: {writer.summary()}")
    return saved


# --------------------------------------------------------------------------- live preview


@dataclass
class LiveState:
    classes: list[str]
    selected: int = 0
    recording: bool = False
    burst_left: int = 0
    burst_starts_at: float = 0.0
    roi: float | None = None
    last_roi: float = DEFAULT_ROI
    message: str = ""
    message_until: float = 0.0
    quit: bool = False
    pending_saves: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.classes[self.selected]

    def say(self, text: str, now: float, seconds: float = 1.5) -> None:
        self.message, self.message_until = text, now + seconds


def handle_key(key: int, state: LiveState, now: float, *, burst: int) -> None:
    """Update ``state`` for one key press (``cv2.waitKey`` code, -1 for none)."""
    if key < 0:
        return
    char = chr(key & 0xFF)
    if char in "123456789" and int(char) <= len(state.classes):
        state.selected = int(char) - 1
        state.pending_saves.append(state.label)
    elif char == " ":
        state.recording = not state.recording
        state.say(f"recording {state.label}" if state.recording else "stopped", now)
    elif char == "b":
        state.burst_left, state.burst_starts_at = burst, now + COUNTDOWN_S
    elif char == "n" and (reject := [i for i, name in enumerate(state.classes) if is_reject_name(name)]):
        state.selected = reject[0]
        state.burst_left, state.burst_starts_at = burst, now + COUNTDOWN_S
    elif char == "r":
        if state.roi is None:
            state.roi = state.last_roi
        else:
            state.last_roi, state.roi = state.roi, None
    elif char == "u":
        state.pending_saves.append("<undo>")
    elif char == "q" or key & 0xFF == 27:
        state.quit = True


def due_saves(state: LiveState, index: int, now: float, *, every: int) -> list[str]:
    """Labels to save for this frame: key presses, continuous recording, a running burst."""
    labels, state.pending_saves = state.pending_saves, []
    if state.recording and index % every == 0:
        labels.append(state.label)
    if state.burst_left and now >= state.burst_starts_at and index % every == 0:
        labels.append(state.label)
        state.burst_left -= 1
    return labels


def draw_overlay(frame: np.ndarray, state: LiveState, counts: dict[str, int], now: float) -> np.ndarray:
    """The preview image: frame, ROI box, class list with keys and counts, recording state, key help."""
    canvas = frame.copy()
    if canvas.shape[1] < 480:  # tiny test clips: enlarge so the text stays legible
        scale = 480 / canvas.shape[1]
        canvas = cv2.resize(canvas, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    else:
        scale = 1.0
    if state.roi is not None:
        x0, y0, x1, y1 = (round(v * scale) for v in centred_roi(frame.shape, state.roi))
        cv2.rectangle(canvas, (x0, y0), (x1, y1), (80, 220, 80), 2)
    for i, name in enumerate(state.classes):
        selected = i == state.selected
        text = f"{i + 1} {name}: {counts.get(name, 0)}"
        _text(canvas, ("> " if selected else "  ") + text, (10, 28 + 24 * i), (80, 220, 80) if selected else (255, 255, 255))
    status = ""
    if state.burst_left and now < state.burst_starts_at:
        status = f"burst of {state.burst_left} {state.label} in {state.burst_starts_at - now:.0f} s"
    elif state.burst_left or state.recording:
        status = f"REC {state.label}"
        cv2.circle(canvas, (canvas.shape[1] - 20, 20), 8, (60, 60, 230), -1)
    elif now < state.message_until:
        status = state.message
    if status:
        _text(canvas, status, (10, canvas.shape[0] - 40), (60, 60, 230))
    hint = "1-9 save  space rec  b burst  n no-gesture burst  r roi  u undo  q quit"
    if not any(map(is_reject_name, state.classes)):
        hint = "add a 'none' class to reject non-gestures | " + hint
    _text(canvas, hint, (10, canvas.shape[0] - 14), (200, 200, 200), 0.45)
    return canvas


def _text(canvas: np.ndarray, text: str, origin: tuple[int, int], colour, size: float = 0.6) -> None:
    text = drawable(text)  # class names may be any language or emoji: OpenCV's fonts are ASCII only
    cv2.putText(canvas, text, origin, _FONT, size, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(canvas, text, origin, _FONT, size, colour, 1, cv2.LINE_AA)


def capture_live(cap: cv2.VideoCapture, writer: ImageFolderWriter, state: LiveState, *, every: int, burst: int,
                 wait_ms: int, log=print) -> None:  # fmt: skip
    window = "capture - q to quit"
    cv2.namedWindow(window, cv2.WINDOW_NORMAL)
    try:
        for index, frame in enumerate(read_frames(cap)):
            now = time.monotonic()
            for label in due_saves(state, index, now, every=every):
                if label == "<undo>":
                    removed = writer.undo()
                    state.say(f"deleted {removed.name}" if removed else "nothing to undo", now)
                else:
                    writer.save(label, region(frame, state.roi))
            cv2.imshow(window, draw_overlay(frame, state, writer.counts, now))
            handle_key(cv2.waitKey(wait_ms), state, now, burst=burst)
            if state.quit or cv2.getWindowProperty(window, cv2.WND_PROP_VISIBLE) < 1:
                break
    finally:
        cv2.destroyWindow(window)
    log(f"saved {len(writer.saved)} image(s) this session to {writer.out}; totals: {writer.summary()}")


# --------------------------------------------------------------------------- command line


def class_list(text: str) -> list[str]:
    names = [c.strip() for c in text.split(",")]
    if len(names) > 1 and not all(names):  # "a,,b": the empty one was dropped without a word
        raise argparse.ArgumentTypeError(f"an empty class name in {text!r}: one name between each two commas")
    names = [name for name in names if name]
    bad = [c for c in names if not _CLASS_NAME.match(c)]
    if not names or bad:  # ASCII: the preview's font draws nothing else, and "手" was told to use letters
        raise argparse.ArgumentTypeError(f"invalid class name(s) {', '.join(map(repr, bad)) or '(none given)'}: "
                                         "use ASCII letters (a-z, A-Z), digits, _ and -, comma-separated")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"duplicate class names in {text!r}")
    if len({name.casefold() for name in names}) != len(names):  # two folders on Linux, one on macOS and Windows
        twins = sorted(name for name in names if sum(other.casefold() == name.casefold() for other in names) > 1)
        raise argparse.ArgumentTypeError(f"class names {', '.join(map(repr, twins))} differ only in case: they would be one folder on macOS and Windows")
    return names


def class_name(text: str) -> str:
    """One class name, by ``class_list``'s rules (it becomes a folder name under --out)."""
    names = class_list(text)
    if len(names) != 1:
        raise argparse.ArgumentTypeError(f"one class name, got {text!r}")
    return names[0]


def with_reject_class(classes: list[str]) -> list[str]:
    """``classes``, plus ``none`` when none of them is a "no gesture" name and a key is free for it."""
    if any(map(is_reject_name, classes)) or len(classes) >= MAX_KEYED_CLASSES:
        return classes
    return [*classes, "none"]


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def _positive(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:  # "²" is a digit to isdigit(), not to int()
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def class_folder_given_as_out(out: Path, classes: list[str]) -> str | None:
    """Why ``out`` looks like one class's folder rather than the dataset folder, or None. Images go
    to OUT/<class>/, so such an --out filed every frame one level too deep, where training reads them
    all as that one class (a class folder is read recursively)."""
    if out.name in classes:
        return f"--out {out} ends in the class name {out.name!r}, so images would go to {out / out.name}/"
    if _count_images(out) and not any(entry.is_dir() for entry in out.iterdir()):  # a dataset's stray photo is no class folder
        return f"--out {out} holds images and no folders, as a class folder does, and images go to OUT/<class>/"
    return None


def reads_from_inside(source: str, out: Path) -> str | None:
    """Why ``--source`` may not be read into ``--out``: its folder is inside the dataset, so each image
    read would be saved again as a new one (into its own class, a copy of every photo; into another,
    a photo in two classes), or None."""
    try:
        folder = source_folder(source)
    except SourceError:
        return None  # open_source says what is wrong with it
    if folder is None or not folder.resolve().is_relative_to(out.resolve()):
        return None
    return (f"--source {source} is inside --out {out}: every image it reads would be saved into the dataset again as a new one; "
            "read from a folder outside the dataset")


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="python -m service.webcam.capture", description=__doc__.split("\n\n")[0],
                      epilog=NONE_TIP, formatter_class=DefaultsAndEpilogHelpFormatter)  # fmt: skip
    p.add_argument("--out", type=output_arg("folder"), required=True, help="dataset folder; images go to OUT/<class>/")
    p.add_argument(
        "--classes", type=class_list, help="comma-separated class names, keys 1-9 in this order (e.g. fist,palm,peace,none)"
    )
    p.add_argument(
        "--source", default="0", help="camera index, video file, image pattern (frames/%%04d.jpg), folder of images or glob, or stream URL (default: 0)"
    )
    p.add_argument("--roi", type=_fraction, nargs="?", const=DEFAULT_ROI, default=None, metavar="FRACTION",
                   help=f"save only a centred square of this fraction of the shorter side (default {DEFAULT_ROI})")  # fmt: skip
    p.add_argument("--every", type=_positive, default=None,
                   help=f"save one frame in N while recording (default {VIDEO_FRAME_EVERY}, more above 30 fps: one in 1/6 s; 1, every photo, "
                        "for a folder or glob of photos)")
    p.add_argument("--burst", type=_positive, default=30, help="frames per timed burst, key b (default 30)")
    p.add_argument("--quality", type=_positive, default=FRAME_JPEG_QUALITY, help=f"JPEG quality 1-100 (default {FRAME_JPEG_QUALITY})")
    p.add_argument("--headless", action="store_true", help="no window: save every --every-th frame as --label")
    p.add_argument("--label", type=class_name, help="with --headless: the class of every saved frame")
    p.add_argument("--max", type=_positive, default=None, help="with --headless: stop after saving this many")
    return p


def class_folders(out: Path) -> list[str]:
    """The class folders a dataset folder holds already (none where it is not there yet)."""
    return [entry.name for entry in out.iterdir() if entry.is_dir() and not entry.name.startswith(".")] if out.is_dir() else []


def class_differing_in_case(out: Path, classes: list[str]) -> str | None:
    """Why a class would go beside a folder of the dataset that is its name in another case ("a" beside "A"): two
    classes on Linux, where --classes fist,Fist is refused for it, and one folder on macOS and Windows."""
    existing = {name.casefold(): name for name in class_folders(out)}
    for name in classes:
        if (twin := existing.get(name.casefold(), name)) != name:
            return f"class {name!r} differs only in case from the class folder {out / twin}: name it {twin!r} (two classes here, one folder on macOS and Windows)"
    return None


@command
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    classes = args.classes or ([args.label] if args.label else None)
    if args.quality > 100:
        parser.error(f"--quality must be 1-100, got {args.quality}")
    if args.headless:
        if not args.label:
            parser.error("--headless needs --label CLASS (the class of every saved frame)")
        if args.classes and args.label not in args.classes:
            parser.error(f"--label {args.label!r} is not one of --classes: {', '.join(args.classes)}")
    else:
        if not classes:
            parser.error("--classes is required for the live preview (e.g. --classes fist,palm,peace,none)")
        if len(classes) > MAX_KEYED_CLASSES:
            parser.error(
                f"the live preview has keys 1-9, so at most 9 classes (got {len(classes)}); use --headless --label for more"
            )
        problem = display_problem()
        if problem:
            print(
                f"error: cannot open a preview window: {problem}. Use --headless --label CLASS to record without one",
                file=sys.stderr,
            )
            return EXIT_USAGE
    if problem := class_folder_given_as_out(args.out, classes):
        parser.error(f"{problem}: --out is the dataset folder (e.g. --out {args.out.parent})")
    if problem := class_differing_in_case(args.out, [args.label] if args.headless else classes):
        parser.error(problem)
    if problem := reads_from_inside(args.source, args.out):
        parser.error(problem)
    try:
        cap = open_source(args.source)
    except SourceError as err:  # the exit code of the webcam demo for the same mistake
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    # a folder's photos are not a video's frames; a slow-motion clip's are kept as often a second as any other's
    args.every = args.every or (1 if separate_photos(args.source) else frame_step(cap.get(cv2.CAP_PROP_FPS)))
    writer = ImageFolderWriter(args.out, [args.label] if args.headless else with_reject_class(classes), quality=args.quality,
                               session=source_session(args.source))
    try:
        if args.headless:
            if not capture_headless(cap, writer, args.label, every=args.every, roi=args.roi, max_images=args.max,
                                    description=describe_source(args.source)):
                print(f"error: no frame of {describe_source(args.source)} could be read", file=sys.stderr)
                return 1
        else:
            print(f"recording from {describe_source(args.source)} into {args.out}; keys: 1-9 save, space record, b burst, n no-gesture burst, u undo, q quit")
            fps = cap.get(cv2.CAP_PROP_FPS) or 30
            wait_ms = 1 if is_live(args.source) else max(1, round(1000 / fps))
            capture_live(cap, writer, LiveState(writer.classes, roi=args.roi), every=args.every, burst=args.burst, wait_ms=wait_ms)
    except CaptureError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nstopped; totals: {writer.summary()}", file=sys.stderr)
    finally:
        cap.release()
    if not any(map(is_reject_name, [*(args.classes or []), *writer.classes, *class_folders(args.out)])):
        print(NONE_TIP if not args.headless else HEADLESS_NONE_TIP, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
