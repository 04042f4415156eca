"""Inference speed per backbone x engine x precision x batch size, against the hardware ceiling
measured in the same process, and optionally the accuracy of each engine.

    .venv/bin/python -m benchmarks.inference --quick
    .venv/bin/python -m benchmarks.inference --backbones resnet18,efficientnet_lite0 --batch 1,16 --json
    .venv/bin/python -m benchmarks.inference --backbones efficientnet_lite0 --accuracy runs/flowers-probe

JSON lines carry backbone, engine, precision, batch, img_per_s, gflops_per_img, ceiling_gflops,
pct_of_ceiling, peak_gflops (and speedup_vs_eager, the eager fp32 rate at the same batch). The ceiling
of a row is the best large GEMM or 3x3 convolution in the row's precision among torch, ONNX Runtime and OpenVINO
(``benchmarks.common.hardware_ceiling``), the higher of a measurement at the start and one at the end; the
theoretical peak (cores x SIMD lanes x FMA x clock) is printed beside it. Weights are random (speed does not
depend on them) except for ``--accuracy RUN``, which loads RUN/best.pt and reports top-1 on the run's
saved test split for every engine and precision, and the agreement with eager fp32 (a hand-crop model's: on the
best hand's crop of each test image with a hand).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import (
    Ceiling,
    best_ceiling,
    best_rate,
    check_input_size,
    csv_list,
    describe_machine,
    emit,
    finished_run,
    hardware_ceiling,
    machine,
    note,
    rescale_to_ceiling,
)
from gesture_core import build_model, get_backbone, load_classifier
from gesture_core.classifier import Classifier
from gesture_core.cli import CommandParser, command
from gesture_core.engines import ENGINES, PRECISIONS, build_engine, engine_installed, supported_precisions
from training.cli import backbone_name, image_size, int_at_least

if TYPE_CHECKING:
    from training.data import Sample

SPEED_COLUMNS = [
    ("backbone", "backbone", "s"), ("engine", "engine", "s"), ("precision", "precision", "s"), ("batch", "batch", "d"),
    ("img_per_s", "img/s", ".1f"), ("ms_per_batch", "ms/batch", ".1f"), ("gflops_per_img", "GFLOP/img", ".2f"),
    ("achieved_gflops", "GFLOP/s", ".0f"), ("ceiling_gflops", "ceiling GFLOP/s", ".0f"), ("ceiling_kernel", "ceiling kernel", "s"),
    ("pct_of_ceiling", "% of ceiling", ".0f"), ("speedup_vs_eager", "× eager fp32", ".2f"), ("build_s", "load s", ".1f"),
]  # fmt: skip
ACCURACY_COLUMNS = [
    ("backbone", "backbone", "s"), ("engine", "engine", "s"), ("precision", "precision", "s"), ("images", "test images", "d"),
    ("top1", "top-1", ".2%"), ("top1_delta_points", "Δ top-1 vs eager fp32 (points)", "+.2f"),
    ("agreement", "label agreement with eager fp32", ".2%"), ("max_abs_logit_diff", "max |Δlogit|", ".1e"),
]  # fmt: skip


def gflops_per_image(model: torch.nn.Module, shape: tuple[int, ...]) -> float:
    """Forward FLOPs (2 x multiply-adds, as in the ceiling's matmul) of one image."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros((1, *shape)))
    return counter.get_total_flops() / 1e9


def configurations(engines: list[str], precisions: list[str], device: torch.device) -> list[tuple[str, str]]:
    return [(e, p) for e in engines if engine_installed(e) for p in precisions if p in supported_precisions(e, device)]


def bench_backbone(name: str, args, ceilings: dict[str, Ceiling], device: torch.device) -> list[dict[str, Any]]:
    spec = get_backbone(name)
    config = spec.data_config.with_input_size(args.image_size) if args.image_size else spec.data_config
    shape = (config.in_chans, config.input_size, config.input_size)
    torch.manual_seed(0)
    model = build_model(name, 10, "none").eval()
    gflops = gflops_per_image(model, shape)
    rows, eager = [], {}
    for engine_name, precision in configurations(args.engines, args.precisions, device):
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            engine = build_engine(model, engine=engine_name, precision=precision, device=device, input_shape=shape)
        build_s = time.perf_counter() - started
        for batch in args.batch:
            x = torch.randn((batch, *shape))
            started = time.perf_counter()
            engine(x)  # first call: allocation, kernel choice, and compilation for torch.compile
            build_s += time.perf_counter() - started if batch == args.batch[0] else 0.0
            engine(x)
            rate = best_rate(lambda x=x, engine=engine: engine(x), items=batch, seconds=args.seconds, windows=args.windows)
            if (engine_name, precision) == ("torch", "fp32"):
                eager[batch] = rate
            row = {
                "backbone": name, "engine": engine_name, "precision": precision, "batch": batch,
                "img_per_s": round(rate, 2), "ms_per_batch": round(1000 * batch / rate, 2),
                "gflops_per_img": float(f"{gflops:.4g}"), "achieved_gflops": round(rate * gflops, 2),
                "speedup_vs_eager": round(rate / eager[batch], 2) if batch in eager else None,
                "input_size": config.input_size, "build_s": round(build_s, 2), "kind": "speed",
            }  # fmt: skip
            rescale_to_ceiling(row, ceilings[precision])
            rows.append(row)
            note(
                f"  {name} {engine_name} {precision} batch {batch}: {rate:.1f} img/s, {row['pct_of_ceiling']:.0f}% of the {precision} ceiling"
            )
        del engine
    return rows


def accuracy_rows(run: Path, args, device: torch.device) -> list[dict[str, Any]]:
    """Top-1 of every engine x precision on the run's saved test split, against eager fp32."""
    from training.data import Splits  # benchmarks may use training/; the service never does

    checkpoint = run / "best.pt"
    reference = load_classifier(checkpoint, device, engine="torch")
    crops, labels, what = accuracy_inputs(reference, Splits.load(run / "split.json").test)
    note(f"  accuracy on {what}")

    def logits_of(classifier) -> torch.Tensor:
        return torch.cat([torch.from_numpy(classifier.classify_logits(crops[i : i + 32])[0]).float() for i in range(0, len(crops), 32)])

    eager = logits_of(reference)
    eager_top1 = float((eager.argmax(1).numpy() == labels).mean())
    rows = []
    for engine_name, precision in configurations(args.engines, args.precisions, device):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            classifier = (
                reference
                if (engine_name, precision) == ("torch", "fp32")
                else load_classifier(checkpoint, device, engine=engine_name, precision=precision)
            )
        logits = eager if classifier is reference else logits_of(classifier)
        predicted = logits.argmax(1).numpy()
        top1 = float((predicted == labels).mean())
        rows.append({
            "backbone": reference.backbone, "engine": engine_name, "precision": precision, "images": len(crops),
            "top1": top1, "top1_delta_points": round(100 * (top1 - eager_top1), 2),
            "agreement": float((predicted == eager.argmax(1).numpy()).mean()),
            "max_abs_logit_diff": float((logits - eager).abs().max()), "run": str(run), "kind": "accuracy",
        })  # fmt: skip
        note(f"  accuracy {engine_name} {precision}: top-1 {top1:.2%} (eager fp32 {eager_top1:.2%})")
    return rows


def accuracy_inputs(reference: Classifier, samples: list[Sample]) -> tuple[list[np.ndarray], np.ndarray, str]:
    """(the model's inputs, their labels, what they are): ``Classifier.model_crops`` of each test image, for a hand-crop
    model the best hand's crop of each image with a hand (whole frames scored it on what it never saw)."""
    from training.data import DatasetError

    crops, labels = [], []
    for sample in samples:
        first = reference.model_crops(sample.path)[:1]
        crops += first
        labels += [sample.label] * len(first)
    if not crops:
        raise DatasetError(f"--accuracy: no hand found in any of the {len(samples)} test images, and this model classifies hand crops")
    what = f"the best hand's crop of the {len(crops)} of {len(samples)} test images with a hand" if reference.hands_mode else f"{len(crops)} test images"
    return crops, np.array(labels), what


def profile_eager(name: str, batch: int, image_size: int | None) -> str:
    """Where eager PyTorch spends a forward pass: the top operators by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    spec = get_backbone(name)
    config = spec.data_config.with_input_size(image_size) if image_size else spec.data_config
    model = build_model(name, 10, "none").eval()
    x = torch.randn(batch, config.in_chans, config.input_size, config.input_size)
    with torch.inference_mode():
        model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(x)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8)


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="python -m benchmarks.inference", description=__doc__.split("\n\n")[0])
    p.add_argument("--backbones", type=csv_list(backbone_name), default=["resnet18", "efficientnet_lite0"])
    p.add_argument("--batch", type=csv_list(int_at_least(1)), default=[1, 16], help="batch sizes, e.g. 1,16")
    p.add_argument(
        "--engines",
        type=csv_list(str, ENGINES),
        default=None,
        help="default: every installed engine (torch.compile only without --quick)",
    )
    p.add_argument("--precisions", type=csv_list(str, PRECISIONS), default=list(PRECISIONS), help="unsupported ones are skipped")
    p.add_argument("--image-size", type=image_size, default=None, help="default: each backbone's own")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument(
        "--accuracy", type=finished_run, metavar="RUN", help="also measure top-1 on RUN's saved test split (RUN/best.pt, RUN/split.json)"
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="also print the top operators of each backbone's eager forward pass (batch: the largest)",
    )
    p.add_argument("--quick", action="store_true", help="short timing windows and no torch.compile (under 2 minutes on 2 cores)")
    p.add_argument("--json", action="store_true", help="JSON lines instead of tables")
    return p


@command
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_input_size(parser, args.backbones, args.image_size)
    device = torch.device(args.device)
    if args.engines is None:
        args.engines = [e for e in ENGINES if not (args.quick and e == "compile")]
    args.seconds, args.windows = (1.2, 3) if args.quick else (4.0, 4)
    info = machine()
    note(f"machine: {describe_machine(info)}")
    precisions = sorted({p for _, p in configurations(args.engines, args.precisions, device)}, key=PRECISIONS.index)
    ceilings = {p: hardware_ceiling(p, seconds=1.0 if args.quick else 3.0, device=args.device) for p in precisions}
    for ceiling in ceilings.values():
        note(f"ceiling {ceiling.describe()}")
    rows = []
    for name in args.backbones:
        rows += bench_backbone(name, args, ceilings, device)
    for p in precisions:  # again at the end: the higher of the two is the ceiling
        ceilings[p] = best_ceiling(ceilings[p], hardware_ceiling(p, seconds=1.0 if args.quick else 3.0, device=args.device))
        note(f"ceiling at the end {ceilings[p].describe()}")
    for row in rows:
        rescale_to_ceiling(row, ceilings[row["precision"]])
    emit(
        rows,
        SPEED_COLUMNS,
        as_json=args.json,
        title=f"Inference speed ({describe_machine(info)}; best of {args.windows} windows)",
    )
    if args.profile:
        for name in args.backbones:
            table = profile_eager(name, max(args.batch), args.image_size)
            text = f"\nEager PyTorch, {name}, batch {max(args.batch)}: top operators by self CPU time\n{table}"
            (note if args.json else print)(text)  # --json keeps stdout to JSON lines
    if args.accuracy:
        emit(
            accuracy_rows(args.accuracy, args, device),
            ACCURACY_COLUMNS,
            as_json=args.json,
            title=f"Accuracy on the test split of {args.accuracy}",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
