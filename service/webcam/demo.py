"""Live gesture recognition from a webcam, a video file, an image sequence or a stream URL.

    python -m service.webcam --checkpoint runs/sign-digits/best.pt                  # webcam 0, window
    python -m service.webcam --url http://127.0.0.1:3000 --source 1 --roi         # ask the HTTP service
    python -m service.webcam --checkpoint best.pt --source clip.mp4 --headless \\
        --output annotated.mp4 --jsonl predictions.jsonl

Keys in the window: q / Esc quit, s save a snapshot, space pause. Capture runs in its own thread
and the recogniser always takes the newest frame (``webcam_capture``); ``run`` is the loop, usable
without the command line or a window. A model trained on hand crops gets a box and a label per hand,
and the smoothed frame-level label of the best accepted hand (``scoring.decide_hands``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np

from gesture_core import Prediction
from gesture_core.checkpoint import warn_if_training_state
from gesture_core.cli import (
    CommandParser,
    check_output_spares_inputs,
    check_outputs_differ,
    check_writable,
    checkpoint_arg,
    command,
    describe,
    first_free,
    output_arg,
)
from gesture_core.runtime import Runtime, add_runtime_arguments
from gesture_core.videos import TIMESTAMP_JUMP_S
from service.webcam.grabber import Frame, FrameGrabber
from service.webcam.overlay import DEFAULT_ROI, OverlayInfo, centred_roi, render
from service.webcam.recorder import VideoRecorder
from service.webcam.scoring import (
    FrameRefused,
    HandResult,
    HandsAnswer,
    LocalScorer,
    RemoteScorer,
    Scorer,
    ServerError,
    Smoother,
    decide_hands,
    decision_rule,
    default_threads,
)
from service.webcam.sources import ImageFiles, SourceError, describe_source, is_live, open_source, parse_source, separate_photos

EXIT_OK, EXIT_SOURCE_LOST, EXIT_USAGE, EXIT_OUTAGE = 0, 1, 2, 3
RETRY_AFTER_S = 1.0  # during an outage, ask the server again this often; frames keep flowing meanwhile
URL_FORM = "expected http://HOST:PORT or https://HOST:PORT (e.g. http://127.0.0.1:3000)"
VIDEO_SUFFIXES = (".mp4", ".avi")  # what the annotated video is written as: mp4v, or MJPG for .avi
JSON_LINES_SUFFIXES = (".jsonl", ".ndjson", ".json", ".txt", ".log")  # what --jsonl may replace: never a photo or a checkpoint
DEFAULT_SMOOTH = 5  # frames: a live camera's label steadies within a sixth of a second at 30 fps
MAX_SMOOTH = 10_000  # frames (5 minutes at 30 fps); a window past a C ssize_t crashed with OverflowError
UNKNOWN_FPS = 30.0  # for cameras and image sequences that do not report a frame rate
# --output's longer side: a 1080p frame took 17 ms to encode (mp4v), a 4K one 71 ms, written again for each frame
# dropped to keep up; a --realtime 4K clip with --output was recognised on 12 of 150 frames, 92 without
# (python -m benchmarks.webcam --clip-size 3840x2160 --realtime --record; docs/webcam.md#while-recording)
MAX_OUTPUT_SIDE = 1280
WINDOW_TITLE = "gesture recognition (q quit, s snapshot, space pause)"

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Options:
    realtime: bool = False  # files: play at the file's fps, dropping frames inference cannot keep up with
    roi: float | None = None  # classify only a centred square of this fraction of the shorter side
    mirror: bool | None = None  # None: mirror cameras (a selfie view), not files or streams
    smooth: int = DEFAULT_SMOOTH
    vote: bool = False
    threshold: float | None = None  # None: the model's calibrated threshold (0.5 for models from before calibration)
    top_k: int = 3
    output: Path | None = None
    jsonl: Path | None = None
    snapshot_dir: Path = Path("snapshots")
    snapshot_at: tuple[int, ...] = ()  # stream positions saved as PNG (headless screenshots)
    max_frames: int | None = None


@dataclass(frozen=True)
class Stream:
    capture: cv2.VideoCapture
    description: str
    live: bool
    camera: bool
    fps: float  # 0 when unknown
    photos: bool = False  # a folder or glob of photos, which need not be frames of one recording

    @classmethod
    def open(cls, spec: int | str) -> Stream:
        """Raises ``SourceError`` with a user-facing message."""
        source = parse_source(spec)
        capture = open_source(source)
        fps = capture.get(cv2.CAP_PROP_FPS)
        fps = fps if fps and 0 < fps < 1000 else 0.0
        return cls(capture, describe_source(source), is_live(source), isinstance(source, int), fps, separate_photos(source))


@contextmanager
def naming_the_file(path: Path | None) -> Iterator[None]:
    """An OSError that names ``path``: a full disk under --jsonl was "error: No space left on device", which file not said."""
    try:
        yield
    except OSError as err:
        if err.filename is not None:
            raise
        raise OSError(err.errno, err.strerror or str(err), str(path)) from None


def top_class_of(prediction: Prediction | None) -> str | None:
    """The most probable class, as training.evaluate's predictions.csv names it: ``label``, or the class a "no gesture"
    (label None) was most sure of, a reject class or a gesture below the threshold."""
    return prediction.top_k[0][0] if prediction and prediction.top_k else None


def gesture_score_of(prediction: Prediction | None) -> float | None:
    """The gesture score a prediction's label was decided on (None: its ``score``, or no prediction)."""
    return None if prediction is None or prediction.gesture_score is None else round(prediction.gesture_score, 5)


