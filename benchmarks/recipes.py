"""The recipe sweep behind training.finetune's defaults: datasets x epoch budgets x backbones x recipes,
each a plain ``python -m training.finetune`` run, with one table of test top-1 at the end (JSON and
markdown) and each recipe's gap to the best one found for that dataset, budget and backbone; a second
table sets what a run with no flags gets against the best run of any backbone and recipe (issue 14's
criterion).

    .venv/bin/python -m benchmarks.recipes                      # the full sweep (hours on a GPU, days on 2 cores)
    .venv/bin/python -m benchmarks.recipes --datasets sign-digits --budgets 3 --recipes defaults,flip-off
    .venv/bin/python -m benchmarks.recipes --quick              # a few images per class, 1 epoch, 64 px: minutes

Resumable: a finished run (its metrics.json as new as its last.pt) is read, not repeated, and an
interrupted one is resumed, so an interrupted sweep continues where it stopped (delete OUT/runs/<run>
to redo one). Results go to OUT/recipes.json and OUT/recipes.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import csv_list, describe_machine, note
from gesture_core.cli import CommandParser, command
from gesture_core.runtime import DEVICES
from training.cli import backbone_name, int_at_least, seed, workers
from training.config import TrainConfig
from training.finetune import run_finished

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# Per dataset, what every recipe shares: the resolution of the issue's commands, and flowers' classic split.
DATASETS = {
    "sign-digits": ["--image-size", "160"],
    "flowers": ["--test-per-class", "100"],
    "asl-alphabet": ["--image-size", "160"],
}
BUDGETS = (3, 10)
BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
RECIPES = {  # flags on top of the defaults; "defaults" adds none
    "defaults": [],
    "old-defaults": ["--lr", "1e-3", "--backbone-lr-mult", "0.1", "--warmup-epochs", "1", "--flip", "on", "--crop", "center", "--amp", "off"],
    "head-first": ["--head-epochs", "1"],
    "lr-1e-3": ["--lr", "1e-3"],
    "backbone-mult-0.1": ["--backbone-lr-mult", "0.1"],
    "flip-off": ["--flip", "off"],
    "flip-on": ["--flip", "on"],
    "crop-resize": ["--crop", "resize"],  # the whole frame everywhere (auto keeps it for wide recordings only)
    "fp32": ["--amp", "off"],
    "ema": ["--ema-decay", "0.998"],
}
QUICK = {"per_class": 6, "budgets": (1,), "backbones": ("efficientnet_lite0",), "recipes": ("defaults", "old-defaults"), "flags": ["--image-size", "64"]}


def run_key(dataset: str, budget: int, backbone: str, recipe: str) -> str:
    return f"{dataset}-{budget}ep-{backbone}-{recipe}"


def finetune_command(data: Path, budget: int, backbone: str, recipe: str, dataset_flags: list[str], args) -> list[str]:
    return [sys.executable, "-m", "training.finetune", "--data", str(data), "--epochs", str(budget), "--backbone", backbone,
            *dataset_flags, *RECIPES[recipe], "--seed", str(args.seed), "--workers", str(args.workers), "--device", args.device]  # fmt: skip


def run_one(data: Path, dataset: str, budget: int, backbone: str, recipe: str, dataset_flags: list[str], args) -> dict:
    """One finetune run (or its stored result): the table row."""
    out = args.out / "runs" / run_key(dataset, budget, backbone, recipe)
    command = finetune_command(data, budget, backbone, recipe, dataset_flags, args) + ["--out", str(out)]
    metrics, wall = run_finetune(command, out, quiet=args.quiet)
    return {"dataset": dataset, "budget": budget, "backbone": backbone, "recipe": recipe, "test_top1": metrics["test"]["top1"],
            "val_top1": (metrics.get("val") or {}).get("top1"), "best_epoch": metrics["best_epoch"], "wall_s": wall,
            "flags": shlex.join(RECIPES[recipe])}  # fmt: skip


def run_finetune(command: list[str], out: Path, *, quiet: bool = False) -> tuple[dict, float | None]:
    """(metrics.json, wall seconds) of ``command`` writing to ``out``; read back, not rerun, when out holds
    a finished run, and resumed where it holds an interrupted one (``training.finetune.run_finished``)."""
    metrics_file, wall_file = out / "metrics.json", out / "wall_s.txt"
    if run_finished(out):  # not merely a metrics.json: a run trained further and interrupted has an older one
        note(f"reusing {out}")
    else:
        if (out / "last.pt").exists():  # the wall time is then the resumed part's
            command = [*command[:command.index("training.finetune") + 1], "--resume", str(out)]
        note("$ " + shlex.join(command))
        started = time.perf_counter()
        subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL if quiet else None)
        wall_file.write_text(f"{time.perf_counter() - started:.1f}\n")
    return json.loads(metrics_file.read_text()), float(wall_file.read_text()) if wall_file.exists() else None


def with_gaps(rows: list[dict]) -> list[dict]:
    """Each row's test top-1 gap to the best recipe of its (dataset, budget, backbone), in points."""
    best: dict[tuple, float] = {}
    for r in rows:
        key = (r["dataset"], r["budget"], r["backbone"])
        best[key] = max(best.get(key, 0.0), r["test_top1"])
    return [{**r, "gap_to_best_pt": round(100 * (r["test_top1"] - best[(r["dataset"], r["budget"], r["backbone"])]), 2)} for r in rows]


