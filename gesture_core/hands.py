"""Find the hands in an RGB frame, offline: MediaPipe's palm detector and hand-landmark model through LiteRT.

    frame -> palm detection (192x192 letterbox, SSD anchors, weighted non-maximum suppression)
          -> a rotated square per palm, grown to hold the whole hand (MediaPipe's detection-to-ROI rule)
          -> the landmark model on that square (optional, on by default): 21 landmarks, hand presence,
             handedness, and a tighter square from the landmarks (MediaPipe's landmarks-to-ROI rule)
          -> ``Hand`` (box, rotated square, score, handedness, points), and ``crop_hand`` for the classifier.

This module is the one implementation that training, evaluation, the service and the webcam share.
``HandTracker`` follows a hand from frame to frame with the landmark model alone and runs palm
detection only when a hand is lost or every few frames, as MediaPipe's hand tracking does.

The models come out of the ``mediapipe==0.10.21`` wheel (Apache-2.0) with
``python -m training.prepare hand-models`` into ``hand_models_dir()``; they run on ``ai-edge-litert``
(the ``[hands]`` extra), which is imported only when a ``HandLocaliser`` is built, so nothing else in
the project needs it. The constants below are MediaPipe's published graph options
(palm_detection_cpu.pbtxt, palm_detection_detection_to_roi.pbtxt, hand_landmark_cpu.pbtxt,
hand_landmark_landmarks_to_roi.pbtxt); the code is this project's own.

Coordinates are frame pixels, continuous: pixel ``(i, j)`` covers ``[i, i+1) x [j, j+1)``.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from gesture_core.engines import cache_root
from gesture_core.native_output import in_brief

if TYPE_CHECKING:
    from gesture_core.preprocess import DataConfig

# --------------------------------------------------------------------------- the model files

MODELS_WHEEL = "mediapipe==0.10.21"  # the last mediapipe release whose wheel still carries the .tflite files
PALM_MODEL = "palm_detection_full.tflite"
LANDMARK_MODEL = "hand_landmark_full.tflite"
INSTALL_HINT = 'pip install -e ".[hands]"'
PREPARE_HINT = "python -m training.prepare hand-models"


@dataclass(frozen=True)
class HandModelFile:
    name: str  # file name in hand_models_dir()
    wheel_member: str  # where it lives inside the mediapipe wheel
    sha256: str


PALM_FILE = HandModelFile(PALM_MODEL, "mediapipe/modules/palm_detection/palm_detection_full.tflite",
                          "1b14e9422c6ad006cde6581a46c8b90dd573c07ab7f3934b5589e7cea3f89a54")
LANDMARK_FILE = HandModelFile(LANDMARK_MODEL, "mediapipe/modules/hand_landmark/hand_landmark_full.tflite",
                              "11c272b891e1a99ab034208e23937a8008388cf11ed2a9d776ed3d01d0ba00e3")
HAND_MODEL_FILES = (PALM_FILE, LANDMARK_FILE)


class HandModelsUnavailableError(RuntimeError):
    """The hand models or their runtime are missing; the message is one line that says what to run."""


def hand_models_dir() -> Path:
    """Where ``training.prepare hand-models`` puts the models: ``$GESTURE_CACHE_DIR/hand-models`` (or the user cache)."""
    return cache_root() / "hand-models"


# --------------------------------------------------------------------------- MediaPipe's constants

PALM_INPUT = 192
# SSD anchors (palm_detection_cpu.pbtxt): 4 layers with strides 8, 16, 16, 16, aspect ratio 1 plus the
# interpolated scale, so 2 anchors per cell per layer. With a fixed anchor size (w = h = 1) only the
# centres matter, so min_scale 0.1484375 / max_scale 0.75 never enter the decoding.
ANCHOR_STRIDES = (8, 16, 16, 16)
ANCHOR_OFFSET = 0.5
ANCHORS_PER_LAYER_CELL = 2
PALM_KEYPOINTS = 7  # 0 wrist, 1 index MCP, 2 middle MCP, 3 ring MCP, 4 pinky MCP, 5-6 thumb
SCORE_CLIP = 100.0
MIN_PALM_SCORE = 0.5
NMS_IOU = 0.3
# Palm detection -> hand square (palm_detection_detection_to_roi.pbtxt): the wrist -> middle-finger MCP
# vector is turned to point straight up, the palm box shifted towards the fingers and grown 2.6x.
PALM_ROTATION_FROM, PALM_ROTATION_TO = 0, 2
PALM_SCALE, PALM_SHIFT_Y = 2.6, -0.5

LANDMARK_INPUT = 224
LANDMARKS = 21  # 0 wrist, 1-4 thumb, 5-8 index, 9-12 middle, 13-16 ring, 17-20 pinky (MCP is the first of each finger)
MIN_PRESENCE = 0.5
# Landmarks -> hand square (hand_landmark_landmarks_to_roi.pbtxt): only the joints that move little
# between frames (wrist, thumb base, and the two lowest joints of each finger) bound the square; the
# wrist -> middle-finger MCP direction (averaged with the index and ring MCPs) points up; grown 2x.
STABLE_LANDMARKS = (0, 1, 2, 3, 5, 6, 9, 10, 13, 14, 17, 18)
LANDMARK_SCALE, LANDMARK_SHIFT_Y = 2.0, -0.1
TARGET_ANGLE = math.pi / 2  # "fingers up"
SAME_HAND_IOU = 0.5  # two squares overlapping this much are one hand (MediaPipe's association threshold)

Point = tuple[float, float]


# --------------------------------------------------------------------------- geometry


def normalize_radians(angle: float) -> float:
    """``angle`` wrapped into [-pi, pi)."""
    return angle - 2 * math.pi * math.floor((angle + math.pi) / (2 * math.pi))


def rotation_matrix(angle: float) -> np.ndarray:
    """2x2 matrix turning the crop's axes into the frame's for a square rotated by ``angle`` (y points down)."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def upright_angle(start: Sequence[float], end: Sequence[float]) -> float:
    """The rotation that makes the vector start -> end point straight up in the crop (MediaPipe's rule)."""
    return normalize_radians(TARGET_ANGLE - math.atan2(-(end[1] - start[1]), end[0] - start[0]))


