"""Open a frame source (camera, video file, image sequence or folder, stream URL) with one call.

    from service.webcam.sources import SourceError, open_source, read_frames

    try:
        cap = open_source("0")            # or 0, "clip.mp4", "frames/%04d.jpg", "photos/", "rtsp://host/stream"
    except SourceError as err:
        sys.exit(f"error: {err}")         # one line a user can act on
    for frame in read_frames(cap):        # BGR uint8 frames, as OpenCV gives them
        ...
    cap.release()

``spec`` forms (see ``parse_source``):

* an integer, or a string of ASCII digits: a camera device index (``0`` is the default webcam), at
  most ``CAMERA_INDEX_MAX`` (OpenCV takes it as a C int); ``/dev/videoN`` is camera N;
* ``scheme://...`` (rtsp, http, https, udp, tcp, file): a stream opened through FFmpeg with short
  open/read timeouts, so an unreachable host fails in seconds instead of hanging;
* a path containing ``%d``-style placeholder (``frames/%04d.png``): an image sequence, every file
  that matches it in number order, unless a file of that very name exists (``50%done.mp4``);
* a folder: its image files (not its sub-folders'), in name order with numbers read as numbers
  (``frame2.jpg`` before ``frame10.jpg``), as Ultralytics takes a folder as a source;
* a glob (``photos/*.jpg``, ``takes/**/*.png``) that is not a file's name: the image files it matches, in
  the same order;
* the path of an image file (``.jpg``, ``.png``, ...): that one image;
* any other string: a video file path.

Images (sequences and single files) are read by ``ImageFiles`` through ``gesture_core.images.read_rgb``,
the decoder of training, ``Classifier.predict`` and the service, so each frame has the pixels they see.

A file or sequence from which not one frame can be read is refused by ``open_source`` too, as a
file that does not open is: it is not a video (or image) the tools can use.

Every failure is a ``SourceError`` whose message names the source and says what to try.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from gesture_core.class_names import some_of
from gesture_core.cli import not_a_file
from gesture_core.images import (
    IMAGE_SUFFIXES,
    PHOTO_FILE_SUFFIXES,
    VIDEO_FILE_SUFFIXES,
    ImageDecodeError,
    ImageTooLarge,
    check_dimensions,
    read_rgb,
)
from gesture_core.videos import NOT_DECODED, why_no_frames

__all__ = ["SourceError", "ImageFiles", "open_source", "parse_source", "is_live", "separate_photos", "describe_source", "read_frames"]

# Streams: long enough for a slow network camera, short enough that a typo does not look like a hang.
STREAM_TIMEOUT_MS = 5000
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_SEQUENCE = re.compile(r"%0?([0-9]*)d")  # ASCII digits throughout: int() refuses "²", which \d and isdigit() pass
MOST_NAME_BYTES = 255  # a file name's length on every common file system: a wider frame number names no file
_GLOB = re.compile(r"[*?[]")
VIDEO_HINT = NOT_DECODED
CAMERA_INDEX_MAX = 2**31 - 1  # OpenCV takes a camera index as a C int; a larger one raised cv2.error
SOURCE_FORMS = (f"a camera index (0 to {CAMERA_INDEX_MAX}), a video or image file, a folder of images, an image pattern (frames/%04d.jpg) "
                "or glob (photos/*.jpg), or a stream URL (rtsp://, http://)")


class SourceError(RuntimeError):
    """A frame source that cannot be opened or read; ``str(err)`` is a user-facing one-liner."""


def parse_source(spec: int | str | os.PathLike) -> int | str:
    """Normalise a ``--source`` value: camera index (int) or a string (URL, pattern or file path)."""
    if isinstance(spec, bool):
        raise SourceError(f"invalid source {spec!r}: a source is {SOURCE_FORMS}")
    if isinstance(spec, int):
        return _camera_index(str(spec))
    text = os.fspath(spec).strip()
    if not text:
        raise SourceError(f"empty source: a source is {SOURCE_FORMS}")
    # ASCII digits only: "²" passed str.isdigit() and int() refused it
    if re.fullmatch(r"[0-9]+", text) or (re.fullmatch(r"-[0-9]+", text) and not os.path.exists(text)):
        return _camera_index(text)
    if video_device := re.fullmatch(r"/dev/video([0-9]+)", text):  # Linux's name for camera N, as ffmpeg and v4l2 take it
        return _camera_index(video_device.group(1))
    return text


def _camera_index(text: str) -> int:
    """``text``: ASCII digits, maybe after a minus. Their length is checked first: int() refuses over 4300 digits."""
    if text.startswith("-"):
        raise SourceError(f"camera index must be >= 0, got {text}")
    if len(text.lstrip("0")) > len(str(CAMERA_INDEX_MAX)) or int(text) > CAMERA_INDEX_MAX:
        raise SourceError(f"camera index {text} is too large: a source is {SOURCE_FORMS}")
    return int(text)


def is_live(spec: int | str | os.PathLike) -> bool:
    """True for cameras and network streams (frames arrive in real time), False for files and sequences."""
    source = parse_source(spec)
    return isinstance(source, int) or (bool(_URL.match(source)) and not source.startswith("file://"))


def separate_photos(spec: int | str | os.PathLike) -> bool:
    """True for a folder or a glob: photos, in name order, that need not be frames of one recording
    (an image sequence, ``frames/%04d.jpg``, is taken for one)."""
    return _kind(parse_source(spec)) in ("image folder", "image glob")


def source_folder(spec: int | str | os.PathLike) -> Path | None:
    """The folder whose files the source reads (a folder itself, or the one that holds its file, sequence
    or glob), for a source on this machine's disk; None for a camera or a stream."""
    source = parse_source(spec)
    kind = _kind(source)
    if kind in ("camera", "stream"):
        return None
    if kind == "image folder":
        return Path(source)
    if kind in ("image sequence", "image glob"):  # the folders before the first wildcard or %d
        pattern = _SEQUENCE if kind == "image sequence" else _GLOB
        return Path(source[:pattern.search(source).start()] + "x").parent
    return Path(source).parent