@dataclass(frozen=True)
class FrameResult:
    index: int
    timestamp: float  # seconds since the run started, at capture
    prediction: Prediction | None  # smoothed; None when there is no answer (outage)
    raw: Prediction | None  # this frame alone
    latency_ms: float | None  # preprocess + model (or HTTP round trip) + smoothing
    error: str | None = None
    hands: tuple[HandResult, ...] | None = None  # hand-crop models: each hand found, with its own decision
    file: str | None = None  # the image file of an image source: which photo got which label
    position_s: float | None = None  # a video file's frame: where it is in the video
    refused: bool = False  # the server refused the frame (``error`` says why); not an outage

    def to_json(self) -> dict:
        p = self.prediction
        line = {
            "index": self.index,
            "timestamp": round(self.timestamp, 4),
            "label": p.label if p else None,
            "top_class": top_class_of(p),  # whose probability score is, also when label is null (no gesture)
            "score": round(p.score, 5) if p else None,
            "gesture_score": gesture_score_of(p),  # what --threshold applies to, as the service's answer has it
            "latency_ms": round(self.latency_ms, 2) if self.latency_ms is not None else None,
            "raw_label": self.raw.label if self.raw else None,
            "raw_top_class": top_class_of(self.raw),
            "raw_score": round(self.raw.score, 5) if self.raw else None,
            "raw_gesture_score": gesture_score_of(self.raw),
        }
        if self.hands is not None:  # only for hand-crop models: other models' lines stay as they were
            line["hands"] = [{"box": list(h.box), "handedness": h.handedness, "hand_score": round(h.hand_score, 5),
                              "label": h.prediction.label, "score": round(h.prediction.score, 5),
                              "gesture_score": gesture_score_of(h.prediction)} for h in self.hands]
        if self.error:
            line["error"] = self.error
        if self.file is not None:  # image sources only: a video's lines stay as they were
            line["file"] = self.file
        if self.position_s is not None:  # video files only: the timestamp is the run's clock, not the video's
            line["position_s"] = round(self.position_s, 4)
        return line


class LatencySample:
    """Every frame's latency up to ``size`` of them (55 minutes at 30 fps), then a uniform sample of ``size``
    (reservoir sampling): a demo left running for days holds the same memory as one of an hour. A list
    entry per frame grew a soak run by about 30 bytes a frame, without end."""

    def __init__(self, size: int = 100_000, seed: int = 0):
        self.size, self.seen, self.values = size, 0, array("d")
        self._random = random.Random(seed)

    def add(self, ms: float) -> None:
        self.seen += 1
        if len(self.values) < self.size:
            self.values.append(ms)
        elif (slot := self._random.randrange(self.seen)) < self.size:
            self.values[slot] = ms

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(self.values, q)) if self.values else None


