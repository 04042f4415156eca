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

A malformed value stops start-up with one line naming the variable; a GESTURE_ variable that is not
one of these (a misspelt name) is warned about, as are GPU settings this machine cannot meet.

The first four are ``gesture_core.runtime.Runtime``, which the webcam demo takes as --device, --engine,
--precision and --threads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import bentoml
from bentoml.exceptions import BentoMLException

from gesture_core.engines import EngineUnavailableError, resolve_engine
from gesture_core.runtime import MOST_THREADS, Runtime, SettingsError, env_choice, env_int

DEFAULT_MODEL_TAG = "gesture-classifier:latest"
REQUEST_TIMEOUT_S = 30  # BentoML answers 504 to a request still running after this
# Warm-up runs the model once at every batch size up to GESTURE_BATCH_SIZE before /readyz: N(N+1)/2
# images, about 33,000 at this bound, where 10,000 would have kept a CPU worker unready for hours.
MOST_BATCH_SIZE = 256
MOST_UPLOAD_MB = 1024  # each request in progress holds its body in memory
# The request bodies a worker holds in memory at once, arriving or being answered, in uploads at the
# limit (service.http_guard.BodyMemory): 1 GB at the default 16 MB, or about 10,000 webcam frames.
BODIES_HELD = 64
MOST_PIXELS = 250_000_000  # a PNG decode peaks at about 6 bytes per pixel: 1.5 GB for one upload
MOST_BODY_TIMEOUT_S = 3600
MOST_CONCURRENCY = 100_000
MOST_GPUS = 64  # more than one machine holds
SETTING_NAMES = ("GESTURE_MODEL", "GESTURE_DEVICE", "GESTURE_ENGINE", "GESTURE_PRECISION", "GESTURE_THREADS", "GESTURE_GPUS",
                 "GESTURE_WORKERS", "GESTURE_MAX_CONCURRENCY", "GESTURE_BATCH_SIZE", "GESTURE_MAX_UPLOAD_MB", "GESTURE_MAX_PIXELS",
                 "GESTURE_BODY_TIMEOUT_S", "GESTURE_TRACING", "GESTURE_CORS_ORIGINS")
