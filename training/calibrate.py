"""Calibrate a classifier and choose its "no gesture" threshold on the validation split.

    python -m training.calibrate --checkpoint RUN/best.pt                       # (re)calibrate a run
    python -m training.calibrate --checkpoint RUN/best.pt --reject-class nothing --reject-target-recall 0.99
    python -m training.calibrate --checkpoint RUN/best.pt --reject-score energy    # threshold the energy instead
    python -m training.calibrate --checkpoint RUN/best.pt --reject-score feature_cosine  # or the features' cosine to the class means

Training runs this after the test (training.finetune); this command does it again for a finished or
older run, from its split.json. Steps (docs/no-gesture.md):

1. temperature: one number T, fitted by LBFGS to minimise the negative log-likelihood of the
   validation logits divided by T (Guo et al., 2017); it changes no prediction, only the confidence;
2. threshold, on the calibrated top probability, or with ``--reject-score energy`` (or ``feature_cosine``:
   the features' cosine to the nearest gesture class's mean training features) on that score's rank
   among the validation gestures' (``energy_and_feature``: the lower of the two ranks; gesture_core.rejection);
   a prediction of a reject class is always rejected:
   - with reject-class images in validation: among thresholds keeping gesture recall on new images
     at least ``target_recall`` x the unthresholded recall, the lowest false-accept rate on the
     reject-class images, and of those the highest threshold (it also turns away uncertain gestures);
   - without: the highest threshold keeping gesture recall on new images at least ``target_recall`` x
     the unthresholded recall. Weaker: it never sees a non-gesture, so it only bounds the cost;
   "on new images": the validation count is corrected for the finite split (``keeps_recall_on_new_images``),
   so with fewer than about 100 validation gestures a 0.99 target keeps the floor (no threshold);
3. the report: metrics.json ``open_set`` (threshold, temperature, gesture recall and precision at the
   threshold, false-accept rate, AUROC, ECE before/after) and open_set.png.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gesture_core.backbones import get_backbone, get_submodule_or_none
from gesture_core.checkpoint import (
    atomic_torch_save,
    build_from_checkpoint,
    check_not_training_state,
    clear_partial_saves,
    load_checkpoint,
    resolve_device,
)
from gesture_core.class_names import some_of
from gesture_core.cli import CommandParser, checkpoint_arg, command, python_command
from gesture_core.preprocess import DataConfig
from gesture_core.rejection import SCORES, Rejection, find_reject_classes, softmax
from training import cli
from training.config import TrainConfig
from training.data import DatasetError, Sample, Splits, check_image_file, check_split_readable
from training.features import cached_features, feature_extractor
from training.hand_crops import HandCropCache, hand_crop_splits
from training.report import save_figure, write_json
from training.run_lock import check_not_in_use

DEFAULT_TARGET_RECALL = TrainConfig().reject_target_recall
# A threshold allowed to turn away most gestures is no "no gesture" rule: 0 was taken, and calibrate replaced a
# model's working threshold with one that answered "no gesture" to 99% of its gestures.
LOWEST_TARGET_RECALL = 0.5
ECE_BINS = 15
# A fitted temperature stays within these: past 10 every probability tends to 1 / classes, which is where
# a validation split the model does no better than chance on (a few images, say) drives it.
TEMPERATURE_RANGE = (0.05, 10.0)
DEFAULT_SCORE = TrainConfig().reject_score  # what the product thresholds by default: docs/no-gesture.md has the comparison
SCORE_AXIS = {"max_softmax": "threshold on the calibrated top probability",
              "energy": "threshold on the energy's rank among the validation gestures",
              "feature_cosine": "threshold on the feature cosine's rank among the validation gestures",
              "energy_and_feature": "threshold on the lower of the energy's and the feature cosine's ranks"}


@dataclass
class SplitOutputs:
    """What the model says about one split: penultimate features, logits and true labels (decoded images only)."""

    features: np.ndarray
    logits: np.ndarray
    targets: np.ndarray
    index: np.ndarray  # of each row in the samples given (images that failed to decode have none)


@torch.inference_mode()
def split_outputs(model: torch.nn.Module, backbone: str, samples: Sequence[Sample], data_config: DataConfig, *,
                  device: torch.device, workers: int = 2, desc: str = "calibration") -> SplitOutputs:
    """Features through the feature cache (training.features), and the logits from them through the head."""
    spec = get_backbone(backbone)
    split = cached_features(feature_extractor(model, spec), samples, data_config, device=device, workers=workers, desc=desc)
    keep = split.labels >= 0
    features = split.features[keep]
    head = get_submodule_or_none(model, spec.heads[0]).eval()
    logits = head(features.to(device)).float().cpu() if len(features) else torch.zeros((0, 0))
    return SplitOutputs(features.numpy(), logits.numpy(), split.labels[keep].numpy(), keep.nonzero().flatten().numpy())


# --- calibration --------------------------------------------------------------------------------

def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The T > 0 minimising NLL(softmax(logits / T)), within TEMPERATURE_RANGE; 1.0 for an empty split.

    The targets keep 1 / (n + 2) of their mass spread over all classes (Laplace's rule of succession:
    after n validation images without an error, the next one is wrong with probability about 1 / (n + 2)).
    Without it, a validation split the model gets entirely right drives T towards 0 (the NLL keeps
    falling as every score goes to 1.0), and no threshold can then tell anything apart."""
    if len(targets) == 0:
        return 1.0
    x, y = torch.from_numpy(logits).double(), torch.from_numpy(targets).long()
    pseudo_error = 1.0 / (len(targets) + 2)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)  # T = exp(log_t) stays positive
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x / log_t.exp(), y, label_smoothing=pseudo_error)
        loss.backward()
        return loss

    optimizer.step(closure)
    fitted = float(log_t.detach().exp())
    low, high = TEMPERATURE_RANGE
    if not low <= fitted <= high:
        top1 = float((logits.argmax(1) == targets).mean())
        warnings.warn(f"the temperature that fits the {len(targets)} validation images is {fitted:.3g}: kept at {min(max(fitted, low), high)}, "
                      f"the end of its range {low}-{high} (validation top-1 {top1:.0%}); more validation images would calibrate it", stacklevel=2)
    return min(max(fitted, low), high)


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, bins: int = ECE_BINS) -> float | None:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by images per bin."""
    if len(targets) == 0:
        return None
    confidence, correct = probs.max(1), probs.argmax(1) == targets
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    gap = sum(abs(correct[which == b].mean() - confidence[which == b].mean()) * (which == b).sum() for b in range(bins) if (which == b).any())
    return float(gap / len(targets))


# --- scores and thresholds ----------------------------------------------------------------------

def gesture_means(train: SplitOutputs, classes: int, reject: Sequence[int]) -> tuple[tuple[float, ...], ...]:
    """The feature scores' class means (``Rejection.feature_means``): ``class_means`` of the gesture classes."""
    means = class_means(train, classes)
    return tuple(tuple(means[c].tolist()) for c in range(classes) if c not in set(reject))


