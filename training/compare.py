"""Compare backbones on your data: fine-tune each with one recipe, then accuracy vs cost.

    python -m training.compare --data ../shared/data/sign-digits --backbones resnet18,googlenet,efficientnet_lite0 \\
        --image-size 64 --epochs 5

For every backbone: a run in OUT/runs/<backbone> (trained with training.finetune, or reused when
it already finished with the same recipe), then test top-1 from that run, parameters and
multiply-adds from training.inspect at the run's input size, and measured batch-1 latency on this
machine. Writes OUT/comparison.md, .csv, .json and a bubble chart OUT/comparison.png
(x: G multiply-adds, y: test top-1, bubble area: parameters), the seed papers' architecture chart
on your own data.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from gesture_core.backbones import get_backbone
from gesture_core.classifier import load_classifier
from gesture_core.cli import (
    CommandParser,
    check_output_among_no_photos,
    check_output_outside_datasets,
    check_output_spares_inputs,
    command,
    output_arg,
    python_command,
)
from gesture_core.weights import WeightsUnavailableError, imagenet_weights_file
from training import cli
from training.config import SETTLED_FROM_AUTO, TrainConfig
from training.inspect import summarize
from training.prepare import names_a_dataset, no_dataset_named
from training.report import read_history, save_figure
from training.run_lock import check_not_in_use

RECIPE_IGNORED = ("out", "workers", "device")  # may differ without changing what is trained


@dataclass
class Row:
    backbone: str
    weights: str  # imagenet | none
    image_size: int
    epochs: int
    test_top1: float | None
    params: int
    gmacs: float  # G multiply-adds per image at image_size
    latency_ms: float  # best-of-N batch-1 forward on this machine's CPU
    latency_median_ms: float
    train_minutes: float | None
    run: str

    @property
    def gflops(self) -> float:
        return 2 * self.gmacs


def offline_weights(name: str) -> str:
    """imagenet when the backbone's ImageNet weights are on disk (no download), else none."""
    backbone = get_backbone(name)
    if not backbone.has_imagenet_weights:
        return "none"
    try:
        return "imagenet" if imagenet_weights_file(name).is_file() else "none"
    except (WeightsUnavailableError, ValueError, KeyError):
        return "none"


def recipe_difference(saved: dict[str, Any], wanted: TrainConfig) -> list[str]:
    """What differs between a run's config.json and the recipe ``wanted`` (its ``auto`` choices settled: ``settled_on``)."""
    # Through TrainConfig, so options added since the run was trained compare as their defaults.
    saved = TrainConfig.from_dict(saved).to_dict()
    want = wanted.to_dict()
    return [f"{k}: {saved.get(k)!r} in the run, {v!r} wanted" for k, v in want.items() if k not in RECIPE_IGNORED and saved.get(k) != v]


def settled_on(wanted: TrainConfig, run: Path) -> TrainConfig:
    """``wanted`` with flip and crop ``auto`` settled as training settles them, on the run's own split.

    A run stores what its ``auto`` became, so a run trained with an explicit choice is reused for
    ``auto`` only where ``auto`` would have chosen the same on that data."""
    if all(getattr(wanted, key) != "auto" for key in SETTLED_FROM_AUTO):
        return wanted
    from training.data import Splits
    from training.finetune import data_choices

    flip, crop, _, _ = data_choices(wanted, Splits.load(run / "split.json"))
    return replace(wanted, flip=flip, crop=crop)


def run_json(path: Path) -> dict[str, Any]:
    """A run's JSON file, which must hold an object: a broken one is named, where it was a traceback
    (a list) or a JSON error that named no file."""
    try:
        value = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err}): pass --retrain to train that run again, or another --out") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds {type(value).__name__}, not the object a run writes: pass --retrain, or another --out")
    return value


def remove_earlier_runs(runs: list[Path]) -> None:
    """--retrain: the comparison's runs go before the first is trained again. Finetune refuses a folder that
    holds a run, so --retrain was refused wherever one existed; and a comparison stopped on the way goes on,
    run again without --retrain, where it stopped. A folder of other files is left for finetune to name."""
    from training.finetune import other_files_in

    runs = [run for run in runs if run.is_dir() and not other_files_in(run)]
    for run in runs:  # all of them before any is removed
        check_not_in_use(run)
    for run in runs:
        shutil.rmtree(run)


