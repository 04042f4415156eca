"""Saying "no gesture": which classes mean it, the calibration temperature, and the decision threshold.

A checkpoint written by training since this module exists holds a ``rejection`` dict (``Rejection.to_dict``):

    reject_classes  class names that mean "no gesture" (a prediction of one of them has label None)
    temperature     logits are divided by it before the softmax (fitted on validation; 1.0 = none)
    threshold       below this calibrated top probability the label is None (chosen on validation)
    calibrated      False for checkpoints from before calibration: old default threshold, no temperature
    rule            how the threshold was chosen, in words (docs/no-gesture.md explains each rule)

The Classifier applies the temperature once, in ``probs``, so every probability shown anywhere is
calibrated, and ``decide`` applies the classes and threshold, so the service, the webcam, evaluate and
``Classifier.predict`` share one rule.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# Names that datasets use for "no gesture" (HaGRID: no_gesture; the Kaggle ASL alphabet: nothing).
# Compared after lower-casing and turning spaces and dashes into underscores.
REJECT_NAMES = frozenset({
    "none", "no_gesture", "nogesture", "nothing", "background", "other", "others", "unknown",
    "no_hand", "no_hands", "empty", "negative", "idle", "rest", "blank",
})
# What a checkpoint from before calibration decides with: the threshold callers used then (the service
# and evaluate used 0; the webcam keeps its own old default, 0.5, for these checkpoints).
UNCALIBRATED_THRESHOLD = 0.0
THRESHOLD_RANGE = "between 0 and 1"


def normalised_name(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def is_reject_name(name: str) -> bool:
    return normalised_name(name) in REJECT_NAMES


def find_reject_classes(classes: Sequence[str], requested: Iterable[str] | None = None) -> list[str]:
    """The classes that mean "no gesture": those with a common name (``requested`` None), the ones
    named in ``requested`` (case-insensitive), or none at all when ``requested`` is just ``''``."""
    if requested is None:
        return [c for c in classes if is_reject_name(c)]
    requested = [name for name in requested if name != ""]
    by_name = {c.lower(): c for c in classes}
    unknown = [name for name in requested if name.lower() not in by_name]
    if unknown:
        raise ValueError(f"--reject-class {', '.join(map(repr, unknown))}: not a class of this data; "
                         f"choose from {', '.join(classes)} (or '' for no reject class)")
    return sorted({by_name[name.lower()] for name in requested}, key=list(classes).index)


def check_threshold(value: float, what: str = "threshold") -> float:
    """``value`` if it is a probability threshold, else a ValueError that gives the valid range."""
    if not (isinstance(value, int | float) and 0.0 <= value <= 1.0) or math.isnan(value):
        raise ValueError(f"{what} must be {THRESHOLD_RANGE} (inclusive), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Rejection:
    reject_classes: tuple[str, ...] = ()
    temperature: float = 1.0
    threshold: float = UNCALIBRATED_THRESHOLD
    calibrated: bool = False
    rule: str = "uncalibrated: a checkpoint from before calibration"

    def __post_init__(self) -> None:
        check_threshold(self.threshold)
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any]) -> Rejection:
        """The checkpoint's stored rule; an older checkpoint gets its classes by name and the old threshold."""
        stored = checkpoint.get("rejection")
        if not stored:
            return cls(tuple(find_reject_classes(checkpoint["classes"])))
        return cls(tuple(stored["reject_classes"]), float(stored["temperature"]), float(stored["threshold"]),
                   bool(stored["calibrated"]), str(stored.get("rule", "")))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reject_classes": list(self.reject_classes)}

    def info(self) -> dict[str, Any]:
        """What /info and reports show: the stored values, and "calibrated" or "uncalibrated"."""
        return {**self.to_dict(), "calibration": "calibrated" if self.calibrated else "uncalibrated"}

    def scale(self, logits: np.ndarray) -> np.ndarray:
        """Logits divided by the temperature: their softmax is the calibrated probability."""
        return logits if self.temperature == 1.0 else logits / np.float32(self.temperature)

    def threshold_or(self, override: float | None) -> float:
        return self.threshold if override is None else check_threshold(override)