@dataclass(frozen=True)
class RotatedSquare:
    """A square in the frame: centre ``(cx, cy)``, side ``size`` in pixels, and ``angle`` in radians.

    ``angle`` is MediaPipe's rotation: 0 when the hand points straight up, positive when it leans
    clockwise as seen on screen. ``crop_hand`` turns the square's content upright.
    """

    cx: float
    cy: float
    size: float
    angle: float

    def corners(self) -> np.ndarray:
        """(4, 2) frame points: top-left, top-right, bottom-right, bottom-left of the upright crop."""
        half = self.size / 2
        local = np.array([[-half, -half], [half, -half], [half, half], [-half, half]])
        return local @ rotation_matrix(self.angle).T + (self.cx, self.cy)

    def bounds(self, width: int, height: int) -> tuple[int, int, int, int]:
        """Axis-aligned ``(x0, y0, x1, y1)`` around the square, in whole pixels, clipped to a width x height frame."""
        corners = self.corners()
        x0, y0 = np.floor(corners.min(axis=0)).astype(int)
        x1, y1 = np.ceil(corners.max(axis=0)).astype(int)
        return (int(np.clip(x0, 0, width)), int(np.clip(y0, 0, height)), int(np.clip(x1, 0, width)), int(np.clip(y1, 0, height)))

    def to_frame(self, points: np.ndarray, crop_size: int) -> np.ndarray:
        """Points given in an upright ``crop_size`` crop of this square, in frame pixels."""
        scale = self.size / crop_size
        return (np.asarray(points, dtype=np.float64) - crop_size / 2) * scale @ rotation_matrix(self.angle).T + (self.cx, self.cy)

    def crop_to_frame_affine(self, crop_size: int) -> np.ndarray:
        """2x3 affine from crop pixel indices to frame pixel indices (cv2.warpAffine with WARP_INVERSE_MAP)."""
        linear = rotation_matrix(self.angle) * (self.size / crop_size)
        # pixel index i has its centre at i + 0.5 in continuous coordinates, in both images
        offset = np.array([self.cx, self.cy]) + linear @ np.full(2, 0.5 - crop_size / 2) - 0.5
        return np.hstack([linear, offset[:, None]])


