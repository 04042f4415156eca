"""The Classifier: a loaded model with its Preprocess and class names, and the one pipeline from an
image to a label that the service, the webcam, evaluation and the benchmarks all call.

    classifier = load_classifier("RUN/best.pt")
    crop = classifier.crop(image)               # per image, on the CPU: decode, resize, centre-crop
    probs = classifier.classify([crop, ...])    # per batch: normalise, run the engine, softmax
    scores = classifier.classify_scores([crop, ...])  # the same, with the gesture score rejection uses
    prediction = classifier.decide(scores[0])   # top-k and rejection ("no gesture": label None)
    prediction = classifier.predict(image)      # crop, classify_scores and decide together

Splitting ``crop`` from ``classify`` is what lets a server decode each upload in its own thread and
still run the model once for many requests, with the same answer as ``predict`` by construction.

A hands-mode model (``data_config.hands``, trained with ``--hands``) classifies each hand that
``gesture_core.hands`` finds, not the frame:

    rgb, hands = classifier.find_hands(image)   # decode, then the hand localiser (built once, lazily)
    crops = classifier.hand_crops(rgb, hands)   # one uint8 input_size² crop per hand
    scores = classifier.classify_scores(crops)  # as above (skip it when there is no hand)
    frame = classifier.decide_hands(hands, scores)  # FramePrediction: one answer per hand + the frame's
    frame = classifier.predict_hands(image)     # the four together
    classifier.predict(image)                   # == predict_hands(image).frame

``crop`` refuses a hands-mode model (one crop per frame would skip the hands).
"""

from __future__ import annotations

import numbers
import os
import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch
from torch import nn

from gesture_core.backbones import get_backbone, with_features
from gesture_core.checkpoint import CheckpointError, build_from_checkpoint, checkpoint_file, load_checkpoint, resolve_device
from gesture_core.engines import Engine, build_engine
from gesture_core.hands import Hand, HandLocaliser, hand_crop
from gesture_core.images import ImageSource, bgr_to_rgb, read_rgb
from gesture_core.native_output import in_brief
from gesture_core.preprocess import DataConfig, Preprocess, evaluation_geometry, frame_aspect_of, frame_shape_note
from gesture_core.rejection import Rejection, check_threshold, is_reject_name, softmax


@dataclass(frozen=True)
class Prediction:
    label: str | None  # None when rejected (below threshold, or a "no gesture" class)
    score: float
    top_k: list[tuple[str, float]] = field(default_factory=list)
    # what the threshold applied to when it is not ``score`` (a model calibrated with --reject-score
    # energy: gesture_core.rejection); None when it is ``score``, the calibrated top probability
    gesture_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "score": self.score,
            "top_k": [{"label": label, "score": score} for label, score in self.top_k],
            "gesture_score": self.gesture_score,
        }


class ClassScores(NamedTuple):
    """One image's model output as ``Classifier.decide`` takes it (``Classifier.classify_scores``)."""

    probs: np.ndarray  # (classes,) calibrated probabilities
    gesture: float | None  # the score the threshold applies to, 0-1; None: the top probability


@dataclass(frozen=True)
class HandPrediction:
    """One hand of a frame and what the classifier says of its crop."""

    hand: Hand
    prediction: Prediction

    def to_dict(self) -> dict[str, Any]:
        """``{"box": [x0, y0, x1, y1], "handedness": "left" | "right", "hand_score", "label", "score", "top_k"}``
        (box in frame pixels; handedness in MediaPipe's mirrored convention, docs/hands.md)."""
        return {"box": [int(v) for v in self.hand.box], "handedness": self.hand.handedness, "hand_score": float(self.hand.score),
                **self.prediction.to_dict()}


@dataclass(frozen=True)
class FramePrediction:
    """A hands-mode model's answer for one frame: each hand's, and the frame's own (``frame``).

    The frame's answer: the accepted hand (label not None) with the highest gesture score (what the
    threshold applies to: ``Prediction.gesture_score``, else the top probability); when every hand is
    rejected, the rejected prediction of the hand with the highest such score (label None, its score and
    top-k kept); when no hand is found, a rejection with score 0 and no top-k. ``source`` is the index
    in ``hands`` of the hand the frame's answer comes from (None when there is no hand).
    """

    hands: list[HandPrediction]
    frame: Prediction
    source: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """``{**frame.to_dict(), "hands": [HandPrediction.to_dict(), ...]}``, best hand (by the localiser) first."""
        return {**self.frame.to_dict(), "hands": [hand.to_dict() for hand in self.hands]}