def train_or_reuse(cfg: TrainConfig, *, go_on: str | None = None) -> tuple[Path, bool]:
    """(run folder, reused?): a finished run of the same recipe is read back, an interrupted one continued.
    ``go_on``: the command a stopped run names to continue (the comparison, which continues it)."""
    from training.finetune import load_training_state, run_finished, train

    run = Path(cfg.out)
    if all((run / name).is_file() for name in ("config.json", "split.json")):
        differences = recipe_difference(run_json(run / "config.json"), settled_on(cfg, run))
        if differences:
            raise ValueError(f"{run} was trained with another recipe ({'; '.join(differences)}); pass --retrain to overwrite it, or another --out")
        if run_finished(run) and (run / "best.pt").is_file() and "test" in run_json(run / "metrics.json"):
            return run, True
        if (last := run / "last.pt").is_file() and not run_finished(run):  # continued, where it was trained from scratch again
            return train(TrainConfig.from_dict(load_training_state(last)["train_config"]), resume=last, go_on=go_on), False
    return train(cfg, go_on=go_on), False


def measure_latency(model: torch.nn.Module, shape: tuple[int, ...], runs: int) -> tuple[float, float]:
    """(best, median) milliseconds of one batch-1 forward pass after warm-up, on the CPU.

    The best of N is the figure compared (as timeit advises): on a shared machine the median
    also measures the other jobs.
    """
    x = torch.zeros(1, *shape)
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            model(x)
            times.append(1000 * (time.perf_counter() - start))
    return min(times), statistics.median(times)


def train_minutes(run: Path) -> float | None:
    history = read_history(run / "history.csv")
    return round(sum(float(r["epoch_seconds"]) for r in history) / 60, 2) if history else None


def measure_run(run: Path, *, latency_runs: int) -> Row:
    classifier = load_classifier(run / "best.pt", "cpu")
    dc = classifier.data_config
    shape = (dc.in_chans, dc.input_size, dc.input_size)
    summary = summarize(classifier.model, shape, backbone=classifier.backbone, num_classes=len(classifier.classes))
    test = json.loads((run / "metrics.json").read_text()).get("test") or {}
    cfg = classifier.train_config
    best_ms, median_ms = measure_latency(classifier.model, shape, latency_runs)
    return Row(
        backbone=classifier.backbone,
        weights=str(cfg.get("weights", "?")),
        image_size=dc.input_size,
        epochs=int(cfg.get("epochs", 0)),
        test_top1=test.get("top1"),
        params=summary.total_params,
        gmacs=summary.total_macs / 1e9,
        latency_ms=round(best_ms, 2),
        latency_median_ms=round(median_ms, 2),
        train_minutes=train_minutes(run),
        run=str(run),
    )


