"""Drawing the webcam overlay: label and score, top-k bars, FPS and latency, ROI box, status line,
and for hand-crop models a box and a label per hand."""

from __future__ import annotations

import math
import os
import unicodedata
from dataclasses import dataclass

import cv2
import numpy as np

from gesture_core import Prediction
from gesture_core.preprocess import TINY_SIDE
from service.webcam.scoring import HandResult

# Small frames (100x100 test clips) are enlarged for display so the text stays legible.
MIN_CANVAS_WIDTH = 480
NO_GESTURE = "no gesture"

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_WHITE, _GREEN, _GREY, _RED, _BLACK = (255, 255, 255), (80, 220, 80), (160, 160, 160), (60, 60, 230), (0, 0, 0)
# Hand boxes: a named gesture in the label's green, "no gesture" in amber (grey would vanish on a grey wall).
HAND_ACCEPTED, HAND_REJECTED = _GREEN, (0, 190, 255)


@dataclass(frozen=True)
class OverlayInfo:
    prediction: Prediction | None  # None before the first answer, or during an outage
    fps: float
    latency_ms: float | None
    scorer: str
    roi: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1 in frame pixels
    status: str | None = None  # e.g. the outage message, shown as a red line
    paused: bool = False
    hands: tuple[HandResult, ...] = ()  # hand-crop models: a box and a label each


DEFAULT_ROI = 0.6  # a bare --roi, in the webcam demo and capture alike (and the browser demo's demo.js)


def centred_roi(shape: tuple[int, ...], fraction: float) -> tuple[int, int, int, int]:
    """A centred square whose side is ``fraction`` of the frame's shorter side; a ValueError where that is under
    TINY_SIDE: --roi 0.001 classified a single pixel, and capture saved 1x1 JPEGs that training then skipped."""
    h, w = shape[:2]
    side = round(min(h, w) * fraction)
    if side < TINY_SIDE:
        least = math.ceil(TINY_SIDE / min(h, w) * 1000) / 1000
        advice = f"use --roi {least:g} or more" if least <= 1 else "leave --roi out"
        raise ValueError(f"--roi {fraction:g} is a square of {side} px in these {w}x{h} frames, too small to classify "
                         f"(at least {TINY_SIDE} px): {advice}")
    x0, y0 = (w - side) // 2, (h - side) // 2
    return x0, y0, x0 + side, y0 + side