READ_ELSEWHERE = ("GESTURE_CACHE_DIR", "GESTURE_DIST_TIMEOUT_S")  # the engines' cache folder; training's

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
        gpus = env_int(env, "GESTURE_GPUS", visible_gpus() if runtime.device != "cpu" else 0, minimum=0, maximum=MOST_GPUS)
        if gpus and runtime.device == "cpu":
            raise SettingsError(f"GESTURE_GPUS={gpus} with GESTURE_DEVICE=cpu: set GESTURE_GPUS=0, or GESTURE_DEVICE to auto or cuda")
        settings = cls(
            model_tag=model_tag(env.get("GESTURE_MODEL", "")),
            runtime=runtime,
            gpus=gpus,
            cpu_workers=env_int(env, "GESTURE_WORKERS", 1, maximum=MOST_THREADS),
            max_concurrency=env_int(env, "GESTURE_MAX_CONCURRENCY", 128, maximum=MOST_CONCURRENCY),
            batch_size=env_int(env, "GESTURE_BATCH_SIZE", 32, maximum=MOST_BATCH_SIZE),
            max_upload_bytes=env_int(env, "GESTURE_MAX_UPLOAD_MB", 16, maximum=MOST_UPLOAD_MB) * 1024 * 1024,
            max_pixels=env_int(env, "GESTURE_MAX_PIXELS", 40_000_000, maximum=MOST_PIXELS),
            body_timeout_s=env_int(env, "GESTURE_BODY_TIMEOUT_S", 10, maximum=MOST_BODY_TIMEOUT_S),
            tracing=env_choice(env, "GESTURE_TRACING", "off", ("on", "off")) == "on",
            cors_origins=cors_origins(env.get("GESTURE_CORS_ORIGINS", "")),
        )
        if settings.max_concurrency < settings.workers:  # each worker takes at least one request at a time
            raise SettingsError(f"GESTURE_MAX_CONCURRENCY={settings.max_concurrency} is below the {settings.workers} workers, each of which "
                                f"takes at least one request at a time: set it to {settings.workers} or more")
        return settings

    @property
    def workers(self) -> int:
        """One worker per GPU (``runtime_for_worker`` gives each its own), else the CPU workers."""
        return self.gpus or self.cpu_workers

    def runtime_for_worker(self, worker_index: int | None, visible: int) -> Runtime:
        """The runtime of BentoML worker ``worker_index`` (1, 2, ...; None outside a server) that sees
        ``visible`` GPUs. BentoML shows every worker of a service all the GPUs it assigned to it (one
        CUDA_VISIBLE_DEVICES) and leaves the choice to the service, as its workers guide does: worker i
        takes GPU i - 1, where plain "cuda" would put every worker on GPU 0. With more GPUs asked for
        than there are (a warning at start-up), the extra workers share them instead of failing."""
        if not self.gpus or worker_index is None or visible < 1:
            return self.runtime
        return replace(self.runtime, device=f"cuda:{(worker_index - 1) % min(self.gpus, visible)}")

    @property
    def body_memory_bytes(self) -> int:
        return BODIES_HELD * self.max_upload_bytes

    @property
    def concurrency_per_worker(self) -> int:
        return -(-self.max_concurrency // self.workers)

    def resources(self) -> dict[str, Any]:
        return {"gpu": self.gpus} if self.gpus else {"cpu": str(os.cpu_count() or 1)}

    def decode_limits(self) -> dict[str, float | bool]:
        """``read_rgb``'s limits for an upload: its pixels, its pixels per byte of file, and a PNG's
        compressed data inflating to no more than its image."""
        return {"max_pixels": self.max_pixels, "max_pixels_per_byte": self.max_pixels_per_byte, "check_png_data": True}

    def describe(self) -> dict[str, Any]:
        """What /info reports: the settings as this worker runs them."""
        return {
            "model": self.model_tag, "device": self.runtime.device, "engine": self.runtime.engine,
            "precision": self.runtime.precision, "threads": self.runtime.threads, "gpus": self.gpus,
            "workers": self.workers, "max_concurrency": self.max_concurrency, "batch_size": self.batch_size,
            "max_upload_bytes": self.max_upload_bytes, "body_memory_bytes": self.body_memory_bytes, "max_pixels": self.max_pixels,
            "max_pixels_per_byte": self.max_pixels_per_byte,
            "body_timeout_s": self.body_timeout_s, "tracing": self.tracing, "cors_origins": list(self.cors_origins),
        }


def model_tag(raw: str) -> str:
    """GESTURE_MODEL as a valid BentoML tag (name[:version]); unset or blank: the default."""
    try:
        # lower case first, as BentoML stores tags: its own conversion logged a warning line above a refusal's one line
        return str(bentoml.Tag.from_taglike(raw.strip().lower() or DEFAULT_MODEL_TAG))
    except ValueError as err:  # a bad character
        raise SettingsError(f"GESTURE_MODEL={raw!r}: {err} (e.g. gesture-classifier:latest; see bentoml models list)") from None
    except BentoMLException:  # a colon too many or too few; its text suggested gesture-classifier::latest, no tag either
        raise SettingsError(f"GESTURE_MODEL={raw!r} is not a BentoML tag: give NAME or NAME:VERSION, one colon at most "
                            "(e.g. gesture-classifier:latest; see bentoml models list)") from None


def cors_origins(raw: str) -> tuple[str, ...]:
    """GESTURE_CORS_ORIGINS's origins, each checked to be scheme://host[:port] and written as a browser
    sends it in its Origin header (lower case, no default port), which is matched exactly."""
    origins = tuple(item.strip().rstrip("/") for item in raw.split(",") if item.strip())
    return tuple(origin if origin == "*" else browser_origin(origin, raw) for origin in origins)


def browser_origin(origin: str, raw: str) -> str:
    problem = (f"GESTURE_CORS_ORIGINS={raw!r}: {origin!r} is not an origin; give http(s)://HOST[:PORT] "
               "(comma-separated for several), or * for any")
    parts = urlsplit(origin)
    try:
        port = parts.port
    except ValueError:  # not a number, or above 65535
        raise SettingsError(problem) from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query or parts.username or " " in origin or port == 0:
        raise SettingsError(problem)
    if "*" in parts.hostname:  # kept as it was, it matched no origin at all
        raise SettingsError(f"GESTURE_CORS_ORIGINS={raw!r}: {origin!r} has a wildcard, which matches no origin here; list each "
                            "origin (comma-separated), or give * for any")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else ascii_host(parts.hostname, problem)  # IPv6 keeps its brackets
    default = {"http": 80, "https": 443}[scheme]
    return f"{scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


def ascii_host(host: str, problem: str) -> str:
    """A host name as browsers send it in Origin: an international name in its punycode form (bücher.example
    is xn--bcher-kva.example), which never matched the name as typed."""
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        raise SettingsError(problem) from None


def unknown_settings(env: Mapping[str, str]) -> list[str]:
    """A warning for each GESTURE_ variable the service does not read (a misspelt one was ignored)."""
    import difflib

    warnings = []
    for name in sorted(n for n in env if n.upper().startswith("GESTURE_") and n not in SETTING_NAMES + READ_ELSEWHERE):
        close = difflib.get_close_matches(name.upper(), SETTING_NAMES, n=1, cutoff=0.8)
        guess = f"did you mean {close[0]}? " if close else ""
        warnings.append(f"{name} is not a setting of the service and is ignored: {guess}(settings: {', '.join(SETTING_NAMES)})")
    return warnings


def hardware_problem(settings: Settings) -> tuple[str, str] | None:
    """("error" or "warning", why) when the GPU, engine or precision settings do not fit this machine, else None."""
    runtime = settings.runtime
    visible = visible_gpus() if runtime.device != "cpu" else 0
    try:  # before the model loads: the load said the same in words that told the deployer to import another model
        resolve_engine(runtime.engine, runtime.precision, "cuda" if visible else "cpu")
    except EngineUnavailableError as err:
        return "error", f"GESTURE_ENGINE={runtime.engine} with GESTURE_PRECISION={runtime.precision}: {err}"
    if settings.runtime.device != "cuda" and not settings.gpus:
        return None
    if settings.runtime.device == "cuda" and not visible:  # the model could not load on any worker
        return "error", "GESTURE_DEVICE=cuda, but no CUDA GPU is visible here: set GESTURE_DEVICE to auto or cpu"
    if settings.gpus and not visible:  # every worker would serve on the CPU: a GPU node's driver, or docker run without --gpus
        return "error", (f"GESTURE_GPUS={settings.gpus}, but no CUDA GPU is visible here (no driver, or a container started without "
                         "--gpus?): set GESTURE_GPUS=0 to serve on the CPU")
    if settings.gpus > visible:  # BentoML starts the workers all the same, some sharing a GPU
        return "warning", f"GESTURE_GPUS={settings.gpus}, but {visible} CUDA GPU(s) are visible here: the workers share them; set GESTURE_GPUS to at most {visible}"
    return None


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
