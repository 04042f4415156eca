"""Capture in its own thread, so the recogniser always works on the newest frame.

Live sources (cameras, streams) and ``--realtime`` files produce frames on their own clock; if
inference is slower, older frames are dropped instead of queueing up, so the preview never lags
behind reality. Files read "as fast as possible" hand over every frame (nothing to fall behind).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

import cv2
import numpy as np

from gesture_core import videos
from service.webcam.sources import ImageFiles

# A live source that fails this long in a row is gone (unplugged camera, dropped stream);
# single failed reads happen and are retried.
LOST_AFTER_S = 2.0


@dataclass(frozen=True)
class Frame:
    index: int  # position in the stream; gaps are frames dropped as stale
    image: np.ndarray  # BGR, as OpenCV delivers it
    captured: float  # time.perf_counter() when it was read
    file: str | None = None  # the image file it was decoded from (a folder, glob, sequence or photo as the source)
    position_s: float | None = None  # a video file's frame: its time in the video (variable frame rates too)


class FrameGrabber:
    """Reads a ``cv2.VideoCapture`` on a background thread; ``latest()`` returns the newest unseen frame.

    ``drop_stale``: keep only the newest frame (live sources, ``--realtime``); otherwise the reader
    waits until each frame was taken, so every frame of a file gets processed.
    ``pace_fps``: release frames no faster than this (plays a file at its own speed).
    """

    def __init__(self, capture: cv2.VideoCapture, *, live: bool, drop_stale: bool, pace_fps: float | None = None,
                 description: str = "source", lost_after_s: float = LOST_AFTER_S):
        self._capture = capture
        self._live = live
        self._drop_stale = drop_stale
        self._pace = 1.0 / pace_fps if pace_fps else 0.0
        self._video_file = not live and not isinstance(capture, ImageFiles)  # frames with a time of their own
        self._first_ms: float | None = None
        self._description = description
        self._lost_after_s = lost_after_s
        self._cond = threading.Condition()
        self._pending: Frame | None = None
        self._ended = False
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="frame-grabber", daemon=True)
        self.error: str | None = None  # set when a live source disappears or reading raises
        self.warning: str | None = None  # set when a file ends well before the frames it declares, or images do not decode
        self.read_count = 0
        self.dropped = 0

    def __enter__(self) -> FrameGrabber:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=5.0)
        self._capture.release()

    def latest(self, timeout: float | None = None) -> Frame | None:
        """The newest frame not yet returned; None when the source has ended (or ``timeout`` passed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._pending is None and not self._ended:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            frame, self._pending = self._pending, None
            self._cond.notify_all()
            return frame

    @property
    def ended(self) -> bool:
        with self._cond:
            return self._ended and self._pending is None

    def _run(self) -> None:
        try:
            self._read_loop()
        except Exception as err:  # a backend crash must end the stream with a message, not hang the UI
            self.error = f"reading {self._description} failed: {type(err).__name__}: {err}"
        finally:
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    def _position(self) -> float | None:
        """The frame just read's time in a video file, from its first frame (a transport stream may start at
        1.4 s); None for other sources, and where the file gives no time."""
        if not self._video_file or not math.isfinite(ms := self._capture.get(cv2.CAP_PROP_POS_MSEC)) or ms < 0:
            return None
        if self._first_ms is None:
            self._first_ms = ms
        return max(0.0, ms - self._first_ms) / 1000

    def _read_loop(self) -> None:
        start = time.perf_counter()
        failing_since: float | None = None
        while not self._stop:
            ok, image = self._capture.read()
            now = time.perf_counter()
            if not ok or image is None:
                if not self._live:
                    self.warning = ended_early(self._capture, self.read_count, self._description)
                    if self.warning and self._video_file:  # OpenCV times the frames after a skipped one by the frames read
                        self.warning += "; frames after a skipped one are timed early by its length (position_s, --output)"
                    return  # end of file
                failing_since = failing_since or now
                if now - failing_since >= self._lost_after_s:
                    self.error = f"{self._description} stopped delivering frames (unplugged, or in use by another program?)"
                    return
                time.sleep(0.01)
                continue
            failing_since = None
            position = self._position()
            if self._pace:  # at the frame's own time: a phone's variable frame rate played at its average ran late, then early
                due = position if position is not None else self.read_count * self._pace
                delay = start + due - time.perf_counter()
                if abs(delay) > videos.TIMESTAMP_JUMP_S:  # the file's times jumped (or decoding fell behind): go on from here
                    start, delay = time.perf_counter() - due, 0.0
                if delay > 0:
                    time.sleep(delay)
                now = time.perf_counter()
            self._hand_over(Frame(self.read_count, image, now, getattr(self._capture, "last_path", None), position))
            self.read_count += 1

    def _hand_over(self, frame: Frame) -> None:
        with self._cond:
            if not self._drop_stale:
                while self._pending is not None and not self._stop:
                    self._cond.wait()
            elif self._pending is not None:
                self.dropped += 1
            self._pending = frame
            self._cond.notify_all()


def ended_early(capture: cv2.VideoCapture | ImageFiles, frames_read: int, description: str) -> str | None:
    """A file whose container declares more frames than could be read: some do not decode (the file
    was cut short, or frames are corrupt), which the summary alone would not show. Containers may
    round their count, so a frame or 5% short is not reported. Images: the files that did not decode."""
    if isinstance(capture, ImageFiles):
        return capture.skipped_note(description)
    short = videos.ended_early(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), frames_read)
    return f"{description} {short}" if short else None
