"""Real hands in real scenes, for the tests of the service, the webcam and the browser demo with hand-crop models.

Photos of the ASL alphabet (one signer's hand, 200x200) are pasted at known places onto an empty frame
of the same set (the signer's room, no hand) scaled to 640x480, so every hand has a known place.
The letters used are ones whose photo the palm detector finds when pasted (docs/hands.md: 13 of 15).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from gesture_core import build_model, get_backbone, save_checkpoint
from tests.helpers import SHARED_DATA

ASL = SHARED_DATA / "asl-alphabet"
FRAME_W, FRAME_H = 640, 480
HAND_CLASSES = ["A", "B", "C", "D", "E"]


def asl_folder() -> Path:
    if not ASL.is_dir():
        pytest.skip(f"{ASL} not present (real data lives in ../shared/data)")
    return ASL


def read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(read_bgr(path), cv2.COLOR_BGR2RGB)


def read_bgr(path: Path) -> np.ndarray:
    image = cv2.imread(str(path))
    assert image is not None, f"cannot read {path}"
    return image


def hand_photo(letter: str) -> np.ndarray:
    """The first photo of an ASL letter, BGR."""
    return read_bgr(sorted((asl_folder() / letter).iterdir())[0])


def empty_scene() -> np.ndarray:
    """640x480 BGR: the signer's room with no hand in it."""
    return cv2.resize(hand_photo("nothing"), (FRAME_W, FRAME_H), interpolation=cv2.INTER_LINEAR)


def paste(frame: np.ndarray, photo: np.ndarray, side: int, x: int, y: int) -> np.ndarray:
    """A copy of ``frame`` with ``photo`` scaled to ``side``² at ``(x, y)`` (same channel order in, out)."""
    out = frame.copy()
    out[y : y + side, x : x + side] = cv2.resize(photo, (side, side), interpolation=cv2.INTER_AREA)
    return out


def one_hand_scene(letter: str = "A", side: int = 240, x: int = 60, y: int = 100) -> np.ndarray:
    return paste(empty_scene(), hand_photo(letter), side, x, y)


def two_hands_scene() -> np.ndarray:
    """A on the left and a mirrored D on the right: two hands, well apart."""
    frame = paste(empty_scene(), hand_photo("A"), 240, 40, 100)
    return paste(frame, cv2.flip(hand_photo("D"), 1), 200, 400, 120)


def jpeg_bytes(bgr: np.ndarray, quality: int = 95) -> bytes:
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return data.tobytes()


def moving_hand_frames(frames: int, letter: str = "A", side: int = 220, step: int = 6) -> list[np.ndarray]:
    """A hand sliding left to right across the empty scene, ``step`` px per frame."""
    scene, photo = empty_scene(), hand_photo(letter)
    return [paste(scene, photo, side, 20 + (i * step) % (FRAME_W - side - 40), 120) for i in range(frames)]


def write_video(path: Path, frames: list[np.ndarray], fps: float = 30.0) -> Path:
    """.avi (MJPG) or .mp4 (mp4v), as the webcam demo writes them."""
    fourcc = cv2.VideoWriter_fourcc(*("MJPG" if path.suffix == ".avi" else "mp4v"))
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), fourcc, fps, (width, height))
    assert writer.isOpened(), f"cannot write {path}"
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def save_hands_checkpoint(path: Path, image_size: int = 128) -> Path:
    """efficientnet_lite0 with ImageNet weights and an untrained head over 5 ASL letters, trained (so
    its checkpoint says) on hand crops: real size and real preprocessing; its answers are what they are,
    and every test compares the service's and the webcam's with ``Classifier.predict_hands``'s."""
    torch.manual_seed(0)
    backbone = get_backbone("efficientnet_lite0")
    config = backbone.data_config.with_input_size(image_size).with_hands(True)
    return save_checkpoint(path, model=build_model("efficientnet_lite0", len(HAND_CLASSES), "imagenet"), backbone=backbone.name,
                           classes=HAND_CLASSES, data_config=config, train_config={"seed": 0, "hands": True},
                           metrics={"test": {"top1": 0.2}})


def litert_missing() -> bool:
    import importlib.util

    return importlib.util.find_spec("ai_edge_litert") is None


NEEDS_LITERT = pytest.mark.skipif(litert_missing(), reason='ai-edge-litert is not installed (pip install -e ".[hands]"); it runs the hand models')