def class_means(outputs: SplitOutputs, classes: int) -> np.ndarray:
    """(classes, D) unit-length mean of each class's unit-length features (zeros for an absent class)."""
    unit = outputs.features / np.maximum(np.linalg.norm(outputs.features, axis=1, keepdims=True), 1e-12)
    means = np.zeros((classes, unit.shape[1]), np.float32)
    for c in range(classes):
        if (outputs.targets == c).any():
            mean = unit[outputs.targets == c].mean(0)
            means[c] = mean / max(np.linalg.norm(mean), 1e-12)
    return means


def acceptance_scores(outputs: SplitOutputs, rejection: Rejection, reject: Sequence[int]) -> np.ndarray:
    """Per image, how much it looks like a known gesture before any ranking (higher: accept); -inf where
    the top class is a reject class. max_softmax: the calibrated top probability; energy: T x
    logsumexp(logits / T) (Liu et al., 2020); feature_cosine: the features' cosine similarity to the
    nearest gesture class mean (``Rejection.raw_scores``)."""
    if rejection.score == "max_softmax":
        score = softmax(rejection.scale(outputs.logits)).max(1)
    else:
        score = rejection.raw_scores(outputs.logits, outputs.features)
    return refuse_reject_predictions(outputs, reject, score)


def refuse_reject_predictions(outputs: SplitOutputs, reject: Sequence[int], score: np.ndarray) -> np.ndarray:
    """``score`` as float64, with -inf where the top class is a reject class (such a prediction is always rejected)."""
    return np.where(np.isin(outputs.logits.argmax(1), list(reject)), -np.inf, score).astype(np.float64)