@dataclass
class Summary:
    frames: int = 0
    dropped: int = 0
    seconds: float = 0.0
    latencies_ms: LatencySample = field(default_factory=LatencySample)
    outage_frames: int = 0
    refused_frames: int = 0  # frames the server answered with a refusal (FrameRefused)
    error: str | None = None  # the source disappeared mid-stream
    warning: str | None = None  # a file ended well before the frames it declares, or images that do not decode (grabber.ended_early)
    last_label: str | None = None  # the last frame's smoothed label
    palm_detections: int | None = None  # hand-crop models, locally: frames on which palm detection ran

    @property
    def mean_fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        if self.error:
            return EXIT_SOURCE_LOST
        if self.outage_frames:
            return EXIT_OUTAGE
        return EXIT_USAGE if self.frames and self.refused_frames == self.frames else EXIT_OK  # not one frame it takes

    def line(self) -> str:
        p50, p95 = self.latencies_ms.percentile(50), self.latencies_ms.percentile(95)
        latency = f"latency p50 {p50:.1f} ms, p95 {p95:.1f} ms" if p50 is not None else "no predictions"
        text = f"summary: {self.frames} frame{'' if self.frames == 1 else 's'} ({self.dropped} stale dropped) in {self.seconds:.2f} s, {self.mean_fps:.1f} FPS, {latency}"
        if self.palm_detections is not None:
            text += f"; palm detection on {self.palm_detections} of {self.frames} frames"
        if self.outage_frames:
            text += f"; no answer from the server for {self.outage_frames} frames"
        if self.refused_frames:
            text += f"; {self.refused_frames} frames refused by the server"
        return text


class Recognizer:
    """Frame in, smoothed prediction out; a failing server becomes an outage, not an exception."""

    def __init__(self, scorer: Scorer, smoother: Smoother, *, roi: float | None = None, log: Log = _stderr):
        self.scorer, self.smoother, self.roi, self.log = scorer, smoother, roi, log
        self.outage: str | None = None
        self.refusal: str | None = None  # the server's last reason for refusing a frame, said once
        self._retry_at = 0.0
        self._shape_checked = False

    def crop_box(self, image: np.ndarray) -> tuple[int, int, int, int] | None:
        return centred_roi(image.shape, self.roi) if self.roi else None

    def __call__(self, frame: Frame, timestamp: float) -> FrameResult:
        result = self._answer(frame, timestamp)
        if frame.file is None and frame.position_s is None:  # a camera or a stream: nothing to add
            return result
        return replace(result, file=frame.file, position_s=frame.position_s)

    def _answer(self, frame: Frame, timestamp: float) -> FrameResult:
        if self.outage and time.perf_counter() < self._retry_at:
            return FrameResult(frame.index, timestamp, None, None, None, self.outage)
        box = self.crop_box(frame.image)
        crop = frame.image[box[1] : box[3], box[0] : box[2]] if box else frame.image
        if not self._shape_checked:
            self._say_if_shape_differs(crop)
        start = time.perf_counter()
        try:
            answer = self.scorer(crop)
        except FrameRefused as err:
            if str(err) != self.refusal:
                self.log(f"the server refused frame {frame.index}: {err}; a frame it refuses gets no label")
            self.refusal = str(err)
            return FrameResult(frame.index, timestamp, None, None, None, str(err), refused=True)
        except ServerError as err:
            return self._outage(frame, timestamp, str(err))
        hands = None
        if isinstance(answer, HandsAnswer):  # a hand-crop model: the frame's scores are its best accepted hand's
            hands, answer = decide_hands(answer, self.smoother, offset=box[:2] if box else (0, 0))
        smoothed, raw = self.smoother.update(answer), self.smoother.decide(answer)
        latency = (time.perf_counter() - start) * 1000.0
        if self.outage:
            self.log(f"{self.scorer.name} answers again (frame {frame.index})")
            self.outage = None
        return FrameResult(frame.index, timestamp, smoothed, raw, latency, hands=hands)

    def _say_if_shape_differs(self, crop: np.ndarray) -> None:
        """Once, from the first frame: a whole-frame model (local or served) that trained on frames of another
        shape (a portrait phone clip on landscape webcam frames) reads them worse, and the user saw only poor labels."""
        self._shape_checked = True
        note_of = getattr(self.scorer, "frame_shape_note", None)  # a plain callable scorer knows nothing of its model
        if note_of is not None and (note := note_of(*crop.shape[:2])):
            self.log(f"note: {note}")

    def _outage(self, frame: Frame, timestamp: float, message: str) -> FrameResult:
        if message != self.outage:
            self.log(f"server problem at frame {frame.index}: {message}; still showing frames, retrying every {RETRY_AFTER_S:g} s")
        self.outage = message
        self._retry_at = time.perf_counter() + RETRY_AFTER_S
        self.smoother.reset()  # old answers must not stand in for the frames the server never saw
        return FrameResult(frame.index, timestamp, None, None, None, message)


