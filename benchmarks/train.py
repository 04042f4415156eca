"""Training speed: full fine-tune step rate vs the hardware ceiling, the data loader's own rate, and
frozen-backbone (linear-probe) epochs with and without the feature cache.

    .venv/bin/python -m benchmarks.train --quick
    .venv/bin/python -m benchmarks.train --json --keep-run runs/bench-flowers-probe
    .venv/bin/torchrun --standalone --nproc_per_node 2 -m benchmarks.train --skip loader frozen --quick

1. Full fine-tune: ``training.loop.train_one_epoch`` (AdamW, real loss) on in-memory batches, so the
   figure is the model's step rate alone: as ``training.finetune`` runs it on CPU (fp32), with
   channels-last memory, and with bf16 autocast + channels-last; FLOPs of forward + backward counted
   by PyTorch, against the ceiling of the row's precision measured in this process (fp32 rows
   against the fp32 ceiling, bf16 autocast against the bf16 one: ``benchmarks.common.hardware_ceiling``).
   ``--device cuda`` measures the step rate and the ceiling on a GPU instead. Under torchrun, every process trains the model in
   DistributedDataParallel (gloo on CPU, NCCL on CUDA) on its own batch of ``--batch``: img/s per
   process and in total (the sum over processes); the other sections are single-process measurements
   and are skipped there.
2. Loader: the training DataLoader (decode at reduced size, default augmentation, 2 workers) alone,
   on real photos; the ratio to the step rate says whether data loading can starve the model.
3. Frozen backbone: the real command ``python -m training.finetune --freeze backbone --augment none``
   on flowers (3670 photos, efficientnet_lite0) with an empty feature cache: wall time of the whole
   run and the time of each epoch; then one epoch of the same run with ``--cache-features off``.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import (
    Ceiling,
    best_ceiling,
    csv_list,
    describe_machine,
    emit,
    hardware_ceiling,
    machine,
    note,
    rescale_to_ceiling,
)
from gesture_core import build_model, get_backbone
from gesture_core.cli import CommandParser, command
from training import cli, distributed
from training.augment import build_train_transform
from training.cli import backbone_name, int_at_least
from training.data import ImageDataset, SeededSampler, load_splits, make_loader
from training.loop import build_optimizer, resolve_amp, train_one_epoch, warmup_cosine

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
EXTRACTION = re.compile(
    r"features \w+: (\d+) photos in ([\d.]+) s \(\w+ ([\d.]+) s, \d+ img/s; waiting for decoding (-?[\d.]+) s\)"
)
VARIANTS = {  # name: (channels_last, bf16 autocast)
    "fp32 NCHW": (False, False),
    "fp32 channels-last (finetune --amp off)": (True, False),
    "bf16 autocast channels-last (finetune --amp on)": (True, True),
}


def finetune_default_variant(backbone: str, device: str = "cpu") -> str:
    """The variant ``training.finetune --backbone backbone`` runs with no other flag on ``device``
    (``--amp auto``, which depends on both): the one the fine-tune target is judged on."""
    amp, _ = resolve_amp("auto", torch.device(device), get_backbone(backbone))
    return next(name for name, (channels_last, bf16) in VARIANTS.items() if channels_last and bf16 == amp)
PRECISIONS = ("fp32", "bf16")  # of the variants: fp32, and bf16 autocast
STEP_COLUMNS = [
    ("backbone", "backbone", "s"), ("variant", "variant", "s"), ("processes", "processes", "d"), ("batch", "batch per process", "d"),
    ("img_per_s_per_process", "img/s per process (mean)", ".1f"), ("img_per_s", "img/s (total)", ".1f"),
    ("train_gflops_per_img", "GFLOP/img (fwd+bwd)", ".1f"), ("achieved_gflops", "GFLOP/s", ".0f"),
    ("precision", "precision", "s"), ("ceiling_gflops", "ceiling GFLOP/s", ".0f"), ("ceiling_kernel", "ceiling kernel", "s"),
    ("pct_of_ceiling", "% of ceiling", ".0f"),
]  # fmt: skip
LOADER_COLUMNS = [("data", "data", "s"), ("workers", "workers", "d"), ("img_per_s", "loader img/s", ".0f"),
                  ("vs_fp32_step", "× fp32 step rate", ".1f"), ("vs_best_step", "× best step rate", ".1f")]  # fmt: skip
FROZEN_COLUMNS = [
    ("data", "data", "s"), ("images", "images", "d"), ("cache", "feature cache", "s"), ("epochs", "epochs", "d"),
    ("first_epoch_s", "epoch 1 s", ".1f"), ("later_epoch_s", "later epochs s (max)", ".3f"),
    ("speedup_after_first", "epoch 1 / later", ".0f"), ("wall_s", "whole run wall s", ".1f"), ("test_top1", "test top-1", ".2%"),
    ("extract_engine_img_per_s", "extraction: engine img/s", ".0f"), ("extract_wait_s", "extraction: waiting for decoding s", ".1f"),
    ("other_s", "rest of the run s (start-up, scan, export, report)", ".1f"),
]  # fmt: skip


def train_flops_per_image(model: torch.nn.Module, size: int) -> float:
    """Forward FLOPs x 3 (the backward pass costs about twice the forward). Counting the backward
    directly is wrong for grouped convolutions: torch's counter prices a depthwise convolution's
    backward as a dense one, 40x too much for efficientnet_lite0."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))
    return 3 * counter.get_total_flops() / 1e9


