"""argparse helpers shared by the training commands: range-checked types and consistent errors."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from gesture_core.backbones import MIN_INPUT_SIZE, get_backbone, list_backbones, registry_name
from gesture_core.cli import not_a_file, refuse_empty_path
from gesture_core.preprocess import MAX_INPUT_SIZE
from gesture_core.runtime import MOST_THREADS
from training.grouping import check_group_by


def int_at_least(low: int, high: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}" if high is None else f"must be in [{low}, {high}], got {value}")
        return value

    return parse


# Input sizes: the smallest any backbone takes, and the data config's own limit (gesture_core.preprocess),
# refused here with the flag's name; a backbone that needs more says so once it is known
# (Backbone.check_input_size).
image_size = int_at_least(MIN_INPUT_SIZE, MAX_INPUT_SIZE)
# Data-loading processes (or decoding threads): 99,999 of them exhausted the machine's memory and the
# process was killed; the bound on the model's threads (more than 4 a core never helps) holds them too.
workers = int_at_least(0, MOST_THREADS)
# NumPy's seeds: -1 failed deep in the run as "expected non-negative integer", 2**64 as an overflow.
seed = int_at_least(0, 2**32 - 1)


def float_in(low: float, high: float, *, high_inclusive: bool = False):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        ok = low <= value <= high if high_inclusive else low <= value < high
        if not ok:
            raise argparse.ArgumentTypeError(f"must be in [{low}, {high}{']' if high_inclusive else ')'}, got {value}")
        return value

    return parse


def positive_float(text: str) -> float:
    return float_in(1e-12, float("inf"))(text)


def add_flip_arguments(parser, default: str) -> None:
    """``--flip auto|on|off`` and ``--no-flip`` (its old spelling), the same in every command that trains."""
    from training.augment import FLIP_CHOICES  # albumentations: only for the commands that train

    parser.add_argument("--flip", choices=FLIP_CHOICES, default=default, help="horizontal flips in training; auto: off when a "
                        "class name has a direction (left, right, clockwise, ...), since a mirror swaps those classes, else on")
    parser.add_argument("--no-flip", dest="flip", action="store_const", const="off", default=argparse.SUPPRESS, help="same as --flip off")


def weights_arg(text: str) -> str:
    if text in ("imagenet", "none") or Path(text).is_file():
        return text
    if Path(text).is_dir():  # a run folder, say: it was "choose imagenet, none, or ... file", which did not say why
        raise argparse.ArgumentTypeError(f"{text} is a folder: pass a state-dict file (as torch.save(model.state_dict(), PATH) writes), imagenet or none")
    raise argparse.ArgumentTypeError(f"{text!r}: choose imagenet, none, or the path of an existing state-dict file")


def input_path(expected: str) -> Callable[[str], str]:
    """An argparse type for a dataset, folder or file given by hand, kept as typed (a catalogue name or
    a URL stays a string). "" is refused, naming ``expected``: Path("") is the current folder, so
    --data "" (an unset variable in a script) trained on whatever folders the current one held."""
    def parse(text: str) -> str:
        refuse_empty_path(text, expected)
        return text

    return parse


def existing_file(text: str) -> Path:
    refuse_empty_path(text, "an image file")
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder: pass an image file")
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text}{not_a_file(Path(text), 'image file')}")
    return Path(text)


def existing_path(text: str) -> Path:
    """A file or folder given by hand: a mistyped one is a usage error (exit 2), not a failed download (1)."""
    refuse_empty_path(text, "a file or folder")
    if not Path(text).exists():
        raise argparse.ArgumentTypeError(f"{text}: no such file or folder")
    return Path(text)


def group_by_arg(text: str) -> str:
    try:
        return check_group_by(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def backbone_name(text: str) -> str:
    """A backbone's registry name: ResNet-18 or EfficientNet-Lite0 is taken as resnet18 or efficientnet_lite0,
    and a name no backbone has is told the nearest ones (argparse's choices listed all 22 alike)."""
    name = registry_name(text)
    try:
        get_backbone(name)
    except ValueError as err:  # the registry's own reason, nearest names first
        raise argparse.ArgumentTypeError(str(err)) from None
    return name


def add_backbone_arg(parser: argparse.ArgumentParser, **kwargs) -> None:
    parser.add_argument("--backbone", type=backbone_name, metavar="NAME",
                        help=f"one of: {', '.join(list_backbones())} (in any case, with - or _: ResNet-18 is resnet18)", **kwargs)