class FpsMeter:
    """Frames per second over the last ``window`` frames (what the overlay shows)."""

    def __init__(self, window: int = 30):
        self._times: deque[float] = deque(maxlen=window)

    def tick(self) -> float:
        self._times.append(time.perf_counter())
        if len(self._times) < 2:
            return 0.0
        return (len(self._times) - 1) / max(1e-9, self._times[-1] - self._times[0])


class Outputs:
    """The annotated video, the JSONL log and PNG snapshots; each created only when asked for."""

    def __init__(self, options: Options, fps: float, log: Log = _stderr):
        self.options, self.fps, self.log = options, fps, log
        self._writer: VideoRecorder | None = None
        self._size: tuple[int, int] = (0, 0)  # the video's (height, width), from its first frame's (MAX_OUTPUT_SIDE)
        self._first_size: tuple[int, int] = (0, 0)  # the first frame's own
        self._resized_said = False
        self._held: tuple[int, np.ndarray] | None = None  # the newest frame's slot and image, written when a later slot comes
        self.merged = 0  # frames that came faster than the video's fps, each replaced by a newer one in its slot
        self._slot_shift = 0  # frames' slots move back by this after a jump in a file's times (_slot)
        self._lead: float | None = None  # the last video frame's time less its count over the fps (_slot)
        self._jsonl = None
        self._due = sorted(set(options.snapshot_at))  # --snapshot-at frames not saved yet
        self.last_index = -1  # the last frame written
        if options.jsonl:
            options.jsonl.parent.mkdir(parents=True, exist_ok=True)
            self._jsonl = options.jsonl.open("w", encoding="utf-8")

    def write(self, result: FrameResult, canvas: np.ndarray) -> None:
        self.last_index = result.index
        if self._jsonl:
            with naming_the_file(self.options.jsonl):
                self._jsonl.write(json.dumps(result.to_json()) + "\n")
        if self.options.output:
            self._write_video(canvas, result.index, self._slot(result))
        if self._due and self._due[0] <= result.index:
            self._snapshot_due(canvas, result.index)

    def snapshot(self, canvas: np.ndarray, index: int) -> Path:
        # frame numbers start again each run: a second run's snapshot of frame 1 replaced the first run's
        path = first_free(self.options.snapshot_dir / f"snapshot-{index:06d}.png", file=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        ok, png = cv2.imencode(".png", canvas)
        if not ok:
            raise OSError(f"could not encode snapshot {path} as PNG")
        try:  # written here, not by cv2.imwrite: libpng printed its own "Write Error" line above ours on a full disk
            with naming_the_file(path):
                path.write_bytes(png.tobytes())
        except OSError:
            path.unlink(missing_ok=True)  # a cut-off PNG is no snapshot
            raise
        self.log(f"saved {path}")
        return path

    def snapshot_on_key(self, canvas: np.ndarray, index: int) -> None:
        """The s key: a snapshot that cannot be written is said and the run goes on. The camera and the
        other outputs still work, and the user can press s again after freeing the folder."""
        try:
            self.snapshot(canvas, index)
        except OSError as err:
            self.log(f"warning: no snapshot of frame {index}: {err.strerror or err} ({self.options.snapshot_dir})")

    def _snapshot_due(self, canvas: np.ndarray, index: int) -> None:
        """The --snapshot-at frames up to ``index``, saved as this one: a frame dropped to keep up (--realtime, a live
        camera) was never shown, and its snapshot was missed under "the run ended", which it had not."""
        asked = [i for i in self._due if i <= index]
        self._due = self._due[len(asked):]
        path = self.snapshot(canvas, index)
        if asked != [index]:
            several = len(asked) > 1
            self.log(f"note: frame{'s' * several} {', '.join(map(str, asked))} {'were' if several else 'was'} dropped to keep up with the "
                     f"source: {path} is frame {index}, the next one shown")

    def missed_snapshots(self) -> list[int]:
        """The --snapshot-at frames the run never reached (the source ended first, or --max-frames)."""
        return list(self._due)

    def close(self) -> None:
        try:
            self._close_video()
        finally:
            if self._jsonl:
                with naming_the_file(self.options.jsonl):
                    self._jsonl.close()

    def _close_video(self) -> None:
        if self._writer is None:
            return
        try:
            if self._held is not None:
                self._writer.write(self._held[1])
                self._held = None
        finally:  # the file closed and its thread ended after a failure too (a disk that filled)
            self._writer.close()
        if self.merged:
            self.log(f"note: {self.merged} frames came faster than the --output video's {self.fps:.4g} fps: each of its "
                     f"frames shows the newest of those that fell in it{' (the --jsonl log has every frame)' if self._jsonl else ''}")

    def _fitted(self, canvas: np.ndarray, index: int) -> np.ndarray:
        """The frame at the video's size, which its first frame set: OpenCV's writer drops a frame of
        any other size without a word (an image sequence of portrait and landscape photos, a stream
        that changes resolution), so it is scaled to fit and padded, and the first such frame is said."""
        height, width = self._size
        if canvas.shape[:2] == (height, width):
            return canvas
        if canvas.shape[:2] != self._first_size and not self._resized_said:
            self._resized_said = True
            self.log(f"note: frame {index} is not the size of the first: it and any other such frame are scaled to fit the "
                     f"--output video ({width}x{height} with the overlay)")
        scale = min(width / canvas.shape[1], height / canvas.shape[0])
        fitted = cv2.resize(canvas, (max(1, round(canvas.shape[1] * scale)), max(1, round(canvas.shape[0] * scale))),
                            interpolation=cv2.INTER_AREA)
        top, left = (height - fitted.shape[0]) // 2, (width - fitted.shape[1]) // 2
        return cv2.copyMakeBorder(fitted, top, height - fitted.shape[0] - top, left, width - fitted.shape[1] - left, cv2.BORDER_CONSTANT)

    def _slot(self, result: FrameResult) -> int:
        """The frame's place in the --output video, whose frames come at the source's (mean) fps: a video
        file's frame goes where its time in the video falls, others by their index. By index, a phone's
        variable-frame-rate clip drifted from its source: its slow stretches were written sped up."""
        position = getattr(result, "position_s", None)
        if position is not None:
            # how far the frame's time runs ahead of its count: dropped frames leave it as it was, a jump in the
            # file's times moves it at once, and that jump is not a gap to fill
            lead = position - result.index / self.fps
            if self._lead is not None and lead - self._lead > TIMESTAMP_JUMP_S:
                self._slot_shift -= round((lead - self._lead) * self.fps)
            self._lead = lead
        return (result.index if position is None else round(position * self.fps)) + self._slot_shift

    def _write_video(self, canvas: np.ndarray, index: int, slot: int) -> None:
        """One frame per slot of the video's fps, so that it lasts as long as its source. The frame before is
        written again for each slot skipped since (frames dropped by --realtime or a live camera, a variable
        frame rate's slow stretch): without it a 1 s clip at 240 fps, of which 139 frames were dropped, was
        written as 0.42 s, sped up. Frames that come faster than the fps (a burst) share a slot, and the
        newest is written, as a constant-rate encoder does: writing each in a slot of its own made a clip
        whose last frames came fast longer than its source."""
        writer = self._video(canvas)  # the first frame sets the video's size
        image = self._fitted(canvas, index)
        if self._held is not None:
            held_slot, held_image = self._held
            if slot <= held_slot:
                self.merged += 1
                self._held = (held_slot, image)
                return
            writer.write(held_image, slot - held_slot)
        self._held = (slot, image)

    def _video(self, canvas: np.ndarray) -> VideoRecorder:
        if self._writer is None:
            path = self.options.output
            path.parent.mkdir(parents=True, exist_ok=True)
            height, width = self._first_size = canvas.shape[:2]
            if (scale := MAX_OUTPUT_SIDE / max(height, width)) < 1:
                height, width = max(2, round(height * scale)), max(2, round(width * scale))
                self.log(f"note: --output is written at {width}x{height}, the frames of {self._first_size[1]}x{self._first_size[0]} "
                         f"scaled down: larger, encoding them took the time the recognition needed")
            self._size = (height, width)
            self._writer = VideoRecorder(path, self.fps, (width, height))
        return self._writer


class Window:
    """The OpenCV preview window and its keys."""

    KEYS = {ord("q"): "quit", 27: "quit", ord("s"): "snapshot", ord(" "): "pause"}

    def __init__(self, title: str = WINDOW_TITLE):
        self.title = title
        cv2.namedWindow(title, cv2.WINDOW_NORMAL)

    def show(self, canvas: np.ndarray, wait_ms: int = 1) -> str | None:
        cv2.imshow(self.title, canvas)
        return self.poll(wait_ms)

    def poll(self, wait_ms: int = 1) -> str | None:
        key = cv2.waitKey(wait_ms) & 0xFF
        if cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
            return "quit"  # closed with the window's X button
        return self.KEYS.get(key)

    def close(self) -> None:
        cv2.destroyWindow(self.title)


def display_problem() -> str | None:
    """Why a preview window cannot open here, or None if it can."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no DISPLAY or WAYLAND_DISPLAY is set"
    try:
        cv2.namedWindow("probe", cv2.WINDOW_AUTOSIZE)
        cv2.destroyWindow("probe")
    except cv2.error:
        return "this OpenCV build has no GUI support (opencv-python-headless; install opencv-python for a window)"
    return None


def run(stream: Stream, scorer: Scorer, options: Options, *, window: Window | None = None, log: Log = _stderr) -> Summary:
    """The recognition loop: newest frame -> prediction -> overlay -> outputs/window, until the source ends or q."""
    threshold, reject_classes = decision_rule(scorer, options.threshold, log)
    smoother = Smoother(options.smooth, vote=options.vote, threshold=threshold, k=options.top_k, reject_classes=reject_classes)
    recognizer = Recognizer(scorer, smoother, roi=options.roi, log=log)
    mirror = stream.camera if options.mirror is None else options.mirror
    pace = (stream.fps or UNKNOWN_FPS) if options.realtime and not stream.live else None
    grabber = FrameGrabber(stream.capture, live=stream.live, drop_stale=stream.live or options.realtime, pace_fps=pace,
                           description=stream.description)
    outputs = Outputs(options, stream.fps or UNKNOWN_FPS, log)
    summary, meter = Summary(), FpsMeter()
    start = time.perf_counter()
    try:
        with grabber:
            while options.max_frames is None or summary.frames < options.max_frames:
                frame = grabber.latest(timeout=0.05 if window else None)
                if frame is None:
                    if grabber.ended:
                        break
                    if window and window.poll() == "quit":
                        break
                    continue
                result = recognizer(frame, frame.captured - start)
                summary.frames += 1
                summary.last_label = result.prediction.label if result.prediction else None
                if result.latency_ms is not None:
                    summary.latencies_ms.add(result.latency_ms)
                summary.outage_frames += result.error is not None and not result.refused
                summary.refused_frames += result.refused
                info = OverlayInfo(result.prediction, meter.tick(), result.latency_ms, scorer.name,
                                   recognizer.crop_box(frame.image), result.error, hands=result.hands or ())
                canvas = render(frame.image, info, mirror=mirror)
                outputs.write(result, canvas)
                if window:
                    action = window.show(canvas)
                    if action == "snapshot":
                        outputs.snapshot_on_key(canvas, frame.index)
                    elif action == "pause":
                        action = _pause(window, render(frame.image, _paused(info), mirror=mirror), outputs, frame.index)
                    if action == "quit":
                        break
        summary.dropped = grabber.dropped
        summary.error = grabber.error
        summary.warning = grabber.warning
        summary.palm_detections = getattr(scorer, "palm_detections", None)
    except KeyboardInterrupt:
        log("interrupted")
    finally:
        summary.seconds = time.perf_counter() - start
        try:
            outputs.close()
        finally:
            if window:
                window.close()
    if missed := outputs.missed_snapshots():  # not after a failure: "the run ended" would hide it
        log(f"warning: no snapshot of frame {', '.join(map(str, missed))}: the run ended after frame {outputs.last_index}"
            f"{'' if outputs.last_index + 1 == summary.frames else f' ({summary.frames} shown, the rest dropped to keep up)'}")
    return summary


def _paused(info: OverlayInfo) -> OverlayInfo:
    return replace(info, paused=True)


def _pause(window: Window, canvas: np.ndarray, outputs: Outputs, index: int) -> str | None:
    """Hold the current frame until space (resume) or q/Esc (quit); live frames keep being dropped meanwhile."""
    window.show(canvas)
    while True:
        action = window.poll(30)
        if action == "snapshot":
            outputs.snapshot_on_key(canvas, index)
        elif action in ("pause", "quit"):
            return None if action == "pause" else "quit"


# ----------------------------------------------------------------------------- command line


def _number(kind: type, low: float, high: float | None = None, *, low_open: bool = False):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if kind is float and not math.isfinite(value):  # NaN passes every comparison below, and inf any missing bound
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if value < low or (low_open and value == low) or (high is not None and value > high):
            if high is None:  # it said "in (0.0, inf]", and inf is refused above
                raise argparse.ArgumentTypeError(f"must be {'above' if low_open else 'at least'} {low:g}, got {value:g}")
            raise argparse.ArgumentTypeError(f"must be in {'(' if low_open else '['}{low}, {high}], got {value}")
        return value

    return parse


def url_arg(text: str) -> str:
    """--url, checked when parsed: an empty one ran the local model (``checkpoint None does not exist``),
    and a bad port failed at the first frame without naming --url."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"empty: {URL_FORM}")
    try:
        parts = urlsplit(text)
    except ValueError as err:  # an unclosed IPv6 bracket: argparse would say "invalid url_arg value"
        raise argparse.ArgumentTypeError(f"{text!r} is not a URL ({err}): {URL_FORM}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"{text!r} is not an http(s) URL: {URL_FORM}")
    try:
        port = parts.port
    except ValueError:  # not a number, or above 65535
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: the port must be a number from 1 to 65535: {URL_FORM}")
    return text


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(
        prog="python -m service.webcam",
        description="Recognise hand gestures live from a webcam, video file, image sequence or stream.",
    )
    p.add_argument("--source", default="0", help="camera index (0), video file or animated GIF, image pattern (frames/%%04d.jpg), folder of images or glob (photos/*.jpg), or rtsp:// / http:// URL")
    scorer = p.add_mutually_exclusive_group(required=True)
    scorer.add_argument("--checkpoint", type=checkpoint_arg("best.pt"), help="run locally with this checkpoint (RUN/best.pt, or the run folder RUN)")
    scorer.add_argument("--url", type=url_arg, help="ask the HTTP service instead, e.g. http://127.0.0.1:3000")
    p.add_argument("--timeout", type=_number(float, 0.0, 3600.0, low_open=True), default=2.0, help="remote mode: seconds to wait for an answer (at most an hour)")
    p.add_argument("--realtime", action="store_true", help="files: play at the file's fps and drop frames inference cannot keep up with (default: every frame, as fast as possible)")
    p.add_argument("--roi", type=_number(float, 0.0, 1.0, low_open=True), nargs="?", const=DEFAULT_ROI, default=None, metavar="FRACTION",
                   help=f"classify only a centred square box of FRACTION of the shorter side ({DEFAULT_ROI} if given without a value)")
    p.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=None, help="mirror the preview (default: on for cameras)")
    p.add_argument("--smooth", type=_number(int, 1, MAX_SMOOTH), default=None, metavar="N",
                   help=f"smooth over the last N frames (default: {DEFAULT_SMOOTH}; 1, each image on its own, for a folder or glob of photos)")
    p.add_argument("--vote", action="store_true", help="smooth by majority vote of per-frame labels instead of averaging probabilities")
    p.add_argument("--threshold", type=_number(float, 0.0, 1.0), default=None,
                   help="show 'no gesture' below this score, 0-1 (default: the model's calibrated threshold; 0.5 for models from before calibration)")
    p.add_argument("--top-k", type=_number(int, 1, 10), default=3, help="bars in the overlay")
    p.add_argument("--headless", action="store_true", help="no window (servers, tests); use --output/--jsonl to keep results")
    p.add_argument("--output", type=output_arg("file", VIDEO_SUFFIXES), help="write the annotated video here (.mp4 mp4v or .avi MJPG)")
    p.add_argument("--jsonl", type=output_arg("file", replaces=JSON_LINES_SUFFIXES), help="write one JSON line per frame: index, timestamp, label, score, gesture_score, latency_ms")
    p.add_argument("--snapshot-dir", type=output_arg("folder", check_writing=False), default=Path("snapshots"), help="where s (and --snapshot-at) save PNGs")
    p.add_argument("--snapshot-at", type=_number(int, 0), nargs="+", default=(), metavar="INDEX", help="save these frames as PNG (headless screenshots)")
    p.add_argument("--max-frames", type=_number(int, 1), help="stop after this many processed frames")
    add_runtime_arguments(p, default_threads=default_threads(), threads_help="the cores but one, left for capture and drawing")
    return p


def options_from_args(args: argparse.Namespace, stream: Stream) -> Options:
    smooth = args.smooth or (1 if stream.photos else DEFAULT_SMOOTH)  # photos of a folder are not a recording's frames
    return Options(realtime=args.realtime, roi=args.roi, mirror=args.mirror, smooth=smooth, vote=args.vote,
                   threshold=args.threshold, top_k=args.top_k, output=args.output, jsonl=args.jsonl,
                   snapshot_dir=args.snapshot_dir, snapshot_at=tuple(args.snapshot_at), max_frames=args.max_frames)


def make_scorer(args: argparse.Namespace, stream: Stream) -> Scorer:
    if args.url:
        return RemoteScorer(args.url, timeout=args.timeout)
    scorer = LocalScorer.load(str(args.checkpoint), Runtime.from_args(args), track_hands=not stream.photos)
    warn_if_training_state(args.checkpoint, scorer.classifier.checkpoint_meta)
    if isinstance(stream.capture, ImageFiles):  # each photo then scores as predict(file) scores it, a large JPEG included
        stream.capture.decode = scorer.classifier.decode
    return scorer


def check_outputs(args: argparse.Namespace) -> None:
    """Outputs that would destroy an input, name one file twice, or cannot be written: a ValueError, before
    the source opens and the model loads."""
    files = {"--output": args.output, "--jsonl": args.jsonl}
    for flag, out in files.items():
        if out is not None:  # writing the video being read truncated it; a camera index or URL is no file
            check_output_spares_inputs(flag, out, {"--source": Path(args.source), "--checkpoint": args.checkpoint})
    check_outputs_differ(files)
    if args.snapshot_at:
        check_writable("--snapshot-dir", args.snapshot_dir, "folder")


def unused_flags(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str | None:
    """Flags set for the other mode, which it would ignore: the model's runtime with --url (the server
    runs the model, with its own settings), --timeout with --checkpoint (nothing to wait for)."""
    names = ("device", "engine", "precision", "threads") if args.url else ("timeout",)
    given = [f"--{name}" for name in names if getattr(args, name) != parser.get_default(name)]
    if not given:
        return None
    if args.url:
        return (f"{', '.join(given)} set how the model runs here, and with --url the server runs it (its GESTURE_DEVICE, "
                "GESTURE_ENGINE, GESTURE_PRECISION and GESTURE_THREADS settings): drop them, or run it here with --checkpoint")
    return "--timeout is how long to wait for the server's answer with --url; with --checkpoint the model runs here: drop it"


@command
def main(argv: list[str] | None = None, log: Log = _stderr) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if problem := unused_flags(args, parser):
        parser.error(problem)
    check_outputs(args)
    try:
        stream = Stream.open(args.source)
    except SourceError as err:
        log(f"error: {err}")
        return EXIT_USAGE
    show_window = not args.headless  # said once the source opens: above its error it was a hint that did not matter
    if show_window and (problem := display_problem()):
        log(f"no display: {problem}; running headless (add --output/--jsonl to keep the results)")
        show_window = False
    try:
        scorer = make_scorer(args, stream)
    except Exception as err:  # bad checkpoint, CUDA missing, bad URL: one line, no traceback
        stream.capture.release()
        log(f"error: {err}")
        return EXIT_USAGE
    log(f"{stream.description} -> {scorer.name}" + (" (window: q quit, s snapshot, space pause)" if show_window else " (headless)")
        + ("; each image on its own (--smooth N to smooth over N in a row)" if stream.photos and args.smooth is None else ""))
    try:
        summary = run(stream, scorer, options_from_args(args, stream), window=Window() if show_window else None, log=log)
    except OSError as err:  # an output that became unwritable (disk full): not a lost source
        log(f"error: {describe(err)}")
        return EXIT_USAGE
    finally:
        scorer.close()
    print(summary.line(), flush=True)
    if summary.error:
        log(f"error: {summary.error}")
    elif summary.warning:
        log(f"warning: {summary.warning}")
    if not summary.error and summary.outage_frames:
        log(f"warning: the server did not answer for {summary.outage_frames} of {summary.frames} frames")
    if summary.refused_frames:
        every = summary.refused_frames == summary.frames
        log(f"{'error' if every else 'warning'}: the server refused {'every one of the' if every else f'{summary.refused_frames} of'} "
            f"{summary.frames} frames (its reason is above)")
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
