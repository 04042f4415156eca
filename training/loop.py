"""The training loop, kept small as in torchvision's references/classification."""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from gesture_core.backbones import Backbone, head_modules
from training.ema import ModelEma

IGNORE_LABEL = -1  # samples that failed to decode inside a loader worker
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)  # torch's common base of them is private
PROGRESS_EVERY = 20  # steps between progress-bar loss/accuracy updates (each one waits for the device)


@dataclass
class EpochResult:
    loss: float
    top1: float
    images: int
    seconds: float
    failed: list[int] = field(default_factory=list)  # dataset indices that could not be decoded

    @property
    def img_per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)


def progress_bar(iterable, desc: str) -> tqdm:
    """A transient progress bar on a terminal; none on the ranks other than 0 of a distributed run."""
    quiet = torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank() != 0
    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0, disable=True if quiet else None)


def build_optimizer(model: nn.Module, backbone: Backbone, *, opt: str, lr: float, backbone_lr_mult: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    """Two groups, head and backbone, so the pretrained layers can learn more slowly (or not at all).

    Frozen parameters stay in the optimizer: they get no gradient and so are skipped, and a staged
    run only has to flip ``requires_grad`` to unfreeze them.
    """
    head_ids = {id(p) for m in head_modules(model, backbone) for p in m.parameters()}
    head = [p for p in model.parameters() if id(p) in head_ids]
    rest = [p for p in model.parameters() if id(p) not in head_ids]
    groups = [{"params": head, "lr": lr}, {"params": rest, "lr": lr * backbone_lr_mult}]
    if opt == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    if opt == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)
    raise ValueError(f"optimizer {opt!r}: choose adamw or sgd")