def product_scores(outputs: SplitOutputs, rejection: Rejection, reject: Sequence[int]) -> np.ndarray:
    """Per image, the gesture score the Classifier thresholds (``Rejection.gesture_scores``), -inf where
    the top class is a reject class (always rejected)."""
    if not len(outputs.logits):
        return np.zeros(0)
    return refuse_reject_predictions(outputs, reject, rejection.gesture_scores(outputs.logits, outputs.features))


@dataclass
class Outcome:
    """The images of a labelled split as rejection sees them."""

    scores: np.ndarray
    correct_gesture: np.ndarray  # a gesture image whose top class is its own
    gesture: np.ndarray  # the true class is a gesture (not a reject class)

    @classmethod
    def of(cls, scores: np.ndarray, outputs: SplitOutputs, reject: Sequence[int]) -> Outcome:
        gesture = ~np.isin(outputs.targets, list(reject))
        return cls(scores, gesture & (outputs.logits.argmax(1) == outputs.targets), gesture)

    def at(self, thresholds: np.ndarray) -> dict[str, np.ndarray]:
        """Rates at each threshold (accepted: score >= threshold)."""
        accepted = lambda mask: len(self.scores[mask]) - np.searchsorted(np.sort(self.scores[mask]), thresholds, "left")  # noqa: E731
        n_gesture, n_reject = self.gesture.sum(), (~self.gesture).sum()
        correct, wrong_gesture, false_accepts = accepted(self.correct_gesture), accepted(self.gesture & ~self.correct_gesture), accepted(~self.gesture)
        return {
            "recall": correct / max(n_gesture, 1),
            "precision": np.divide(correct, correct + wrong_gesture + false_accepts, out=np.ones(len(thresholds)), where=(correct + wrong_gesture + false_accepts) > 0),
            "accepted_accuracy": np.divide(correct, correct + wrong_gesture, out=np.ones(len(thresholds)), where=(correct + wrong_gesture) > 0),
            "false_accept": false_accepts / n_reject if n_reject else np.full(len(thresholds), np.nan),
            "gesture_rejected": 1 - (correct + wrong_gesture) / max(n_gesture, 1),
        }


def choose_threshold(outcome: Outcome, target_recall: float, floor: float) -> tuple[float, str]:
    """(threshold, rule in words), by the rules in this module's docstring; ``floor`` accepts everything."""
    finite = outcome.scores[np.isfinite(outcome.scores)]
    candidates = np.unique(np.concatenate([[floor], finite[finite >= floor]]))
    rates = outcome.at(candidates)
    feasible = keeps_recall_on_new_images(rates["recall"], int(outcome.gesture.sum()), target_recall)
    bound = f"gesture recall >= {target_recall:g} x unthresholded on new images (conformal risk control)"
    if not (~outcome.gesture).any():
        return float(candidates[feasible].max()), f"known classes only: highest threshold keeping {bound} (weaker: no reject-class images)"
    lowest = rates["false_accept"][feasible].min()
    best = feasible & (rates["false_accept"] <= lowest + 1e-12)
    return float(candidates[best].max()), f"lowest false-accept rate on reject-class images keeping {bound}; of those, the highest threshold"


def keeps_recall_on_new_images(recall: np.ndarray, gestures: int, target_recall: float) -> np.ndarray:
    """Which thresholds keep the expected recall on new images at least ``target_recall`` x the
    unthresholded recall (``recall[0]``, at the floor, which is always kept).

    A threshold picked because it loses at most k of n validation gestures loses about (k + 1) / (n + 1)
    of new ones, not k / n: it sits just below the (k + 1)-th lowest score, and a new image is equally
    likely to fall anywhere among the n + 1. So the allowance is spent with that correction (conformal
    risk control, Angelopoulos et al. 2022): (k + 1) / (n + 1) <= (1 - target_recall) x recall[0]."""
    lost = np.rint((recall[0] - recall) * gestures)  # k: validation gestures right without the threshold and turned away by it
    feasible = within_allowance(lost, gestures, recall[0], target_recall)
    feasible[0] = True
    return feasible


def within_allowance(lost: np.ndarray | int, gestures: int, recall: float, target_recall: float) -> np.ndarray | bool:
    """The rule's inequality: losing ``lost`` of ``gestures`` validation gestures keeps the expected
    recall on new images at least ``target_recall`` x ``recall`` (the unthresholded recall)."""
    return (lost + 1) / (gestures + 1) <= (1 - target_recall) * recall + 1e-12