NO_HAND = Prediction(None, 0.0, [])  # the frame's answer when no hand is found: "no gesture"


def frame_source(predictions: Sequence[Prediction]) -> int | None:
    """Which hand answers for the frame (FramePrediction's rule): the accepted one with the highest
    gesture score, else the highest of all, None when there is no hand."""
    if not predictions:
        return None
    accepted = [i for i, p in enumerate(predictions) if p.label is not None]
    candidates = accepted or range(len(predictions))
    return max(candidates, key=lambda i: thresholded_score(predictions[i]))


def thresholded_score(prediction: Prediction) -> float:
    """What the threshold applied to: the gesture score where the model has one, else the top probability."""
    return prediction.score if prediction.gesture_score is None else prediction.gesture_score


def decode_probs(probs: np.ndarray, classes: Sequence[str], *, k: int = 5, threshold: float = 0.0,
                 reject_classes: Collection[str] | None = None, gesture: float | None = None) -> Prediction:
    """probabilities -> label: top-k, and rejection below ``threshold`` or on a reject class
    (``reject_classes``; None: the classes with a common "no gesture" name, gesture_core.rejection).
    The threshold applies to ``gesture`` when given, else to the top probability."""
    probs = checked_scores(probs, classes, gesture)
    threshold = check_threshold(threshold)
    check_k(k, len(classes))
    order = np.argsort(-probs)[: min(k, len(classes))]
    top = [(classes[i], float(probs[i])) for i in order]
    label, score = top[0]
    below = (score if gesture is None else gesture) < threshold
    rejected = below or (is_reject_name(label) if reject_classes is None else label in reject_classes)
    return Prediction(None if rejected else label, score, top, None if gesture is None else float(gesture))


def check_k(k: Any, classes: int) -> None:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"k (how many classes to list) must be an int of at least 1, got {k!r}; a k above the "
                         f"{classes} classes lists them all")


def checked_scores(probs: Any, classes: Sequence[str], gesture: float | None) -> np.ndarray:
    """One image's probabilities as a 1-D array of one per class, or ValueError: a row of another model, or
    NaN from a broken one, was decided without a word (NaN below no threshold)."""
    row = np.asarray(probs, dtype=np.float64) if not isinstance(probs, np.ndarray) else probs
    if row.shape != (len(classes),):
        raise ValueError(f"decide takes one image's scores: {len(classes)} probabilities, one per class, got shape {row.shape}")
    if not np.isfinite(row).all() or (gesture is not None and not np.isfinite(gesture)):
        raise ValueError("the scores hold NaN or infinity: the model's output is not usable")
    return row


PROBABILITY_SLACK = 1e-3  # float32 softmax rows of a thousand classes sum to 1 within 1e-5


def check_probabilities(row: np.ndarray, gesture: float | None) -> None:
    """ValueError unless ``row`` is probabilities (each 0-1, summing to 1) and ``gesture`` a 0-1 score: logits, or a
    row of any numbers, were decided as if they were, a "probability" of -0.08 or 99 in the answer."""
    if row.min() < -PROBABILITY_SLACK or row.max() > 1 + PROBABILITY_SLACK or abs(row.sum() - 1) > PROBABILITY_SLACK:
        raise ValueError(f"decide takes probabilities, each 0-1 and summing to 1; these run {row.min():.3g} to {row.max():.3g} and "
                         f"sum to {row.sum():.4g} (logits?): decide a row of classify_scores(crops) or of classify(crops)")
    if gesture is not None and not -PROBABILITY_SLACK <= gesture <= 1 + PROBABILITY_SLACK:
        raise ValueError(f"the gesture score is a 0-1 rank, got {gesture:.4g}: decide a row of classify_scores(crops)")


