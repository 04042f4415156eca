"""Shared core of the gesture recognition service: what training and serving both need.

image -> Preprocess -> backbone+head -> probabilities -> label, each step in exactly one place:
``images`` decodes, ``preprocess`` normalises, ``backbones`` builds models, ``weights`` finds
pretrained weights, ``checkpoint`` stores a model, ``classifier`` rebuilds it and owns the
pipeline (``crop`` per image, ``classify`` per batch, ``predict`` both), ``runtime`` says where it runs.
"""

import gesture_core.interrupts  # noqa: F401  before torch: a Ctrl-C during a command's imports is one line, not a traceback

# isort: split
from gesture_core.backbones import BACKBONES, build_model, get_backbone, list_backbones
from gesture_core.checkpoint import load_checkpoint, resolve_device, save_checkpoint
from gesture_core.classifier import Classifier, ClassScores, Prediction, decode_probs, load_classifier
from gesture_core.images import ImageDecodeError, read_rgb
from gesture_core.preprocess import DataConfig, Preprocess
from gesture_core.weights import WeightsUnavailableError

__all__ = [
    "BACKBONES",
    "ClassScores",
    "Classifier",
    "DataConfig",
    "ImageDecodeError",
    "Prediction",
    "Preprocess",
    "WeightsUnavailableError",
    "build_model",
    "decode_probs",
    "get_backbone",
    "list_backbones",
    "load_checkpoint",
    "load_classifier",
    "read_rgb",
    "resolve_device",
    "save_checkpoint",
]