def describe_source(spec: int | str | os.PathLike) -> str:
    source = parse_source(spec)
    return f"{_kind(source)} {source}"


def _kind(source: int | str) -> str:
    if isinstance(source, int):
        return "camera"
    if _URL.match(source):
        return "stream"
    if _SEQUENCE.search(source) and not os.path.lexists(source):  # an existing "50%done.mp4" is that file
        return "image sequence"
    if os.path.isdir(source):
        return "image folder"
    if _GLOB.search(source) and not os.path.lexists(source):
        return "image glob"
    if Path(source).suffix.lower() == ".gif" and _animated_gif(source):
        return "animated GIF"  # a clip: played frame by frame, as FFmpeg decodes it, not its first frame alone
    # a phone's HEIC photo too, whose refusal names its format and the way to a JPEG ("not a video" did not)
    return "image" if Path(source).suffix.lower() in PHOTO_FILE_SUFFIXES else "video file"


def _animated_gif(path: str) -> bool:
    """Whether the GIF at ``path`` holds more than one frame (PIL reads up to the second one)."""
    try:
        with Image.open(path) as gif:
            return bool(getattr(gif, "is_animated", False))
    except (OSError, ValueError, Image.DecompressionBombError):  # missing or broken: the image path says why
        return False


class ImageFiles:
    """Still images as a frame source, with what the webcam reads of a ``cv2.VideoCapture`` (``read``,
    ``get``, ``isOpened``, ``release``). Each file is decoded by ``read_rgb``, as training, ``predict``
    and the service decode it: OpenCV's image-sequence reader ignored the EXIF orientation, passed
    grayscale, 16-bit and 4-channel frames on as they were (the overlay then failed), and stopped at
    the first number missing. A file that does not decode is skipped, and ``skipped`` says why; the videos
    a folder or glob also holds are ``left_out`` (photos are read one by one, a video as a source of its own)."""

    def __init__(self, paths: list[Path], left_out: list[str] | None = None):
        self.paths, self.next, self.skipped, self.left_out = paths, 0, [], left_out or []
        # a local model's Classifier.decode: a large JPEG read whole, then averaged down, scored apart from predict(file)
        self.decode: Callable[[Path], np.ndarray] = read_rgb
        self.too_large = False  # the last file skipped declares more pixels than are read
        self.last_path: str | None = None  # the file of the frame ``read`` gave last

    def isOpened(self) -> bool:  # noqa: N802 - cv2.VideoCapture's name
        return bool(self.paths)

    def read(self) -> tuple[bool, np.ndarray | None]:
        while self.next < len(self.paths):
            path, self.next = self.paths[self.next], self.next + 1
            try:
                frame = cv2.cvtColor(self.decode(path), cv2.COLOR_RGB2BGR)
            except ImageDecodeError as err:
                self.skipped.append(str(err))
                self.too_large = isinstance(err, ImageTooLarge)
                continue
            self.last_path = str(path)
            return True, frame
        return False, None

    def get(self, prop: int) -> float:
        return float(len(self.paths)) if prop == cv2.CAP_PROP_FRAME_COUNT else 0.0  # no frame rate: the caller's default

    def release(self) -> None:
        self.next = len(self.paths)

    def require_a_frame(self, description: str) -> None:
        """Raise ``SourceError`` when not one file decodes; otherwise start again from the first file."""
        if self.read()[0]:
            self.next, self.skipped = 0, []
        elif len(self.paths) == 1:  # the reason read_rgb gives starts with the file's name, which the description has
            reason = self.skipped[0].removeprefix(f"{self.paths[0]}: ")
            if self.too_large:  # it was said not to decode, as if it were corrupt
                raise SourceError(f"{description} is not read: {reason}; scale it down (a model reads a few hundred pixels a side)")
            raise SourceError(f"{description} does not decode as an image (its name ends in {self.paths[0].suffix}): {reason}")
        else:
            raise SourceError(f"{description}: none of its {len(self.paths)} files decodes as an image: {self.skipped[0]}")

    def skipped_note(self, description: str) -> str | None:
        notes = []
        if self.skipped:
            more = f" (and {len(self.skipped) - 1} more)" if len(self.skipped) > 1 else ""
            notes.append(f"skipped {len(self.skipped)} of its {len(self.paths)} files, which do not decode: {self.skipped[0]}{more}")
        if self.left_out:  # they were left out without a word
            notes.append(f"left out {len(self.left_out)} video file(s) it also holds ({some_of([Path(v).name for v in self.left_out], 3)}): "
                         f"a video is a source of its own, e.g. --source {self.left_out[0]}")
        return f"{description}: {'; '.join(notes)}" if notes else None