def step_rates(backbone: str, batch: int, steps: int, ceilings: dict[str, Ceiling], device: torch.device) -> list[dict[str, Any]]:
    spec = get_backbone(backbone)
    size = spec.data_config.input_size
    images, target = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    # a GPU step is milliseconds: time several in a row, so that launching overlaps with running
    per_measure = 10 if device.type == "cuda" else 1
    flops = train_flops_per_image(build_model(backbone, 10, "none"), size)
    processes = distributed.world_size()
    rows = []
    for variant, (channels_last, amp) in VARIANTS.items():
        torch.manual_seed(0)
        model = build_model(backbone, 10, "none", aux=True).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        trainer = distributed.for_training(model, device)  # DDP under torchrun: gradients averaged every step
        optimizer = build_optimizer(model, spec, opt="adamw", lr=1e-3, backbone_lr_mult=0.1, weight_decay=0.05, momentum=0.9)
        scheduler = warmup_cosine(optimizer, total_steps=1000, warmup_steps=1)

        def run(n: int, trainer=trainer, optimizer=optimizer, scheduler=scheduler, amp=amp, channels_last=channels_last):
            batches = [(images, target, torch.arange(batch))] * n
            return train_one_epoch(
                trainer,
                batches,
                optimizer,
                scheduler,
                device,
                aux_weight=spec.aux_weight,
                amp=amp,
                channels_last=channels_last,
            )

        run(per_measure)  # first steps: allocation and kernel selection
        rate = max(run(per_measure).img_per_s for _ in range(steps))  # best step: other jobs share this machine
        by_process = distributed.gather(rate)
        total = sum(by_process)
        precision = "bf16" if amp else "fp32"
        rows.append({"backbone": backbone, "variant": variant, "precision": precision, "processes": processes, "batch": batch, "img_per_s": round(total, 2),
                     "img_per_s_per_process": round(total / processes, 2), "img_per_s_by_process": [round(r, 2) for r in by_process],
                     "train_gflops_per_img": round(flops, 2), "achieved_gflops": round(total * flops, 2), "kind": "train_step"})  # fmt: skip
        rescale_to_ceiling(rows[-1], ceilings[precision])
        note(f"  {backbone} {variant}: {total:.1f} img/s (by process: {', '.join(f'{r:.1f}' for r in by_process)}), "
             f"{rows[-1]['pct_of_ceiling']:.0f}% of the {precision} ceiling")
    return rows


def loader_rate(data: Path, backbone: str, workers: int, batches: int, batch: int = 32) -> float:
    config = get_backbone(backbone).data_config
    splits = load_splits(data, val_split=0.0, test_split=0.0)
    dataset = ImageDataset(splits.train, build_train_transform(config), min_side=config.resize_size)
    loader = make_loader(dataset, batch_size=batch, workers=workers, sampler=SeededSampler(len(dataset), 0), drop_last=True)
    batches = min(batches, len(loader) - 1)
    iterator = iter(loader)
    next(iterator)  # worker start-up is paid once per run (persistent workers), not per epoch
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        images, _, _ = next(iterator)
        seen += len(images)
    rate = seen / (time.perf_counter() - start)
    del iterator, loader
    return rate


