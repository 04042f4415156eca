"""How well "no gesture" works on ../shared/data/asl-alphabet: the open-set table of docs/no-gesture.md.

    .venv/bin/python -m benchmarks.open_set --quick       # linear probe on cached features: minutes on 2 CPU cores
    .venv/bin/python -m benchmarks.open_set               # training.finetune's defaults (its backbone, 10 epochs)
    .venv/bin/python -m benchmarks.open_set --backbone efficientnet_lite0 --epochs 3 --image-size 128 --out runs/open-set

Two scenarios, each trained with the project's defaults for rejection (reject classes by name,
calibrated temperature and threshold):
- all29: every class (the letters, del, space, nothing); ``nothing`` is the reject class;
- open20: the letters A-T plus ``nothing``; U-Z, del and space are never learned and go to the
  open-set check (``training.evaluate --unknown``'s computation).
For each: top-1, gesture recall with and without the threshold, the false-accept rate on ``nothing``,
AUROC, ECE before/after calibration, the share of never-learned signs rejected, and the same rule
applied to three scores (max-softmax, energy, cosine to the class means of the backbone's features).

The frames come from videos, so neighbouring frames are near-duplicates: the splits are training's
own grouped splits (``--group-by auto`` finds the numbered frame sequences and holds out whole
blocks of frames), exactly what a user running ``training.finetune`` on this folder gets. open20
trains on a folder of links to the known classes' folders (in a temporary folder, never the data).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import check_input_size, csv_list, describe_machine, note
from benchmarks.rejection_scores import score_comparison
from gesture_core.cli import CommandParser, command
from training.calibrate import SplitOutputs
from training.cli import add_backbone_arg, image_size, int_at_least, seed, workers
from training.config import TrainConfig
from training.data import Splits
from training.finetune import train
from training.grouping import sequences
from training.open_set import format_score_table

REPO = Path(__file__).resolve().parents[1]
ASL = REPO.parent / "shared" / "data" / "asl-alphabet"
SCENARIOS = ("all29", "open20")  # every class; 20 learned and the other signs never seen
OPEN20_KNOWN = [chr(c) for c in range(ord("A"), ord("T") + 1)] + ["nothing"]
RECIPES = {
    "quick": dict(freeze="backbone", augment="none", epochs=10),  # a linear probe on cached features
    "full": dict(),  # training.finetune's defaults
}


def class_folder_links(source: Path, classes: list[str], dest: Path) -> Path:
    """dest/<class> -> source/<class> for each of ``classes``: an ImageFolder of a subset of the classes."""
    dest.mkdir(parents=True, exist_ok=True)
    for cls in classes:
        (dest / cls).symlink_to((source / cls).resolve(), target_is_directory=True)
    return dest


def unknown_folder(source: Path, known: list[str], dest: Path) -> Path:
    return class_folder_links(source, sorted(p.name for p in source.iterdir() if p.is_dir() and p.name not in known), dest)


def neighbour_check(splits: Splits, test: SplitOutputs) -> dict[str, Any]:
    """Test top-1 on the frames whose neighbour in their recording (running-number order) is a training
    frame, and on the others: the same accuracy on both means the grouped split leaks nothing through
    near-twin neighbours; a higher one next to training frames would mean it does."""
    split_of = {s.path: name for name in ("train", "val", "test") for s in getattr(splits, name)}
    by_class: dict[int, list[str]] = {}
    for name in ("train", "val", "test"):
        for s in getattr(splits, name):
            by_class.setdefault(s.label, []).append(s.path)
    beside_train = set()
    for label, paths in by_class.items():
        for frames in sequences(paths, splits.classes[label]).values():
            for i, path in enumerate(frames):
                neighbours = frames[max(i - 1, 0) : i] + frames[i + 1 : i + 2]
                if split_of[path] == "test" and any(split_of[n] == "train" for n in neighbours):
                    beside_train.add(path)
    correct = test.logits.argmax(1) == test.targets
    near = np.array([splits.test[i].path in beside_train for i in test.index])
    top1 = lambda mask: float(correct[mask].mean()) if mask.any() else None  # noqa: E731
    return {"beside_train": int(near.sum()), "top1_beside_train": top1(near), "others": int((~near).sum()), "top1_others": top1(~near)}


def run_scenario(name: str, data: Path, unknown: Path | None, recipe: dict[str, Any], out: Path, workers: int) -> dict[str, Any]:
    started = time.perf_counter()
    run = train(TrainConfig(data=str(data), out=str(out / name), workers=workers, **recipe))
    seconds = time.perf_counter() - started
    metrics = json.loads((run / "metrics.json").read_text())
    scores, splits, test = score_comparison(run, unknown, workers)
    return {"scenario": name, "classes": len(splits.classes), "train_seconds": round(seconds), "top1": metrics["test"]["top1"],
            "open_set": metrics["open_set"], "scores": scores, "neighbours": neighbour_check(splits, test)}


def format_open_set_table(results: list[dict[str, Any]]) -> str:
    pct = lambda x: "n/a" if x is None else f"{100 * x:.2f}%"  # noqa: E731
    lines = ["| scenario | classes | test top-1 | T | threshold | gesture recall (no threshold) | gesture recall | gesture precision | "
             "nothing false-accept (no threshold) | nothing false-accept | AUROC | ECE before -> after | never-learned signs rejected |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        o, t = r["open_set"], r["open_set"]["test"]
        # the score the run's threshold applies to (checkpoints from before the key thresholded max_softmax)
        shipped = next(s for s in r["scores"] if s["score"] == o.get("score", "max_softmax"))
        lines.append(f"| {r['scenario']} | {r['classes']} | {pct(r['top1'])} | {o['temperature']:.3f} | {o['threshold']:.4f} | "
                     f"{pct(t['gesture_recall_unthresholded'])} | {pct(t['gesture_recall'])} | {pct(t['gesture_precision'])} | "
                     f"{pct(t['false_accept_rate_unthresholded'])} | {pct(t['false_accept_rate'])} | {t['auroc']:.4f} | "
                     f"{pct(t['ece_before'])} -> {pct(t['ece_after'])} | {pct(shipped.get('unknown_rejection_rate'))} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="python -m benchmarks.open_set", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="linear probe on cached features (minutes) instead of a fine-tune")
    add_backbone_arg(p, default=TrainConfig.backbone)  # training.finetune's default, so that the table shows what the defaults give
    p.add_argument("--epochs", type=int_at_least(1), default=None, help="passes over the training images (default: training.finetune's)")
    p.add_argument("--image-size", type=image_size, default=None, help="input size (default: the backbone's)")
    p.add_argument("--scenarios", type=csv_list(str, SCENARIOS), default=list(SCENARIOS), help=f"comma-separated: {', '.join(SCENARIOS)}")
    p.add_argument("--data", type=Path, default=ASL, help="the asl-alphabet folder")
    p.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    p.add_argument("--seed", type=seed, default=0, help="training.finetune's --seed: another split and initialisation")
    p.add_argument("--workers", type=workers, default=2)
    p.add_argument("--json", action="store_true", help="one JSON line per scenario instead of tables")
    return p


@command
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_input_size(parser, [args.backbone], args.image_size)
    if not args.data.is_dir():
        print(f"error: {args.data} not found (the asl-alphabet set lives in ../shared/data)", file=sys.stderr)
        return 2
    recipe = dict(RECIPES["quick" if args.quick else "full"])
    recipe.update({key: value for key, value in (("epochs", args.epochs), ("image_size", args.image_size)) if value is not None},
                  backbone=args.backbone, seed=args.seed)
    note(f"{describe_machine()}; recipe {recipe}")
    results = []
    with tempfile.TemporaryDirectory(prefix="open-set-") as tmp:
        # with --out, the split folders stay beside the runs, so training.evaluate can use their split.json later
        work, out = (args.out / "data", args.out) if args.out else (Path(tmp), Path(tmp) / "runs")
        for name in args.scenarios:
            if name == "all29":
                data, unknown = args.data, None
            else:
                data, unknown = class_folder_links(args.data, OPEN20_KNOWN, work / "open20"), unknown_folder(args.data, OPEN20_KNOWN, work / "unknown")
            result = run_scenario(name, data, unknown, recipe, out, args.workers)
            results.append(result)
            if args.json:
                print(json.dumps(result), flush=True)
    if not args.json:
        print(format_open_set_table(results))
        print("\n| scenario | test frames next to a training frame | their top-1 | other test frames | their top-1 |\n| --- | ---: | ---: | ---: | ---: |")
        for r in results:
            n = r["neighbours"]
            pct = lambda x: "n/a" if x is None else f"{100 * x:.2f}%"  # noqa: E731
            print(f"| {r['scenario']} | {n['beside_train']} | {pct(n['top1_beside_train'])} | {n['others']} | {pct(n['top1_others'])} |")
        for r in results:
            print(f"\n{r['scenario']}: the threshold rule applied to each score (test split; never-learned signs where given)\n{format_score_table(r['scores'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
