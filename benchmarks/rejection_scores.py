"""Which rejection score turns away the most: max-softmax, energy and the feature score on a trained run.

    .venv/bin/python -m benchmarks.rejection_scores --run runs/open-set-lite1-open20/open20 --unknown runs/open-set-lite1-open20/data/unknown
    .venv/bin/python -m benchmarks.rejection_scores --run runs/open-set-lite1-seed0/all29 --unknown ../shared/data/flowers

For each score, on the run's own split (its split.json): the threshold the product's rule chooses on
validation, and what it keeps and turns away on the test split and on ``--unknown`` (images the
model never learned, in any layout: other gestures, or scenes without a hand). Where each rule lands depends on a
few validation images, so the table also compares the scores at one cost: the share of ``--unknown``
turned away when each score's threshold turns away 1% of the correctly classified test gestures.
Features come from the feature cache, so a run that benchmarks.open_set or training.evaluate already
saw takes seconds.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from benchmarks.common import describe_machine, note
from gesture_core import load_classifier
from gesture_core.cli import CommandParser, command
from training.calibrate import DEFAULT_TARGET_RECALL, SplitOutputs
from training.cli import workers
from training.data import DatasetError, Splits
from training.open_set import compare_scores, format_score_table, outputs_of, unknown_samples


def score_comparison(run: Path, unknown: Path | None, workers: int = 2) -> tuple[list[dict[str, Any]], Splits, SplitOutputs]:
    """compare_scores' rows for the run in ``run``, and its splits and test outputs for further checks."""
    classifier = load_classifier(run / "best.pt", device="cpu", engine="torch")
    splits = Splits.load(run / "split.json")
    outputs = {split: outputs_of(classifier, getattr(splits, split), workers=workers, desc=f"{run.name} {split}") for split in ("train", "val", "test")}
    unknown_outputs = outputs_of(classifier, unknown_samples(unknown), workers=workers, desc=f"{run.name} unknown") if unknown else None
    rows = compare_scores(outputs["train"], outputs["val"], outputs["test"], unknown_outputs, classifier.classes, classifier.rejection,
                          classifier.train_config.get("reject_target_recall", DEFAULT_TARGET_RECALL))
    return rows, splits, outputs["test"]


@command
def main(argv: list[str] | None = None) -> int:
    p = CommandParser(prog="python -m benchmarks.rejection_scores", description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, required=True, help="a training run's folder (best.pt and split.json)")
    p.add_argument("--unknown", type=Path, default=None, help="images the model never learned, in any layout (loose, or one folder per kind)")
    p.add_argument("--workers", type=workers, default=2)
    args = p.parse_args(argv)
    missing = [str(path) for path in (args.run / "best.pt", args.run / "split.json", args.unknown) if path is not None and not path.exists()]
    if missing:
        print(f"error: {', '.join(missing)} not found (--run needs a finished run's best.pt and split.json)", file=sys.stderr)
        return 2
    note(describe_machine())
    try:
        rows, _, _ = score_comparison(args.run, args.unknown, args.workers)
    except DatasetError as err:  # e.g. an --unknown folder without images
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_score_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
