"""benchmarks.hand_size's frames: a photo larger than the frame is shown through a window that keeps
its hand (found on the photo alone) wholly in view, and the photos that fit are pasted as before."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.hand_size import FRAME_H, FRAME_W, hand_on_photo, side_px
from benchmarks.whole_frame import paste_at_random, placements
from gesture_core.hands import HandLocaliser
from tests.hand_scenes import empty_scene, hand_photo

KEEP = (0.55, 0.1, 0.85, 0.4)  # a "hand" in the photo's upper right: shares of the photo


def rgb(bgr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(bgr[:, :, ::-1])


def marked_photo(size: int = 200) -> np.ndarray:
    """Grey, with the KEEP box white: what of it a frame shows can be counted."""
    photo = np.full((size, size, 3), 90, np.uint8)
    x0, y0, x1, y1 = (round(v * size) for v in KEEP)
    photo[y0:y1, x0:x1] = 255
    return photo


def test_a_photo_larger_than_the_frame_shows_its_hand_whole_at_a_random_window():
    side = side_px(1.4)  # 896 px: larger than the frame both ways
    whole = round((KEEP[2] - KEEP[0]) * side) * round((KEEP[3] - KEEP[1]) * side)
    places = set()
    for seed in range(40):
        frame = np.zeros((FRAME_H, FRAME_W, 3), np.uint8)
        places.add(paste_at_random(frame, marked_photo(), side, np.random.default_rng(seed), KEEP))
        assert abs(int((frame[:, :, 0] > 200).sum()) - whole) <= 0.02 * whole  # all of the hand, none cut off
        assert (frame > 0).all()  # the photo covers the frame: no scene pixel left
    assert all(x < 0 and y < 0 for x, y in places) and len({x for x, _ in places}) > 10 and len({y for _, y in places}) > 10


def test_what_fits_is_pasted_whole_with_the_same_draws_as_before_and_a_hand_too_big_is_refused():
    for side in (77, 480):
        frame, rng, old = np.zeros((FRAME_H, FRAME_W, 3), np.uint8), np.random.default_rng(3), np.random.default_rng(3)
        x, y = paste_at_random(frame, marked_photo(), side, rng, KEEP)
        assert (x, y) == (int(old.integers(0, FRAME_W - side + 1)), int(old.integers(0, FRAME_H - side + 1)))
    assert placements(481, None, (FRAME_W, FRAME_H)) is None  # no hand known: only the whole photo
    assert placements(640, KEEP, (FRAME_W, FRAME_H))[0] == (0, 0)  # as wide as the frame: no room to move sideways
    with pytest.raises(ValueError, match="does not fit"):  # 0.9 of 896 px does not fit 640
        paste_at_random(np.zeros((FRAME_H, FRAME_W, 3), np.uint8), marked_photo(), side_px(1.4), np.random.default_rng(0), (0.05, 0.1, 0.95, 0.4))


@pytest.fixture(scope="module")
def localiser(hand_models) -> HandLocaliser:
    return HandLocaliser(hand_models, threads=1)


def test_the_real_hand_found_on_the_photo_alone_is_found_whole_in_the_windowed_frame(localiser):
    photo = rgb(hand_photo("A"))
    keep = hand_on_photo(localiser, photo)
    assert keep is not None and 0.1 < keep[2] - keep[0] < 0.6
    side = side_px(1.0)  # 640 px: taller than the frame, so a window of it (this hand is too tall for 1.4)
    scale = side / photo.shape[1]
    on_photo = np.asarray(localiser.find(photo)[0].landmarks) * scale
    for seed in range(3):
        frame = rgb(empty_scene())
        x, y = paste_at_random(frame, photo, side, np.random.default_rng(seed), keep)
        assert y < 0
        hands = localiser.find(frame)
        assert hands, f"seed {seed}: no hand found in the windowed frame"
        points = np.asarray(hands[0].landmarks)
        assert (points >= 0).all() and (points[:, 0] < FRAME_W).all() and (points[:, 1] < FRAME_H).all()
        # the same hand at the expected place: the photo's landmarks moved by the window
        assert np.median(np.abs(points - (on_photo + (x, y)))) < 0.03 * side


def test_a_photo_whose_hand_is_not_found_alone_has_no_box(localiser):
    assert hand_on_photo(localiser, rgb(empty_scene())) is None


def test_hands_placed_at_the_edges_touch_the_left_or_right_border():
    sides = set()
    for seed in range(20):
        frame = np.zeros((FRAME_H, FRAME_W, 3), np.uint8)
        x, y = paste_at_random(frame, marked_photo(), 100, np.random.default_rng(seed), at_edge=True)
        assert x in (0, FRAME_W - 100) and 0 <= y <= FRAME_H - 100
        sides.add(x)
    assert sides == {0, FRAME_W - 100}  # both edges, at random