def format_markdown(rows: list[Row]) -> str:
    lines = [
        "| backbone | weights | image | epochs | test top-1 | params | GMACs | GFLOPs | latency ms, batch 1, CPU: best (median) | train (min) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        top1 = "n/a" if r.test_top1 is None else f"{100 * r.test_top1:.1f}%"
        weights = "ImageNet" if r.weights == "imagenet" else "from scratch" if r.weights == "none" else r.weights
        minutes = "" if r.train_minutes is None else f"{r.train_minutes:.1f}"
        lines.append(f"| {r.backbone} | {weights} | {r.image_size} | {r.epochs} | {top1} | {r.params / 1e6:.2f} M | {r.gmacs:.3f} | {r.gflops:.3f} | {r.latency_ms:.1f} ({r.latency_median_ms:.1f}) | {minutes} |")
    return "\n".join(lines)


def write_tables(out: Path, rows: list[Row]) -> None:
    records = [{**asdict(r), "gflops": r.gflops} for r in rows]
    (out / "comparison.json").write_text(json.dumps(records, indent=2))
    with (out / "comparison.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    (out / "comparison.md").write_text(format_markdown(rows) + "\n")


def plot_bubbles(path: Path, rows: list[Row], title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.test_top1 is not None]
    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    biggest = max(r.params for r in rows)
    colours = plt.get_cmap("tab10")
    for i, r in enumerate(rows):
        area = 2400 * r.params / biggest + 30  # bubble area proportional to parameters
        ax.scatter(r.gmacs, 100 * r.test_top1, s=area, alpha=0.45, color=colours(i % 10), edgecolors="black", linewidths=0.6)
        tag = "ImageNet" if r.weights == "imagenet" else "scratch"
        ax.annotate(f"{r.backbone} ({tag})\n{r.params / 1e6:.1f} M params, {r.latency_ms:.1f} ms", (r.gmacs, 100 * r.test_top1),
                    textcoords="offset points", xytext=(area**0.5 / 2 + 4, 0), va="center", fontsize=7.5)
    xs = [r.gmacs for r in rows]
    if max(xs) / max(min(xs), 1e-9) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("G multiply-adds per image (GFLOPs = 2 x this)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"{title}\nbubble area: parameters; ms: batch-1 CPU latency", fontsize=9)
    ax.grid(alpha=0.3)
    ax.margins(x=0.35, y=0.15)
    fig.tight_layout()
    save_figure(fig, path, dpi=80)
    plt.close(fig)
    return path


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="python -m training.compare", description=__doc__.split("\n")[0])
    p.add_argument("--data", type=cli.input_path("a dataset folder, archive or catalogue name"), required=True, help="the dataset every backbone is trained on, as finetune --data takes it (a folder, an archive or its URL, or a catalogue name)")
    p.add_argument("--backbones", type=backbone_list, required=True, help="comma-separated registry names")
    p.add_argument("--weights", choices=("auto", "imagenet", "none"), default="auto", help="auto: ImageNet where the weights are on disk, else from scratch")
    p.add_argument("--epochs", type=cli.int_at_least(1), default=5, help="passes over the training images, for each backbone")
    p.add_argument("--image-size", type=cli.image_size, default=None, help="one input size for all (default: each backbone's)")
    p.add_argument("--batch-size", type=cli.int_at_least(1), default=32, help="images per step")
    p.add_argument("--lr", type=cli.positive_float, default=1e-3, help="head learning rate (peak)")
    p.add_argument("--backbone-lr-mult", type=cli.float_in(0.0, 1.0, high_inclusive=True), default=1.0, help="1.0: the whole net learns at --lr (from-scratch rows need it)")
    cli.add_flip_arguments(p, "auto")
    p.add_argument("--test-per-class", type=cli.int_at_least(1), default=None, help="hold out exactly N test images per class (default: 20%% of each class, as finetune)")
    p.add_argument("--seed", type=cli.seed, default=0, help="fixes the split, shared by every backbone, and the training")
    p.add_argument("--workers", type=cli.workers, default=2, help="data-loading processes (0: decode in this process)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="for training; latency is always measured on the CPU")
    p.add_argument("--latency-runs", type=cli.int_at_least(1), default=20, help="timed single-image forward passes per backbone")
    p.add_argument("--out", type=output_arg("folder"), default=None, help="comparison folder (default: runs/compare-<data name>)")
    p.add_argument("--retrain", action="store_true", help="train again even where a finished run exists")
    return p


def backbone_list(text: str) -> list[str]:
    names = [cli.backbone_name(n.strip()) for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated backbone names")
    return list(dict.fromkeys(names))


@command
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not names_a_dataset(args.data):  # before the runs of --out are reused: it was called a recipe mismatch
        parser.error(no_dataset_named(args.data))
    out = Path(args.out) if args.out else Path("runs") / f"compare-{Path(args.data).name}"
    try:  # a run folder's own files, or a class folder of the data, are no place for the tables and runs
        check_output_spares_inputs("--out", out, {})
        check_output_outside_datasets("--out", out, [Path(args.data)])
        check_output_among_no_photos("--out", out, ["comparison.png"])
    except ValueError as err:
        parser.error(str(err))
    if args.image_size:  # every backbone before the first run, not after an hour of others
        for name in args.backbones:
            get_backbone(name).check_input_size(args.image_size, what="--image-size")
    out.mkdir(parents=True, exist_ok=True)
    base = TrainConfig(data=args.data, epochs=args.epochs, image_size=args.image_size, batch_size=args.batch_size, lr=args.lr,
                       backbone_lr_mult=args.backbone_lr_mult, flip=args.flip, test_per_class=args.test_per_class, seed=args.seed,
                       workers=args.workers, device=args.device)
    if args.retrain:
        remove_earlier_runs([out / "runs" / name for name in args.backbones])
    # Run again, the comparison continues a stopped run and reuses the finished ones.
    go_on = python_command() + " " + shlex.join(["-m", "training.compare", *(a for a in (sys.argv[1:] if argv is None else argv) if a != "--retrain")])
    rows = []
    for name in args.backbones:
        weights = offline_weights(name) if args.weights == "auto" else args.weights
        cfg = replace(base, backbone=name, weights=weights, out=str(out / "runs" / name))
        run, reused = train_or_reuse(cfg, go_on=go_on)
        print(f"{'reusing' if reused else 'trained'} {run} ({name}, weights {weights})")
        rows.append(measure_run(run, latency_runs=args.latency_runs))
    write_tables(out, rows)
    size = f"{args.image_size}px" if args.image_size else "native size"
    plot_bubbles(out / "comparison.png", rows, f"{Path(args.data).name}: {args.epochs} epochs at {size}, same recipe (threads: {torch.get_num_threads()})")
    print(format_markdown(rows))
    print(f"\nwrote {out}/comparison.md, .csv, .json, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