def auroc(positive: np.ndarray, negative: np.ndarray) -> float | None:
    """P(score of a positive > score of a negative), ties counting half (the Mann-Whitney U statistic)."""
    if len(positive) == 0 or len(negative) == 0:
        return None
    both = np.concatenate([positive, negative])
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]  # average rank of tied values, 1-based
    u = ranks[: len(positive)].sum() - len(positive) * (len(positive) + 1) / 2
    return float(u / (len(positive) * len(negative)))


# --- the whole step ----------------------------------------------------------------------------

def calibrate(val: SplitOutputs, classes: Sequence[str], reject_classes: Sequence[str], *, target_recall: float = DEFAULT_TARGET_RECALL,
              score: str = DEFAULT_SCORE, train: SplitOutputs | None = None) -> Rejection:
    """The Rejection (temperature, threshold on ``score``) that validation supports; uncalibrated without
    validation images. ``train``: the training split's outputs, for the feature scores' class means."""
    if len(val.targets) == 0:
        warnings.warn(f"no validation images: the model keeps temperature 1 and no threshold: {without_threshold(reject_classes)}", stacklevel=2)
        return Rejection(tuple(reject_classes), rule="uncalibrated: no validation images")
    reject = [list(classes).index(c) for c in reject_classes]
    missing = [c for c, i in zip(reject_classes, reject, strict=True) if not (val.targets == i).any()]
    if missing:
        warnings.warn(f"reject class(es) {some_of(missing)} have no validation images: the threshold falls back to the known-classes rule", stacklevel=2)
    temperature = fit_temperature(val.logits, val.targets)
    present = [i for i in reject if (val.targets == i).any()]
    unscored = Rejection(tuple(reject_classes), temperature)
    if score != "max_softmax":
        try:
            unscored = ranked(replace(unscored, score=score), val, train, classes, reject)
        except DatasetError as err:  # e.g. a validation split of reject-class images only: nothing to rank against
            warnings.warn(f"{err}; the threshold applies to the calibrated top probability (max_softmax) instead", stacklevel=2)
            score = "max_softmax"
    outcome = Outcome.of(product_scores(val, unscored, reject), val, present)
    warn_if_too_few_gestures(outcome, target_recall, reject_classes)
    threshold, rule = choose_threshold(outcome, target_recall, floor=0.0)
    return replace(unscored, threshold=min(threshold, 1.0), calibrated=True, rule=rule if score == "max_softmax" else f"{score} score: {rule}")


def ranked(rejection: Rejection, val: SplitOutputs, train: SplitOutputs | None, classes: Sequence[str], reject: Sequence[int]) -> Rejection:
    """``rejection`` (energy, feature_cosine or energy_and_feature) with what ranks its score: the class
    means from ``train`` where it needs features, and the validation gestures' raw scores."""
    if rejection.needs_features:
        means = gesture_means(train, len(classes), reject) if train is not None else ()
        if not any(any(mean) for mean in means):
            raise DatasetError(f"--reject-score {rejection.score} needs training images of the gesture classes for their mean features")
        rejection = replace(rejection, feature_means=means)
    if rejection.score == "energy_and_feature":
        return replace(rejection, reference=score_reference(val, rejection, reject, "energy"),
                       feature_reference=score_reference(val, rejection, reject, "feature_cosine"))
    return replace(rejection, reference=score_reference(val, rejection, reject, rejection.score))


def score_reference(val: SplitOutputs, rejection: Rejection, reject: Sequence[int], kind: str) -> tuple[float, ...]:
    """The validation gesture images' raw scores of ``kind`` (energies or feature cosines), sorted: the
    score's 0-1 scale (gesture_core.rejection). Computed exactly as ``Rejection.gesture_scores`` computes
    them, and not rounded, so that each validation gesture's rank counts itself (a rounded-up value would not)."""
    gesture = ~np.isin(val.targets, list(reject))
    if not gesture.any():
        raise DatasetError(f"--reject-score {rejection.score} needs gesture images in the validation split to put the score on a 0-1 scale")
    return tuple(np.sort(rejection.raw_scores(val.logits[gesture], val.features[gesture], kind)).tolist())


