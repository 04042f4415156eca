"""The checkpoint format; ``gesture_core.classifier.load_classifier`` rebuilds a ready-to-use model from it alone.

A checkpoint is a plain dict of tensors and primitives (so ``torch.load(weights_only=True)`` reads
it, and a checkpoint can never execute code):

    format       "gesture-checkpoint"      version   CHECKPOINT_VERSION
    backbone     registry name              classes   list of class names, index order
    data_config  DataConfig.to_dict()       train_config  the run's TrainConfig as a dict
    model        state dict                 metrics   optional evaluation results
    rejection    optional: reject classes, temperature and threshold (gesture_core.rejection)
    (+ optimizer/scheduler/epoch/rng state in last.pt, for --resume)
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gesture_core.backbones import build_model, drop_aux, get_backbone, load_matching
from gesture_core.class_names import class_name, names_unwritable, some_of
from gesture_core.interrupts import interrupts_deferred
from gesture_core.preprocess import DataConfig
from gesture_core.rejection import Rejection
from gesture_core.weights import unreadable_reason

CHECKPOINT_FORMAT = "gesture-checkpoint"
CHECKPOINT_VERSION = 1
REQUIRED_KEYS = ("backbone", "classes", "data_config", "model")
# mkstemp names of atomic_torch_save's temporary files: ".best.pt.<random>.tmp"
PARTIAL_SAVE_PATTERN = ".*.pt.*.tmp"
MAX_CLASSES = 100_000  # ImageNet-21k has 21,841


class CheckpointError(ValueError):
    pass


class CheckpointSaveError(CheckpointError):
    """A checkpoint could not be written (disk full, no permission); the message says what is kept."""


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: nn.Module,
    backbone: str,
    classes: Sequence[str],
    data_config: DataConfig,
    train_config: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    **extra: Any,
) -> Path:
    """Write atomically (temp file + rename), so an interrupted write never corrupts a run."""
    if not all(isinstance(name, str) for name in classes):
        raise ValueError(f"classes must be names (str), got {some_of([repr(c) for c in classes if not isinstance(c, str)], 3)}")
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "backbone": backbone,
        "classes": [str(name) for name in classes],  # numpy.str_ is a str that a weights-only load refuses
        "data_config": data_config.to_dict(),
        "train_config": dict(train_config),
        "model": {k: v.detach().cpu() for k, v in unwrap_model(model).state_dict().items()},
        "metrics": metrics or {},
        **extra,
    }
    return atomic_torch_save(state, path)


def plain_values(value: Any) -> Any:
    """``value`` with NumPy scalars and arrays in it as Python numbers and lists (tensors kept): a checkpoint holding
    NumPy objects was written without a word, and then refused by the weights-only load every reader uses."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {plain_values(key): plain_values(item) for key, item in value.items()}
    if type(value) in (list, tuple):
        return type(value)(plain_values(item) for item in value)
    return value


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    obj = plain_values(obj)  # every writer's checkpoint, calibrate's rewrite of best.pt included
    with interrupts_deferred(), atomic_output(path) as tmp, open(tmp, "wb") as f:  # a Ctrl-C mid-write read as a full disk
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    return path