def subset_folder(data: Path, per_class: int, dest: Path) -> Path:
    """An ImageFolder of symlinks to the first ``per_class`` photos of each class."""
    for folder in sorted(p for p in data.iterdir() if p.is_dir()):
        (dest / folder.name).mkdir(parents=True)
        for photo in sorted(folder.iterdir())[:per_class]:
            (dest / folder.name / photo.name).symlink_to(photo.resolve())
    return dest


def finetune_run(data: Path, out: Path, cache_dir: Path, *extra: str) -> tuple[float, list[dict[str, str]], str, str]:
    command = [sys.executable, "-m", "training.finetune", "--data", str(data), "--backbone", "efficientnet_lite0",
               "--freeze", "backbone", "--augment", "none", "--out", str(out), "--workers", "2", *extra]  # fmt: skip
    env = {**os.environ, "GESTURE_CACHE_DIR": str(cache_dir), "NO_ALBUMENTATIONS_UPDATE": "1"}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return wall, list(csv.DictReader((out / "history.csv").open())), " ".join(["python", *command[1:]]), done.stdout


def extraction_profile(stdout: str) -> dict[str, float]:
    """Sum of training.features' per-split lines: photos, seconds, seconds in the engine, seconds waiting for decoding."""
    found = EXTRACTION.findall(stdout)
    photos, total, engine, wait = (sum(float(f[i]) for f in found) for i in (0, 1, 2, 3))
    return {"extract_photos": int(photos), "extract_s": round(total, 1), "extract_engine_s": round(engine, 1),
            "extract_engine_img_per_s": round(photos / engine, 1) if engine else None, "extract_wait_s": round(wait, 1)}  # fmt: skip


def frozen_rows(
    data: Path, epochs: int, test_per_class: int, uncached_data: Path, tmp: Path, keep_run: Path | None
) -> list[dict[str, Any]]:
    import json

    out = keep_run or tmp / "probe"
    if out.exists():
        shutil.rmtree(out)
    wall, history, command, stdout = finetune_run(
        data, out, tmp / "cache", "--epochs", str(epochs), "--test-per-class", str(test_per_class)
    )
    seconds = [float(r["epoch_seconds"]) for r in history]
    test_top1 = json.loads((out / "metrics.json").read_text())["test"]["top1"]
    images = sum(json.loads((out / "split.json").read_text())[s].__len__() for s in ("train", "val", "test"))
    later = max(seconds[1:]) if len(seconds) > 1 else None
    rows = [{"data": data.name, "images": images, "cache": "on (empty at start)", "epochs": epochs, "first_epoch_s": seconds[0],
             "later_epoch_s": later, "speedup_after_first": seconds[0] / max(later, 1e-3) if later is not None else None,
             "wall_s": round(wall, 1), "other_s": round(wall - sum(seconds), 1), "test_top1": test_top1, "command": command,
             "kind": "frozen", **extraction_profile(stdout)}]  # fmt: skip
    note(f"  linear probe with cache: {wall:.1f} s wall, epoch 1 {seconds[0]:.1f} s, later epochs <= {later} s")
    wall, history, command, _ = finetune_run(
        uncached_data, tmp / "uncached", tmp / "cache-off", "--epochs", "1", "--cache-features", "off"
    )
    images = sum(
        len(v) for k, v in json.loads((tmp / "uncached" / "split.json").read_text()).items() if k in ("train", "val", "test")
    )
    rows.append({"data": uncached_data.name, "images": images, "cache": "off", "epochs": 1, "first_epoch_s": float(history[0]["epoch_seconds"]),
                 "later_epoch_s": None, "speedup_after_first": None, "wall_s": round(wall, 1), "test_top1": None, "command": command, "kind": "frozen"})  # fmt: skip
    note(f"  one uncached frozen epoch: {rows[-1]['first_epoch_s']:.1f} s")
    return rows


def total_ceiling(precision: str, *, seconds: float, device: str) -> Ceiling:
    """The ceiling of all processes at once in ``precision`` (each measures its own, at the same time)."""
    ceiling = hardware_ceiling(precision, seconds=seconds, device=device)
    return dataclasses.replace(ceiling, gflops=sum(distributed.gather(ceiling.gflops)))


