"""Re-evaluate a checkpoint on its run's saved test split, or on any ImageFolder.

    python -m training.evaluate --checkpoint runs/sign-digits-efficientnet_lite0/best.pt
    python -m training.evaluate --checkpoint RUN/best.pt --data path/to/folder --out eval/

Uses the checkpoint's own Preprocess (``load_classifier``), exactly as the service does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gesture_core.checkpoint import CheckpointError, Classifier, load_classifier
from training import cli
from training.augment import build_eval_transform
from training.data import DatasetError, ImageDataset, Sample, Splits, load_folder, make_loader
from training.engine import predict_logits
from training.report import classification_metrics, format_summary, write_report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", type=cli.existing_file, required=True, help="RUN/best.pt")
    p.add_argument("--data", default=None, help="ImageFolder to evaluate as a whole (default: the run's saved test split)")
    p.add_argument("--split", choices=("test", "val", "train"), default="test", help="which saved split, without --data")
    p.add_argument("--out", default=None, help="report folder (default: RUN/eval-<split or folder name>)")
    p.add_argument("--batch-size", type=cli.int_at_least(1), default=64)
    p.add_argument("--workers", type=cli.int_at_least(0), default=2)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    return p


def select_samples(checkpoint: Path, classes: list[str], data: str | None, split: str) -> tuple[list[Sample], list[dict[str, str]], str]:
    """(samples, skipped files, name) for a folder, or for the run's saved split."""
    if data is not None:
        samples, skipped = load_folder(data, classes)
        return samples, skipped, Path(data).name
    split_file = checkpoint.parent / "split.json"
    if not split_file.exists():
        raise DatasetError(f"{split_file} not found: pass --data FOLDER to evaluate on a folder")
    splits = Splits.load(split_file)
    if splits.classes != classes:
        raise DatasetError(f"{split_file} classes {splits.classes} differ from the checkpoint's {classes}")
    return getattr(splits, split), [], split


def evaluate_samples(classifier: Classifier, samples: list[Sample], *, batch_size: int = 64, workers: int = 2) -> tuple[dict[str, Any], list[str]]:
    """(metrics, paths that failed to decode) for labelled samples, through the checkpoint's Preprocess."""
    dc = classifier.data_config
    dataset = ImageDataset(samples, build_eval_transform(dc), min_side=dc.resize_size, placeholder_shape=(dc.in_chans, dc.input_size, dc.input_size))
    loader = make_loader(dataset, batch_size=batch_size, workers=workers, pin_memory=classifier.device.type == "cuda")
    logits, targets, failed = predict_logits(classifier.model, loader, classifier.device)
    return classification_metrics(logits, targets, classifier.classes), [samples[i].path for i in failed]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        classifier = load_classifier(args.checkpoint, args.device)
        samples, skipped, name = select_samples(args.checkpoint, classifier.classes, args.data, args.split)
        if not samples:
            raise DatasetError(f"no images to evaluate in {name}")
        metrics, failed = evaluate_samples(classifier, samples, batch_size=args.batch_size, workers=args.workers)
    except (CheckpointError, DatasetError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else args.checkpoint.parent / f"eval-{name}"
    out.mkdir(parents=True, exist_ok=True)
    skipped += [{"path": p, "reason": "failed to decode"} for p in failed]
    report = {"backbone": classifier.backbone, "classes": classifier.classes, "checkpoint": str(args.checkpoint), "data": name, "test": metrics, "skipped": skipped}
    write_report(out, report, classifier.classes)
    print(format_summary(metrics, f"{classifier.backbone} on {name}:"))
    if skipped:
        print(f"{len(skipped)} file(s) skipped (listed in {out / 'metrics.json'})")
    print(f"report in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
