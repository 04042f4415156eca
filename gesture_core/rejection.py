"""Saying "no gesture": which classes mean it, the calibration temperature, and the decision threshold.

A checkpoint written by training since this module exists holds a ``rejection`` dict (``Rejection.to_dict``):

    reject_classes  class names that mean "no gesture" (a prediction of one of them has label None)
    temperature     logits are divided by it before the softmax (fitted on validation; 1.0 = none)
    threshold       below this gesture score the label is None (chosen on validation)
    calibrated      False for checkpoints from before calibration: old default threshold, no temperature
    rule            how the threshold was chosen, in words (docs/no-gesture.md explains each rule)
    score           what the threshold applies to, always 0-1 (``SCORES``):
                    max_softmax: the calibrated top probability (the default; the only one before this field);
                    energy: T x logsumexp(logits / T) (Liu et al., 2020);
                    feature_cosine: the cosine similarity of the image's penultimate features to the nearest
                    gesture class's mean training features (``feature_means``, unit length);
                    these two as their rank: the share of the validation gesture images whose raw score
                    is at most as high (``reference`` holds theirs, sorted);
                    energy_and_feature: the lower of the two ranks (``reference`` holds the energies,
                    ``feature_reference`` the cosines): an image must look like a learned gesture to both

The Classifier applies the temperature once, in ``probs``, so every probability shown anywhere is
calibrated, and ``decide`` applies the classes and threshold, so the service, the webcam, evaluate and
``Classifier.predict`` share one rule.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

import numpy as np

from gesture_core.class_names import name_words, unglue

# What "no gesture" classes are called (HaGRID: no_gesture; Jester: "No gesture", "Doing other things";
# the Kaggle ASL alphabet: nothing), read as words of the name (gesture_core.class_names.name_words), so
# that case, separators, camelCase and a number to order the folders ("00_none") do not matter.
# A name is one of these words, alone or beside a filler word:
NOTHING_WORDS = frozenset({
    "none", "nothing", "background", "other", "others", "unknown", "empty", "negative", "negatives",
    "idle", "rest", "blank", "neutral", "null", "void", "noise", "garbage", "misc",
})
FILLER_WORDS = frozenset({
    "class", "label", "category", "doing", "thing", "things", "stuff", "scene", "frame", "frames",
    "gesture", "gestures", "sign", "signs", "hand", "hands", "at", "only",
})
# ... or a negation before what is absent: "no_gesture", "no hands", "not a gesture", "NoSign".
NEGATIONS = ("no", "non", "not", "without")
ABSENT_WORDS = frozenset({
    "gesture", "gestures", "hand", "hands", "sign", "signs", "action", "actions", "motion", "motions",
    "object", "objects", "person", "people", "one", "body",
})
ABSENT_FILLERS = frozenset({"a", "any", "detected", "present", "visible", "shown", "in", "view", "frame", "class"})
# What a checkpoint from before calibration decides with: the threshold callers used then (the service
# and evaluate used 0; the webcam keeps its own old default, 0.5, for these checkpoints).
UNCALIBRATED_THRESHOLD = 0.0
THRESHOLD_RANGE = "between 0 and 1"
SCORES = ("max_softmax", "energy", "feature_cosine", "energy_and_feature")


def is_reject_name(name: str) -> bool:
    """Whether a class name says "no gesture": one of NOTHING_WORDS beside filler words, or a negation
    and what is absent. Yes: "none", "No Gesture", "00_nothing", "_background_", "noHands",
    "not_a_gesture", "Doing other things", "hands at rest", "other_gestures". No: "no" and "not"
    (signs), "rest_pose", "fist", "0"."""
    words = [w for w in name_words(name) if not w.isdigit()]
    if len(words) == 1:  # "nogesture", "nohands": one word glued from two
        words = unglue(words[0], NEGATIONS, ABSENT_WORDS) or words
    if len(words) > 1 and words[0] in NEGATIONS:
        rest = [w for w in words[1:] if w not in ABSENT_FILLERS]
        return bool(rest) and all(w in ABSENT_WORDS for w in rest)
    core = [w for w in words if w not in FILLER_WORDS]
    return len(core) == 1 and core[0] in NOTHING_WORDS


def find_reject_classes(classes: Sequence[str], requested: Iterable[str] | None = None) -> list[str]:
    """The classes that mean "no gesture": those with a common name (``requested`` None), the ones
    named in ``requested`` (case-insensitive), or none at all when ``requested`` is just ``''``."""
    if requested is None:
        return [c for c in classes if is_reject_name(c)]
    requested = list(requested)
    if "" in requested and len(set(requested)) > 1:  # '' was dropped and the others used
        raise ValueError(f"--reject-class '' means no reject class, and --reject-class {', '.join(repr(n) for n in requested if n)} names one: "
                         "pass one or the other")
    requested = [name for name in requested if name != ""]
    by_name = {c.lower(): c for c in reversed(classes)}  # the first of classes differing only in case, when none is named exactly
    by_name.update({c: c for c in classes})  # an exact name wins: "A" is A, not a
    found = {name: by_name.get(name, by_name.get(name.lower())) for name in requested}
    if unknown := [name for name, c in found.items() if c is None]:
        raise ValueError(f"--reject-class {', '.join(map(repr, unknown))}: not a class of this data; "
                         f"choose from {', '.join(classes)} (or '' for no reject class)")
    if classes and set(found.values()) == set(classes):  # the model would answer "no gesture" to everything
        raise ValueError(f"--reject-class names every class ({', '.join(classes)}): at least one must be a gesture")
    return sorted(set(found.values()), key=list(classes).index)


def check_threshold(value: float, what: str = "threshold") -> float:
    """``value`` if it is a probability threshold, else a ValueError that gives the valid range."""
    # numbers.Real: NumPy's float32 too, which float | int missed ("must be between 0 and 1, got 0.3")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what} must be a number {THRESHOLD_RANGE} (inclusive), got {value!r}")
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise ValueError(f"{what} must be {THRESHOLD_RANGE} (inclusive), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Rejection:
    reject_classes: tuple[str, ...] = ()
    temperature: float = 1.0
    threshold: float = UNCALIBRATED_THRESHOLD
    calibrated: bool = False
    rule: str = "uncalibrated: a checkpoint from before calibration"
    score: str = "max_softmax"
    reference: tuple[float, ...] = ()  # the validation gesture images' raw scores, sorted (energy_and_feature: energies)
    feature_means: tuple[tuple[float, ...], ...] = ()  # feature_cosine, energy_and_feature: a unit-length mean per gesture class
    feature_reference: tuple[float, ...] = ()  # energy_and_feature: the validation gesture images' cosines, sorted

    def __post_init__(self) -> None:
        check_threshold(self.threshold)
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if self.score not in SCORES:
            raise ValueError(f"rejection score {self.score!r}: choose one of {', '.join(SCORES)}")

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any]) -> Rejection:
        """The checkpoint's stored rule; an older checkpoint gets its classes by name and the old threshold."""
        stored = checkpoint.get("rejection")
        if not stored:
            return cls(tuple(find_reject_classes(checkpoint["classes"])))
        if not isinstance(stored, dict):
            raise TypeError(f"it must be a mapping of the rule's values, got {type(stored).__name__}")
        names = stored["reject_classes"]
        if not isinstance(names, list | tuple) or (unknown := [n for n in names if n not in checkpoint["classes"]]):
            raise ValueError(f"reject_classes must be a list of the model's classes, got {names!r:.80}"
                             f"{f' ({unknown[0]!r:.40} is none)' if isinstance(names, list | tuple) else ''}")
        if not isinstance(stored["calibrated"], bool):
            raise TypeError(f"calibrated must be True or False, got {stored['calibrated']!r:.40}")
        means = stored.get("feature_means", [])
        if not isinstance(means, list | tuple):
            raise ValueError(f"feature_means must be a list of one mean per class, got {type(means).__name__}")
        means = tuple(reals(mean, "feature_means") for mean in means)
        if len({len(mean) for mean in means}) > 1:
            raise ValueError(f"feature_means must be one mean of the same length per class, got lengths {sorted({len(m) for m in means})}")
        return cls(tuple(names), real(stored["temperature"], "temperature"), real(stored["threshold"], "threshold"),
                   stored["calibrated"], str(stored.get("rule", "")), str(stored.get("score", "max_softmax")),
                   reals(stored.get("reference", []), "reference"), means, reals(stored.get("feature_reference", []), "feature_reference"))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reject_classes": list(self.reject_classes), "reference": list(self.reference),
                "feature_means": [list(mean) for mean in self.feature_means], "feature_reference": list(self.feature_reference)}

    def info(self) -> dict[str, Any]:
        """What /info and reports show: the stored values (the reference and class means as their sizes),
        and "calibrated" or "uncalibrated"."""
        shown = {k: v for k, v in self.to_dict().items() if k not in ("reference", "feature_means", "feature_reference")}
        return {**shown, "reference_images": len(self.reference), "feature_mean_classes": len(self.feature_means),
                "calibration": "calibrated" if self.calibrated else "uncalibrated"}

    @property
    def needs_features(self) -> bool:
        """Whether the score needs the penultimate features besides the logits (gesture_core.backbones.with_features)."""
        return self.score in ("feature_cosine", "energy_and_feature")

    @cached_property
    def _means(self) -> np.ndarray:
        return np.asarray(self.feature_means, np.float64)

    def scale(self, logits: np.ndarray) -> np.ndarray:
        """Logits divided by the temperature: their softmax is the calibrated probability."""
        return logits if self.temperature == 1.0 else logits / np.float32(self.temperature)

    def threshold_or(self, override: float | None) -> float:
        return self.threshold if override is None else check_threshold(override)

    def override_note(self, override: float | None) -> str | None:
        """What a --threshold of one's own turns away, for a model whose threshold applies to a rank: a habitual
        0.5 turned away over half of the gestures, in silence (ranks of no gesture sit near 0, gestures' spread
        over 0-1). None where the threshold applies to the top probability, or is the model's own."""
        if override is None or self.score == "max_softmax" or not self.calibrated or override == self.threshold:
            return None
        turned_away = (f"it turns away about {override:.0%} or more of gestures like those" if override > 0 else
                       "0 turns nothing away by its score (only a reject class's predictions say no gesture)")
        return (f"--threshold {override:g} applies to this model's gesture score, a rank among its validation gestures "
                f"({self.score}): {turned_away}; the calibrated threshold is {self.threshold:.4f}")

    def probabilities_and_gestures(self, logits: np.ndarray, features: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(the calibrated probabilities (N, classes), the gesture scores (N,), or None for max_softmax,
        whose threshold applies to the top probability itself): what a decision needs from the raw outputs."""
        probs = softmax(self.scale(logits))
        return probs, (None if self.score == "max_softmax" else self.gesture_scores(logits, features))

    def gesture_scores(self, logits: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
        """(N,) what the threshold applies to, 0-1, from the raw logits (N, classes) and, for the
        feature scores, the penultimate features (N, D): the calibrated top probability, or the raw
        score's rank among the validation gestures' (the lower of two ranks for energy_and_feature)."""
        if self.score == "max_softmax":
            return softmax(self.scale(logits)).max(1)
        if not self.reference or (self.score == "energy_and_feature" and not self.feature_reference):
            # e.g. a Rejection read from /info, which shows the references' sizes only
            raise ValueError(f"the {self.score} score needs the validation gestures' scores (reference) to put it on a 0-1 scale")
        if self.score == "energy_and_feature":
            energies, cosines = self.raw_scores(logits, features, "energy"), self.raw_scores(logits, features, "feature_cosine")
            return np.minimum(reference_rank(energies, self.reference), reference_rank(cosines, self.feature_reference))
        return reference_rank(self.raw_scores(logits, features), self.reference)

    def raw_scores(self, logits: np.ndarray, features: np.ndarray | None = None, kind: str | None = None) -> np.ndarray:
        """(N,) the energy or the feature cosine (``kind``, default ``score``) before it is ranked: higher
        is more like a learned gesture."""
        kind = kind or self.score
        if kind == "energy":
            return energy(self.scale(logits), self.temperature)
        if kind != "feature_cosine":
            raise ValueError(f"the {kind} score has no single raw form: choose energy or feature_cosine")
        if features is None or not self.feature_means:
            raise ValueError(f"the {self.score} score needs the penultimate features and the class means (feature_means)")
        # float64 and einsum, not a float32 matmul: BLAS sums a row in an order that depends on the batch,
        # and a validation gesture scored in another batch than its reference value must still rank itself
        unit = features.astype(np.float64)
        unit /= np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
        return np.einsum("nd,cd->nc", unit, self._means).max(1)


def real(value: Any, what: str) -> float:
    """A stored number as a float; a string, a bool or a tensor is refused (``float('0.5')`` would pass)."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r:.40}")
    return float(value)


