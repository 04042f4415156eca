"""Why a video file gives no frames, or fewer than it declares: the reasons the webcam demo, the capture
tool and training's frame extraction (``training.prepare.prepare_videos``) give alike. Training said
"re-encode them as H.264" for an empty file and for a recording that was never finished, which no
re-encoding can read, and nothing of a file cut short."""

from __future__ import annotations

import math
import os

from gesture_core.images import VIDEO_FRAME_EVERY

# Two frames' times in a video file further apart than this are a jump in its timestamps (camcorder .ts
# files joined with cat, a damaged file), not a slow stretch of a variable frame rate: played or written
# at their times, a jump of an hour was an hour of waiting, or of the same frame written again.
TIMESTAMP_JUMP_S = 2.0

NOT_DECODED = "the file is not a video OpenCV/FFmpeg can decode (try re-encoding it as H.264 .mp4 or MJPG .avi)"


def why_no_frames(path: str | os.PathLike) -> str:
    """Why a video file gives not one frame: empty, a recording never finished, or a format OpenCV cannot decode."""
    try:
        if os.path.getsize(path) == 0:
            return "an empty file (0 bytes)"
    except OSError as err:
        return f"unreadable: {err.strerror or err}"
    return unfinished_recording(path) or NOT_DECODED


def unfinished_recording(path: str | os.PathLike, most_boxes: int = 1000) -> str | None:
    """Why an MP4 or MOV does not open when its recording never finished: the index (the moov box),
    written last, is missing, so no player can find a frame, and re-encoding, the usual hint, cannot
    either. None for any other file."""
    boxes = []
    try:
        with open(path, "rb") as file:
            while len(boxes) < most_boxes and len(header := file.read(8)) == 8:
                size, kind = int.from_bytes(header[:4], "big"), header[4:]
                if size == 1 and len(wide := file.read(8)) == 8:  # a 64-bit size follows the type
                    size, header = int.from_bytes(wide, "big"), header + wide
                boxes.append(kind)
                if size == 0 or size < len(header):  # to the end of the file, or not a box at all
                    break
                file.seek(size - len(header), os.SEEK_CUR)
    except OSError:
        return None
    if not boxes or boxes[0] != b"ftyp" or b"moov" in boxes:
        return None
    return ("the recording was never finished: the file has no index (its moov box, written when a recording stops), "
            "as when the camera app, the phone or the disk stopped mid-recording; no player can read it, so record it again "
            "or repair it with a tool such as untrunc")


def ended_early(declared: int, read: int) -> str | None:
    """"ended after READ of the DECLARED frames it declares: ..." for a file whose container declares more
    frames than could be read (cut short, or a corrupt frame); containers may round their count, so a
    frame or 5% short is not reported (None). Which frames were lost is not known: OpenCV stops at a
    corrupt frame of an MP4, and skips one of an AVI (MJPG) and reads on, counting its times from the
    frames it read."""
    if declared - read < max(2, 0.05 * declared):
        return None
    return (f"ended after {read} of the {declared} frames it declares: {declared - read} do not decode "
            "(the file cut short, or corrupt frames skipped)")


def frame_step(fps: float, every: int = VIDEO_FRAME_EVERY) -> int:
    """Every how many frames of a video one is kept: ``every`` (as at 30 fps, one in 1/6 s), and more above
    30 fps, so that a slow-motion clip gives as many frames a second of its scene as any other: every 5th
    frame of a 240 fps clip flooded its class with 48 near-copies for each second recorded."""
    return max(every, round(every * fps / 30)) if math.isfinite(fps) and fps > 0 else every
