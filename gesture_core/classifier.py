"""The Classifier: a loaded model with its Preprocess and class names, and the one pipeline from an
image to a label that the service, the webcam, evaluation and the benchmarks all call.

    classifier = load_classifier("RUN/best.pt")
    crop = classifier.crop(image)               # per image, on the CPU: decode, resize, centre-crop
    probs = classifier.classify([crop, ...])    # per batch: normalise, run the engine, softmax
    prediction = classifier.predict(image)      # the two together, then top-k and rejection

Splitting ``crop`` from ``classify`` is what lets a server decode each upload in its own thread and
still run the model once for many requests, with the same answer as ``predict`` by construction.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from gesture_core.checkpoint import CheckpointError, build_from_checkpoint, load_checkpoint, resolve_device
from gesture_core.engines import Engine, build_engine
from gesture_core.images import ImageSource, bgr_to_rgb
from gesture_core.preprocess import DataConfig, Preprocess
from gesture_core.rejection import Rejection, is_reject_name


@dataclass(frozen=True)
class Prediction:
    label: str | None  # None when rejected (below threshold, or a "no gesture" class)
    score: float
    top_k: list[tuple[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "score": self.score,
            "top_k": [{"label": label, "score": score} for label, score in self.top_k],
        }


def decode_probs(probs: np.ndarray, classes: Sequence[str], *, k: int = 5, threshold: float = 0.0,
                 reject_classes: Collection[str] | None = None) -> Prediction:
    """probabilities -> label: top-k, and rejection below ``threshold`` or on a reject class
    (``reject_classes``; None: the classes with a common "no gesture" name, gesture_core.rejection)."""
    order = np.argsort(-probs)[: max(1, min(k, len(classes)))]
    top = [(classes[i], float(probs[i])) for i in order]
    label, score = top[0]
    rejected = score < threshold or (is_reject_name(label) if reject_classes is None else label in reject_classes)
    return Prediction(None if rejected else label, score, top)


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
        self.rejection = Rejection.from_checkpoint(checkpoint)  # temperature, reject classes, threshold
        shape = (self.data_config.in_chans, self.data_config.input_size, self.data_config.input_size)
        # What classify runs on (gesture_core.engines): eager, compiled, ONNX Runtime or OpenVINO.
        self.engine: Engine = build_engine(self.model, engine=engine, precision=precision, device=device, input_shape=shape)

    def __repr__(self) -> str:
        return f"Classifier({self.backbone}, {len(self.classes)} classes, {self.preprocess}, device={self.device}, engine={self.engine.name}/{self.engine.precision})"

    # --- the pipeline ------------------------------------------------------------------------------

    def crop(self, image: ImageSource, *, bgr: bool = False, **read_kwargs: Any) -> np.ndarray:
        """One image -> its uint8 ``input_size``² centre crop (decode, resize, crop; CPU only).
        ``image``: a path, encoded bytes, a PIL image or an RGB array; ``bgr=True`` for an OpenCV frame.
        ``read_kwargs`` go to ``gesture_core.images.read_rgb`` (e.g. ``max_pixels``).
        Raises ``ImageDecodeError`` with a user-facing reason."""
        rgb = bgr_to_rgb(image) if bgr else self.preprocess.read(image, **read_kwargs)
        return self.preprocess.crop(rgb)

    def classify(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Crops made by ``crop`` -> class probabilities (N, num_classes), in one model call."""
        return self.probs(self.preprocess.normalize_batch(crops))

    def predict(self, image: ImageSource, *, k: int = 5, threshold: float | None = None, bgr: bool = False) -> Prediction:
        """``crop`` then ``classify``, then ``decide``."""
        return self.decide(self.classify([self.crop(image, bgr=bgr)])[0], k=k, threshold=threshold)

    def decide(self, probs: np.ndarray, *, k: int = 5, threshold: float | None = None) -> Prediction:
        """One image's probabilities -> Prediction: top-k, and "no gesture" (label None) on the stored
        reject classes or below the threshold (``threshold`` overrides the stored one; it must lie in 0-1)."""
        return decode_probs(probs, self.classes, k=k, threshold=self.rejection.threshold_or(threshold),
                            reject_classes=self.rejection.reject_classes)

    def predict_proba(self, images: Sequence[ImageSource]) -> np.ndarray:
        """Probabilities (N, num_classes) for several images, as one batch."""
        return self.classify([self.crop(image) for image in images])

    # --- below the pipeline: already normalised tensors ------------------------------------------------

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """float32 logits (N, num_classes) for a preprocessed batch, from the classifier's engine."""
        with torch.inference_mode():
            return self.engine(batch)

    def probs(self, batch: torch.Tensor) -> np.ndarray:
        """Calibrated probabilities: the one place the stored temperature is applied."""
        return softmax(self.rejection.scale(self.logits(batch).cpu().numpy()))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in numpy. torch.softmax, even on a (2, 10) tensor, wakes torch's OpenMP
    threads, which then spin on the cores that OpenVINO's streams need (``python -m benchmarks.model_call``
    measures both)."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def load_classifier(
    path: str | os.PathLike,
    device: str | torch.device = "auto",
    engine: str = "auto",
    precision: str = "fp32",
) -> Classifier:
    """The checkpoint as a ready Classifier. ``engine``: auto | torch | compile | onnx | openvino (auto: the
    fastest installed for the device); ``precision``: fp32 | bf16 | fp16 where the engine supports it."""
    ckpt = load_checkpoint(path)
    try:
        model = build_from_checkpoint(ckpt)
    except ValueError as err:  # an unknown backbone, or weights whose names or shapes do not fit it
        raise CheckpointError(f"{path}: {err}") from None
    return Classifier(model, ckpt, resolve_device(device), engine=engine, precision=precision)


def load_verified_classifier(path: str | os.PathLike, device: str | torch.device = "auto", engine: str = "auto",
                             precision: str = "fp32") -> Classifier:
    """``load_classifier``, then one blank image through the whole inference path: a checkpoint that
    the service could not serve is a CheckpointError with the reason, before anyone relies on it."""
    classifier = load_classifier(path, device, engine, precision)
    size = classifier.data_config.input_size
    try:
        probs = classifier.classify([np.zeros((size, size, classifier.data_config.in_chans), np.uint8)])
    except (RuntimeError, ValueError) as err:
        raise CheckpointError(f"{path}: a test image does not run through the model ({' '.join(str(err).split())[:300]})") from None
    if probs.shape != (1, len(classifier.classes)) or not np.isfinite(probs).all():
        raise CheckpointError(f"{path}: the model answers a test image with {probs.shape[-1]} probabilities "
                              f"({'finite' if np.isfinite(probs).all() else 'not finite'}) for {len(classifier.classes)} classes")
    return classifier