def gestures_needed(target_recall: float, right: float = 1.0) -> int:
    """The fewest validation gesture images with which a threshold can keep ``target_recall`` (``within_allowance``
    with none lost), where the model gets the share ``right`` of them right; below it, no threshold is chosen."""
    return int(np.ceil(1 / ((1 - target_recall) * right))) - 1


def without_threshold(reject_classes: Sequence[str]) -> str:
    """What a model with no threshold says "no gesture" for: a reject class's predictions, or never. It read "only
    reject-class predictions are rejected" for models that have no reject class, and so never say it."""
    if reject_classes:
        return f"only predictions of {some_of(list(reject_classes))} say no gesture"
    return "with no reject class either, this model never says no gesture"


def warn_if_too_few_gestures(outcome: Outcome, target_recall: float, reject_classes: Sequence[str] = ()) -> None:
    """Warn when validation has too few gesture images for any threshold to keep the target on new
    images: then only predictions of a reject class are rejected, and without one nothing is."""
    gestures = int(outcome.gesture.sum())
    right = outcome.correct_gesture.sum() / max(gestures, 1)
    if target_recall < 1 and right > 0 and not within_allowance(0, gestures, right, target_recall):  # at 1, the floor is what was asked
        needed = gestures_needed(target_recall, right)
        warnings.warn(f"{gestures} validation gesture images are too few to keep gesture recall >= {target_recall:g} x unthresholded "
                      f"on new images (about {needed} needed where it gets {right:.0%} of them right): no threshold, "
                      f"{without_threshold(reject_classes)}; add validation images or lower --reject-target-recall", stacklevel=3)


def operating_point(outputs: SplitOutputs, rejection: Rejection, classes: Sequence[str], threshold: float | None = None) -> dict[str, Any]:
    """metrics.json's open_set numbers for one split at the rejection's (or the given) threshold."""
    if len(outputs.targets) == 0:
        return {"n": 0}
    reject = [list(classes).index(c) for c in rejection.reject_classes]
    outcome = Outcome.of(product_scores(outputs, rejection, reject), outputs, reject)
    threshold = rejection.threshold_or(threshold)
    at, unthresholded = outcome.at(np.array([threshold])), outcome.at(np.array([0.0]))
    value = lambda rates, key: None if np.isnan(rates[key][0]) else round(float(rates[key][0]), 5)  # noqa: E731
    return {
        "n": int(len(outputs.targets)), "gesture_images": int(outcome.gesture.sum()), "reject_images": int((~outcome.gesture).sum()),
        "threshold": threshold, "gesture_recall": value(at, "recall"), "gesture_recall_unthresholded": value(unthresholded, "recall"),
        "gesture_precision": value(at, "precision"), "false_accept_rate": value(at, "false_accept"),
        "false_accept_rate_unthresholded": value(unthresholded, "false_accept"),
        "auroc": auroc(outcome.scores[outcome.gesture], outcome.scores[~outcome.gesture]),
        "ece_before": expected_calibration_error(softmax(outputs.logits), outputs.targets),
        "ece_after": expected_calibration_error(softmax(rejection.scale(outputs.logits)), outputs.targets),
    }


def open_set_report(val: SplitOutputs, test: SplitOutputs, rejection: Rejection, classes: Sequence[str]) -> dict[str, Any]:
    return {**rejection.info(), "val": operating_point(val, rejection, classes), "test": operating_point(test, rejection, classes)}