def render(frame: np.ndarray, info: OverlayInfo, *, mirror: bool = False) -> np.ndarray:
    """A new BGR image: the (mirrored, enlarged) frame with the overlay drawn on it."""
    canvas = cv2.flip(frame, 1) if mirror else frame.copy()
    scale = 1.0
    if canvas.shape[1] < MIN_CANVAS_WIDTH:
        scale = MIN_CANVAS_WIDTH / canvas.shape[1]
        canvas = cv2.resize(canvas, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    thickness = max(2, round(canvas.shape[1] / 320))
    if info.roi is not None:
        _draw_roi(canvas, info.roi, scale, mirror, frame.shape[1], thickness=thickness)
    unit = max(0.75, canvas.shape[1] / 640)  # text size follows the canvas width
    _draw_prediction(canvas, info.prediction, unit)
    _draw_speed(canvas, info, unit)
    for hand in info.hands:  # over the panels: a hand near the top still shows its label
        _draw_hand(canvas, hand, scale, mirror, frame.shape[1], thickness, unit)
    if info.status:
        _draw_status(canvas, info.status, unit)
    if info.paused:
        _text(canvas, "PAUSED (space)", (canvas.shape[1] // 2 - int(110 * unit), canvas.shape[0] // 2), 1.0 * unit, _WHITE, 2)
    return canvas


def _draw_roi(canvas: np.ndarray, roi: tuple[int, int, int, int], scale: float, mirror: bool, width: int, thickness: int) -> None:
    p0, p1 = canvas_box(roi, scale, mirror, width)
    cv2.rectangle(canvas, p0, p1, _GREEN, thickness)


def canvas_box(box: tuple[int, int, int, int], scale: float, mirror: bool, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """A frame box's corners on the canvas (enlarged by ``scale``, mirrored like the picture)."""
    x0, y0, x1, y1 = box
    if mirror:
        x0, x1 = width - x1, width - x0
    return (round(x0 * scale), round(y0 * scale)), (round(x1 * scale) - 1, round(y1 * scale) - 1)


def _draw_hand(canvas: np.ndarray, hand: HandResult, scale: float, mirror: bool, width: int, thickness: int, unit: float) -> None:
    """The hand's box, and its own label and score on a shaded tab above it (inside it at the top edge)."""
    (x0, y0), (x1, y1) = canvas_box(hand.box, scale, mirror, width)
    accepted = hand.prediction.label is not None
    colour = HAND_ACCEPTED if accepted else HAND_REJECTED
    cv2.rectangle(canvas, (x0, y0), (x1, y1), colour, thickness)
    text = f"{hand.prediction.label if accepted else NO_GESTURE} {hand.prediction.score:.0%}"
    size = 0.6 * unit
    (text_w, text_h), _ = cv2.getTextSize(drawable(text), _FONT, size, 2)
    tab_h = text_h + int(10 * unit)
    top = y0 - tab_h if y0 - tab_h >= 0 else y0 + thickness
    _shade(canvas, x0, top, x0 + text_w + int(10 * unit), top + tab_h)
    _text(canvas, text, (x0 + int(5 * unit), top + tab_h - int(5 * unit)), size, colour, 2)


def _draw_prediction(canvas: np.ndarray, prediction: Prediction | None, unit: float) -> None:
    rows = len(prediction.top_k) if prediction else 0
    line, pad, bar_w = int(30 * unit), int(10 * unit), int(110 * unit)
    if prediction is None:
        _shade(canvas, 0, 0, int(250 * unit), int(66 * unit))
        _text(canvas, "waiting…", (pad, int(44 * unit)), 1.0 * unit, _GREY, 2)
        return
    label = prediction.label if prediction.label is not None else NO_GESTURE
    colour = _GREEN if prediction.label is not None else _GREY
    percent = f"  {prediction.score:.0%}"
    headline = fitted(label, 1.2 * unit, 2, canvas.shape[1] // 2 - _width(percent, 1.2 * unit, 2)) + percent
    names = shown_names([name for name, _ in prediction.top_k], 0.6 * unit, room=canvas.shape[1] // 4)
    # The name column widens for long names: a fixed 8 characters drew "pointing_left" and
    # "pointing_right" as the same "pointing".
    bar_x = pad + max([int(70 * unit)] + [_width(name, 0.6 * unit, 1) for name in names]) + pad
    panel_w = max(int(250 * unit), _width(headline, 1.2 * unit, 2) + 2 * pad, bar_x + bar_w + int(60 * unit))
    _shade(canvas, 0, 0, panel_w, int(66 * unit) + rows * line)
    _text(canvas, headline, (pad, int(44 * unit)), 1.2 * unit, colour, 2)
    for row, ((_, score), name) in enumerate(zip(prediction.top_k, names, strict=True)):
        y = int(62 * unit) + row * line
        _text(canvas, name, (pad, y + int(20 * unit)), 0.6 * unit, _WHITE, 1)
        cv2.rectangle(canvas, (bar_x, y + int(6 * unit)), (bar_x + bar_w, y + int(24 * unit)), _GREY, 1)
        cv2.rectangle(canvas, (bar_x, y + int(6 * unit)), (bar_x + int(bar_w * min(1.0, score)), y + int(24 * unit)), colour, -1)
        _text(canvas, f"{score:.2f}", (bar_x + bar_w + int(8 * unit), y + int(20 * unit)), 0.55 * unit, _WHITE, 1)


def _draw_speed(canvas: np.ndarray, info: OverlayInfo, unit: float) -> None:
    latency = f"{info.latency_ms:.0f} ms" if info.latency_ms is not None else "- ms"
    lines = [(f"{info.fps:.1f} FPS  {latency}", 0.6 * unit, 2), (info.scorer, 0.42 * unit, 1)]
    pad = int(6 * unit)
    width = min(canvas.shape[1] // 2, max(cv2.getTextSize(t, _FONT, size, th)[0][0] for t, size, th in lines) + 2 * pad)
    x = canvas.shape[1] - width
    _shade(canvas, x, 0, canvas.shape[1], int(50 * unit))
    for row, (text, size, thickness) in enumerate(lines):
        _text(canvas, text, (x + pad, int((20 + 22 * row) * unit)), size, _WHITE, thickness)


def _draw_status(canvas: np.ndarray, status: str, unit: float) -> None:
    height = int(34 * unit)
    _shade(canvas, 0, canvas.shape[0] - height, canvas.shape[1], canvas.shape[0], colour=(0, 0, 90))
    size, room, text = 0.5 * unit, canvas.shape[1] - int(16 * unit), status
    while len(text) > 10 and cv2.getTextSize(text, _FONT, size, 1)[0][0] > room:
        text = text[: int(len(text) * 0.9)].rstrip() + "..."
    _text(canvas, text, (int(8 * unit), canvas.shape[0] - int(11 * unit)), size, _WHITE, 1)


def _shade(canvas: np.ndarray, x0: int, y0: int, x1: int, y1: int, colour=_BLACK, alpha: float = 0.55) -> None:
    x0, y0 = max(0, x0), max(0, y0)
    x1, y1 = min(canvas.shape[1], x1), min(canvas.shape[0], y1)
    if x1 <= x0 or y1 <= y0:
        return
    region = canvas[y0:y1, x0:x1]
    region[:] = cv2.addWeighted(region, 1.0 - alpha, np.full_like(region, colour), alpha, 0.0)


def _text(canvas: np.ndarray, text: str, origin: tuple[int, int], size: float, colour, thickness: int) -> None:
    cv2.putText(canvas, drawable(text), origin, _FONT, size, colour, thickness, cv2.LINE_AA)


def _width(text: str, size: float, thickness: int) -> int:
    return cv2.getTextSize(drawable(text), _FONT, size, thickness)[0][0]


def drawable(text: str) -> str:
    """``text`` as OpenCV's Hershey fonts can draw it, which is ASCII only: accents dropped (é as e), and any
    other character by its Unicode name (👍 as "thumbs up sign"), where each was drawn as "?" and two emoji
    classes looked the same."""
    if text.isascii():
        return text
    pieces = []
    for char in unicodedata.normalize("NFKD", text.replace("…", "...")):
        if char.isascii():
            pieces.append(char)
        elif unicodedata.category(char) not in ("Mn", "Me", "Cf"):  # accents, joiners, variation selectors: nothing to say
            pieces.append(f" {unicodedata.name(char, f'U+{ord(char):04X}').lower()} ")
    return " ".join("".join(pieces).split())


def fitted(text: str, size: float, thickness: int, room: int) -> str:
    """``text`` (drawable) cut in the middle until it is at most ``room`` pixels wide: the ends of names
    ("pointing_left", "pointing_right") are where they differ most often."""
    shown = full = drawable(text)
    width = cv2.getTextSize(full, _FONT, size, thickness)[0][0]
    keep = min(len(full), int(len(full) * room / max(width, 1)) + 1)  # a first guess: a long name costs few tries
    while keep > 2 and width > room:
        keep -= 1
        shown = full[: (keep + 1) // 2] + ".." + full[len(full) - keep // 2 :]
        width = cv2.getTextSize(shown, _FONT, size, thickness)[0][0]
    return shown


def shown_names(names: list[str], size: float, room: int) -> list[str]:
    """The top-k column's names, each fitted to ``room`` pixels, and two different names never drawn alike:
    where fitting made them so, their common start is dropped; where drawing did ("e" and "é"), each is
    written with Python's escapes."""
    shown = [fitted(name, size, 1, room) for name in names]
    for group in _clashes(shown):
        start = len(os.path.commonprefix([drawable(names[i]) for i in group]))
        for i in group:
            shown[i] = fitted(".." + drawable(names[i])[start:], size, 1, room) if start else shown[i]
    for group in _clashes(shown):
        for i in group:
            shown[i] = fitted(names[i].encode("ascii", "backslashreplace").decode(), size, 1, room)
    return shown


def _clashes(shown: list[str]) -> list[list[int]]:
    """The positions of each text shown more than once."""
    return [group for text in set(shown) if len(group := [i for i, s in enumerate(shown) if s == text]) > 1]
