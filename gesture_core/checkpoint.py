"""The checkpoint format and ``load_classifier``, which rebuilds a ready-to-use model from it alone.

A checkpoint is a plain dict of tensors and primitives (so ``torch.load(weights_only=True)`` reads
it, and a checkpoint can never execute code):

    format       "gesture-checkpoint"      version   CHECKPOINT_VERSION
    backbone     registry name              classes   list of class names, index order
    data_config  DataConfig.to_dict()       train_config  the run's TrainConfig as a dict
    model        state dict                 metrics   optional evaluation results
    rejection    optional: reject classes, temperature and threshold (gesture_core.rejection)
    (+ optimizer/scheduler/epoch/rng state in last.pt, for --resume)
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gesture_core.backbones import build_model, drop_aux, get_backbone, load_matching
from gesture_core.engines import Engine, build_engine
from gesture_core.images import ImageSource
from gesture_core.preprocess import DataConfig, Preprocess
from gesture_core.rejection import Rejection, is_reject_name

CHECKPOINT_FORMAT = "gesture-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    pass


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: nn.Module,
    backbone: str,
    classes: Sequence[str],
    data_config: DataConfig,
    train_config: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    **extra: Any,
) -> Path:
    """Write atomically (temp file + rename), so an interrupted write never corrupts a run."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "backbone": backbone,
        "classes": list(classes),
        "data_config": data_config.to_dict(),
        "train_config": dict(train_config),
        "model": {k: v.detach().cpu() for k, v in unwrap_model(model).state_dict().items()},
        "metrics": metrics or {},
        **extra,
    }
    return atomic_torch_save(state, path)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (a training run writes RUN/best.pt and RUN/last.pt)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path} is not a readable checkpoint: {err}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a {CHECKPOINT_FORMAT} file written by training.finetune")
    if ckpt.get("version", 0) > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has format version {ckpt['version']}; this code reads up to {CHECKPOINT_VERSION}")
    return ckpt


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module whose state dict we store, under torch.compile or DataParallel wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but CUDA is not available; use --device auto or cpu")
    return device


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
        # What logits/probs/predict run on (gesture_core.engines): eager, compiled, ONNX Runtime or OpenVINO.
        self.engine: Engine = build_engine(self.model, engine=engine, precision=precision, device=device, input_shape=shape)

    def __repr__(self) -> str:
        return f"Classifier({self.backbone}, {len(self.classes)} classes, {self.preprocess}, device={self.device}, engine={self.engine.name}/{self.engine.precision})"

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """float32 logits (N, num_classes) for a preprocessed batch, from the classifier's engine."""
        return self.engine(batch)

    def probs(self, batch: torch.Tensor) -> np.ndarray:
        """Calibrated probabilities: the one place the stored temperature is applied."""
        return softmax(self.rejection.scale(self.logits(batch).cpu().numpy()))

    def predict_proba(self, images: Sequence[ImageSource]) -> np.ndarray:
        """Probabilities (N, num_classes) for paths, bytes, PIL images or RGB arrays."""
        return self.probs(self.preprocess.load_batch(images))

    def predict(self, image: ImageSource, *, k: int = 5, threshold: float | None = None) -> Prediction:
        return self.decide(self.predict_proba([image])[0], k=k, threshold=threshold)

    def decide(self, probs: np.ndarray, *, k: int = 5, threshold: float | None = None) -> Prediction:
        """One image's probabilities -> Prediction, with the stored reject classes and threshold
        (``threshold`` overrides the stored one; it must lie in 0-1)."""
        return decode_probs(probs, self.classes, k=k, threshold=self.rejection.threshold_or(threshold),
                            reject_classes=self.rejection.reject_classes)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in numpy. torch.softmax, even on a (2, 10) tensor, wakes torch's OpenMP
    threads, which then spin on the cores that OpenVINO's streams need (``python -m benchmarks.model_call``
    measures both)."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def build_from_checkpoint(ckpt: dict[str, Any], *, training: bool = False) -> nn.Module:
    """The architecture of ``ckpt`` with its weights; aux classifiers only when ``training``."""
    backbone = get_backbone(ckpt["backbone"])
    in_chans = int(ckpt["data_config"].get("in_chans", 3))
    model = build_model(backbone.name, len(ckpt["classes"]), "none", aux=training, in_chans=in_chans)
    load_matching(model, ckpt["model"], what=f"{backbone.name} checkpoint")
    if not training:
        drop_aux(model)
    return model


def load_classifier(
    path: str | os.PathLike,
    device: str | torch.device = "auto",
    engine: str = "auto",
    precision: str = "fp32",
) -> Classifier:
    """The checkpoint as a ready Classifier. ``engine``: auto | torch | compile | onnx | openvino (auto: the
    fastest installed for the device); ``precision``: fp32 | bf16 | fp16 where the engine supports it."""
    ckpt = load_checkpoint(path)
    return Classifier(build_from_checkpoint(ckpt), ckpt, resolve_device(device), engine=engine, precision=precision)
