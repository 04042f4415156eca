"""Metrics, plots and the human-readable summary of a run (metrics.json, curves.png, confusion_matrix.png)."""

from __future__ import annotations

import csv
import functools
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gesture_core.checkpoint import atomic_output
from gesture_core.class_names import pad, terminal_width
from gesture_core.rejection import Rejection, softmax
from training.data import printable_path

# A class name in a script or an emoji that matplotlib's font lacks is drawn as a box in the plots;
# matplotlib warns once per figure and glyph, which says nothing a user can act on (``plottable`` writes them as escapes).
warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font", category=UserWarning)


@functools.cache
def plot_font() -> Any:
    """The font matplotlib draws the plots' text in (its default, DejaVu Sans unless configured)."""
    from matplotlib import font_manager

    return font_manager.get_font(font_manager.findfont(font_manager.FontProperties()))


def plottable(text: str) -> str:
    """``text`` with each character the plots' font has no glyph for written as its escape (手 as ``\\u624b``):
    matplotlib drew every such character as the same empty box, so classes named in CJK or emoji read as one
    name in confusion_matrix.png and the mistakes' captions."""
    font = plot_font()
    return "".join(c if c.isspace() or font.get_char_index(ord(c)) else c.encode("unicode_escape").decode("ascii") for c in text)


