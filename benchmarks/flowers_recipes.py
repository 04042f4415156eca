"""Flowers recipes for efficientnet_lite0, run one after another on the classic split (100 test photos
per class), with one table at the end: best validation top-1 (what a recipe is chosen by), its epoch,
test top-1 and wall time. v3-trainval trains on train+val and keeps its last epoch, so it has no
validation score.

    .venv/bin/python -m benchmarks.flowers_recipes --device cuda --workers 12
    .venv/bin/python -m benchmarks.flowers_recipes --only v3 --device cpu --workers 1

Each recipe is a plain ``python -m training.finetune`` command (printed), so any row can be re-run alone.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from benchmarks.common import csv_list, emit, note
from benchmarks.recipes import run_finetune
from gesture_core.cli import CommandParser, command
from gesture_core.runtime import DEVICES
from training.cli import int_at_least, seed, workers

REPO = Path(__file__).resolve().parents[1]
COMMON = ["--backbone", "efficientnet_lite0", "--head-epochs", "1", "--lr", "2e-3", "--backbone-lr-mult", "0.3"]
RECIPES = {  # label smoothing is 0.1 in all of them (the default)
    "v3": ["--image-size", "256", "--epochs", "12"],
    "v3-trainval": ["--image-size", "256", "--epochs", "12", "--val-split", "0"],  # the published flowers recipe (docs/training.md): no val, last epoch
    "v3-ema": ["--image-size", "256", "--epochs", "12", "--ema-decay", "0.998"],
    "256px-20ep": ["--image-size", "256", "--epochs", "20"],
    "256px-30ep": ["--image-size", "256", "--epochs", "30"],
    "288px-25ep": ["--image-size", "288", "--epochs", "25"],
    "320px-20ep": ["--image-size", "320", "--epochs", "20"],
    "256px-40ep-b64": ["--image-size", "256", "--epochs", "40", "--batch-size", "64", "--lr", "3e-3"],
}
COLUMNS = [
    ("recipe", "recipe", "s"), ("best_val_top1", "best val top-1", ".2%"), ("best_epoch", "best epoch", "d"),
    ("test_top1", "test top-1", ".2%"), ("test_errors", "test errors", "d"), ("wall_s", "wall s", ".0f"), ("flags", "flags", "s"),
]  # fmt: skip


def run_recipe(name: str, args) -> dict:
    out = args.out / name
    command = [sys.executable, "-m", "training.finetune", "--data", str(args.data), *COMMON, *RECIPES[name],
               "--test-per-class", str(args.test_per_class), "--device", args.device, "--workers", str(args.workers), "--seed", str(args.seed), "--out", str(out)]  # fmt: skip
    metrics, wall = run_finetune(command, out, quiet=args.quiet)  # a finished run is read back, an interrupted one resumed
    history = list(csv.DictReader((out / "history.csv").open()))
    scored = [float(r["val_top1"]) for r in history if r["val_top1"]]  # empty without a validation split
    best_val = max(scored) if scored else None
    return {"recipe": name, "best_val_top1": best_val, "best_epoch": metrics["best_epoch"], "test_top1": metrics["test"]["top1"],
            "test_errors": round((1 - metrics["test"]["top1"]) * metrics["test"]["n"]), "wall_s": wall,
            "flags": " ".join(RECIPES[name]), "device": args.device}  # fmt: skip


@command
def main(argv: list[str] | None = None) -> int:
    p = CommandParser(prog="python -m benchmarks.flowers_recipes", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "flowers")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "flowers-recipes")
    p.add_argument("--only", type=csv_list(str, RECIPES), default=list(RECIPES), help=f"comma-separated, from: {', '.join(RECIPES)}")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--workers", type=workers, default=2)
    p.add_argument("--seed", type=seed, default=0, help="also fixes the split: keep 0 to compare with docs/training.md")
    p.add_argument("--test-per-class", type=int_at_least(1), default=100, help="the classic split: 100 (as in docs/training.md)")
    p.add_argument("--quiet", action="store_true", help="hide each run's own output")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    args = p.parse_args(argv)
    if not args.data.is_dir():
        p.error(f"--data {args.data}: not a folder (the flowers photos, e.g. ../shared/data/flowers)")
    rows = []
    for name in args.only:
        rows.append(run_recipe(name, args))
        if args.json:
            emit(rows[-1:], COLUMNS, as_json=True)
        else:
            note(f"  {name}: {rows[-1]}")
    if not args.json:
        emit(rows, COLUMNS, as_json=False, title=f"Flowers, efficientnet_lite0, 100 test photos per class ({args.device})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