@contextmanager
def atomic_output(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary file beside ``path`` for the block to write, renamed to ``path`` only when the block
    ends without error, so that a full disk, a kill or a failed check never leaves a partial file
    where the previous one was. A write that fails is a CheckpointSaveError saying what is kept.
    ``suffix`` ends the temporary name, for writers that choose the format by it (``.tmp.onnx``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        as_umask_allows(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) or is_torch_write_failure(err):
            raise CheckpointSaveError(save_failure(path, err)) from None
        raise


def is_torch_write_failure(err: BaseException) -> bool:
    """torch's zip writer (torch.save, torch.jit.save) reports a full disk or a file it cannot open as a
    RuntimeError from its C++ ("[enforce fail at inline_container.cc:672] . unexpected pos …"), not an OSError."""
    return isinstance(err, RuntimeError) and "inline_container" in str(err)


def as_umask_allows(path: str | os.PathLike) -> None:
    """The mode a plain ``open`` would have given: mkstemp makes its file 0600 and os.replace keeps
    it, so best.pt was readable by its owner alone (a service running as another user could not load it)."""
    umask = os.umask(0o022)  # the only way to read it; set back at once
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def save_failure(path: Path, err: BaseException) -> str:
    kept = f"the previous {path.name} is kept unchanged" if path.exists() else f"no {path.name} was written"
    return f"cannot write {path}: {write_failure_reason(err)}; {kept} and the partial file was removed"


def write_failure_reason(err: BaseException) -> str:
    if isinstance(err, OSError):
        return err.strerror or str(err)
    message = str(err)
    if "strerror:" in message:  # "... open file failed with strerror: Read-only file system"
        return message.split("strerror:", 1)[1].strip()
    return f"the write stopped short ({message.split('] ', 1)[-1].strip('. ')}): is the disk full?"


def remove_partial_saves(folder: str | os.PathLike, pattern: str = PARTIAL_SAVE_PATTERN) -> list[Path]:
    """Delete the temporary files of saves that were killed before their rename (a crash, a kill -9,
    a power cut): up to a checkpoint's size each, they are never read. Returns what was removed.
    ``pattern``: the ``atomic_output`` names to look for (default: checkpoints')."""
    removed = []
    for tmp in sorted(Path(folder).glob(pattern)):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def clear_partial_saves(folder: str | os.PathLike, pattern: str = PARTIAL_SAVE_PATTERN, what: str = "checkpoint", by: str = "save") -> None:
    """``remove_partial_saves``, saying what it removed (``what``: the kind of file, ``by``: what wrote it)."""
    if removed := remove_partial_saves(folder, pattern):
        print(f"removed {len(removed)} partial {what} file(s) left by an interrupted {by}: {', '.join(p.name for p in removed)}")


def check_not_training_state(path: Path, ckpt: dict[str, Any], command: str) -> None:
    """A CheckpointError for a run's last.pt (it has an epoch to resume from) where a command takes the
    run's model: its weights are the latest epoch's, not the best, and not calibrated for "no gesture"."""
    if "epoch" in ckpt:
        raise CheckpointError(f"{path} is a run's training state (last.pt: the latest epoch, not calibrated), not its model: "
                              f"pass the run's best.pt, e.g. {command} {path.parent}")


def warn_if_training_state(path: Path, ckpt: dict[str, Any]) -> None:
    """A one-line warning where a command that may show a run's last.pt (the webcam demo, visualize)
    is given one: it ran as the model, without a word that its "no gesture" decisions are uncalibrated."""
    if "epoch" in ckpt:
        warnings.warn(f"{path} is a run's training state (last.pt: epoch {ckpt['epoch']}, the latest, not the best), and its "
                      f"\"no gesture\" threshold is not calibrated: the run's model is {path.parent / 'best.pt'}", stacklevel=2)


def what_it_holds(loaded: Any) -> str:
    """What a torch.save file that is not one of training's checkpoints holds, and what to do with it."""
    if isinstance(loaded, dict) and loaded and all(isinstance(value, torch.Tensor) for value in loaded.values()):
        return ("it holds a plain state dict, a model's weights without the classes and preprocessing that make it a "
                "classifier; to start training from them, pass it to training.finetune --weights")
    if isinstance(loaded, dict):
        return f"it holds a dict of {some_of([str(key) for key in loaded], 6)}, another tool's checkpoint?"
    return f"it holds a {type(loaded).__name__}"


def checkpoint_file(path: str | os.PathLike, in_run_folder: str) -> Path:
    """``path``, or a training run's folder meaning its ``in_run_folder`` file (``best.pt`` to evaluate or serve,
    ``last.pt`` to resume), as every command and ``load_classifier`` take a checkpoint."""
    path = Path(path).expanduser()
    return path / in_run_folder if path.is_dir() and (path / in_run_folder).is_file() else path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder: pass a checkpoint file (a training run writes RUN/best.pt and RUN/last.pt)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (a training run writes RUN/best.pt and RUN/last.pt)")
    try:
        with warnings.catch_warnings():  # torch's "Detected pickle protocol 4" above the reason, for a plain pickle
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        # a state dict would be refused next, for lack of the run's settings: only a checkpoint of training's will do
        instead = "pass a checkpoint training.finetune wrote (RUN/best.pt), or the run folder RUN"
        raise CheckpointError(f"{path} is not a readable checkpoint: {unreadable_reason(err, path, instead)}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a {CHECKPOINT_FORMAT} file written by training.finetune: {what_it_holds(ckpt)}")
    version = ckpt.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{path}: 'version' must be an integer, got {version!r:.40}")
    if version > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has format version {version}; this code reads up to {CHECKPOINT_VERSION}")
    if missing := [key for key in REQUIRED_KEYS if key not in ckpt]:
        raise CheckpointError(f"{path} is an incomplete {CHECKPOINT_FORMAT} file: it lacks {', '.join(missing)} "
                              f"(a checkpoint holds {', '.join(REQUIRED_KEYS)})")
    if problem := fields_problem(ckpt) or classes_problem(ckpt["classes"]):
        raise CheckpointError(f"{path}: {problem}")
    for field, read in (("data_config", lambda: DataConfig.from_dict(ckpt["data_config"])), ("rejection", lambda: Rejection.from_checkpoint(ckpt)),
                        ("backbone", lambda: get_backbone(ckpt["backbone"]).check_input_size(ckpt["data_config"]["input_size"]))):
        try:
            read()
        except (TypeError, KeyError, ValueError, AttributeError) as err:
            raise CheckpointError(f"{path}: unusable {field} ({type(err).__name__}: {str(err)[:200]})") from None
    return ckpt


def fields_problem(ckpt: dict[str, Any]) -> str | None:
    """What is of the wrong kind among the fields besides the classes (a traceback where they were used), or None."""
    if not isinstance(ckpt["backbone"], str):
        return f"'backbone' must be a backbone's name, got {ckpt['backbone']!r:.40}"
    model = ckpt["model"]
    if not isinstance(model, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()):
        return f"'model' must be a state dict (parameter names to tensors), got {type(model).__name__}"
    if wrong := [key for key in ("data_config", "train_config", "metrics") if not isinstance(ckpt.get(key, {}), dict)]:
        return f"'{wrong[0]}' must be a mapping of settings, got {type(ckpt[wrong[0]]).__name__}"
    return None


def classes_problem(classes: Any) -> str | None:
    """What makes ``classes`` unusable as a model's outputs, or None. Training makes names of at most 255
    bytes (a folder's), one per spelling: a file's 10 MB name made every answer 20 MB, and 100,000 names
    took minutes to check for repeats one by one."""
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        return f"'classes' must be a non-empty list of class names, got {classes!r:.80}"
    if len(classes) > MAX_CLASSES:
        return f"'classes' holds {len(classes):,} names: at most {MAX_CLASSES:,}"
    if long := [c for c in classes if len(c.encode("utf-8", "surrogatepass")) > 255]:
        return f"'classes' holds a name of more than 255 bytes ({long[0]!r:.40}…); a class name is a folder's"
    if twice := sorted(name for name, n in Counter(map(class_name, classes)).items() if n > 1):
        return f"'classes' names {', '.join(twice)[:80]} more than once (Unicode's composed and decomposed spellings are one); each class is one output"
    if unwritable := names_unwritable(classes):  # training refuses such folders; this is any checkpoint
        return f"'classes' {unwritable}"
    return None


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module whose state dict we store, under torch.compile or DataParallel wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` (a GPU where CUDA has one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N`` as a torch.device;
    ValueError for any other, or for a GPU this machine does not have."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):  # torch's own message lists its twenty-odd device types
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not one of {DEVICE_CHOICES}")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(resolved)} requested but CUDA is not available here; use auto or cpu")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ValueError(f"device {str(resolved)} requested but this machine has {count} GPU{'s' * (count != 1)} (cuda:0 to cuda:{count - 1})")
    return resolved


def build_from_checkpoint(ckpt: dict[str, Any], *, training: bool = False) -> nn.Module:
    """The architecture of ``ckpt`` with its weights; aux classifiers only when ``training``."""
    backbone = get_backbone(ckpt["backbone"])
    in_chans = int(ckpt["data_config"].get("in_chans", 3))
    model = build_model(backbone.name, len(ckpt["classes"]), "none", aux=training, in_chans=in_chans)
    load_matching(model, ckpt["model"], what=f"{backbone.name} checkpoint")
    if not training:
        drop_aux(model)
    return model