@command
def main(argv: list[str] | None = None) -> int:
    p = CommandParser(prog="python -m benchmarks.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", type=backbone_name, default="resnet18", help="for the full fine-tune step rate")
    p.add_argument("--batch", type=int_at_least(1), default=32)
    p.add_argument("--data", type=Path, default=SHARED / "flowers", help="photos for the loader and the linear probe")
    p.add_argument("--epochs", type=int_at_least(1), default=5, help="linear-probe epochs")
    p.add_argument(
        "--keep-run", type=Path, help="keep the linear-probe run folder here (benchmarks.inference --accuracy reads it)"
    )
    p.add_argument("--test-per-class", type=int_at_least(1), default=100, help="linear probe: test photos per class (the classic split, as in docs/training.md)")
    p.add_argument("--skip", nargs="*", default=[], choices=("steps", "loader", "frozen"))
    p.add_argument(
        "--quick",
        action="store_true",
        help="3 steps per variant; the uncached epoch on 30 photos per class (under 2 minutes on a quiet 2-core machine)",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the step rate is measured")
    p.add_argument("--loader-workers", type=csv_list(cli.workers), help="comma-separated DataLoader worker counts (default: 2, or 0,2 without --quick)")
    p.add_argument("--json", action="store_true", help="JSON lines instead of tables")
    args = p.parse_args(argv)
    if not args.data.is_dir():
        p.error(f"--data {args.data}: not a folder (the benchmark needs real photos, e.g. ../shared/data/flowers)")
    device = distributed.init_distributed(args.device)  # under torchrun: join the other processes
    if distributed.is_distributed() and {"loader", "frozen"} - set(args.skip):
        note("under torchrun only the step rate is measured (--skip loader frozen)")
        args.skip = sorted({*args.skip, "loader", "frozen"})
    info = machine()
    note(f"machine: {describe_machine(info)}; {distributed.describe()}")
    device = torch.device(args.device)
    seconds = 1.0 if args.quick else 3.0
    ceilings = {p: total_ceiling(p, seconds=seconds, device=args.device) for p in PRECISIONS}
    for ceiling in ceilings.values():
        note(f"ceiling on {args.device}, all processes: {ceiling.describe()}")
    steps = []
    if "steps" not in args.skip:
        steps = step_rates(args.backbone, args.batch, 3 if args.quick else 6, ceilings, device)
        ceilings = {p: best_ceiling(c, total_ceiling(p, seconds=seconds, device=args.device)) for p, c in ceilings.items()}
        for row in steps:
            rescale_to_ceiling(row, ceilings[row["precision"]])
        emit(steps, STEP_COLUMNS, as_json=args.json, title=f"Full fine-tune step rate ({describe_machine(info)})")
    if "loader" not in args.skip:
        workers = args.loader_workers or ([2] if args.quick else [0, 2])
        rows = []
        for w in workers:
            rate = loader_rate(args.data, args.backbone, w, 8 if args.quick else 30, args.batch)
            fp32 = steps[0]["img_per_s"] if steps else None
            best = max(s["img_per_s"] for s in steps) if steps else None
            rows.append({"data": args.data.name, "workers": w, "img_per_s": round(rate, 1), "vs_fp32_step": rate / fp32 if fp32 else None,
                         "vs_best_step": rate / best if best else None, "kind": "loader"})  # fmt: skip
            note(f"  loader, {w} workers: {rate:.0f} img/s")
        emit(rows, LOADER_COLUMNS, as_json=args.json, title="Training data loader alone (decode + default augmentation)")
    if "frozen" not in args.skip:
        with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
            tmp = Path(tmp)
            uncached = subset_folder(args.data, 30, tmp / f"{args.data.name}-30-per-class") if args.quick else args.data
            rows = frozen_rows(args.data, args.epochs, args.test_per_class, uncached, tmp, args.keep_run)
        emit(rows, FROZEN_COLUMNS, as_json=args.json, title="Frozen backbone (efficientnet_lite0, --augment none): feature cache")
        if not args.json:
            for r in rows:
                print(f"    {r['command']}")
    distributed.close_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