def markdown_table(rows: list[dict], recipes: list[str]) -> str:
    """One line per dataset, budget and backbone; one column of test top-1 per recipe; the winner and the defaults' gap."""
    cells: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        cells.setdefault((r["dataset"], r["budget"], r["backbone"]), {})[r["recipe"]] = r
    lines = ["| dataset | epochs | backbone | " + " | ".join(recipes) + " | best | defaults - best |",
             "|---|---:|---|" + "---:|" * len(recipes) + "---|---:|"]  # fmt: skip
    for (dataset, budget, backbone), by_recipe in cells.items():
        scores = [f"{by_recipe[n]['test_top1']:.2%}" if n in by_recipe else "" for n in recipes]
        winner = max(by_recipe.values(), key=lambda r: r["test_top1"])
        gap = f"{by_recipe['defaults']['gap_to_best_pt']:+.2f} pt" if "defaults" in by_recipe else ""
        lines.append(f"| {dataset} | {budget} | {backbone} | " + " | ".join(scores) + f" | {winner['recipe']} | {gap} |")
    return "\n".join(lines) + "\n"


def defaults_table(rows: list[dict], default_backbone: str) -> str:
    """Issue 14's criterion, one line per dataset and budget: what a run with no flags gets (the
    default backbone's ``defaults``) against the best of every backbone and recipe that ran."""
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        cells.setdefault((r["dataset"], r["budget"]), []).append(r)
    lines = [f"| dataset | epochs | no flags ({default_backbone}) | best run | its backbone and recipe | no flags - best |",
             "|---|---:|---:|---:|---|---:|"]
    for (dataset, budget), runs in cells.items():
        best = max(runs, key=lambda r: r["test_top1"])
        plain = next((r for r in runs if r["backbone"] == default_backbone and r["recipe"] == "defaults"), None)
        ours, gap = (f"{plain['test_top1']:.2%}", f"{100 * (plain['test_top1'] - best['test_top1']):+.2f} pt") if plain else ("not run", "")
        lines.append(f"| {dataset} | {budget} | {ours} | {best['test_top1']:.2%} | {best['backbone']} {best['recipe']} | {gap} |")
    return "\n".join(lines) + "\n"


def quick_subset(source: Path, dest: Path, per_class: int) -> Path:
    """DEST/<class>/ with symlinks to the first ``per_class`` images of each class of SOURCE (nothing copied)."""
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        target = dest / folder.name
        target.mkdir(parents=True, exist_ok=True)
        for image in sorted(p for p in folder.iterdir() if p.is_file())[:per_class]:
            link = target / image.name
            if not link.exists():
                link.symlink_to(image.resolve())
    return dest


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="python -m benchmarks.recipes", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", type=Path, default=SHARED_DATA, help="folder holding the datasets, one sub-folder each")
    p.add_argument("--datasets", type=csv_list(), default=list(DATASETS), help="comma-separated sub-folders of --data-root")
    p.add_argument("--budgets", type=csv_list(int_at_least(1)), default=list(BUDGETS), help="comma-separated epoch budgets")
    p.add_argument("--backbones", type=csv_list(backbone_name), default=list(BACKBONES), help="comma-separated backbones")
    p.add_argument("--recipes", type=csv_list(str, RECIPES), default=list(RECIPES), help=f"comma-separated, from: {', '.join(RECIPES)}")
    p.add_argument("--quick", action="store_true", help=f"{QUICK['per_class']} images per class, 1 epoch, 64 px, lite0, two recipes")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "recipes", help="run folders and the tables")
    p.add_argument("--device", choices=DEVICES, default="auto", help="passed to every run")
    p.add_argument("--workers", type=workers, default=2, help="data-loading processes per run")
    p.add_argument("--seed", type=seed, default=0, help="also fixes each dataset's split")
    p.add_argument("--quiet", action="store_true", help="hide each run's own output")
    return p


@command
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    missing = [d for d in args.datasets if not (args.data_root / d).is_dir()]
    if missing:
        parser.error(f"not a folder under --data-root {args.data_root}: {', '.join(missing)} (expected e.g. {', '.join(DATASETS)})")
    if args.quick:
        args.budgets, args.backbones = list(QUICK["budgets"]), list(QUICK["backbones"])
        args.recipes = [r for r in args.recipes if r in QUICK["recipes"]] or list(QUICK["recipes"])
    rows = []
    for dataset in args.datasets:
        data = args.data_root / dataset
        flags = list(DATASETS.get(dataset, []))
        if args.quick:  # the datasets' own flags (100 test images per class, 160 px) do not fit a few images at 64 px
            data, flags = quick_subset(data, args.out / "quick-data" / dataset, QUICK["per_class"]), list(QUICK["flags"])
        for budget in args.budgets:
            for backbone in args.backbones:
                rows += [run_one(data, dataset, budget, backbone, recipe, flags, args) for recipe in args.recipes]
    rows = with_gaps(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "recipes.json").write_text(json.dumps({"machine": describe_machine(), "quick": args.quick, "rows": rows}, indent=1))
    table = markdown_table(rows, args.recipes) + "\n" + defaults_table(rows, TrainConfig.backbone)
    (args.out / "recipes.md").write_text(f"Test top-1 per recipe ({describe_machine()}{', --quick' if args.quick else ''})\n\n{table}")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