def open_source(spec: int | str | os.PathLike) -> cv2.VideoCapture | ImageFiles:
    """Return an opened ``cv2.VideoCapture`` (or ``ImageFiles``) for ``spec``, or raise ``SourceError``. The caller releases it.
    A file or sequence must give at least one frame: one that gives none is no video (or image) at all."""
    source = parse_source(spec)
    cap = _opened(source)
    if isinstance(cap, ImageFiles):
        cap.require_a_frame(describe_source(source))
    elif not is_live(source):  # read its first frame, then open it again to play it from the start
        with _quiet_opencv():
            has_a_frame, first = cap.read()
        cap.release()
        if not has_a_frame:
            raise SourceError(f"cannot read {describe_source(source)}: not one frame decodes; {VIDEO_HINT}")
        try:  # a 640x1 video: the model refused each frame after it had loaded, in words that named no source
            check_dimensions(first.shape[1], first.shape[0], max_pixels=None)
        except ImageDecodeError as err:
            raise SourceError(f"cannot read {describe_source(source)}: its frames are no image to classify: {err}") from None
        cap = _opened(source)
    return cap


def _opened(source: int | str) -> cv2.VideoCapture | ImageFiles:
    with _quiet_opencv():
        cap, hint = _open(source)
    if not cap.isOpened():
        cap.release()
        if hint == VIDEO_HINT:  # why a file is no video, read only once it failed to open
            hint = why_no_frames(str(source))
        raise SourceError(f"cannot open {describe_source(source)}: {hint}")
    return cap


