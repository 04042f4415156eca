"""Service settings from environment variables, checked once at start-up with messages that say what is valid.

    GESTURE_MODEL              model tag in the BentoML store     (default gesture-classifier:latest)
    GESTURE_DEVICE             auto | cpu | cuda                  (default auto: CUDA when available)
    GESTURE_TORCH_THREADS      CPU threads per model call         (default: PyTorch's, one per core)
    GESTURE_ENGINE             auto | torch | compile | onnx | openvino  (default auto: fastest installed)
    GESTURE_PRECISION          fp32 | bf16 | fp16                 (default fp32; bf16 measured by benchmarks.inference)
    GESTURE_MAX_UPLOAD_MB      largest request body, in MB        (default 16)
    GESTURE_MAX_PIXELS         largest decoded image, in pixels   (default 40000000)
    GESTURE_MAX_BATCH_IMAGES   most images per /predict_batch     (default 32)
    GESTURE_PREDICT_BATCHING   on | off: concurrent /predict requests share model calls (default on)
    GESTURE_BATCH_SIZE         largest batch, of /predict and of adaptive batching (default 32)
    GESTURE_BATCH_LATENCY_MS   adaptive batching: a request waiting longer gets 503 (default 5000)
    GESTURE_MODEL_THREADS      /predict: threads taking batches, where the engine overlaps calls (default 2)
    GESTURE_LOOP_DECODE_PIXELS images up to this size decode on the event loop, larger ones in a worker thread
                               (default: the model's resize size squared; 0: always a thread)
    GESTURE_TRACING            on | off: BentoML's OpenTelemetry tracing of requests (default off)
    GESTURE_PREDICT_SHORTCUT   on | off: answer plain multipart /predict requests before BentoML's IO layer
                               (default on; always off with tracing on)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_MODEL_TAG = "gesture-classifier:latest"
DEVICES = ("auto", "cpu", "cuda")


class SettingsError(ValueError):
    pass


def env_int(name: str, default: int | None, *, minimum: int = 1) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    problem = f"{name}={raw!r}: expected a whole number >= {minimum} (default {'unset' if default is None else default})"
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(problem) from None
    if value < minimum:
        raise SettingsError(problem)
    return value


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(name, "").strip() or default
    if value not in choices:
        raise SettingsError(f"{name}={value!r}: choose one of {', '.join(choices)}")
    return value


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server; all configurable, all enforced before any decoding."""

    max_upload_bytes: int = 16 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_batch_images: int = 32

    @classmethod
    def from_env(cls) -> Limits:
        return cls(
            max_upload_bytes=env_int("GESTURE_MAX_UPLOAD_MB", 16) * 1024 * 1024,
            max_pixels=env_int("GESTURE_MAX_PIXELS", 40_000_000),
            max_batch_images=env_int("GESTURE_MAX_BATCH_IMAGES", 32),
        )


@dataclass(frozen=True)
class BatchingConfig:
    """Largest batch of /predict's micro-batcher and of BentoML's adaptive batching for /predict_batched,
    and how long adaptive batching lets a request wait (fixed when the service class is defined)."""

    max_batch_size: int = 32
    max_latency_ms: int = 5000

    @classmethod
    def from_env(cls) -> BatchingConfig:
        return cls(env_int("GESTURE_BATCH_SIZE", 32, minimum=2), env_int("GESTURE_BATCH_LATENCY_MS", 5000, minimum=10))


def predict_batching() -> bool:
    return env_choice("GESTURE_PREDICT_BATCHING", "on", ("on", "off")) == "on"


def model_threads() -> int:
    return env_int("GESTURE_MODEL_THREADS", 2)


def loop_decode_pixels(default: int) -> int:
    return env_int("GESTURE_LOOP_DECODE_PIXELS", default, minimum=0)


def predict_shortcut() -> bool:
    return env_choice("GESTURE_PREDICT_SHORTCUT", "on", ("on", "off")) == "on"


def tracing() -> bool:
    return env_choice("GESTURE_TRACING", "off", ("on", "off")) == "on"


def model_tag() -> str:
    return os.environ.get("GESTURE_MODEL", "").strip() or DEFAULT_MODEL_TAG


def torch_threads() -> int | None:
    return env_int("GESTURE_TORCH_THREADS", None)


def device() -> str:
    return env_choice("GESTURE_DEVICE", "auto", DEVICES)


def engine() -> str:
    from gesture_core.engines import ENGINE_CHOICES

    return env_choice("GESTURE_ENGINE", "auto", ENGINE_CHOICES)


def precision() -> str:
    from gesture_core.engines import PRECISIONS

    return env_choice("GESTURE_PRECISION", "fp32", PRECISIONS)
