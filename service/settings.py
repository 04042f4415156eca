"""The service's settings: environment variables, read once at start-up into one frozen object, with
messages that name the variable and what is valid.

    GESTURE_MODEL            model tag in the BentoML store              (default gesture-classifier:latest)
    GESTURE_DEVICE           auto | cpu | cuda                           (default auto: CUDA when available)
    GESTURE_ENGINE           auto | torch | compile | onnx | openvino    (default auto: the fastest installed)
    GESTURE_PRECISION        fp32 | bf16 | fp16                          (default fp32)
    GESTURE_THREADS          CPU threads per model call                  (default: PyTorch's, one per core)
    GESTURE_GPUS             GPUs to serve on, one worker each           (default: every visible GPU; 0 on CPU)
    GESTURE_WORKERS          worker processes when serving on the CPU    (default 1)
    GESTURE_MAX_CONCURRENCY  requests in progress at once, per service   (default 128; more get 429)
    GESTURE_BATCH_SIZE       most images per model call; also the most per /predict_batch request (default 32)
    GESTURE_MAX_UPLOAD_MB    largest request body, in MB                 (default 16)
    GESTURE_MAX_PIXELS       largest decoded image, in pixels            (default 40000000)
    GESTURE_BODY_TIMEOUT_S   seconds a client has to send its whole request body (default 10; then 408)
    GESTURE_TRACING          on | off: BentoML's OpenTelemetry tracing   (default off)
    GESTURE_CORS_ORIGINS     origins allowed to call the API from a page served elsewhere, comma-separated;
                             * allows any (default none: the /demo page is same-origin and needs none)

The first four are ``gesture_core.runtime.Runtime``, which the webcam demo takes as --device, --engine,
--precision and --threads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from gesture_core.runtime import Runtime, SettingsError, env_choice, env_int

DEFAULT_MODEL_TAG = "gesture-classifier:latest"
REQUEST_TIMEOUT_S = 30  # BentoML answers 504 to a request still running after this

__all__ = ["DEFAULT_MODEL_TAG", "REQUEST_TIMEOUT_S", "Settings", "SettingsError"]


@dataclass(frozen=True)
class Settings:
    model_tag: str = DEFAULT_MODEL_TAG
    runtime: Runtime = field(default_factory=Runtime)
    gpus: int = 0
    cpu_workers: int = 1
    max_concurrency: int = 128
    batch_size: int = 32
    max_upload_bytes: int = 16 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_pixels_per_byte: float = 16.0  # not a variable: see gesture_core.images.SMALL_IMAGE_PIXELS
    body_timeout_s: int = 10
    tracing: bool = False
    cors_origins: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        runtime = Runtime.from_env(env)
        gpus = env_int(env, "GESTURE_GPUS", visible_gpus() if runtime.device != "cpu" else 0, minimum=0)
        if gpus and runtime.device == "cpu":
            raise SettingsError(f"GESTURE_GPUS={gpus} with GESTURE_DEVICE=cpu: set GESTURE_GPUS=0, or GESTURE_DEVICE to auto or cuda")
        return cls(
            model_tag=env.get("GESTURE_MODEL", "").strip() or DEFAULT_MODEL_TAG,
            runtime=runtime,
            gpus=gpus,
            cpu_workers=env_int(env, "GESTURE_WORKERS", 1),
            max_concurrency=env_int(env, "GESTURE_MAX_CONCURRENCY", 128),
            batch_size=env_int(env, "GESTURE_BATCH_SIZE", 32),
            max_upload_bytes=env_int(env, "GESTURE_MAX_UPLOAD_MB", 16) * 1024 * 1024,
            max_pixels=env_int(env, "GESTURE_MAX_PIXELS", 40_000_000),
            body_timeout_s=env_int(env, "GESTURE_BODY_TIMEOUT_S", 10),
            tracing=env_choice(env, "GESTURE_TRACING", "off", ("on", "off")) == "on",
            cors_origins=cors_origins(env.get("GESTURE_CORS_ORIGINS", "")),
        )

    @property
    def workers(self) -> int:
        """One worker per GPU (BentoML gives each its own CUDA_VISIBLE_DEVICES), else the CPU workers."""
        return self.gpus or self.cpu_workers

    @property
    def concurrency_per_worker(self) -> int:
        return -(-self.max_concurrency // self.workers)

    def resources(self) -> dict[str, Any]:
        return {"gpu": self.gpus} if self.gpus else {"cpu": str(os.cpu_count() or 1)}

    def decode_limits(self) -> dict[str, float]:
        """``read_rgb``'s limits for an upload: its pixels, and its pixels per byte of file."""
        return {"max_pixels": self.max_pixels, "max_pixels_per_byte": self.max_pixels_per_byte}

    def describe(self) -> dict[str, Any]:
        """What /info reports: the settings as this worker runs them."""
        return {
            "model": self.model_tag, "device": self.runtime.device, "engine": self.runtime.engine,
            "precision": self.runtime.precision, "threads": self.runtime.threads, "gpus": self.gpus,
            "workers": self.workers, "max_concurrency": self.max_concurrency, "batch_size": self.batch_size,
            "max_upload_bytes": self.max_upload_bytes, "max_pixels": self.max_pixels,
            "max_pixels_per_byte": self.max_pixels_per_byte,
            "body_timeout_s": self.body_timeout_s, "tracing": self.tracing, "cors_origins": list(self.cors_origins),
        }


def cors_origins(raw: str) -> tuple[str, ...]:
    """GESTURE_CORS_ORIGINS's origins, each checked to be scheme://host[:port] (what a browser sends)."""
    origins = tuple(item.strip().rstrip("/") for item in raw.split(",") if item.strip())
    for origin in origins:
        parts = urlsplit(origin)
        if origin != "*" and (parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query):
            raise SettingsError(f"GESTURE_CORS_ORIGINS={raw!r}: {origin!r} is not an origin; give http(s)://HOST[:PORT] "
                                "(comma-separated for several), or * for any")
    return origins


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