def square_around(cx: float, cy: float, width: float, height: float, angle: float, *, scale: float, shift_y: float) -> RotatedSquare:
    """MediaPipe's rect transformation: shift along the rotated y axis by ``shift_y`` heights, square on the long side, scale."""
    cx -= height * shift_y * math.sin(angle)
    cy += height * shift_y * math.cos(angle)
    return RotatedSquare(cx, cy, max(width, height) * scale, angle)


def palm_to_square(palm: Palm) -> RotatedSquare:
    """The square that holds the whole hand of a detected palm (palm_detection_detection_to_roi)."""
    x0, y0, x1, y1 = palm.box
    angle = upright_angle(palm.keypoints[PALM_ROTATION_FROM], palm.keypoints[PALM_ROTATION_TO])
    return square_around((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0, angle, scale=PALM_SCALE, shift_y=PALM_SHIFT_Y)


def landmarks_to_square(landmarks: np.ndarray) -> RotatedSquare:
    """The square for 21 landmarks (frame pixels): the stable joints' box in the hand's own frame, shifted and grown."""
    points = np.asarray(landmarks, dtype=np.float64)[:, :2]
    knuckles = (points[5] + points[13]) / 2
    angle = upright_angle(points[0], (knuckles + points[9]) / 2)
    stable = points[list(STABLE_LANDMARKS)]
    centre = (stable.min(axis=0) + stable.max(axis=0)) / 2
    # the box is measured in the hand's upright frame: rotate by -angle, bound, rotate the centre back
    upright = (stable - centre) @ rotation_matrix(-angle).T
    low, high = upright.min(axis=0), upright.max(axis=0)
    cx, cy = rotation_matrix(angle) @ ((low + high) / 2) + centre
    width, height = high - low
    return square_around(cx, cy, width, height, angle, scale=LANDMARK_SCALE, shift_y=LANDMARK_SHIFT_Y)


def crop_square(rgb: np.ndarray, square: RotatedSquare, size: int) -> np.ndarray:
    """An upright ``size`` x ``size`` crop of ``square``; outside the frame the edge pixels are repeated (as MediaPipe does)."""
    return cv2.warpAffine(
        rgb, square.crop_to_frame_affine(size), (size, size),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE,
    )  # fmt: skip


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Palm:
    """One palm detection: the palm's own box (not the whole hand), its 7 keypoints and score, in frame pixels."""

    box: tuple[float, float, float, float]
    keypoints: tuple[Point, ...]
    score: float


@dataclass(frozen=True)
class Hand:
    """One hand in a frame.

    - ``box``: ``(x0, y0, x1, y1)``, whole pixels, the axis-aligned bounds of ``square`` clipped to the frame;
    - ``square``: the rotated square that ``crop_hand`` cuts out upright;
    - ``score``: the landmark model's hand-presence probability, or the palm detector's score
      when the landmark model did not run;
    - ``handedness``: ``"left"`` or ``"right"`` with ``handedness_score`` its probability, ``None`` without
      the landmark model. MediaPipe's convention: the label assumes a mirrored (selfie) image, so for a
      camera picture that is not mirrored, ``"left"`` is the person's right hand;
    - ``landmarks``: the 21 landmarks in frame pixels (``LANDMARKS`` names them), ``None`` without the landmark model;
    - ``palm``: the palm detection this hand came from, ``None`` when it was tracked from the previous frame.
    """

    box: tuple[int, int, int, int]
    square: RotatedSquare
    score: float
    handedness: str | None = None
    handedness_score: float | None = None
    landmarks: tuple[Point, ...] | None = None
    palm: Palm | None = None


def crop_hand(rgb: np.ndarray, hand: Hand | RotatedSquare, size: int) -> np.ndarray:
    """An upright ``size`` x ``size`` uint8 crop of the hand's rotated square (fingers up), for the classifier."""
    square = hand.square if isinstance(hand, Hand) else hand
    return crop_square(np.ascontiguousarray(rgb, dtype=np.uint8), square, size)


def hand_crop(rgb: np.ndarray, hand: Hand | RotatedSquare, data_config: DataConfig) -> np.ndarray:
    """What a hands-mode model (``DataConfig.hands``) sees of one hand, before its ``Preprocess``: the
    upright ``resize_size``² crop. Training's crop cache and serving both call this, so they agree by
    construction; ``Preprocess.crop`` then brings it to ``input_size`` as it does any image."""
    return crop_hand(rgb, hand, data_config.resize_size)


def hand_to_dict(hand: Hand) -> dict[str, Any]:
    """A hand as JSON-ready values (training's crop cache stores them); the palm detection is left out."""
    s = hand.square
    return {
        "box": list(hand.box), "square": [s.cx, s.cy, s.size, s.angle], "score": hand.score,
        "handedness": hand.handedness, "handedness_score": hand.handedness_score,
        "landmarks": [list(p) for p in hand.landmarks] if hand.landmarks is not None else None,
    }  # fmt: skip


def hand_from_dict(d: dict[str, Any]) -> Hand:
    """``hand_to_dict``'s inverse (``palm`` is None, as for a tracked hand)."""
    landmarks = d.get("landmarks")
    return Hand(
        box=tuple(int(v) for v in d["box"]), square=RotatedSquare(*(float(v) for v in d["square"])), score=float(d["score"]),
        handedness=d.get("handedness"), handedness_score=d.get("handedness_score"),
        landmarks=tuple((float(x), float(y)) for x, y in landmarks) if landmarks is not None else None,
    )  # fmt: skip


def distinct_hands(hands: Sequence[Hand], limit: int) -> list[Hand]:
    """The best-scoring hands, at most ``limit``, dropping any whose box overlaps a better one's by SAME_HAND_IOU."""
    kept: list[Hand] = []
    for hand in sorted(hands, key=lambda h: h.score, reverse=True):
        if len(kept) < limit and all(box_iou(hand.box, other.box) <= SAME_HAND_IOU for other in kept):
            kept.append(hand)
    return kept


# --------------------------------------------------------------------------- palm detection, pure numpy


def palm_anchors() -> np.ndarray:
    """(2016, 2) anchor centres in [0, 1] of the 192x192 input, in the model's output order."""
    centres = []
    strides = list(ANCHOR_STRIDES)
    while strides:
        stride = strides[0]
        layers = strides.count(stride)  # consecutive layers of one stride share a feature map
        strides = strides[layers:]
        cells = math.ceil(PALM_INPUT / stride)
        ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
        grid = np.stack([(xs + ANCHOR_OFFSET) / cells, (ys + ANCHOR_OFFSET) / cells], axis=-1).reshape(-1, 1, 2)
        centres.append(np.repeat(grid, layers * ANCHORS_PER_LAYER_CELL, axis=1).reshape(-1, 2))
    return np.concatenate(centres)


@dataclass(frozen=True)
class Letterbox:
    """How a frame was fitted into a square model input: input = frame * scale + (pad_x, pad_y)."""

    scale: float
    pad_x: float
    pad_y: float

    def to_frame(self, points: np.ndarray) -> np.ndarray:
        return (np.asarray(points) - (self.pad_x, self.pad_y)) / self.scale


def letterbox(rgb: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """The frame fitted into ``size`` x ``size`` (aspect kept, centred, zero padding) as float32 in [0, 1]."""
    height, width = rgb.shape[:2]
    scale = size / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    pad_x, pad_y = (size - new_w) // 2, (size - new_h) // 2
    canvas = np.zeros((size, size, 3), np.float32)
    resized = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized.astype(np.float32) / 255.0
    return canvas, Letterbox(scale, pad_x, pad_y)


def decode_palms(raw_boxes: np.ndarray, raw_scores: np.ndarray, anchors: np.ndarray, min_score: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes (n, 4) x0 y0 x1 y1, keypoints (n, 7, 2), scores (n,)) in [0, 1] input units, scores >= min_score."""
    scores = 1.0 / (1.0 + np.exp(-np.clip(raw_scores.reshape(-1), -SCORE_CLIP, SCORE_CLIP)))
    keep = scores >= min_score
    raw, centres = raw_boxes.reshape(len(anchors), -1)[keep] / PALM_INPUT, anchors[keep]
    # fixed-size anchors: offsets and sizes are in input pixels / 192, relative to the anchor centre
    cx, cy = raw[:, 0] + centres[:, 0], raw[:, 1] + centres[:, 1]
    half_w, half_h = raw[:, 2] / 2, raw[:, 3] / 2
    boxes = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1)
    keypoints = raw[:, 4 : 4 + 2 * PALM_KEYPOINTS].reshape(-1, PALM_KEYPOINTS, 2) + centres[:, None, :]
    return boxes, keypoints, scores[keep]


def weighted_nms(boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, iou: float = NMS_IOU) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """MediaPipe's weighted non-maximum suppression: each cluster (IoU > ``iou`` with its best box) becomes
    the score-weighted mean of its boxes and keypoints, with the best score. Best first."""
    order = np.argsort(-scores, kind="stable")
    merged = []
    while order.size:
        best = order[0]
        overlaps = np.array([box_iou(boxes[best], boxes[i]) for i in order])
        cluster, order = order[overlaps > iou], order[overlaps <= iou]
        cluster = np.union1d(cluster, [best])  # a degenerate (zero-area) best box still counts itself
        weights = scores[cluster] / scores[cluster].sum()
        merged.append((weights @ boxes[cluster], np.tensordot(weights, keypoints[cluster], axes=1), float(scores[best])))
    return merged


# --------------------------------------------------------------------------- the localiser


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise HandModelsUnavailableError(f"hand detection needs ai-edge-litert, which is not installed; run: {INSTALL_HINT}") from None
    return Interpreter


def _model_bytes(folder: Path, model: HandModelFile) -> bytes:
    """The model file's bytes, checked against the sha256 it was prepared with. A file changed since, that LiteRT
    still loads, gave NaN palm scores, so "no hand" for every image, or a NaN error deep in the geometry; the check
    reads 8 MB once per localiser (milliseconds), and makes ``settings()``' hashes those of the files in use."""
    path = folder / model.name
    if not path.is_file():
        raise HandModelsUnavailableError(f"hand model {path} not found; run: {PREPARE_HINT}")
    data = path.read_bytes()
    if (digest := hashlib.sha256(data).hexdigest()) != model.sha256:
        raise HandModelsUnavailableError(f"hand model {path} has sha256 {digest[:12]}..., not {model.sha256[:12]}...: cut short "
                                         f"or changed since it was prepared? run: {PREPARE_HINT}")
    return data


class _Model:
    """One .tflite model, its output tensors found by name, invoked under a lock (an interpreter is not thread-safe)."""

    def __init__(self, folder: Path, model: HandModelFile, threads: int | None, outputs: Sequence[str]):
        content = _model_bytes(folder, model)  # the bytes checked are the bytes loaded: no second read of the file
        try:
            self.interpreter = _interpreter_class()(model_content=content, num_threads=threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as err:  # the file is as prepared (its sha256 matched): this LiteRT cannot run it
            raise HandModelsUnavailableError(f"LiteRT cannot load the hand model {folder / model.name} ({in_brief(err, 200)}), "
                                             f"whose sha256 is the one prepared: install the versions the [hands] extra pins: "
                                             f"{INSTALL_HINT}") from None
        self.input_index = self.interpreter.get_input_details()[0]["index"]
        by_name = {d["name"]: d["index"] for d in self.interpreter.get_output_details()}
        missing = [name for name in outputs if name not in by_name]
        if missing:
            raise HandModelsUnavailableError(f"LiteRT reads no output {', '.join(missing)} in the hand model {folder / model.name}: "
                                             f"install the versions the [hands] extra pins: {INSTALL_HINT}")
        self.output_indices = [by_name[name] for name in outputs]
        self.lock = threading.Lock()

    def __call__(self, tensor: np.ndarray) -> list[np.ndarray]:
        with self.lock:
            self.interpreter.set_tensor(self.input_index, tensor[None])
            self.interpreter.invoke()
            return [self.interpreter.get_tensor(i)[0].copy() for i in self.output_indices]


class HandLocaliser:
    """Finds hands in RGB uint8 frames (H x W x 3). Build one and reuse it; calls are thread-safe.

    ``landmarks=True`` (the default) runs the landmark model on each palm's square: a tighter square,
    the presence score (hands below ``min_presence`` are dropped) and handedness, for about 2x the cost
    of palm detection alone per hand. ``max_hands`` keeps the best-scoring ones. ``threads`` is LiteRT's
    thread count (None: its own choice); 1 was faster than 2 on the 2-core machine of docs/hands.md, and
    leaves the other core to the classifier.
    Raises ``HandModelsUnavailableError`` (one line) when ai-edge-litert or the model files are missing.
    """

    def __init__(
        self,
        models_dir: str | Path | None = None,
        *,
        landmarks: bool = True,
        max_hands: int = 2,
        min_palm_score: float = MIN_PALM_SCORE,
        min_presence: float = MIN_PRESENCE,
        threads: int | None = 1,
    ):
        if max_hands < 1:
            raise ValueError(f"max_hands must be 1 or more, got {max_hands}")
        folder = Path(models_dir) if models_dir is not None else hand_models_dir()
        self.models_dir = folder
        self.uses_landmarks = landmarks
        self.max_hands, self.min_palm_score, self.min_presence = max_hands, min_palm_score, min_presence
        self._palm_model = _Model(folder, PALM_FILE, threads, ["Identity", "Identity_1"])
        # the landmark model's outputs: 21 x (x, y, z) in crop pixels, hand presence, handedness (world landmarks unused)
        self._landmark_model = _Model(folder, LANDMARK_FILE, threads, ["Identity", "Identity_1", "Identity_2"]) if landmarks else None
        self._anchors = palm_anchors()
        self.palm_calls = 0  # palm detections run so far (the tracker's tests and benchmark count them)
        self.landmark_calls = 0

    def settings(self) -> dict[str, Any]:
        """Everything ``find``'s answer depends on (the models by their sha256), e.g. for a cache key."""
        return {
            "landmarks": self.uses_landmarks, "max_hands": self.max_hands, "min_palm_score": self.min_palm_score,
            "min_presence": self.min_presence, "models": {f.name: f.sha256 for f in HAND_MODEL_FILES},
        }  # fmt: skip

    def detect_palms(self, rgb: np.ndarray) -> list[Palm]:
        """Every palm above ``min_palm_score`` after weighted NMS, best first, in frame pixels."""
        tensor, fit = letterbox(_as_rgb(rgb), PALM_INPUT)
        raw_boxes, raw_scores = self._palm_model(tensor)
        self.palm_calls += 1
        boxes, keypoints, scores = decode_palms(raw_boxes, raw_scores, self._anchors, self.min_palm_score)
        palms = []
        for box, points, score in weighted_nms(boxes, keypoints, scores):
            corners = fit.to_frame(box.reshape(2, 2) * PALM_INPUT).reshape(-1)
            points = fit.to_frame(points * PALM_INPUT)
            palms.append(Palm(tuple(float(v) for v in corners), tuple((float(x), float(y)) for x, y in points), score))
        return palms

    def hand_in(self, rgb: np.ndarray, square: RotatedSquare, palm: Palm | None = None) -> Hand | None:
        """The landmark model on ``square``: the hand there with its landmark-derived square, or None when absent."""
        if self._landmark_model is None:
            raise ValueError("this HandLocaliser was built with landmarks=False; build it with landmarks=True to track or refine hands")
        rgb = _as_rgb(rgb)
        crop = crop_square(rgb, square, LANDMARK_INPUT).astype(np.float32) / 255.0
        raw_landmarks, presence, handedness = self._landmark_model(crop)
        self.landmark_calls += 1
        presence = float(presence.reshape(-1)[0])
        if presence < self.min_presence:
            return None
        points = square.to_frame(raw_landmarks.reshape(LANDMARKS, 3)[:, :2], LANDMARK_INPUT)
        tight = landmarks_to_square(points)
        # handedness.txt lists Left, Right; the model's one output is the probability of the first (Left)
        p_left = float(handedness.reshape(-1)[0])
        label, label_score = ("left", p_left) if p_left >= 0.5 else ("right", 1.0 - p_left)
        height, width = rgb.shape[:2]
        return Hand(
            box=tight.bounds(width, height), square=tight, score=presence, handedness=label, handedness_score=label_score,
            landmarks=tuple((float(x), float(y)) for x, y in points), palm=palm,
        )  # fmt: skip

    def hand_from_palm(self, rgb: np.ndarray, palm: Palm) -> Hand | None:
        """The hand around ``palm``: refined by the landmark model when it is on, else the palm's own square."""
        square = palm_to_square(palm)
        if self._landmark_model is not None:
            return self.hand_in(rgb, square, palm)
        height, width = rgb.shape[:2]
        return Hand(box=square.bounds(width, height), square=square, score=palm.score, palm=palm)

    def find(self, rgb: np.ndarray) -> list[Hand]:
        """The hands in one frame, best first, at most ``max_hands``: palm detection, then landmarks when on."""
        rgb = _as_rgb(rgb)
        palms = self.detect_palms(rgb)[: self.max_hands]
        hands = [hand for palm in palms if (hand := self.hand_from_palm(rgb, palm)) is not None]
        return distinct_hands(hands, self.max_hands)

    __call__ = find


def _as_rgb(rgb: np.ndarray) -> np.ndarray:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or 0 in rgb.shape:  # an empty one divided by zero
        raise ValueError(f"expected an RGB uint8 image of shape (H, W, 3), H and W at least 1, got {rgb.dtype} {rgb.shape}")
    return rgb


# --------------------------------------------------------------------------- video


class HandTracker:
    """Follows hands through a video: each frame runs the landmark model on the squares the previous
    frame's landmarks gave, and palm detection only when a hand was lost, none is tracked, or every
    ``redetect_every`` frames (to pick up a hand that came in). A tracked hand wins over a new palm
    detection of the same hand, as in MediaPipe's hand tracking.
    """

    def __init__(self, localiser: HandLocaliser, *, redetect_every: int = 10):
        if not localiser.uses_landmarks:
            raise ValueError("HandTracker follows hands with the landmark model; build the HandLocaliser with landmarks=True")
        if redetect_every < 1:
            raise ValueError(f"redetect_every must be 1 or more, got {redetect_every}")
        self.localiser, self.redetect_every = localiser, redetect_every
        self._tracked: list[Hand] = []
        self._since_detection = 0

    def reset(self) -> None:
        """Forget the tracked hands (a new video or a cut)."""
        self._tracked, self._since_detection = [], 0

    def update(self, rgb: np.ndarray) -> list[Hand]:
        """The hands in this frame, best first."""
        rgb = _as_rgb(rgb)
        followed = [hand for old in self._tracked if (hand := self.localiser.hand_in(rgb, old.square)) is not None]
        lost = len(followed) < len(self._tracked)
        self._since_detection += 1
        if not followed or lost or self._since_detection >= self.redetect_every:
            followed = self._add_detected(rgb, followed)
            self._since_detection = 0
        self._tracked = distinct_hands(followed, self.localiser.max_hands)
        return list(self._tracked)

    def _add_detected(self, rgb: np.ndarray, followed: list[Hand]) -> list[Hand]:
        hands = list(followed)
        for palm in self.localiser.detect_palms(rgb)[: self.localiser.max_hands]:
            square = palm_to_square(palm)
            height, width = rgb.shape[:2]
            if any(box_iou(square.bounds(width, height), hand.box) > SAME_HAND_IOU for hand in hands):
                continue  # already tracked: keep the landmark-derived square
            if (hand := self.localiser.hand_in(rgb, square, palm)) is not None:
                hands.append(hand)
        return hands
