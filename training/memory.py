"""Whether a training batch fits in memory, said before the first epoch.

On Linux the kernel ends a process that asks for more memory than the machine has with SIGKILL: no
exception and no message, only exit code 137. A run at ``--train-size 1000`` with the default batch
of 32 was killed that way at 23 GB, its last line "trains at 1000 px" (a probe, 2026-12-07). What a
training step holds grows with the batch and the square of the image size, so it is measured on the
model itself, in the run's precision: the tensors autograd keeps for the backward pass of one
forward pass with a batch of two images and of four (batch norm needs two values a channel). Half
their difference is one image's share, scaled by its pixels from at most 224 px a side, so that the
measurement itself stays small; the rest (autocast's low-precision copies of the weights) is paid
once, as are the weights' gradients and the optimizer's state. A real step also holds the gradients
of the activations while the backward pass runs: two steps took 0.92 to 1.38 times the estimate,
over five backbones, two sizes and both precisions (``python -m benchmarks.train_memory``;
docs/training.md, Memory).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
from torch import nn

from training.loop import autocast_for

# Above this share of the free memory the estimate warns: a real step took up to 1.38 times it.
WARN_SHARE = 0.7
MEASURED_SIDE = 224  # larger images are measured at this side and scaled by their pixels
OPTIMIZER_COPIES = 3  # a gradient and AdamW's two moments for each weight (SGD keeps one moment)
CGROUP = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class StepMemory:
    per_image: int  # bytes autograd keeps for each image of the batch
    fixed: int  # bytes a step holds whatever its batch

    def for_batch(self, batch: int) -> int:
        return self.fixed + batch * self.per_image

    def largest_batch(self, free: int) -> int:
        """The largest power of two whose batch fits in ``free`` bytes (0 if not even one image)."""
        fits = (free - self.fixed) // max(self.per_image, 1)
        return 0 if fits < 1 else 1 << int(math.log2(fits))


def measure_step(model: nn.Module, image_shape: tuple[int, int, int], device: torch.device, amp: bool, *, smallest_side: int = 0) -> StepMemory:
    """``StepMemory`` of training ``model`` on images of ``image_shape`` (C, H, W), in channels-last
    batches as the loop feeds them, measured at no less than ``smallest_side`` (Inception's auxiliary
    classifier takes 299 px or more). The model comes back as it was: its mode, its batch-norm
    statistics and the random number generators."""
    channels, height, width = image_shape
    shrink = min(1.0, max(MEASURED_SIDE, smallest_side) / max(height, width))
    measured = (channels, max(1, round(height * shrink)), max(1, round(width * shrink)))
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    was_training = model.training
    model.train()
    try:
        two, four = (saved_bytes(model, (n, *measured), device, amp, weights) for n in (2, 4))
    finally:
        model.train(was_training)
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
    per_image = max(four - two, 0) / 2 * (height * width) / (measured[1] * measured[2])
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return StepMemory(per_image=round(per_image), fixed=max(2 * two - four, 0) + OPTIMIZER_COPIES * weight_bytes)


def saved_bytes(model: nn.Module, shape: tuple[int, ...], device: torch.device, amp: bool, weights: set[int]) -> int:
    """The bytes of the tensors autograd saves for the backward pass of one forward pass of zeros of
    ``shape``, each storage once and the weights' own not at all."""
    seen, total = set(weights), 0

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
        return tensor

    images = torch.zeros(shape, device=device).contiguous(memory_format=torch.channels_last)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor), autocast_for(device, amp):
        model(images)
    return total


def free_bytes(device: torch.device) -> int:
    """Memory free for this process: the GPU's, or the machine's, within its container's limit
    (cgroup v2), shared by the processes torchrun started on this machine."""
    if device.type == "cuda":
        torch.cuda.empty_cache()  # what the measurement left reserved is free for the run
        return torch.cuda.mem_get_info(device)[0]
    free = psutil.virtual_memory().available
    try:
        limit = (CGROUP / "memory.max").read_text().strip()
        if limit != "max":
            free = min(free, int(limit) - int((CGROUP / "memory.current").read_text()))
    except (OSError, ValueError):  # no cgroup v2 here
        pass
    return free // max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)


def batch_fits(step: StepMemory, free: int, *, batch: int, size: int, size_flag: str, backbone: str, where: str) -> tuple[str | None, str | None]:
    """(why the batch cannot fit, naming the flags to lower; a warning that it may not), each None where not."""
    need = step.for_batch(batch)
    said = (f"a training batch of {batch} images at {size} px needs about {need / 1e9:.1f} GB for {backbone}, "
            f"and {where} has {free / 1e9:.1f} GB free")
    if need > free:
        largest = step.largest_batch(free)
        return (f"{said}: pass --batch-size {largest}, or a smaller {size_flag}" if largest else f"{said}: pass a smaller {size_flag}"), None
    if need > WARN_SHARE * free:
        return None, f"{said}; a step can take up to 1.5 times that, so the run may be killed for lack of memory: a smaller --batch-size is safer"
    return None, None