def classification_metrics(logits: np.ndarray, targets: np.ndarray, classes: Sequence[str], *,
                           no_answer: np.ndarray | None = None, no_answer_class: int | None = None) -> dict[str, Any]:
    """top-1/top-5 (fractions), per-class precision/recall/F1/support and the confusion matrix
    (rows: true class, columns: predicted).

    ``no_answer`` (optional): a mask of the images the model gave no answer for (hands mode: no hand
    found); their logits are ignored. Each counts as a prediction of ``no_answer_class`` (the "no
    gesture" class) in top-1 and top-5 when it is given, else as a miss for every class, kept out of
    the confusion matrix but in the support and the recall. The result then has a ``no_answer`` block.
    """
    n = len(classes)
    if len(targets) == 0:
        return {"top1": None, "top5": None, "n": 0, "per_class": {}, "confusion_matrix": np.zeros((n, n), int).tolist()}
    pred = logits.argmax(1)
    k = min(5, n)
    topk_hit = (np.argsort(-logits, axis=1)[:, :k] == targets[:, None]).any(1)
    missing = np.zeros(len(targets), bool) if no_answer is None else np.asarray(no_answer, bool)
    if missing.any():
        pred = np.where(missing, -1 if no_answer_class is None else no_answer_class, pred)
        topk_hit = np.where(missing, pred == targets, topk_hit)
    answered = pred >= 0
    cm = np.bincount(targets[answered] * n + pred[answered], minlength=n * n).reshape(n, n)
    unanswered = np.bincount(targets[~answered], minlength=n)  # counted as misses: in the support, not the matrix
    tp = np.diag(cm).astype(float)
    support = cm.sum(1) + unanswered
    precision = np.divide(tp, cm.sum(0), out=np.zeros(n), where=cm.sum(0) > 0)
    recall = np.divide(tp, support, out=np.zeros(n), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(n), where=(precision + recall) > 0)
    per_class = {
        c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
        for i, c in enumerate(classes)
    }
    metrics = {
        "top1": float((pred == targets).mean()),
        "top5": float(topk_hit.mean()),
        "n": int(len(targets)),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }
    if no_answer is not None:
        metrics["no_answer"] = {
            "n": int(missing.sum()),
            "counted_as": None if no_answer_class is None else classes[no_answer_class],
            "per_class": {c: int(count) for c, count in zip(classes, np.bincount(targets[missing], minlength=n), strict=True)},
        }
    return metrics


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as indented JSON, each list of numbers on one line: a confusion matrix a row per line (with a
    number per line, two of 2,000 classes made a metrics.json of 88 MB). Written whole or not at all: a run's
    metrics.json says it finished."""
    with atomic_output(path) as tmp:
        tmp.write_text(_indented(obj, 0) + "\n")


def save_figure(fig: Any, path: Path, dpi: int) -> None:
    """``fig`` as the PNG ``path``, whole or not at all: a Ctrl-C while saving left a 124-byte image."""
    with atomic_output(path, suffix=".tmp.png") as tmp:  # matplotlib picks the format by the suffix
        fig.savefig(tmp, dpi=dpi)


def _indented(obj: Any, depth: int) -> str:
    inner, outer = "  " * (depth + 1), "  " * depth
    if isinstance(obj, dict) and obj:
        items = (f"{inner}{json.dumps(str(key))}: {_indented(value, depth + 1)}" for key, value in obj.items())
        return "{\n" + ",\n".join(items) + f"\n{outer}}}"
    if isinstance(obj, (list, tuple)) and any(isinstance(item, (dict, list, tuple)) for item in obj):
        return "[\n" + ",\n".join(inner + _indented(item, depth + 1) for item in obj) + f"\n{outer}]"
    return json.dumps(obj)


# A spreadsheet reads a cell that begins with one of these as a formula ("=HYPERLINK(...)", "=cmd|' /C calc'!A0"):
# a class folder or file name so named ran it when predictions.csv was opened (OWASP's CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_cell(text: str) -> str:
    """``text`` as a CSV cell that a spreadsheet shows as text: one that would start a formula gets a leading
    apostrophe, as OWASP advises."""
    return f"'{text}" if text.startswith(FORMULA_STARTS) else text


def write_history(path: Path, history: list[dict[str, Any]]) -> None:
    if not history:
        return
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def read_history(path: Path) -> list[dict[str, str]]:
    """The rows ``write_history`` wrote, as text; [] for a missing or unreadable file."""
    try:
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def plot_curves(path: Path, history: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("train_loss", "train"), ("val_loss", "val")):
        ax_loss.plot(epochs, [h[key] for h in history], marker="o", label=label)
    for key, label in (("train_top1", "train"), ("val_top1", "val")):
        ax_acc.plot(epochs, [h[key] for h in history], marker="o", label=label)
    ax_loss.set(title="loss", xlabel="epoch")
    ax_acc.set(title="top-1 accuracy", xlabel="epoch", ylim=(0, 1.01))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


CONFUSION_MAX_INCHES = 24  # 2,640 px a side at 110 dpi
CONFUSION_MOST_NUMBERED = 40  # classes whose cells each show their count
CONFUSION_MOST_NAMED = 100  # classes whose names label the axes


def plot_confusion(path: Path, cm: Sequence[Sequence[int]], classes: Sequence[str], title: str = "test confusion matrix") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    n = len(classes)
    # Half an inch a class, up to a poster: 400 classes drew a 221x201-inch figure with a number in each of
    # its 160,000 cells, 3 minutes and 20 GB after training had ended (2,000 never finished).
    fig, ax = plt.subplots(figsize=(min(1.2 + 0.55 * n, CONFUSION_MAX_INCHES), min(1.0 + 0.5 * n, CONFUSION_MAX_INCHES)))
    ax.imshow(cm, cmap="Blues", interpolation="nearest")
    if n <= CONFUSION_MOST_NAMED:  # past it the names overlap into a black band
        names = [plottable(c) for c in classes]
        ax.set_xticks(range(n), names, rotation=45, ha="right")
        ax.set_yticks(range(n), names)
    ax.set(xlabel="predicted" + ("" if n <= CONFUSION_MOST_NAMED else f" (class index; {n} classes)"), ylabel="true", title=title)
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(n if n <= CONFUSION_MOST_NUMBERED else 0):
        for j in range(n):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=8, color="white" if cm[i, j] > threshold else "black")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


MISTAKES_SHOWN = 16  # in test_mistakes.png; metrics.json lists up to MISTAKES_LISTED
MISTAKES_LISTED = 100


def top_mistakes(samples: Sequence[Any], outputs: Any, classes: Sequence[str], rejection: Rejection) -> list[dict[str, Any]]:
    """The images of ``samples`` the model got wrong, the most confident mistake first (fastai's top losses).

    ``outputs`` is the split's SplitOutputs (logits, targets, and the index of each row in ``samples``);
    the probabilities are the calibrated ones the service reports (``rejection``'s temperature).
    A photo the model is sure belongs to another class may be a wrong label or a photo of nothing in
    particular (on flowers, 4-7 of 500 test photos: docs/training.md), so these are the first ones to
    look at before tuning for the last points."""
    if len(outputs.targets) == 0:
        return []
    paths = [samples[i].path for i in outputs.index]
    return rank_mistakes(paths, softmax(rejection.scale(outputs.logits)), outputs.targets, classes)


NO_HAND_FOUND = "no hand found"  # what a hands-mode mistake "predicted" when the model never saw a hand


def rank_mistakes(paths: Sequence[str], probs: np.ndarray, targets: np.ndarray, classes: Sequence[str],
                  no_hand: np.ndarray | None = None, no_hand_class: int | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """``top_mistakes`` on rows of probabilities. With ``no_hand`` (hands mode, one row per frame), a
    frame where no hand was found is a mistake unless its label is ``no_hand_class``, the "no gesture"
    class it counts as; it is listed after the confident mistakes, since it has no probability."""
    pred = probs.argmax(1)
    wrong = pred != targets
    if no_hand is not None:
        wrong = np.where(no_hand, targets != (-1 if no_hand_class is None else no_hand_class), wrong)
    confidence = probs[np.arange(len(pred)), pred] * (1 if no_hand is None else ~no_hand)
    order = np.flatnonzero(wrong)
    order = order[np.argsort(-confidence[order], kind="stable")][:MISTAKES_LISTED]
    return [{"path": paths[i], "true": classes[targets[i]], "predicted": NO_HAND_FOUND if no_hand is not None and no_hand[i] else classes[pred[i]],
             "probability": round(float(confidence[i]), 4)} for i in order]


def plot_mistakes(path: Path, mistakes: Sequence[dict[str, Any]]) -> Path | None:
    """test_mistakes.png: the first MISTAKES_SHOWN of ``top_mistakes``, each captioned true -> predicted."""
    shown = mistakes[:MISTAKES_SHOWN]
    # A file name that is not UTF-8 (its bytes as surrogates) made matplotlib raise, after the training.
    captions = [f"{printable_path(Path(m['path']).name)}\n{m['true']} -> {m['predicted']} ({m['probability']:.2f})" for m in shown]
    listed = f"{len(mistakes)} listed in metrics.json" if len(mistakes) == MISTAKES_LISTED else f"{len(mistakes)} in all"
    return plot_image_grid(path, [m["path"] for m in shown], captions, f"test mistakes, most confident first ({len(shown)} of {listed}): wrong labels show up here")


def plot_image_grid(path: Path, images: Sequence[str], captions: Sequence[str], title: str) -> Path | None:
    """Image files in a grid of four columns, each under its caption (None when there are none)."""
    if not images:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gesture_core.images import ImageDecodeError, read_rgb

    cols = min(4, len(images))
    rows = (len(images) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, captions, strict=False):
        try:
            ax.imshow(read_rgb(image))
        except (ImageDecodeError, OSError):  # moved or deleted since it was scored: keep the caption
            pass
        ax.set_title(plottable(caption), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)
    return path


def format_summary(metrics: dict[str, Any], title: str) -> str:
    """A per-class table plus totals, for the terminal."""
    lines = [title]
    if metrics.get("top1") is None:
        return "\n".join(lines + ["  (no images evaluated)"])
    width = max(8, *(terminal_width(c) for c in metrics["per_class"]))
    lines.append(f"  {'class':<{width}}  precision  recall     f1  support")
    for name, m in metrics["per_class"].items():
        lines.append(f"  {pad(name, width)}  {m['precision']:9.3f}  {m['recall']:6.3f}  {m['f1']:5.3f}  {m['support']:7d}")
    # With 5 classes or fewer every image is in its top 5: a "top-5 100.00%" there says nothing.
    top5 = f"   top-5 {metrics['top5']:.2%}" if len(metrics["per_class"]) > 5 else ""
    lines.append(f"  top-1 {metrics['top1']:.2%}{top5}   ({metrics['n']} images)")
    return "\n".join(lines)


def write_report(out: Path, metrics: dict[str, Any], classes: Sequence[str], *, split: str = "test") -> None:
    """The confusion matrix, then metrics.json: last, as it marks a run finished (training.finetune.run_finished)."""
    if metrics.get(split) and metrics[split].get("confusion_matrix"):
        plot_confusion(out / "confusion_matrix.png", metrics[split]["confusion_matrix"], classes, f"{split} confusion matrix")
    write_json(out / "metrics.json", metrics)