def warmup_cosine(optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_mode(model: nn.Module) -> None:
    """train(), except BatchNorm layers whose parameters are frozen keep their ImageNet statistics."""
    model.train()
    for m in model.modules():
        if isinstance(m, BATCH_NORMS) and not any(p.requires_grad for p in m.parameters()):
            m.eval()


def classification_loss(output, target: torch.Tensor, *, aux_weight: float, label_smoothing: float, class_weights: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy, plus ``aux_weight`` x each auxiliary classifier's (GoogLeNet, Inception)."""
    outputs = list(output) if isinstance(output, tuple) else [output]
    losses = [
        F.cross_entropy(o.float(), target, weight=class_weights, label_smoothing=label_smoothing, ignore_index=IGNORE_LABEL)
        for o in outputs
    ]
    return losses[0] + aux_weight * sum(losses[1:], torch.zeros((), device=target.device))


AMP_CHOICES = ("auto", "on", "off")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs that compute in bf16 natively
PROC_CPUINFO = "/proc/cpuinfo"


def cpu_flags(cpuinfo: str = PROC_CPUINFO) -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty off Linux)."""
    try:
        with open(cpuinfo) as lines:
            return set(next((line for line in lines if line.startswith("flags")), "").split())
    except OSError:
        return set()


def cpu_native_bf16(cpuinfo: str = PROC_CPUINFO, flags: set[str] | None = None) -> str | None:
    """The CPU flag that makes bf16 training fast here (avx512_bf16 or amx_bf16), or None (and None off
    Linux); from ``flags`` when the caller has already read them."""
    flags = cpu_flags(cpuinfo) if flags is None else flags
    return next((flag for flag in NATIVE_BF16_FLAGS if flag in flags), None)


def resolve_amp(setting: str, device: torch.device, backbone: Backbone | None = None, *, cpuinfo: str = PROC_CPUINFO) -> tuple[bool, str]:
    """(mixed precision or not, the start-up line that says why) for ``--amp auto|on|off``.

    auto: on for CUDA, and on CPUs with native bf16, where dense backbones train about twice as fast
    (resnet18 steps, ``python -m benchmarks.train``); plain fp32 on other CPUs, where bf16 is
    emulated and slower. One exception, measured on an Intel Xeon with AMX: there the depthwise
    backbones (``Backbone.depthwise``: EfficientNet-Lite, MobileNetV3) trained 13-25% faster in fp32
    (likely because the matrix units speed up dense convolutions, not depthwise ones, while bf16 adds
    conversions; not profiled), so auto keeps them in fp32 on an ``amx_bf16`` CPU (docs/training.md,
    Mixed precision)."""
    if setting not in AMP_CHOICES:
        raise ValueError(f"--amp {setting!r}: choose one of {', '.join(AMP_CHOICES)}")
    if setting != "auto":
        return setting == "on", f"mixed precision {setting} (--amp {setting})"
    if device.type == "cuda":
        return True, "mixed precision on (--amp auto: CUDA)"
    flags = cpu_flags(cpuinfo) if device.type == "cpu" else set()
    native = cpu_native_bf16(flags=flags)
    if native is None:
        return False, "mixed precision off: fp32 (--amp auto: no native bf16 on this device)"
    if backbone is not None and backbone.depthwise and "amx_bf16" in flags:
        return False, (
            f"mixed precision off: fp32 (--amp auto: {backbone.name} is built of depthwise convolutions, "
            "which train faster in fp32 than in bf16 on this amx_bf16 CPU; --amp on for bf16)"
        )
    return True, f"mixed precision on: bf16 (--amp auto: this CPU has {native}; --amp off for fp32)"


def autocast_for(device: torch.device, enabled: bool):
    if not enabled:
        return nullcontext()
    dtype = torch.bfloat16 if device.type == "cpu" or torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    *,
    aux_weight: float = 0.0,
    label_smoothing: float = 0.0,
    class_weights: torch.Tensor | None = None,
    amp: bool = False,
    scaler: torch.amp.GradScaler | None = None,
    channels_last: bool = False,
    ema: ModelEma | None = None,
    desc: str = "train",
) -> EpochResult:
    train_mode(model)
    # Running sums stay on the device: a .item() per step would make the CPU wait for the GPU before
    # it queues the next step, leaving the GPU idle while kernels are launched.
    total_loss, correct = torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long)
    seen, failed = 0, []
    start = time.perf_counter()
    bar = progress_bar(loader, desc)
    for step, (images, target, index) in enumerate(bar):
        valid = target != IGNORE_LABEL
        failed += index[~valid].tolist()
        n = int(valid.sum())
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        target, valid = target.to(device, non_blocking=True), valid.to(device, non_blocking=True)
        with autocast_for(device, amp):
            output = model(images)
            loss = classification_loss(output, target, aux_weight=aux_weight, label_smoothing=label_smoothing, class_weights=class_weights)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update()
        logits = output[0] if isinstance(output, tuple) else output
        if n:  # a batch whose every image failed to decode has a NaN mean loss (0 / 0), which would make the epoch's NaN
            total_loss += loss.detach().float() * n
        correct += ((logits.argmax(1) == target) & valid).sum()
        seen += n
        if step % PROGRESS_EVERY == 0 and not bar.disable:
            bar.set_postfix(loss=f"{total_loss.item() / max(seen, 1):.3f}", acc=f"{correct.item() / max(seen, 1):.3f}")
    total_loss, correct = total_loss.item(), int(correct.item())
    return EpochResult(total_loss / max(seen, 1), correct / max(seen, 1), seen, time.perf_counter() - start, failed)


@torch.inference_mode()
def predict_logits(model: nn.Module, loader: DataLoader, device: torch.device, *, amp: bool = False, channels_last: bool = False, desc: str = "eval") -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(logits, targets, failed indices) over a loader of (image, label, index) in dataset order."""
    model.eval()
    all_logits, all_targets, failed = [], [], []
    for images, target, index in progress_bar(loader, desc):
        keep = target != IGNORE_LABEL
        failed += index[~keep].tolist()
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast_for(device, amp):
            logits = model(images).float()
        all_logits.append(logits[keep.to(logits.device)].cpu())
        all_targets.append(target[keep])
    if not all_logits:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64), failed
    return torch.cat(all_logits).numpy(), torch.cat(all_targets).numpy(), failed