def checked_crops(crops: Sequence[np.ndarray], size: int) -> Sequence[np.ndarray]:
    """``crops`` if each is what ``crop`` makes (uint8, ``size`` x ``size`` x 3 RGB), else ValueError: a float
    or 16-bit crop was normalised as 8-bit and answered wrongly without a word."""
    if isinstance(crops, np.ndarray) and crops.ndim != 4:
        raise ValueError(f"classify takes a list of crops, e.g. [classifier.crop(image)], not one array of shape {crops.shape}")
    for i, crop in enumerate(crops):
        if not (isinstance(crop, np.ndarray) and crop.dtype == np.uint8 and crop.shape == (size, size, 3)):
            got = f"{crop.dtype} {crop.shape}" if isinstance(crop, np.ndarray) else type(crop).__name__
            raise ValueError(f"classify takes crops made by crop(image): uint8 RGB arrays of shape ({size}, {size}, 3); crop {i} is {got}")
    return crops


class Classifier:
    """A loaded model with its Preprocess and class names: image in, probabilities out."""

    def __init__(self, model: nn.Module, checkpoint: dict[str, Any], device: torch.device, *, engine: str = "torch", precision: str = "fp32"):
        self.model = model.eval().to(device)  # eager PyTorch, for anything that needs the modules (Grad-CAM, hooks)
        self.device = device
        self.checkpoint_meta = {k: v for k, v in checkpoint.items() if k not in ("model", "optimizer", "scheduler", "rng")}
        self.backbone: str = checkpoint["backbone"]
        self.classes: list[str] = list(checkpoint["classes"])
        self.data_config = DataConfig.from_dict(checkpoint["data_config"])
        self.train_config: dict[str, Any] = checkpoint.get("train_config", {})
        self.metrics: dict[str, Any] = checkpoint.get("metrics", {})
        self.preprocess = Preprocess(self.data_config)
        # a whole-frame model's training frames: their typical width/height (hand crops are square: None)
        self.frame_aspect = None if self.data_config.hands else frame_aspect_of(checkpoint)
        self.rejection = Rejection.from_checkpoint(checkpoint)  # temperature, reject classes, threshold
        shape = (self.data_config.in_chans, self.data_config.input_size, self.data_config.input_size)
        self._localiser: HandLocaliser | None = None
        self._localiser_lock = threading.Lock()
        # What classify runs on (gesture_core.engines): eager, compiled, ONNX Runtime or OpenVINO; for a
        # feature score, the same network answering its penultimate features beside the logits.
        network = with_features(self.model, get_backbone(self.backbone)) if self.rejection.needs_features else self.model
        self.engine: Engine = build_engine(network, engine=engine, precision=precision, device=device, input_shape=shape)

    def __repr__(self) -> str:
        return f"Classifier({self.backbone}, {len(self.classes)} classes, {self.preprocess}, device={self.device}, engine={self.engine.name}/{self.engine.precision})"

    # --- the pipeline ------------------------------------------------------------------------------

    def blank_crop(self) -> np.ndarray:
        """An all-black crop as ``crop`` gives every model, RGB at ``input_size``² (a grayscale model's one
        channel is made by Preprocess): what the load check and the warm-ups classify."""
        size = self.data_config.input_size
        return np.zeros((size, size, 3), np.uint8)

    def decode(self, image: ImageSource, *, bgr: bool = False, **read_kwargs: Any) -> np.ndarray:
        """The RGB pixels ``predict`` reads of ``image``: a whole-image model's at reduced size (a large JPEG by its
        decoder, anything else by averaging), a hands-mode model's whole (``find_hands``). A caller that decodes a
        file itself (the webcam's photos) uses this, so that the file scores as ``predict`` scores it."""
        source = bgr_to_rgb(image) if bgr else image
        return read_rgb(source, **read_kwargs) if self.hands_mode else self.preprocess.read(source, **read_kwargs)

    def crop(self, image: ImageSource, *, bgr: bool = False, **read_kwargs: Any) -> np.ndarray:
        """One image -> its uint8 ``input_size``² crop (decode, then the model's geometry: centre crop, letterbox or
        resize, from its data config; CPU only).
        ``image``: a path, encoded bytes, a PIL image or an RGB array; ``bgr=True`` for an OpenCV frame.
        ``read_kwargs`` go to ``gesture_core.images.read_rgb`` (e.g. ``max_pixels``).
        Raises ``ImageDecodeError`` with a user-facing reason, and ValueError for a hands-mode model,
        which takes one crop per hand: ``find_hands`` then ``hand_crops``."""
        self._require_whole_image_model("crop(image)")
        crop = self.preprocess.crop(self.decode(image, bgr=bgr, **read_kwargs))
        # an image already at the input size comes back as itself: a copy, so that a frame buffer the caller fills
        # again before classify (a camera's) does not change the answer
        return crop.copy() if isinstance(image, np.ndarray) and np.may_share_memory(crop, image) else crop

    def classify(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Crops made by ``crop`` -> class probabilities (N, num_classes), in one model call."""
        return self.probs(self.preprocess.normalize_batch(checked_crops(crops, self.data_config.input_size)))

    def classify_scores(self, crops: Sequence[np.ndarray]) -> list[ClassScores]:
        """Crops made by ``crop`` -> what ``decide`` takes, one per crop, in one model call: the
        probabilities, and the gesture score when the model's threshold applies to another score."""
        return self.scores_from_logits(*self.classify_logits(crops))

    def classify_logits(self, crops: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """Crops made by ``crop`` -> (raw logits, penultimate features or None), in one model call: what
        ``classify_scores`` scores, for callers that keep the raw outputs (training's served test)."""
        return self.logits_and_features(self.preprocess.normalize_batch(checked_crops(crops, self.data_config.input_size)))

    def scores_from_logits(self, logits: np.ndarray, features: np.ndarray | None = None) -> list[ClassScores]:
        """Raw logits (N, num_classes), and the penultimate features for a feature score -> ``classify_scores``'
        answer: the one place both are made from them."""
        probs, gestures = self.rejection.probabilities_and_gestures(logits, features)
        if gestures is None:
            return [ClassScores(row, None) for row in probs]
        return [ClassScores(row, float(g)) for row, g in zip(probs, gestures, strict=True)]

    def predict(self, image: ImageSource, *, k: int = 5, threshold: float | None = None, bgr: bool = False, **read_kwargs: Any) -> Prediction:
        """``crop`` then ``classify_scores``, then ``decide``; for a hands-mode model, ``predict_hands(...).frame``.
        ``read_kwargs`` as ``crop``'s (e.g. ``max_pixels``)."""
        if self.hands_mode:
            return self.predict_hands(image, k=k, threshold=threshold, bgr=bgr, **read_kwargs).frame
        return self.decide(self.classify_scores([self.crop(image, bgr=bgr, **read_kwargs)])[0], k=k, threshold=threshold)

    def decide(self, scores: ClassScores | np.ndarray, *, k: int = 5, threshold: float | None = None) -> Prediction:
        """One image's ``classify_scores`` -> Prediction: top-k, and "no gesture" (label None) on the stored
        reject classes or below the threshold (``threshold`` overrides the stored one; it must lie in 0-1).
        A row of ``classify``'s probabilities will do for a model whose threshold applies to them (max_softmax)."""
        probs, gesture = scores if isinstance(scores, ClassScores) else (scores, None)
        check_probabilities(checked_scores(probs, self.classes, gesture), gesture)
        if gesture is None and self.rejection.score != "max_softmax":
            raise ValueError(f"this model's threshold applies to its {self.rejection.score} score, which probabilities alone do not "
                             "give: decide a row of classify_scores(crops), not of classify(crops)")
        return decode_probs(probs, self.classes, k=k, threshold=self.rejection.threshold_or(threshold),
                            reject_classes=self.rejection.reject_classes, gesture=gesture)

    def predict_proba(self, images: Sequence[ImageSource], *, bgr: bool = False) -> np.ndarray:
        """Probabilities (N, num_classes) for several images (a list, or an N x H x W x C array), as one batch
        (not for a hands-mode model: see ``crop``); ``bgr=True`` for OpenCV frames."""
        self._require_whole_image_model("predict_proba(images)")
        if isinstance(images, ImageSource) and not (isinstance(images, np.ndarray) and images.ndim == 4):
            # one image was taken as a batch: a path letter by letter, an array row by row (48 answers for one 48x48 image)
            raise ValueError(f"predict_proba takes several images (a list, or an N x H x W x C array), not one {type(images).__name__}"
                             f"{f' of shape {images.shape}' if isinstance(images, np.ndarray) else ''}: pass [image], or use predict(image)")
        return self.classify([self.crop(image, bgr=bgr) for image in images])

    def frame_shape_note(self, height: int, width: int) -> str | None:
        """Why frames of this size may be read worse than the training frames (a portrait phone clip on a
        model of landscape webcam frames, seen whole), or None."""
        return frame_shape_note(self.data_config.crop, self.frame_aspect, width, height)

    # --- hands mode: one crop per hand (docs/hands.md) ------------------------------------------------

    @property
    def reject_indices(self) -> list[int]:
        """The indices of the "no gesture" classes, in ``classes``."""
        return [self.classes.index(c) for c in self.rejection.reject_classes]

    @property
    def hands_mode(self) -> bool:
        """True for a model trained on hand crops (``--hands``): it classifies each hand, not the frame."""
        return self.data_config.hands

    @property
    def localiser(self) -> HandLocaliser:
        """The hand localiser, built on first use (once, whichever thread asks first) with the settings
        training's crop cache uses. Raises ``HandModelsUnavailableError`` (one line naming the command
        to run) without the ``[hands]`` extra or the prepared models."""
        if self._localiser is None:
            with self._localiser_lock:
                if self._localiser is None:
                    self._localiser = HandLocaliser()
        return self._localiser

    @localiser.setter
    def localiser(self, localiser: HandLocaliser) -> None:
        """Use this localiser instead (e.g. one shared with a HandTracker); its settings should be the
        defaults, which training's crop cache used, or the crops differ from training's."""
        self._localiser = localiser

    def find_hands(self, image: ImageSource, *, bgr: bool = False, **read_kwargs: Any) -> tuple[np.ndarray, list[Hand]]:
        """(the decoded RGB frame, its hands best first). Decoded at full size (a far hand needs every
        pixel), with ``read_rgb``'s limits (``read_kwargs``, e.g. ``max_pixels``); ``bgr=True`` for an
        OpenCV frame. Raises ``ImageDecodeError`` with a user-facing reason, and
        ``HandModelsUnavailableError`` as ``localiser`` does."""
        rgb = read_rgb(bgr_to_rgb(image) if bgr else image, **read_kwargs)
        return rgb, self.localiser.find(rgb)

    def model_crops(self, image: ImageSource, *, bgr: bool = False, **read_kwargs: Any) -> list[np.ndarray]:
        """What the model classifies of one image, for any model: ``[crop(image)]``, or a hands-mode model's crop of each
        hand found (``find_hands`` then ``hand_crops``; none without a hand)."""
        if not self.hands_mode:
            return [self.crop(image, bgr=bgr, **read_kwargs)]
        return self.hand_crops(*self.find_hands(image, bgr=bgr, **read_kwargs))

    def hand_crops(self, rgb: np.ndarray, hands: Sequence[Hand]) -> list[np.ndarray]:
        """One uint8 ``input_size``² crop per hand (``hand_crop``, then this model's Preprocess geometry):
        what ``classify`` takes, and what training saw."""
        self._require_hands_model("hand_crops(rgb, hands)")
        return [self.preprocess.crop(hand_crop(rgb, hand, self.data_config)) for hand in hands]

    def decide_hands(self, hands: Sequence[Hand], scores: Sequence[ClassScores] | np.ndarray, *, k: int = 5,
                     threshold: float | None = None) -> FramePrediction:
        """Each hand's scores (``classify_scores`` of ``hand_crops``; empty when there is no hand) ->
        ``decide`` per hand, and the frame's answer by FramePrediction's rule."""
        self._require_hands_model("decide_hands(hands, scores)")
        if len(scores) != len(hands):
            raise ValueError(f"decide_hands needs one row of probabilities per hand: {len(hands)} hands, {len(scores)} rows")
        per_hand = [HandPrediction(hand, self.decide(row, k=k, threshold=threshold)) for hand, row in zip(hands, scores, strict=True)]
        if not per_hand:  # a bad threshold or k is an error with or without hands
            check_k(k, len(self.classes))
            self.rejection.threshold_or(threshold)
        source = frame_source([h.prediction for h in per_hand])
        return FramePrediction(per_hand, NO_HAND if source is None else per_hand[source].prediction, source)

    def predict_hands(self, image: ImageSource, *, k: int = 5, threshold: float | None = None, bgr: bool = False,
                      hands: Sequence[Hand] | None = None, **read_kwargs: Any) -> FramePrediction:
        """``find_hands`` (or the ``hands`` given, e.g. from a HandTracker on this frame), ``hand_crops``,
        ``classify`` and ``decide_hands``."""
        self._require_hands_model("predict_hands(image)")  # before the hand models load
        if hands is None:
            rgb, hands = self.find_hands(image, bgr=bgr, **read_kwargs)
        else:
            rgb = self.decode(image, bgr=bgr, **read_kwargs)
        crops = self.hand_crops(rgb, hands)
        return self.decide_hands(hands, self.classify_scores(crops) if crops else [], k=k, threshold=threshold)

    def _require_whole_image_model(self, call: str) -> None:
        if self.hands_mode:
            raise ValueError(f"this model classifies hand crops (trained with --hands), not whole images: use predict_hands(image), "
                             f"or find_hands(image) then hand_crops(rgb, hands) and classify, instead of {call}")

    def _require_hands_model(self, call: str) -> None:
        # a whole-image model given hand crops answered, confidently, about crops unlike anything it learnt
        if not self.hands_mode:
            raise ValueError(f"this model classifies whole images (trained without --hands), not hand crops: use predict(image), "
                             f"or crop(image) and classify, instead of {call}")

    # --- below the pipeline: already normalised tensors ------------------------------------------------

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """float32 logits (N, num_classes) for a preprocessed batch, from the classifier's engine."""
        with torch.inference_mode():
            return self.engine(batch)[:, : len(self.classes)]

    def logits_and_features(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """(logits (N, num_classes), penultimate features (N, D) or None when the rejection score does
        not use them), from one engine call."""
        with torch.inference_mode():
            out = self.engine(batch).cpu().numpy()
        classes = len(self.classes)
        return out[:, :classes], (out[:, classes:] if self.rejection.needs_features else None)

    def probs(self, batch: torch.Tensor) -> np.ndarray:
        """Calibrated probabilities: the one place the stored temperature is applied."""
        return softmax(self.rejection.scale(self.logits(batch).cpu().numpy()))


def load_classifier(
    path: str | os.PathLike,
    device: str | torch.device = "auto",
    engine: str = "auto",
    precision: str = "fp32",
    *,
    input_size: int | None = None,
    crop_pct: float | None = None,
) -> Classifier:
    """The checkpoint as a ready Classifier. ``engine``: auto | torch | compile | onnx | openvino (auto: the
    fastest installed for the device); ``precision``: fp32 | bf16 | fp16 where the engine supports it.
    ``input_size`` / ``crop_pct`` see the model at another geometry than its stored one
    (``gesture_core.preprocess.evaluation_geometry``; for evaluation, not serving). ``path``: a checkpoint,
    or a run folder meaning its ``best.pt``, as the commands take them."""
    path = checkpoint_file(path, "best.pt")
    ckpt = load_checkpoint(path)
    if input_size is not None or crop_pct is not None:
        stored = DataConfig.from_dict(ckpt["data_config"])
        ckpt = {**ckpt, "data_config": evaluation_geometry(stored, input_size, crop_pct).to_dict()}
    try:
        if input_size is not None:
            get_backbone(ckpt["backbone"]).check_input_size(input_size)
        model = build_from_checkpoint(ckpt)
    except ValueError as err:  # an unknown backbone, an input it cannot take, or weights whose names or shapes do not fit it
        raise CheckpointError(f"{path}: {err}") from None
    return Classifier(model, ckpt, resolve_device(device), engine=engine, precision=precision)


def load_verified_classifier(path: str | os.PathLike, device: str | torch.device = "auto", engine: str = "auto",
                             precision: str = "fp32", **geometry: Any) -> Classifier:
    """``load_classifier``, then one blank 4:3 frame through the whole inference path (crop, classify,
    decide): a checkpoint that the service could not serve is a CheckpointError with the reason, before anyone
    relies on it. Classifying a ready crop alone passed models whose every request then failed (a letterbox
    colour out of range, class means of another width than the features)."""
    classifier = load_classifier(path, device, engine, precision, **geometry)
    try:
        scores = classifier.classify_scores([classifier.preprocess.crop(np.zeros((48, 64, 3), np.uint8))])[0]
        probs = scores.probs[None]
        if probs.shape != (1, len(classifier.classes)) or not np.isfinite(probs).all():
            raise CheckpointError(f"{path}: the model answers a test image with {probs.shape[-1]} probabilities "
                                  f"({'finite' if np.isfinite(probs).all() else 'not finite'}) for {len(classifier.classes)} classes")
        classifier.decide(scores)
    except CheckpointError:
        raise
    except (RuntimeError, ValueError, OverflowError, cv2.error) as err:
        raise CheckpointError(f"{path}: a test image does not run through the model ({in_brief(err)})") from None
    return classifier
