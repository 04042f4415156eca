"""The webcam demo's --output video, encoded on a thread of its own.

Encoding took the main loop's time: a 1080p frame is 17 ms of mp4v, and each frame dropped to keep up
(--realtime, a live camera) is written again to keep the video as long as its source, so recording
made the demo drop more frames, which made more to write. Here the loop hands each frame over and goes
on; the writer thread encodes while the model runs. The hand-over queue is short, so a writer that
cannot keep up holds the loop back (as writing in the loop did) instead of falling ever further behind.

OpenCV's writer reports no failed write (a full disk gave 400 FFmpeg warnings, exit 0 and an MP4 with
no index), so the free space is checked after each frame, and the video is checked to open as it closes.
"""

from __future__ import annotations

import errno
import os
import queue
import shutil
import threading
from pathlib import Path

import cv2
import numpy as np

# below this much free space the recording stops: FFmpeg buffers what it writes, and a failed write says nothing
MIN_FREE_BYTES = 1 << 20
QUEUED_FRAMES = 4  # handed over and not yet written: a writer this far behind holds the loop back


class VideoRecorder:
    """``write(image, times)`` appends ``image`` ``times`` times; ``close`` finishes the file. A failure (a full
    disk) is raised by the next ``write`` or by ``close``, as an OSError naming the file."""

    def __init__(self, path: Path, fps: float, size: tuple[int, int]):
        self.path = path
        fourcc = cv2.VideoWriter_fourcc(*("MJPG" if path.suffix.lower() == ".avi" else "mp4v"))
        self._writer = cv2.VideoWriter(str(path), fourcc, fps, size)
        if not self._writer.isOpened():
            raise OSError(f"cannot write video {path}: use a .mp4 (mp4v) or .avi (MJPG) file name in a writable folder")
        self._queue: queue.Queue[tuple[np.ndarray, int] | None] = queue.Queue(maxsize=QUEUED_FRAMES)
        self._failure: OSError | None = None
        self._log_level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # FFmpeg's "Failed to write frame", once a frame
        self._thread = threading.Thread(target=self._encode, name="video-writer", daemon=True)
        self._thread.start()

    def write(self, image: np.ndarray, times: int = 1) -> None:
        self._raise_failure()
        self._queue.put((image, times))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._writer.release()
        try:
            self._raise_failure()
            self._check_video()
        finally:
            cv2.utils.logging.setLogLevel(self._log_level)

    def _encode(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._failure is None:  # after one, the frames handed over are let go: the loop hears of it at its next write
                image, times = item
                try:
                    for _ in range(times):
                        self._writer.write(image)
                    self._failure = self._space_failure()
                except Exception as err:  # noqa: BLE001 - raised in the loop's thread, where the run ends on it
                    self._failure = err if isinstance(err, OSError) else OSError(errno.EIO, f"could not write the video ({err})", str(self.path))

    def _space_failure(self) -> OSError | None:
        full = shutil.disk_usage(self.path.parent).free < MIN_FREE_BYTES
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path)) if full else None

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _check_video(self) -> None:
        """The written video opens and has frames: else the disk filled, or a quota ended it, between two checks of space."""
        video = cv2.VideoCapture(str(self.path))
        whole = video.isOpened() and video.get(cv2.CAP_PROP_FRAME_COUNT) > 0
        video.release()
        if not whole:
            raise OSError(errno.EIO, "not written whole: it does not open as a video (is the disk full?)", str(self.path))
