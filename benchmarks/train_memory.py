"""How close ``training.memory``'s estimate comes to what a training step really takes: for each
backbone, image size and precision, the estimate finetune checks before the first epoch, against the
peak RSS growth of two real steps (forward, loss, backward, AdamW) on a batch of zeros, each
configuration in a fresh process (Linux /proc, random weights, CPU).

    .venv/bin/python -m benchmarks.train_memory            # the table in docs/training.md, Memory
    .venv/bin/python -m benchmarks.train_memory --backbones resnet50 --sizes 320 --batch 16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch

from benchmarks.common import PeakRss, csv_list, describe_machine, machine, note
from gesture_core.backbones import BACKBONES, build_model
from gesture_core.cli import CommandParser, command
from training.loop import autocast_for, classification_loss
from training.memory import measure_step


def one_step(backbone: str, size: int, batch: int, amp: bool) -> dict[str, float]:
    """The estimate and the real growth for one configuration, in this process."""
    device = torch.device("cpu")
    model = build_model(backbone, 10, "none").to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    estimate = measure_step(model, (3, size, size), device, amp).for_batch(batch)
    images = torch.zeros(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    targets = torch.zeros(batch, dtype=torch.long)

    def steps() -> None:
        for _ in range(2):  # the second with the optimizer's state in place
            with autocast_for(device, amp):
                loss = classification_loss(model(images), targets, aux_weight=0.0, label_smoothing=0.0, class_weights=None)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    growth_mb = PeakRss(os.getpid()).measure(steps)[1]
    return {"estimate_gb": estimate / 1e9, "real_gb": growth_mb * 2**20 / 1e9}


@command
def main(argv: list[str] | None = None) -> int:
    p = CommandParser(prog="python -m benchmarks.train_memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--backbones", type=csv_list(choices=sorted(BACKBONES)), default=["efficientnet_lite0", "mobilenet_v3_large", "resnet18", "resnet50", "googlenet"])
    p.add_argument("--sizes", type=csv_list(int), default=[224, 448])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:  # a configuration, in the fresh process main started for it
        backbone, size, batch, amp = args.one.split(",")
        print(json.dumps(one_step(backbone, int(size), int(batch), amp == "bf16")))
        return 0
    note(f"machine: {describe_machine(machine())}")
    print("| backbone | size | batch | precision | estimate | real step | real / estimate |\n| --- | ---: | ---: | --- | ---: | ---: | ---: |")
    for backbone in args.backbones:
        for size in args.sizes:
            for amp in ("fp32", "bf16"):
                line = subprocess.run([sys.executable, "-m", "benchmarks.train_memory", "--one", f"{backbone},{size},{args.batch},{amp}"],
                                      capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
                result = json.loads(line)
                print(f"| {backbone} | {size} | {args.batch} | {amp} | {result['estimate_gb']:.2f} GB | {result['real_gb']:.2f} GB | "
                      f"{result['real_gb'] / result['estimate_gb']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
