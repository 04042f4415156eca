"""Where and how a classifier runs: device, inference engine, precision and CPU threads.

One definition for every place that loads a model to serve it: the HTTP service reads it from
``GESTURE_*`` environment variables, the webcam demo from command-line flags, with the same names,
choices and defaults.

    runtime = Runtime.from_env()                     # GESTURE_DEVICE, _ENGINE, _PRECISION, _THREADS
    runtime = Runtime.from_args(args)                # after add_runtime_arguments(parser)
    classifier = runtime.load(checkpoint)
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from gesture_core.engines import ENGINE_CHOICES, PRECISIONS

DEVICES = ("auto", "cpu", "cuda")
# More threads than this only oversubscribe the cores; a huge number failed deep in torch as an overflow.
MOST_THREADS = max(32, 4 * (os.cpu_count() or 1))


class SettingsError(ValueError):
    """A setting with a value that is not allowed; the message names the setting and the valid values."""


def env_int(env: Mapping[str, str], name: str, default: int | None, *, minimum: int = 1, maximum: int | None = None,
            unset: str = "unset") -> int | None:
    """``name``'s whole number, or ``default`` where it is not set; ``unset`` says what no value means (the settings table's words)."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    allowed = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum:,}"
    problem = f"{name}={raw!r}: expected a whole number {allowed} (default {unset if default is None else default})"
    if not re.fullmatch(r"-?[0-9]+", raw):  # int() also reads 1_6, +8 and other scripts' digits (٣٢)
        raise SettingsError(problem)
    value = int(raw)
    if value < minimum or (maximum is not None and value > maximum):
        raise SettingsError(problem)
    return value


def env_choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(name, "").strip() or default
    if value not in choices:
        raise SettingsError(f"{name}={value!r}: choose one of {', '.join(choices)}")
    return value


@dataclass(frozen=True)
class Runtime:
    device: str = "auto"
    engine: str = "auto"  # gesture_core.engines: auto | torch | compile | onnx | openvino
    precision: str = "fp32"
    threads: int | None = None  # CPU threads per model call; None: PyTorch's default (one per core)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Runtime:
        env = os.environ if env is None else env
        return cls(
            device=env_choice(env, "GESTURE_DEVICE", "auto", DEVICES),
            engine=env_choice(env, "GESTURE_ENGINE", "auto", ENGINE_CHOICES),
            precision=env_choice(env, "GESTURE_PRECISION", "fp32", PRECISIONS),
            threads=env_int(env, "GESTURE_THREADS", None, maximum=MOST_THREADS, unset="PyTorch's, one per core"),
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Runtime:
        return cls(device=args.device, engine=args.engine, precision=args.precision, threads=args.threads)

    def load(self, checkpoint):
        """The checkpoint as a ready Classifier, running as this runtime says, checked with one blank
        image through the whole inference path (a CheckpointError with the reason otherwise)."""
        from gesture_core.classifier import load_verified_classifier

        if self.threads:
            torch.set_num_threads(self.threads)
        return load_verified_classifier(checkpoint, device=self.device, engine=self.engine, precision=self.precision)


def add_runtime_arguments(parser: argparse.ArgumentParser, *, default_threads: int | None = None, threads_help: str = "unset: PyTorch's, one per core") -> None:
    """--device, --engine, --precision and --threads: the command-line face of ``Runtime``."""
    g = parser.add_argument_group("runtime (the service reads the same from GESTURE_DEVICE, GESTURE_ENGINE, GESTURE_PRECISION, GESTURE_THREADS)")
    g.add_argument("--device", default="auto", choices=DEVICES, help="where the model runs (auto: a GPU when there is one)")
    g.add_argument("--engine", default="auto", choices=ENGINE_CHOICES, help="inference engine (auto: the fastest installed, OpenVINO on CPU)")
    g.add_argument("--precision", default="fp32", choices=PRECISIONS, help="fp32, or bf16/fp16 where the engine and hardware support them")
    g.add_argument("--threads", type=thread_count, default=default_threads, help=f"CPU threads for the model ({threads_help})")


def thread_count(text: str) -> int:
    """--threads: a whole number from 1 to MOST_THREADS."""
    problem = f"expected a whole number from 1 to {MOST_THREADS}, got {text!r}"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(problem) from None
    if not 1 <= value <= MOST_THREADS:
        raise argparse.ArgumentTypeError(problem)
    return value