def _open(source: int | str) -> tuple[cv2.VideoCapture | ImageFiles, str]:
    kind = _kind(source)
    if kind == "camera":
        cap = cv2.VideoCapture(source)
        hint = "is a camera attached and not in use by another program? Use --source VIDEO_FILE to run from a file"
    elif kind == "stream":
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_TIMEOUT_MS]
        cap = cv2.VideoCapture(source, cv2.CAP_FFMPEG, params)
        hint = f"check the URL and that the stream is reachable (opening times out after {STREAM_TIMEOUT_MS / 1000:g} s)"
    elif kind == "image sequence":
        _require_sequence(source)
        cap, hint = ImageFiles(_sequence_files(source)), "no files match"
    elif kind == "image folder":
        cap, hint = ImageFiles(*_folder_images(source)), "no image in it"
    elif kind == "image glob":
        cap, hint = ImageFiles(*_glob_images(source)), "no image matches"
    elif kind == "image":
        _require_file(source, "image")
        cap, hint = ImageFiles([Path(source)]), "no such image"
    else:  # a video file or an animated GIF
        _require_file(source)
        cap, hint = cv2.VideoCapture(source), VIDEO_HINT
    return cap, hint


@contextmanager
def _quiet_opencv() -> Iterator[None]:
    # OpenCV logs a WARN line per backend it tries; the SourceError already says what went wrong.
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)


def read_frames(cap: cv2.VideoCapture | ImageFiles, *, max_failures: int = 30) -> Iterator[np.ndarray]:
    """Yield BGR frames until the source ends; a live source may drop a few frames before it counts as ended."""
    failures = 0
    while True:
        ok, frame = cap.read()
        if ok and frame is not None:
            failures = 0
            yield frame
            continue
        failures += 1
        if failures >= max_failures or not _is_live_capture(cap):
            return


def _is_live_capture(cap: cv2.VideoCapture | ImageFiles) -> bool:
    # Files and sequences report a frame count; cameras and streams report 0 or -1.
    return cap.get(cv2.CAP_PROP_FRAME_COUNT) <= 0


def _require_file(source: str, kind: str = "video") -> None:
    path = Path(source)  # not a folder: that is an image folder source
    if not os.path.lexists(path):
        raise SourceError(f"{source}: no such {kind} file (a source is {SOURCE_FORMS})")
    if not path.is_file():  # refused before opening: reading a named pipe waits for a writer, maybe forever
        raise SourceError(f"{source}{not_a_file(path, f'{kind} file')} (for a camera pass its index, e.g. --source 0)")
    if not os.access(path, os.R_OK):
        raise SourceError(f"{source}: permission denied")


def _sequence_files(pattern: str) -> list[Path]:
    """The files an image-sequence pattern names, in number order: ``f%03d.jpg`` -> every ``f<digits>.jpg`` beside it."""
    folder, numbered = Path(pattern).parent, re.compile(_SEQUENCE.sub(r"([0-9]+)", re.escape(Path(pattern).name)))
    paths = folder.iterdir() if folder.is_dir() else ()
    # Regular files only: reading a named pipe that matches would wait for a writer, maybe forever.
    found = [(match, path) for path in paths if (match := numbered.fullmatch(path.name)) and path.is_file()]
    return [path for match, path in sorted(found, key=lambda item: (tuple(map(int, item[0].groups())), item[1].name))]


