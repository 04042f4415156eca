"""Open-set checks of a calibrated checkpoint: its rejection on labelled images, on gestures it never
learned (``training.evaluate --unknown DIR``), and the comparison of rejection scores.

Every number here uses the same decision as the service: the checkpoint's temperature, reject classes
and threshold (``gesture_core.rejection``), on features and logits from ``training.calibrate.split_outputs``
(cached, so evaluating the split that training calibrated on costs no second pass).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gesture_core.classifier import Classifier
from gesture_core.rejection import Rejection
from training.calibrate import (
    SCORES,
    Outcome,
    SplitOutputs,
    acceptance_scores,
    auroc,
    choose_threshold,
    format_open_set,
    gesture_means,
    operating_point,
    product_scores,
    ranked,
    split_outputs,
)
from training.data import Sample, scan_images
from training.report import plot_image_grid, spreadsheet_cell
from training.served import served_outputs

WORST_CASES = 12
# compare_scores' like-for-like column: every score's threshold set where it turns away this share of
# the correctly classified test gestures, so scores compare at one cost instead of where each rule landed
MATCHED_COST = 0.01


def outputs_of(classifier: Classifier, samples: Sequence[Sample], *, workers: int = 2, desc: str = "open-set") -> SplitOutputs:
    """Features and logits through the feature cache, with the features whatever the model's own score: what
    ``compare_scores`` needs to compare every score (the product's answers come from ``served_outputs``)."""
    return split_outputs(classifier.model, classifier.backbone, samples, classifier.data_config, device=classifier.device, workers=workers, desc=desc)


def unknown_samples(folder: str | Path, skipped: list[dict[str, str]] | None = None) -> list[Sample]:
    """Every image under ``folder``, in any layout (one folder per unknown gesture, or the images
    themselves); files that are not valid images go to ``skipped``. Their label is a placeholder 0
    (-1 marks an image that failed to decode); nothing reads it. DatasetError when there is no image."""
    return [Sample(path, 0) for path in scan_images(Path(folder), [] if skipped is None else skipped)]


def write_predictions(path: Path, classifier: Classifier, samples: Sequence[Sample], outputs: SplitOutputs, threshold: float) -> Path:
    """One row per image: its path, true class, the label the service would answer (empty: rejected) and score."""
    scores = classifier.scores_from_logits(outputs.logits, outputs.features)
    # surrogateescape: a file name that is not UTF-8 is written back as the bytes it has on disk
    with path.open("w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "true", "label", "top_class", "score", "gesture_score"])
        for row, index in enumerate(outputs.index):
            decided = classifier.decide(scores[row], k=1, threshold=threshold)
            names = [samples[index].path, classifier.classes[samples[index].label], decided.label or "", decided.top_k[0][0]]
            writer.writerow([*map(spreadsheet_cell, names), f"{decided.score:.6f}", "" if decided.gesture_score is None else f"{decided.gesture_score:.6f}"])
    return path


def unknown_report(classifier: Classifier, known: SplitOutputs, unknown: SplitOutputs, threshold: float) -> dict[str, Any]:
    """How many images of never-learned gestures are rejected at ``threshold``, and how well the score
    separates them from the known gestures (AUROC)."""
    rejection: Rejection = classifier.rejection
    reject = classifier.reject_indices
    known_scores = product_scores(known, rejection, reject)
    known_gestures = known_scores[~np.isin(known.targets, reject)]
    scores = product_scores(unknown, rejection, reject)
    return {"images": int(len(scores)), "threshold": threshold, "rejected": int((scores < threshold).sum()),
            "rejection_rate": float((scores < threshold).mean()) if len(scores) else None,
            "auroc_known_vs_unknown": auroc(known_gestures, scores)}


def plot_worst_cases(path: Path, classifier: Classifier, samples: Sequence[Sample], unknown: SplitOutputs, threshold: float) -> Path | None:
    """The unknown images the model accepted most confidently, with the label it gave them."""
    scores = product_scores(unknown, classifier.rejection, classifier.reject_indices)
    worst = [i for i in np.argsort(-scores)[:WORST_CASES] if scores[i] >= threshold]
    images = [samples[unknown.index[i]].path for i in worst]
    captions = [f"{Path(p).parent.name}/{Path(p).name}\nseen as {classifier.classes[unknown.logits[i].argmax()]} ({scores[i]:.3f})"
                for p, i in zip(images, worst, strict=True)]
    return plot_image_grid(path, images, captions, f"images of no learned class accepted most confidently (threshold {threshold:.3f})")


def compare_scores(train: SplitOutputs, val: SplitOutputs, test: SplitOutputs, unknown: SplitOutputs | None, classes: Sequence[str],
                   rejection: Rejection, target_recall: float) -> list[dict[str, Any]]:
    """One row per score: its threshold chosen on validation by the same rule as the shipped one, and on
    the test split and the unknown images, how it separates gestures from the rest (AUROC) and what it
    accepts and rejects at that threshold."""
    reject = [list(classes).index(c) for c in rejection.reject_classes]
    means = gesture_means(train, len(classes), reject)
    rows = []
    for kind in SCORES:
        scored = Rejection(rejection.reject_classes, rejection.temperature, score=kind, feature_means=means if kind == "feature_cosine" else ())
        if kind == "energy_and_feature":  # no single raw score: the product's ranks, set on validation
            scored = ranked(scored, val, train, classes, reject)
            score = lambda outputs: product_scores(outputs, scored, reject)  # noqa: E731, B023
        else:
            score = lambda outputs: acceptance_scores(outputs, scored, reject)  # noqa: E731, B023
        val_scores = score(val)
        floor = 0.0 if kind in ("max_softmax", "energy_and_feature") else float(val_scores[np.isfinite(val_scores)].min())
        threshold, _ = choose_threshold(Outcome.of(val_scores, val, reject), target_recall, floor)
        outcome = Outcome.of(score(test), test, reject)
        at = outcome.at(np.array([threshold]))
        row = {"score": kind, "threshold": threshold, "test_gesture_recall": float(at["recall"][0]),
               "test_false_accept_rate": None if np.isnan(at["false_accept"][0]) else float(at["false_accept"][0]),
               "test_auroc_reject": auroc(outcome.scores[outcome.gesture], outcome.scores[~outcome.gesture])}
        if unknown is not None:
            unknown_scores = score(unknown)
            row |= {"unknown_rejection_rate": float((unknown_scores < threshold).mean()),
                    "unknown_rejection_rate_at_matched_cost": float((unknown_scores < matched_threshold(outcome)).mean()),
                    "auroc_known_vs_unknown": auroc(outcome.scores[outcome.gesture], unknown_scores)}
        rows.append(row)
    return rows


def matched_threshold(outcome: Outcome, cost: float = MATCHED_COST) -> float:
    """The score below which ``cost`` of the correctly classified gesture images fall (chosen on the
    split it is measured on: a like-for-like comparison of scores, not a threshold to ship)."""
    correct = np.sort(outcome.scores[outcome.correct_gesture])
    return float(correct[int(cost * len(correct))]) if len(correct) else float("inf")


def format_score_table(rows: list[dict[str, Any]]) -> str:
    pct = lambda x: "n/a" if x is None else f"{100 * x:.2f}%"  # noqa: E731
    num = lambda x: "n/a" if x is None else f"{x:.4f}"  # noqa: E731
    lines = ["| score | gesture recall | false-accept (reject class) | AUROC vs reject class | unknown rejected | "
             f"unknown rejected when {100 * MATCHED_COST:g}% of correct gestures are | AUROC vs unknown |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['score']} | {pct(r['test_gesture_recall'])} | {pct(r['test_false_accept_rate'])} | {num(r['test_auroc_reject'])} | "
                     f"{pct(r.get('unknown_rejection_rate'))} | {pct(r.get('unknown_rejection_rate_at_matched_cost'))} | "
                     f"{num(r.get('auroc_known_vs_unknown'))} |")
    return "\n".join(lines)


def evaluate_open_set(classifier: Classifier, samples: Sequence[Sample], *, threshold: float | None, out: Path, workers: int = 2,
                      unknown: tuple[str, Sequence[Sample]] | None = None, data: str = "test",
                      known: SplitOutputs | None = None) -> tuple[dict[str, Any], SplitOutputs]:
    """(evaluate's open_set section, the outputs of ``samples``): the rejection on ``samples`` (and
    predictions.csv), and with ``unknown`` (a folder and its images, ``unknown_samples``) the rejection of
    never-learned gestures (and unknown_worst.png). ``data`` names ``samples`` in the lines printed.
    ``known``: the outputs of ``samples`` where the caller has them (``served_outputs``), so they are read once.
    Both come from the Classifier itself, as the service's answers do."""
    rejection = classifier.rejection
    if note := rejection.override_note(threshold):
        print(f"note: {note}")
    chosen = {} if threshold is None else {"threshold_from": "--threshold"}  # the report says whose threshold it is
    threshold = rejection.threshold_or(threshold)
    known = known if known is not None else served_outputs(classifier, list(samples), workers=workers)[0]
    if len(known.targets) == 0:
        return {**rejection.info(), "threshold": threshold, **chosen, "test": {"n": 0}}, known  # every image failed to decode: reported as skipped
    write_predictions(out / "predictions.csv", classifier, samples, known, threshold)
    report = {**rejection.info(), "threshold": threshold, **chosen, "test": operating_point(known, rejection, classifier.classes, threshold)}
    print(format_open_set(report, data))
    if unknown is not None:
        unknown_dir, unknown_list = unknown
        decoded, _ = served_outputs(classifier, list(unknown_list), workers=workers)
        report["unknown"] = {"folder": str(unknown_dir), **unknown_report(classifier, known, decoded, threshold),
                             "failed_to_decode": [unknown_list[i].path for i in sorted(set(range(len(unknown_list))) - set(decoded.index.tolist()))]}
        worst = plot_worst_cases(out / "unknown_worst.png", classifier, unknown_list, decoded, threshold)
        print(format_unknown(report["unknown"], threshold) + (f"; most confident accepts in {worst}" if worst else ""))
    return report, known


def format_unknown(unknown: dict[str, Any], threshold: float, detail: str = "") -> str:
    """The line ``--unknown`` prints: how many never-learned gestures were answered "no gesture"."""
    rate = "n/a" if unknown["rejection_rate"] is None else f"{100 * unknown['rejection_rate']:.2f}%"
    # "never-learned gestures" read oddly for the usual folder: photos of anything but gestures (flowers)
    return (f"images of no learned class in {unknown['folder']}: {unknown['rejected']} of {unknown['images']} answered "
            f"'no gesture' ({rate}{detail}) at threshold {threshold:.4f}")
