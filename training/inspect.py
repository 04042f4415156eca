"""Per-layer table of a backbone: output shapes, activation sizes, parameters, multiply-adds.

    python -m training.inspect --backbone lenet5 --input-size 32 --in-channels 1 --num-classes 10
    python -m training.inspect --backbone vgg16 --json
    python -m training.inspect --backbone resnet50 --depth 2     # one row per residual block

The seed papers' tables (LeNet-5, AlexNet, VGG-16, GoogLeNet), for any registry backbone, measured
from one forward pass at batch 1: shapes by forward hooks, multiply-adds by torch's FlopCounterMode.
FlopCounterMode counts 2 FLOPs per multiply-add of convolutions and matrix products; the table
reports multiply-adds (MACs = FLOPs / 2), as the papers do. Batch norm, activations, pooling and
additions are not counted (they are a few percent of a CNN's arithmetic).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from gesture_core.backbones import build_model, get_backbone
from gesture_core.cli import CommandParser, command, describe
from training import cli

BYTES_PER_ELEMENT = 4  # fp32 activations


@dataclass
class LayerRow:
    name: str  # dotted module path ("input" for the image)
    kind: str  # module class name
    output_shape: list[int]  # C, H, W (or features) without the batch dimension
    activation_size: int  # elements of the output, batch 1
    weights: int = 0
    bias: int = 0
    macs: int = 0

    @property
    def params(self) -> int:
        return self.weights + self.bias


@dataclass
class ModelSummary:
    backbone: str
    input_shape: list[int]
    num_classes: int
    layers: list[LayerRow] = field(default_factory=list)
    total_params: int = 0
    trainable_params: int = 0
    total_macs: int = 0
    activation_elements: int = 0  # distinct layer outputs (in-place ops counted once), batch 1

    @property
    def total_flops(self) -> int:
        return 2 * self.total_macs

    @property
    def activation_bytes(self) -> int:
        return self.activation_elements * BYTES_PER_ELEMENT

    def to_dict(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone,
            "input_shape": self.input_shape,
            "num_classes": self.num_classes,
            "layers": [{**asdict(r), "params": r.params} for r in self.layers],
            "totals": {
                "params": self.total_params,
                "trainable_params": self.trainable_params,
                "macs": self.total_macs,
                "flops": self.total_flops,
                "activation_elements": self.activation_elements,
                "activation_bytes_fp32": self.activation_bytes,
            },
            "notes": "macs = multiply-adds of conv/linear/matmul (FlopCounterMode FLOPs / 2); activations at batch 1, fp32",
        }


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="python -m training.inspect", description=__doc__.split("\n")[0])
    cli.add_backbone_arg(p, required=True)
    p.add_argument("--input-size", type=cli.image_size, default=None, help="square input side (default: the backbone's, e.g. 224)")
    p.add_argument("--in-channels", type=int, choices=(1, 3), default=3, help="1 for grayscale (lenet5 only)")
    p.add_argument("--num-classes", type=cli.int_at_least(1), default=1000, help="outputs of the last layer (1000: ImageNet's head)")
    p.add_argument("--depth", type=cli.int_at_least(1), default=None, help="rows for modules at this nesting depth (default: every leaf layer)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def summarize(model: nn.Module, input_shape: tuple[int, int, int], *, backbone: str = "", num_classes: int = 0, depth: int | None = None) -> ModelSummary:
    """Run one forward pass at batch 1 and record a row per leaf layer (or per module at ``depth``)."""
    model = model.eval()
    x = torch.zeros(1, *input_shape)
    summary = ModelSummary(backbone, list(input_shape), num_classes)
    summary.layers.append(LayerRow("input", "image", list(input_shape), x.numel()))
    storages = {x.untyped_storage().data_ptr()}
    alive = [x]  # outputs stay referenced, so a freed buffer's address cannot be reused and miscounted
    counted: set[int] = set()  # modules whose parameters already sit in a row (ReLUs are often reused)
    flops = FlopCounterMode(display=False)
    started: list[int] = []

    def before(module: nn.Module, args) -> None:
        started.append(flops.get_total_flops())

    def after(name: str):
        def hook(module: nn.Module, args, output) -> None:
            tensor = _first_tensor(output)
            row = LayerRow(name, type(module).__name__, list(tensor.shape[1:]) if tensor is not None else [], tensor[0].numel() if tensor is not None else 0)
            row.macs = (flops.get_total_flops() - started.pop()) // 2
            if id(module) not in counted:
                counted.add(id(module))
                row.weights, row.bias = _count_params(module)
            summary.layers.append(row)

        return hook

    def count_activation(module: nn.Module, args, output) -> None:
        tensor = _first_tensor(output)
        if tensor is not None and tensor.untyped_storage().data_ptr() not in storages:
            storages.add(tensor.untyped_storage().data_ptr())
            alive.append(tensor)
            summary.activation_elements += tensor[0].numel()

    handles = []
    for name, module in _row_modules(model, depth):
        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after(name))]
    # Activation memory is counted at the leaf layers whatever --depth shows, so it does not depend on it.
    handles += [module.register_forward_hook(count_activation) for _, module in _row_modules(model, None)]
    try:
        with torch.inference_mode(), flops:
            model(x)
    finally:
        for h in handles:
            h.remove()
    _add_unused_params(summary, model, counted)
    summary.total_params = sum(p.numel() for p in model.parameters())
    summary.trainable_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    summary.total_macs = flops.get_total_flops() // 2
    summary.activation_elements += x.numel()
    return summary


def _row_modules(model: nn.Module, depth: int | None) -> list[tuple[str, nn.Module]]:
    """Leaf layers (or modules at ``depth``), in definition order.

    A module that owns parameters directly is a layer even if it has children (timm's
    BatchNormAct2d holds its activation as a child); its children get no rows of their own.
    """
    rows: list[tuple[str, nn.Module]] = []

    def visit(prefix: str, module: nn.Module, level: int) -> None:
        children = list(module.named_children())
        owns_params = any(True for _ in module.parameters(recurse=False))
        if prefix and (not children or owns_params or level == depth):
            rows.append((prefix, module))
            return
        for name, child in children:
            visit(f"{prefix}.{name}" if prefix else name, child, level + 1)

    visit("", model, 0)
    return rows


def _count_params(module: nn.Module) -> tuple[int, int]:
    weights = bias = 0
    for name, p in module.named_parameters():
        if name.rsplit(".", 1)[-1] == "bias":
            bias += p.numel()
        else:
            weights += p.numel()
    return weights, bias


def _add_unused_params(summary: ModelSummary, model: nn.Module, counted: set[int]) -> None:
    """Parameters no row has claimed (layers skipped at inference, e.g. auxiliary heads)."""
    claimed = {id(p) for m in model.modules() if id(m) in counted for p in m.parameters()}
    weights = bias = 0
    for name, p in model.named_parameters():
        if id(p) not in claimed:
            if name.rsplit(".", 1)[-1] == "bias":
                bias += p.numel()
            else:
                weights += p.numel()
    if weights or bias:
        summary.layers.append(LayerRow("(not run at inference)", "-", [], 0, weights, bias))


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return next((t for t in (_first_tensor(o) for o in output) if t is not None), None)
    return None


def inspect_backbone(name: str, *, input_size: int | None = None, in_chans: int = 3, num_classes: int = 1000, depth: int | None = None) -> ModelSummary:
    """The summary of a registry backbone, built without pretrained weights (nothing to download)."""
    size = input_size or get_backbone(name).data_config.input_size
    model = build_model(name, num_classes, "none", in_chans=in_chans)
    return summarize(model, (in_chans, size, size), backbone=name, num_classes=num_classes, depth=depth)


def format_table(summary: ModelSummary) -> str:
    header = ("layer", "type", "output shape", "activations", "params (weights + bias)", "MACs")
    body = [
        (r.name, r.kind, "x".join(map(str, r.output_shape)), f"{r.activation_size:,}" if r.activation_size else "",
         (f"{r.params:,} ({r.weights:,} + {r.bias:,})" if r.bias else f"{r.params:,}") if r.params else "0",
         human(r.macs) if r.macs else "")
        for r in summary.layers
    ]  # fmt: skip
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(header)]
    right = {3, 4, 5}

    def line(cells) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    s = summary
    lines = [line(header), line(["-" * w for w in widths]), *map(line, body), ""]
    lines += [
        f"{s.backbone or 'model'}, input {'x'.join(map(str, s.input_shape))}, {s.num_classes} classes",
        f"total parameters:    {s.total_params:,} ({s.trainable_params:,} trainable)",
        f"multiply-adds (MACs): {s.total_macs:,} = {human(s.total_macs)} per image ({human(s.total_flops)} FLOPs, FLOPs = 2 x MACs)",
        f"activation memory:    {s.activation_elements:,} values = {s.activation_bytes / 2**20:.2f} MiB per image (fp32, forward)",
    ]
    return "\n".join(lines)


def human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


@command
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = inspect_backbone(args.backbone, input_size=args.input_size, in_chans=args.in_channels, num_classes=args.num_classes, depth=args.depth)
    except (RuntimeError, MemoryError) as err:  # the forward pass failed: an input too small for the downsampling, or too large for memory
        size = f"a {args.input_size or 'default'}-pixel input"
        if isinstance(err, MemoryError) or "allocate" in str(err):
            print(f"error: {args.backbone} on {size} with {args.num_classes:,} classes needs more memory than this machine has "
                  f"(try a smaller --input-size{' or --num-classes' if args.num_classes > 1000 else ''})", file=sys.stderr)
        else:
            print(f"error: {args.backbone} cannot run on {size} (try a larger --input-size): {describe(err)}", file=sys.stderr)
        return 2
    print(json.dumps(summary.to_dict(), indent=1) if args.json else format_table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