def plot_tradeoff(path: Path, outputs: SplitOutputs, rejection: Rejection, classes: Sequence[str], title: str) -> Path:
    """Left: accepted-gesture accuracy against the false-accept rate (or, without reject-class images,
    against the share of gestures rejected) as the threshold moves from 0 to 1. Right: the same rates
    against the threshold, which still shows the trade-off when no reject-class image is ever accepted.
    The chosen threshold is marked on both."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reject = [list(classes).index(c) for c in rejection.reject_classes]
    outcome = Outcome.of(product_scores(outputs, rejection, reject), outputs, reject)
    thresholds = np.linspace(0, 1, 201)
    sweep, chosen = outcome.at(thresholds), outcome.at(np.array([rejection.threshold]))
    x_key, x_label = ("false_accept", "false-accept rate on reject-class images") if (~outcome.gesture).any() else ("gesture_rejected", "share of gesture images rejected")
    fig, (ax, by_threshold) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax.plot(sweep[x_key], sweep["accepted_accuracy"], marker=".", markersize=3)
    ax.scatter(chosen[x_key], chosen["accepted_accuracy"], color="red", zorder=3, label=f"threshold {rejection.threshold:.3f} (T = {rejection.temperature:.2f})")
    ax.set(xlabel=x_label, ylabel="accuracy of accepted gestures", title=title)
    for key, label in (("accepted_accuracy", "accuracy of accepted gestures"), ("recall", "gesture recall"), (x_key, x_label)):
        by_threshold.plot(thresholds, sweep[key], label=label)
    by_threshold.axvline(rejection.threshold, color="red", linestyle="--", label="chosen threshold")
    by_threshold.set(xlabel=SCORE_AXIS[rejection.score], ylim=(-0.02, 1.02), title="as the threshold moves")
    for axis in (ax, by_threshold):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def open_set_results(val: SplitOutputs, test: SplitOutputs, rejection: Rejection, classes: Sequence[str], out: Path,
                     target_recall: float) -> dict[str, Any]:  # fmt: skip
    """metrics.json's open_set block, with the --reject-target-recall the threshold was chosen for, and
    open_set.png in ``out`` for a test split with images."""
    if len(test.targets):
        plot_tradeoff(out / "open_set.png", test, rejection, classes, f"test split: {len(test.targets)} images")
    return {**open_set_report(val, test, rejection, classes), "target_recall": target_recall}


def fit_rejection(model: torch.nn.Module, backbone: str, splits: Splits, data_config: DataConfig, *, device: torch.device,
                  requested: Sequence[str] | None, target_recall: float, workers: int = 2,
                  score: str = DEFAULT_SCORE) -> tuple[Rejection, SplitOutputs]:
    """(the Rejection a model's validation split supports, that split's outputs): ``calibrate`` on its
    validation split (and its training split, for the feature scores' class means), through the feature cache."""
    outputs = lambda name: split_outputs(model, backbone, getattr(splits, name), data_config, device=device, workers=workers, desc=f"{name} features")  # noqa: E731
    train = outputs("train") if Rejection(score=score).needs_features else None
    val = outputs("val")
    return calibrate(val, splits.classes, find_reject_classes(splits.classes, requested), target_recall=target_recall, score=score, train=train), val


def calibrate_model(model: torch.nn.Module, backbone: str, splits: Splits, data_config: DataConfig, *, device: torch.device,
                    requested: Sequence[str] | None, target_recall: float, out: Path, workers: int = 2,
                    score: str = DEFAULT_SCORE) -> tuple[Rejection, dict[str, Any]]:
    """``fit_rejection``, then the open-set report on the test split, through the feature cache too."""
    rejection, val = fit_rejection(model, backbone, splits, data_config, device=device, requested=requested, target_recall=target_recall,
                                   workers=workers, score=score)
    test = split_outputs(model, backbone, splits.test, data_config, device=device, workers=workers, desc="test features")
    return rejection, open_set_results(val, test, rejection, splits.classes, out, target_recall)


def reject_classes_phrase(classes: Sequence[str]) -> str:
    """"reject classes nothing, other", or "no reject class": "(none)" read as a class named none."""
    return f"reject classes {', '.join(classes)}" if classes else "no reject class"


def format_open_set(report: dict[str, Any], data: str = "test") -> str:
    """The "no gesture" lines of a report; ``data``: what its figures are of (evaluate: a split or a folder)."""
    test = report["test"]
    if not test["n"]:
        return f"no gesture: {reject_classes_phrase(report['reject_classes'])}; {report['rule']}"
    pct = lambda x: "n/a" if x is None else f"{100 * x:.2f}%"  # noqa: E731
    return (f"no gesture: {reject_classes_phrase(report['reject_classes'])}; temperature {report['temperature']:.3f}, {threshold_phrase(report)}\n"
            f"  {data}: gesture recall {pct(test['gesture_recall'])} (unthresholded {pct(test['gesture_recall_unthresholded'])}), "
            f"precision {pct(test['gesture_precision'])}, {false_accept_phrase(test)}, "
            f"calibration error (ECE) {pct(test['ece_before'])} -> {pct(test['ece_after'])}"
            f"{over_target(test, report.get('target_recall'))}")


def false_accept_phrase(test: dict[str, Any]) -> str:
    """The false-accept rate and the AUROC (how well the score tells gestures from reject-class images; 1 is
    perfect), both over the reject-class images; "n/a" alone left a newcomer guessing why."""
    if test["false_accept_rate"] is None:
        return "false-accept rate n/a (no reject-class images)"
    of = f" of {n} reject-class images" if (n := test.get("reject_images")) else ""  # 0.00% of 24 says little
    auroc = "" if test["auroc"] is None else f", AUROC {round(test['auroc'], 4)}"
    return f"false-accept rate {100 * test['false_accept_rate']:.2f}%{of}{auroc}"


def threshold_phrase(report: dict[str, Any]) -> str:
    """"threshold 0.0091 on the energy_and_feature rank (calibrated)"; "no threshold" where calibration chose 0,
    which accepts every image (too few validation gestures for one that keeps the recall target: it warned so,
    and the line below it said "threshold 0.0000 … (calibrated)")."""
    source = report.get("threshold_from", report["calibration"])
    if report["threshold"] == 0 and source == "calibrated":
        return "no threshold (too few validation gestures to choose one)"
    score = "" if report.get("score", "max_softmax") == "max_softmax" else f" on the {report['score']} rank"
    return f"threshold {report['threshold']:.4f}{score} ({source})"


def over_target(test: dict[str, Any], target_recall: float | None) -> str:
    """A line for a test split whose recall the threshold cut by more than the target allows: the rule
    bounds the average over new splits, so one split in a few goes over, and training said nothing of it."""
    recall, unthresholded = test.get("gesture_recall"), test.get("gesture_recall_unthresholded")
    if target_recall is None or recall is None or not unthresholded or recall >= target_recall * unthresholded - 1e-12:
        return ""
    return (f"\n  the threshold cost {100 * (unthresholded - recall):.2f} points of this test split's gesture recall, over the "
            f"{100 * (1 - target_recall):g}% of it that --reject-target-recall {target_recall:g} allows: the rule bounds the "
            "average over new images, not each split (docs/no-gesture.md)")


# --- the command ----------------------------------------------------------------------------------

def add_rejection_args(parser: Any, default: Callable[[Any], Any] = lambda value: value) -> None:
    """``parser``: a parser or an argument group (argparse names no public type for both). ``default`` maps each
    default (finetune's parser for --resume maps them all to SUPPRESS, to see what was given)."""
    parser.add_argument("--reject-class", dest="reject_classes", action="append", default=default(None), metavar="NAME",
                        help="a class meaning 'no gesture' (repeatable; default: classes named none, no_gesture, nothing, background, other, ...; '' for none)")
    parser.add_argument("--reject-target-recall", type=cli.float_in(LOWEST_TARGET_RECALL, 1.0, high_inclusive=True), default=default(DEFAULT_TARGET_RECALL),
                        help="the chosen threshold keeps gesture recall at least this fraction of the unthresholded recall")
    parser.add_argument("--reject-score", choices=SCORES, default=default(DEFAULT_SCORE),
                        help="what the threshold applies to: the calibrated top probability, the energy, the features' cosine "
                             "to the nearest gesture class mean, or the lower of the last two's ranks (docs/no-gesture.md#which-score)")


def reject_choice(classes: Sequence[str], requested: Sequence[str] | None) -> str:
    """The start-up line that says which classes mean "no gesture" and why; ValueError (listing the
    classes) for a --reject-class that is not one of them."""
    found = find_reject_classes(classes, requested)
    named = ", ".join(found)
    if requested is not None:
        return f"no gesture: {named} (--reject-class)" if found else "no gesture: no reject class (--reject-class ''); a threshold alone rejects"
    if found and len(found) == len(classes):  # --reject-class naming every class is refused for this, by name it went through
        raise ValueError(f"every class has a no-gesture name ({named}): the model could only answer \"no gesture\"; "
                         "add the gestures' folders, or pass --reject-class '' to train these as gestures")
    if found:
        return f"no gesture: {named} (a no-gesture name; --reject-class NAME to choose, '' for none)"
    return ("no gesture: no class has a no-gesture name (none, nothing, no_gesture, background, ...); a threshold alone "
            "rejects (--reject-class NAME to name one)")


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="python -m training.calibrate", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=checkpoint_arg("best.pt"), required=True, help="RUN/best.pt, or the run folder RUN (rewritten with the calibration)")
    add_rejection_args(p)
    p.add_argument("--workers", type=cli.workers, default=2, help="data-loading processes (0: decode in this process)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA when available")
    return p