def reals(values: Any, what: str) -> tuple[float, ...]:
    """A stored list of numbers as floats. A tensor is refused before it is iterated: an expanded one (stride 0)
    stands for 10**9 values in a few bytes of the file."""
    if not isinstance(values, list | tuple):
        raise ValueError(f"{what} must be a list of numbers, got {type(values).__name__}")
    return tuple(real(value, what) for value in values)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in numpy. torch.softmax, even on a (2, 10) tensor, wakes torch's OpenMP
    threads, which then spin on the cores that OpenVINO's streams need (``python -m benchmarks.model_call``
    measures both)."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def energy(scaled_logits: np.ndarray, temperature: float) -> np.ndarray:
    """(N,) T x logsumexp(logits / T), from logits already divided by T: higher is more like a learned class."""
    top = scaled_logits.max(1)
    return temperature * (top + np.log(np.exp(scaled_logits - top[:, None]).sum(1)))


def reference_rank(values: np.ndarray, reference: Sequence[float]) -> np.ndarray:
    """The share of ``reference`` (sorted) at or below each value: 0 under all of it, 1 from its top up.
    At or below, so that a threshold at a validation gesture's rank accepts exactly the raw scores from
    that gesture's up, as a threshold on the raw score itself would (training.calibrate picks it there)."""
    return (np.searchsorted(np.asarray(reference), values, side="right") / len(reference)).astype(np.float64)
