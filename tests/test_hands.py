"""The hand localiser with the real MediaPipe models through LiteRT, and ``training.prepare hand-models``.

The models come from a real ``python -m training.prepare hand-models`` (pip download of the mediapipe
wheel from PyPI, which CI can reach) into the session's private cache. Real photos come from
../shared/data: the ASL alphabet (200x200, one signer's hand; ``nothing/`` has none) pasted onto
640x480 scenes at known places and sizes, so every box has a known right answer.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from gesture_core.cli import command
from gesture_core.hands import (
    HAND_MODEL_FILES,
    LANDMARKS,
    Hand,
    HandLocaliser,
    HandModelsUnavailableError,
    HandTracker,
    RotatedSquare,
    box_iou,
    crop_hand,
    palm_anchors,
)
from tests.hand_scenes import asl_folder, paste, read_rgb
from tests.helpers import REPO, SHARED_DATA
from training import prepare

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ai_edge_litert") is None,
    reason='ai-edge-litert is not installed (pip install -e ".[hands]"); it runs the hand models',
)

ASL = SHARED_DATA / "asl-alphabet"
REFERENCE = Path(__file__).with_name("hands_mediapipe_reference.json")
FRAME_W, FRAME_H = 640, 480
# One photo per letter, the first file of each folder: different hand shapes, not hand-picked.
LETTERS = "ABCDEFGHIKLOVWY"



def first_image(folder: Path) -> Path:
    return sorted(folder.iterdir())[0]



@pytest.fixture(scope="session")
def asl() -> Path:
    return asl_folder()


@pytest.fixture(scope="session")
def localiser(hand_models) -> HandLocaliser:
    return HandLocaliser(hand_models, threads=1)


@pytest.fixture(scope="session")
def backgrounds(asl) -> dict[str, np.ndarray]:
    """640x480 scenes with no hand: an empty ASL frame (the signer's room) and a flower photo."""
    scenes = {"nothing": read_rgb(first_image(asl / "nothing"))}
    flowers = SHARED_DATA / "flowers" / "daisy"
    if flowers.is_dir():
        scenes["flowers"] = read_rgb(first_image(flowers))
    return {name: cv2.resize(img, (FRAME_W, FRAME_H), interpolation=cv2.INTER_LINEAR) for name, img in scenes.items()}


@pytest.fixture(scope="session")
def hand_photos(asl, localiser) -> list[tuple[np.ndarray, Hand]]:
    """(photo, the hand found in the photo alone) for the letters whose photo alone has a hand found (13 of 15)."""
    found = []
    for letter in LETTERS:
        photo = read_rgb(first_image(asl / letter))
        alone = localiser.find(photo)
        if alone:
            found.append((photo, alone[0]))
    assert len(found) >= 12, f"only {len(found)} of {len(LETTERS)} ASL photos have a hand found (13 measured)"
    return found


# --------------------------------------------------------------------------- prepare hand-models


def test_prepare_put_verified_models_and_the_licence_in_the_cache(hand_models):
    assert hand_models == Path(os.environ["GESTURE_CACHE_DIR"]) / "hand-models"
    for model in HAND_MODEL_FILES:
        assert prepare.sha256_of(hand_models / model.name) == model.sha256
    assert "Apache License" in (hand_models / "LICENSE").read_text()


def test_second_run_does_nothing_and_is_fast(hand_models, capsys):
    stamps = {f.name: (hand_models / f.name).stat().st_mtime_ns for f in HAND_MODEL_FILES}
    start = time.perf_counter()
    assert prepare.main(["hand-models"]) == 0
    elapsed = time.perf_counter() - start
    assert "already prepared" in capsys.readouterr().out
    assert elapsed < 1.0, f"a second run took {elapsed:.2f} s; it should only hash 8 MB"
    assert stamps == {f.name: (hand_models / f.name).stat().st_mtime_ns for f in HAND_MODEL_FILES}


def make_wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def real_members(hand_models: Path) -> dict[str, bytes]:
    """The members a mediapipe wheel holds, made from the verified models (no second 35 MB download)."""
    return {f.wheel_member: (hand_models / f.name).read_bytes() for f in HAND_MODEL_FILES}


def test_wheel_on_disk_is_used_without_pip(hand_models, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GESTURE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # would fail if pip were asked
    wheel = make_wheel(tmp_path / "mediapipe.whl", real_members(hand_models))
    assert prepare.main(["hand-models", "--wheel", str(wheel)]) == 0
    assert "hand-models: prepared at" in capsys.readouterr().out
    assert prepare.hand_models_ready(tmp_path / "cache" / "hand-models")


def test_wrong_sha256_is_refused_and_nothing_is_written(hand_models, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GESTURE_CACHE_DIR", str(tmp_path / "cache"))
    members = real_members(hand_models)
    palm = HAND_MODEL_FILES[0].wheel_member
    members[palm] = members[palm][:-1] + bytes([members[palm][-1] ^ 1])  # one bit flipped
    wheel = make_wheel(tmp_path / "mediapipe.whl", members)
    assert prepare.main(["hand-models", "--wheel", str(wheel)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "sha256" in err and HAND_MODEL_FILES[0].sha256 in err
    assert not (tmp_path / "cache" / "hand-models").exists()


def test_a_wheel_without_the_models_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GESTURE_CACHE_DIR", str(tmp_path / "cache"))
    wheel = make_wheel(tmp_path / "other.whl", {"other/__init__.py": b""})
    assert prepare.main(["hand-models", "--wheel", str(wheel)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"has no {HAND_MODEL_FILES[0].wheel_member}" in err


def closed_port() -> int:
    with socket.socket() as s:  # bound, never listening: connection refused, like a machine without network
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_without_a_wheel_gives_one_error_line_and_exit_2(tmp_path, monkeypatch, capsys):
    """Real pip, pointed at an index nobody answers, with the machine's own pip config and wheel folders switched off."""
    monkeypatch.setenv("GESTURE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{closed_port()}/simple")
    for name in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX"):
        monkeypatch.delenv(name, raising=False)
    start = time.perf_counter()
    assert prepare.main(["hand-models"]) == 2
    assert time.perf_counter() - start < prepare.PIP_TIMEOUT_S
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err
    assert "cannot connect to http://127.0.0.1" in errors[0] and "offline?" in errors[0]
    assert "--wheel PATH" in errors[0] and prepare.WHEEL_FILE in errors[0]
    assert not (tmp_path / "cache" / "hand-models").exists()


def test_wheel_flag_belongs_to_hand_models_only(tmp_path, capsys):
    # files that exist, so the check under test is the pairing, not the paths
    wheel, archive = tmp_path / "x.whl", tmp_path / "x.zip"
    wheel.write_bytes(b"PK")
    archive.write_bytes(b"PK")
    with pytest.raises(SystemExit) as exc:
        prepare.main(["flowers", "--wheel", str(wheel)])
    assert exc.value.code == 2 and "--wheel is for hand-models only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        prepare.main(["hand-models", "--archive", str(archive)])
    assert "takes --wheel PATH" in capsys.readouterr().err


# --------------------------------------------------------------------------- loading errors


def test_missing_models_name_the_prepare_command(tmp_path, capsys):
    with pytest.raises(HandModelsUnavailableError, match="python -m training.prepare hand-models"):
        HandLocaliser(tmp_path)
    # a command that builds one prints one line, exit code 2 (the error is a registered user error)
    assert command(lambda: HandLocaliser(tmp_path) and 0)() == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: hand model ") and len(err.splitlines()) == 1


def test_missing_runtime_names_the_extra(hand_models, monkeypatch):
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # what `import` sees when the package is absent
    with pytest.raises(HandModelsUnavailableError, match=r'pip install -e "\.\[hands\]"'):
        HandLocaliser(hand_models)


def test_nothing_imports_litert_unless_a_localiser_is_built():
    code = (
        "import sys, gesture_core, gesture_core.hands, gesture_core.cli, training.prepare, service.webcam\n"
        "assert 'ai_edge_litert' not in sys.modules, sorted(m for m in sys.modules if 'litert' in m)"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})


# --------------------------------------------------------------------------- geometry without the models


def test_anchor_grid_is_mediapipes():
    anchors = palm_anchors()
    assert anchors.shape == (2016, 2)
    # stride 8: a 24x24 grid with 2 anchors per cell, then stride 16: 12x12 with 6 per cell
    np.testing.assert_allclose(anchors[0], anchors[1])
    np.testing.assert_allclose(anchors[0], [0.5 / 24, 0.5 / 24])
    np.testing.assert_allclose(anchors[2], [1.5 / 24, 0.5 / 24])
    np.testing.assert_allclose(anchors[1152 : 1152 + 6], [[0.5 / 12, 0.5 / 12]] * 6)
    np.testing.assert_allclose(anchors[-1], [11.5 / 12, 11.5 / 12])


@pytest.mark.parametrize("angle", [0.0, 0.7, math.pi / 2, -2.5])
def test_crop_and_to_frame_agree(angle):
    """The landmarks go back to the frame with to_frame; the crop is cut with the affine. They must be the same map."""
    frame = np.zeros((300, 400, 3), np.uint8)
    spot = (231, 118)
    frame[spot[1], spot[0]] = 255
    square = RotatedSquare(cx=220.0, cy=130.0, size=64.0, angle=angle)
    crop = crop_hand(frame, square, 64)  # 1 crop pixel = 1 frame pixel
    v, u = np.unravel_index(np.argmax(crop[:, :, 0]), crop.shape[:2])
    back = square.to_frame(np.array([[u + 0.5, v + 0.5]]), 64)[0]
    assert np.hypot(*(back - (spot[0] + 0.5, spot[1] + 0.5))) < 1.0


def test_crop_turns_the_square_upright():
    """A bar pointing right in the frame, in a square with angle pi/2 (hand leaning right), points up in the crop."""
    frame = np.zeros((200, 200, 3), np.uint8)
    cv2.rectangle(frame, (100, 95), (160, 105), (255, 255, 255), -1)  # from the centre towards +x
    crop = crop_hand(frame, RotatedSquare(100.0, 100.0, 150.0, math.pi / 2), 150)
    ys, xs = np.nonzero(crop[:, :, 0] > 128)
    assert ys.mean() < 75 - 10 and abs(xs.mean() - 75) < 3  # above the centre, on the vertical axis
    assert crop.dtype == np.uint8 and crop.shape == (150, 150, 3)


# --------------------------------------------------------------------------- real photos


def test_landmarks_match_mediapipes_own_pipeline(localiser, asl):
    """Landmarks within 1 px of MediaPipe's own hand tracking on the same photos (handedness too), mirrored ones included."""
    reference = json.loads(REFERENCE.read_text())
    for frame in reference["frames"]:
        rgb = read_rgb(SHARED_DATA / frame["image"])
        if frame["mirrored"]:
            rgb = np.ascontiguousarray(rgb[:, ::-1])
        (hand,) = localiser.find(rgb)
        error = np.abs(np.array(hand.landmarks) - np.array(frame["landmarks"])).mean()
        assert error < 1.0, f"{frame['image']} mirrored={frame['mirrored']}: landmarks {error:.2f} px from MediaPipe's"
        assert hand.handedness == frame["handedness"]
        assert len(hand.landmarks) == LANDMARKS and hand.score > 0.9


# Sides of the pasted 200x200 photo on a 640x480 frame: 360 px is 56% of the width, 240 px 38%;
# the hand itself is about half the photo. Smaller hands are found less often (docs/hands.md has
# the measured table); 160 px and below are left to that table rather than given a bar here.
PASTE_SIDES = (240, 360)


@pytest.mark.parametrize("side", PASTE_SIDES)
def test_pasted_hand_is_found_where_it_was_pasted(localiser, hand_photos, backgrounds, side):
    """Bars from measurement (15 letters, both scenes): found 12-13 of 13, IoU with the pasted square
    0.39-0.75 (the hand square is twice the hand, by MediaPipe's design, and the hand is half the photo,
    so a perfect box overlaps the photo by about 0.4-0.7; a box anywhere else scores 0), and the square
    within 2% of its size of where the photo alone puts it (0.8-1.25 its size)."""
    x, y = FRAME_W - side - 40, FRAME_H - side - 20  # off centre: a letterbox or offset error moves the box
    for name, background in backgrounds.items():
        found = 0
        for photo, alone in hand_photos:
            hands = localiser.find(paste(background, photo, side, x, y))
            if not hands:
                continue
            found += 1
            hand, k = hands[0], side / photo.shape[1]
            assert box_iou(hand.box, (x, y, x + side, y + side)) > 0.35, f"{name}: box {hand.box}, pasted at {(x, y, side)}"
            expected = np.array([alone.square.cx * k + x, alone.square.cy * k + y])
            assert np.hypot(*(np.array([hand.square.cx, hand.square.cy]) - expected)) < 0.05 * alone.square.size * k
            assert 0.8 < hand.square.size / (alone.square.size * k) < 1.25
            assert hand.handedness == alone.handedness
        assert found >= len(hand_photos) - 2, f"{name}, side {side}: found {found} of {len(hand_photos)}"


def test_mirrored_photo_gives_the_other_hand_and_the_mirrored_box(localiser, hand_photos, backgrounds):
    background = backgrounds["nothing"]
    side, x, y = 300, 300, 120
    for photo, _ in hand_photos[:5]:
        frame = paste(background, photo, side, x, y)
        (hand,) = localiser.find(frame)[:1]
        (mirrored,) = localiser.find(np.ascontiguousarray(frame[:, ::-1]))[:1]
        assert {hand.handedness, mirrored.handedness} == {"left", "right"}
        x0, y0, x1, y1 = hand.box
        assert box_iou(mirrored.box, (FRAME_W - x1, y0, FRAME_W - x0, y1)) > 0.8


def test_scenes_without_a_hand_give_no_hand(localiser, asl, backgrounds):
    """Measured: none of 40 empty ASL frames and 20 flower photos has a hand found."""
    empty = [read_rgb(p) for p in sorted((asl / "nothing").iterdir())[:20]]
    for rgb in [*empty, *backgrounds.values()]:
        assert localiser.find(rgb) == []


def test_without_landmarks_the_palm_square_is_returned(hand_models, hand_photos, backgrounds):
    palms_only = HandLocaliser(hand_models, landmarks=False, threads=1)
    photo, alone = hand_photos[0]
    frame = paste(backgrounds["nothing"], photo, 300, 300, 120)
    (hand,) = palms_only.find(frame)
    assert hand.handedness is None and hand.landmarks is None and hand.palm is not None and hand.score == hand.palm.score
    assert box_iou(hand.box, (300, 120, 600, 420)) > 0.35
    crop = crop_hand(frame, hand, 128)
    assert crop.shape == (128, 128, 3) and crop.dtype == np.uint8 and crop.std() > 10
    with pytest.raises(ValueError, match="landmarks=True"):
        HandTracker(palms_only)


def test_wrong_input_is_one_clear_value_error(localiser):
    with pytest.raises(ValueError, match=r"RGB uint8 image of shape \(H, W, 3\)"):
        localiser.find(np.zeros((100, 100), np.uint8))


# --------------------------------------------------------------------------- tracking


def still_hand_video(photo: np.ndarray, background: np.ndarray, frames: int) -> list[np.ndarray]:
    """A hand held still in front of a camera: the same scene, shifted a pixel or two, with sensor noise."""
    rng = np.random.default_rng(0)
    video = []
    for i in range(frames):
        frame = paste(background, photo, 280, 300 + (i % 3), 140 + (i % 2)).astype(np.int16)
        video.append(np.clip(frame + rng.integers(-4, 5, frame.shape), 0, 255).astype(np.uint8))
    return video


def test_tracker_follows_a_still_hand_with_few_palm_detections(hand_models, hand_photos, backgrounds):
    localiser = HandLocaliser(hand_models, threads=1)
    tracker = HandTracker(localiser, redetect_every=10)
    photo, _ = hand_photos[0]
    video = still_hand_video(photo, backgrounds["nothing"], 30)
    boxes = []
    for frame in video:
        (hand,) = tracker.update(frame)
        boxes.append(hand.box)
    # frames 1, 11 and 21 detect; the other 27 follow the landmarks of the frame before
    assert localiser.palm_calls == 3
    # one landmark run per frame: a re-detected palm of the tracked hand is recognised as that hand, not run again
    assert localiser.landmark_calls == 30
    assert min(box_iou(box, boxes[0]) for box in boxes) > 0.8
    assert box_iou(boxes[-1], (300, 140, 580, 420)) > 0.35


def test_tracker_finds_a_hand_again_after_it_left(hand_models, hand_photos, backgrounds):
    localiser = HandLocaliser(hand_models, threads=1)
    tracker = HandTracker(localiser, redetect_every=30)
    photo, _ = hand_photos[1]
    background = backgrounds["nothing"]
    hand_frame = paste(background, photo, 280, 60, 100)
    assert len(tracker.update(hand_frame)) == 1
    assert tracker.update(background) == []  # lost: the landmark model says no hand, palm detection finds none
    calls = localiser.palm_calls
    moved = paste(background, photo, 280, 330, 150)
    (hand,) = tracker.update(moved)  # nothing tracked: detect on this very frame
    assert localiser.palm_calls == calls + 1
    assert box_iou(hand.box, (330, 150, 610, 430)) > 0.35
    tracker.reset()
    tracker.update(moved)
    assert localiser.palm_calls == calls + 2


@pytest.mark.parametrize("shape", [(0, 0, 3), (0, 64, 3), (48, 0, 3)])
def test_an_empty_image_is_refused_as_any_wrong_shape_is(localiser, shape):
    """find divided by zero on an image of no pixels, and the tracker raised OpenCV's own error."""
    empty = np.zeros(shape, np.uint8)
    for call in (localiser.find, HandTracker(localiser).update):
        with pytest.raises(ValueError, match=r"expected an RGB uint8 image of shape \(H, W, 3\), H and W at least 1"):
            call(empty)