def recalibrate(checkpoint: Path, requested: Sequence[str] | None, target_recall: float, *, device: str = "auto", workers: int = 2,
                score: str = DEFAULT_SCORE) -> dict[str, Any]:
    """Calibrate a run's checkpoint on its split.json; rewrites the checkpoint and RUN/metrics.json's open_set."""
    check_not_in_use(checkpoint.parent, "wait for it to end: it calibrates the best.pt it writes")  # which would replace this one
    ckpt = load_checkpoint(checkpoint)
    check_not_training_state(checkpoint, ckpt, f"{python_command()} -m training.calibrate --checkpoint")  # it rewrote the run's report from last.pt
    split_file = checkpoint.parent / "split.json"
    if not split_file.exists():
        raise DatasetError(f"{split_file} not found: calibration needs the run's validation split")
    splits = Splits.load(split_file)
    if splits.classes != list(ckpt["classes"]):
        raise DatasetError(f"{split_file} classes {splits.classes} differ from the checkpoint's {ckpt['classes']}")
    model = build_from_checkpoint(ckpt).eval()
    data_config = DataConfig.from_dict(ckpt["data_config"])
    splits = usable_splits(splits, split_file)
    if data_config.hands:  # the model learnt hand crops (--hands): calibrate on the same crops, from the cache
        splits, _ = hand_crop_splits(splits, HandCropCache(data_config))
        if not splits.val:
            raise DatasetError(f"no hand found in any validation image {split_file} lists: nothing to calibrate on")
    rejection, report = calibrate_model(model, ckpt["backbone"], splits, data_config, device=resolve_device(device),
                                        requested=requested, target_recall=target_recall, out=checkpoint.parent, workers=workers, score=score)
    ckpt["rejection"] = rejection.to_dict()
    ckpt["metrics"] = {**ckpt.get("metrics", {}), "open_set": report}
    # a calibration killed mid-save (kill -9, a power cut) left its temporary file, a checkpoint's size, in the run folder
    clear_partial_saves(checkpoint.parent, f".{glob.escape(checkpoint.name)}.*.tmp")
    atomic_torch_save(ckpt, checkpoint)
    metrics_file = checkpoint.parent / "metrics.json"
    if metrics_file.exists():
        write_json(metrics_file, {**json.loads(metrics_file.read_text()), "open_set": report})
    return report