def _folder_images(folder: str) -> tuple[list[Path], list[str]]:
    """(the image files of a folder (not its sub-folders'), in name order with numbers read as numbers, the
    videos beside them); a SourceError, naming its videos if it holds any, when there is no image."""
    entries = [path for path in Path(folder).iterdir() if not path.name.startswith(".")]
    files = [path for path in entries if path.is_file()]
    images, videos = [path for path in files if path.suffix.lower() in PHOTO_FILE_SUFFIXES], _videos(files)
    if not images:
        also = f"; it holds {len(videos)} video file(s): pass one as the source, e.g. --source {videos[0]}" if videos else ""
        raise SourceError(f"{folder} is a folder with no image file in it (looked for {', '.join(sorted(IMAGE_SUFFIXES))}){also or _subfolders_hint(entries)}")
    return sorted(images, key=_name_order), videos


def _subfolders_hint(entries: list[Path]) -> str:
    """Where a folder's images are one level down (a dataset's class folders), how to pass them."""
    holding = sorted((path for path in entries if path.is_dir() and _holds_an_image(path)), key=_name_order)
    if not holding:
        return ""
    folder = holding[0].parent
    names = f"{', '.join(path.name for path in holding[:3])}{', ...' if len(holding) > 3 else ''}"
    return (f"; its sub-folder{'s' if len(holding) > 1 else ''} {names} hold{'' if len(holding) > 1 else 's'} images: "
            f"pass one (--source {holding[0]}), or all of them with a glob (--source '{folder}/*/*')")


def _holds_an_image(folder: Path) -> bool:
    try:
        return any(path.suffix.lower() in PHOTO_FILE_SUFFIXES and not path.name.startswith(".") for path in folder.iterdir())
    except OSError:  # a sub-folder the user cannot read says nothing about where the images are
        return False


def _glob_images(pattern: str) -> tuple[list[Path], list[str]]:
    """(the image files a glob matches (``**`` for any depth), in ``_name_order``, the videos it matches);
    a SourceError when no image matches."""
    paths = [Path(path) for path in glob.glob(pattern, recursive=True)]
    videos = _videos(paths)
    if not (images := [path for path in paths if path.suffix.lower() in PHOTO_FILE_SUFFIXES and path.is_file()]):
        if videos:
            raise SourceError(f"{pattern}: no image file matches, but {len(videos)} video file(s) do; a source reads one video: "
                              f"pass each in turn, e.g. --source {videos[0]}")
        raise SourceError(f"{pattern}: no image file matches ({len(paths)} other file(s) or folder(s) do; a source is {SOURCE_FORMS})")
    return sorted(images, key=_name_order), videos


def _videos(paths: Iterable[Path]) -> list[str]:
    """The video files among ``paths``, in name order."""
    return [str(path) for path in sorted(paths, key=_name_order) if path.suffix.lower() in VIDEO_FILE_SUFFIXES and path.is_file()]


def _name_order(path: Path) -> list:
    """Folder, then name, with numbers read as numbers: frame2.jpg before frame10.jpg."""
    return [int(part) if i % 2 else part.casefold() for i, part in enumerate(re.split(r"([0-9]+)", str(path)))]  # odd: the numbers


def _require_sequence(pattern: str) -> None:
    if any(len(width.lstrip("0")) > 3 or int(width or 0) > MOST_NAME_BYTES for width in _SEQUENCE.findall(pattern)):  # %999999999d's example took 1 GB
        raise SourceError(f"image sequence {pattern}: a frame number wider than a file name ({MOST_NAME_BYTES} bytes) matches no file; "
                          "give a width such as %04d, or none (%d)")
    if not _sequence_files(pattern):
        example = _SEQUENCE.sub(lambda m: m.group(0) % 0, pattern)
        raise SourceError(f"image sequence {pattern}: no files match (expected e.g. {example})")