def usable_splits(splits: Splits, split_file: Path) -> Splits:
    """``splits`` with the validation and test images that are missing or not images any more left out,
    each split's count and first such file said in a warning (they were skipped without a word, and the
    counts printed were the split file's); a DatasetError when no validation image is left to calibrate on."""
    if not splits.val:  # calibrate() would keep the old threshold and call the checkpoint calibrated
        raise DatasetError(f"{split_file} lists no validation images: nothing to calibrate on; train the run with a validation "
                           "split (--val-split above 0, or a val/ folder in a pre-split dataset)")
    check_split_readable(splits.val, "validation", split_file, f"put them back under {splits.root} to calibrate this run")
    val = usable(splits.val, "validation")
    if not val:
        raise DatasetError(f"none of the {len(splits.val):,} validation images {split_file} lists is an image any more "
                           f"(e.g. {splits.val[0].path}: {check_image_file(splits.val[0].path)}): nothing to calibrate on")
    return replace(splits, val=val, test=usable(splits.test, "test"))


def usable(samples: list[Sample], what: str) -> list[Sample]:
    """The samples whose files are there and read as images; one warning for the rest, naming the first."""
    reasons = [check_image_file(s.path) for s in samples]
    if skipped := [(s.path, reason) for s, reason in zip(samples, reasons, strict=True) if reason is not None]:
        warnings.warn(f"{len(skipped)} of the {len(samples)} {what} images skipped, e.g. {skipped[0][0]}: {skipped[0][1]}", stacklevel=3)
    return [s for s, reason in zip(samples, reasons, strict=True) if reason is None]


@command
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = recalibrate(args.checkpoint, args.reject_classes, args.reject_target_recall, device=args.device, workers=args.workers,
                         score=args.reject_score)
    print(format_open_set(report))
    print(f"calibrated {args.checkpoint}; report in {args.checkpoint.parent}/metrics.json (open_set) and open_set.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
