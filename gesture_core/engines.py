"""Inference engines: run a classifier's network with eager PyTorch, torch.compile, ONNX Runtime or
OpenVINO, in fp32, bf16 or fp16, behind one call: ``engine(batch) -> float32 logits``.

    engine = build_engine(model, engine="auto", precision="fp32", device=cpu, input_shape=(3, 224, 224))
    logits = engine(batch)            # any batch size, including 0

``auto`` picks the fastest engine installed for the device (OpenVINO, then ONNX Runtime, on CPU;
eager PyTorch with channels-last on CUDA). ONNX and OpenVINO models are exported once, in-process,
into a cache folder keyed by a hash of the architecture, the weights and the input shape
(``$GESTURE_CACHE_DIR``, default ``~/.cache/gesture-service``), so a second load takes about a second.
Exported graphs have a dynamic batch dimension and a fixed image size.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import logging
import os
import threading
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gesture_core.checkpoint import atomic_output
from gesture_core.native_output import in_brief, native_stdout_discarded

ENGINES = ("torch", "compile", "onnx", "openvino")
ENGINE_CHOICES = ("auto", *ENGINES)
PRECISIONS = ("fp32", "bf16", "fp16")
EXPORT_FORMAT_VERSION = 1  # bump when the export recipe changes, so stale cached files are not reused
ONNX_OPSET = 17
_AUTO_ORDER = {"cpu": ("openvino", "onnx", "torch"), "cuda": ("torch",)}
_ENGINE_PACKAGES = {"onnx": ("onnx", "onnxruntime"), "openvino": ("onnx", "openvino")}


class EngineUnavailableError(ValueError):
    """The requested engine/precision cannot run here; the message lists what can."""


def cache_root() -> Path:
    """Where exported models (and training's feature cache) live: ``$GESTURE_CACHE_DIR`` or the user cache."""
    env = os.environ.get("GESTURE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gesture-service"


def engine_installed(name: str) -> bool:
    if name == "compile":
        return hasattr(torch, "compile")
    return all(importlib.util.find_spec(pkg) is not None for pkg in _ENGINE_PACKAGES.get(name, ()))


def supported_precisions(name: str, device: torch.device | str) -> tuple[str, ...]:
    """Precisions ``name`` can run on ``device`` (on this machine's CPU for OpenVINO)."""
    kind = torch.device(device).type
    if name in ("torch", "compile"):
        if kind == "cuda":
            return ("fp32", "bf16", "fp16") if torch.cuda.is_bf16_supported() else ("fp32", "fp16")
        return ("fp32", "bf16")
    if name == "onnx":
        return ("fp32",) if kind == "cpu" else ()
    if name == "openvino":
        if kind != "cpu" or not engine_installed("openvino"):
            return ()
        return ("fp32", *(p for p in ("bf16", "fp16") if p.upper() in _openvino_cpu_capabilities()))
    return ()


def available_engines(device: torch.device | str = "cpu") -> list[str]:
    """Installed engines that can run on ``device``, in no particular order of speed."""
    return [name for name in ENGINES if engine_installed(name) and supported_precisions(name, device)]


def resolve_engine(engine: str, precision: str, device: torch.device | str) -> str:
    """The concrete engine for a request; ``auto`` -> the fastest one that supports ``precision``."""
    device = torch.device(device)
    if engine not in ENGINE_CHOICES:
        raise EngineUnavailableError(f"engine {engine!r}: choose one of {', '.join(ENGINE_CHOICES)}")
    if precision not in PRECISIONS:
        raise EngineUnavailableError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if engine == "auto":
        for name in _AUTO_ORDER.get(device.type, ("torch",)):
            if engine_installed(name) and precision in supported_precisions(name, device):
                return name
        raise EngineUnavailableError(f"no installed engine runs {precision} on {device}; {_menu(device)}")
    if not engine_installed(engine):
        hint = " (pip install 'gesture-service[speed]')" if engine in _ENGINE_PACKAGES else ""
        raise EngineUnavailableError(f"engine {engine!r} is not installed{hint}; {_menu(device)}")
    if precision not in supported_precisions(engine, device):
        raise EngineUnavailableError(f"engine {engine!r} cannot run {precision} on {device}; {_menu(device)}")
    return engine


def _menu(device: torch.device) -> str:
    options = [f"{name} ({'/'.join(supported_precisions(name, device))})" for name in available_engines(device)]
    return f"available here: {', '.join(options) or 'none'}"


def build_engine(
    model: nn.Module,
    *,
    engine: str = "torch",
    precision: str = "fp32",
    device: torch.device | str = "cpu",
    input_shape: Sequence[int] = (3, 224, 224),
    cache_dir: str | os.PathLike | None = None,
) -> Engine:
    """An engine running ``model`` (in eval mode) on ``device``; ``input_shape`` is one image's (C, H, W)."""
    device = torch.device(device)
    name = resolve_engine(engine, precision, device)
    model = model.eval()
    if name == "torch":
        return TorchEngine(model, device, precision)
    if name == "compile":
        return CompiledEngine(model, device, precision)
    onnx_path = onnx_export_path(model, tuple(input_shape), cache_dir)
    cached = onnx_path.is_file()
    try:
        if not cached:
            write_onnx(model, tuple(input_shape), onnx_path)
    except Exception as err:  # the exporter raises many types for unsupported ops
        reason = f"{type(err).__name__}: {in_brief(err)}"
        if engine == "auto":  # auto must work wherever eager PyTorch does
            warnings.warn(f"ONNX export failed ({reason}); running eager PyTorch instead", stacklevel=2)
            return TorchEngine(model, device, precision if precision in supported_precisions("torch", device) else "fp32")
        raise EngineUnavailableError(
            f"engine {name!r}: this model cannot be exported to ONNX ({reason}); use engine torch"
        ) from None
    engine_class = OnnxRuntimeEngine if name == "onnx" else OpenVinoEngine
    try:
        return engine_class(onnx_path, device, precision, tuple(input_shape))
    except Exception as err:
        if not cached:
            raise
        # cut short or changed since it was written (a full disk, a copied cache): every start failed on it until deleted
        warnings.warn(f"the cached ONNX export {onnx_path} does not load ({type(err).__name__}: {in_brief(err)}): exported again", stacklevel=2)
        onnx_path.unlink(missing_ok=True)
        write_onnx(model, tuple(input_shape), onnx_path)
        return engine_class(onnx_path, device, precision, tuple(input_shape))


class Engine(ABC):
    """``engine(batch (N, C, H, W) float32) -> logits (N, K) float32`` on ``engine.device``; thread-safe."""

    name: str = ""
    # True where calls from several threads at once overlap usefully instead of fighting over the cores
    concurrent_calls: bool = False

    def __init__(self, device: torch.device, precision: str):
        self.device = device
        self.precision = precision

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, {self.precision}, {self.device})"

    def describe(self) -> dict[str, str]:
        return {"engine": self.name, "precision": self.precision, "device": str(self.device)}

    @abstractmethod
    def __call__(self, batch: torch.Tensor) -> torch.Tensor: ...


class TorchEngine(Engine):
    """Eager PyTorch, the reference every other engine is tested against; bf16/fp16 through autocast."""

    name = "torch"

    def __init__(self, model: nn.Module, device: torch.device, precision: str = "fp32"):
        super().__init__(device, precision)
        self.model = model.to(device)
        if device.type == "cuda" and precision == "fp32":
            # fp32 means fp32: cuDNN's default TF32 convolutions put logits about 1e-2 off (process-wide switch)
            torch.backends.cudnn.allow_tf32 = False
        self.channels_last = device.type == "cuda"  # cuDNN's fast layout; on CPU it changes nothing for lite0
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def _autocast(self):
        if self.precision == "fp32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(batch)

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device, non_blocking=True)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            return self._forward(batch).float()


class CompiledEngine(TorchEngine):
    """``torch.compile`` (Inductor, weights frozen into the graph).

    Batches are padded to the next of a few fixed sizes (1, 2, 4, … 64; larger ones run in chunks of
    64), each compiled once with static shapes on first use: static kernels are faster, and compile
    far sooner, than dynamic-shape ones. Padding rows are zeros; eval-mode layers treat rows
    independently, so they do not change the real rows' results.
    """

    name = "compile"
    BUCKETS = (1, 2, 4, 8, 16, 32, 64)

    def __init__(self, model: nn.Module, device: torch.device, precision: str = "fp32"):
        super().__init__(model, device, precision)
        if device.type == "cpu":  # Inductor's C++ build logged "No CUDA runtime is found" on every CPU, amid a command's output
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        # Freezing folds BatchNorm and pre-packs weights for oneDNN: the big win on CPU inference. Passed to this
        # model's compile alone, where setting torch._inductor.config froze every later compile in the process too.
        self._compiled = torch.compile(self.model, dynamic=False, options={"freezing": True})
        self._lock = threading.Lock()  # dynamo's first (compiling) calls are not re-entrant

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        largest = self.BUCKETS[-1]
        if len(batch) > largest:
            return torch.cat([self._forward(batch[i : i + largest]) for i in range(0, len(batch), largest)])
        size = next(b for b in self.BUCKETS if b >= len(batch))
        if size > len(batch):
            padded = torch.cat([batch, batch.new_zeros((size - len(batch), *batch.shape[1:]))])  # made in inference mode
        else:  # an inference tensor too: dynamo guards on the kind, and a bucket met with both compiled twice, so that the
            # warm-up's ten compiles passed its limit of eight, and batches of 17-32 then ran uncompiled (a review's log)
            padded = batch if batch.is_inference() else batch.clone()
        with self._lock:
            return self._compiled(padded)[: len(batch)]


class _ExportedEngine(Engine):
    """Shared by the engines that run an exported graph on numpy arrays."""

    def __init__(self, path: Path, device: torch.device, precision: str, input_shape: tuple[int, ...]):
        super().__init__(device, precision)
        self.path = path
        self.input_shape = input_shape
        self.num_outputs = 0  # set by subclasses from the graph, for empty batches

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if tuple(batch.shape[1:]) != self.input_shape:
            raise ValueError(
                f"{self.name} engine was exported for images of shape {self.input_shape}, got batch {tuple(batch.shape)}"
            )
        if batch.shape[0] == 0:
            return torch.zeros((0, self.num_outputs), dtype=torch.float32)
        array = np.ascontiguousarray(batch.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(np.asarray(self._run(array), dtype=np.float32))

    @abstractmethod
    def _run(self, array: np.ndarray) -> np.ndarray: ...


class OnnxRuntimeEngine(_ExportedEngine):
    name = "onnx"

    def __init__(self, path: Path, device: torch.device, precision: str, input_shape: tuple[int, ...]):
        super().__init__(path, device, precision, input_shape)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.num_outputs = int(self.session.get_outputs()[0].shape[-1])

    def _run(self, array: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: array})[0]  # InferenceSession.run is thread-safe


class OpenVinoEngine(_ExportedEngine):
    """OpenVINO on the CPU; bf16 uses AVX512-BF16/AMX where the CPU has them.

    One image runs on a model compiled for latency (every core on the one request). A batch is split
    into small requests queued on the streams of a model compiled for throughput (one core each, run
    in parallel): no core ever waits for another inside a layer, which matters most for depthwise
    networks and on a busy machine (efficientnet_lite0, batch 16: 1.1-1.2x the latency model's rate
    on the shared 2-core box). Infer requests are not thread-safe, so each calling thread gets its own.
    """

    name = "openvino"
    # each thread's requests queue on the same streams: a second batch starts while the first finishes
    concurrent_calls = True
    _OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
    # A batch goes out as requests of a few images each, queued on the streams. Small requests keep a
    # depthwise network's activations in the core's cache: on the 2-core box, efficientnet_lite0 ran
    # fastest at 1-3 images per request and 10-15% slower at 8-16, mobilenet_v3_large was best at
    # 3-8, and resnet18 did not care (measured by python -m benchmarks.model_call).
    IMAGES_PER_REQUEST = 3

    def __init__(self, path: Path, device: torch.device, precision: str, input_shape: tuple[int, ...]):
        super().__init__(path, device, precision, input_shape)
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(path))
        threads = torch.get_num_threads()
        base = {"INFERENCE_PRECISION_HINT": self._OV_PRECISION[precision], "INFERENCE_NUM_THREADS": threads}
        self.latency_model = core.compile_model(model, "CPU", {**base, "PERFORMANCE_HINT": "LATENCY"})
        self.throughput_model = core.compile_model(
            model, "CPU", {**base, "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": threads}
        )
        self.streams = int(self.throughput_model.get_property("NUM_STREAMS"))
        self.num_outputs = self.latency_model.outputs[0].get_partial_shape()[-1].get_length()
        self._local = threading.local()

    def _requests(self, count: int):
        """This thread's latency request, and at least ``count`` throughput requests."""
        local = self._local
        if not hasattr(local, "single"):
            local.single, local.parallel = self.latency_model.create_infer_request(), []
        while len(local.parallel) < count:
            local.parallel.append(self.throughput_model.create_infer_request())
        return local.single, local.parallel[:count]

    def _request_count(self, images: int) -> int:
        """Requests of at most IMAGES_PER_REQUEST images, in a multiple of the stream count where there
        are enough images, so that every stream gets the same share (8 images: 2+2+2+2, not 3+3+2)."""
        per_round = self.streams * self.IMAGES_PER_REQUEST
        return min(images, self.streams * -(-images // per_round))

    def _run(self, array: np.ndarray) -> np.ndarray:
        if len(array) == 1 or self.streams == 1:
            return self._requests(0)[0].infer([array])[0]
        chunks = np.array_split(array, self._request_count(len(array)))
        _, requests = self._requests(len(chunks))
        for request, chunk in zip(requests, chunks, strict=True):
            request.start_async([np.ascontiguousarray(chunk)])  # queued until one of the streams is free
        for request in requests:
            request.wait()
        return np.concatenate([request.get_output_tensor(0).data.copy() for request in requests])


def _openvino_cpu_capabilities() -> tuple[str, ...]:
    global _OV_CAPABILITIES
    if _OV_CAPABILITIES is None:
        import openvino as ov

        _OV_CAPABILITIES = tuple(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    return _OV_CAPABILITIES


_OV_CAPABILITIES: tuple[str, ...] | None = None


# --- export --------------------------------------------------------------------------------------


def model_fingerprint(model: nn.Module, input_shape: Sequence[int]) -> str:
    """Hash of what the exported graph depends on: architecture, weights, input shape, exporter."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{EXPORT_FORMAT_VERSION}|{torch.__version__}|{ONNX_OPSET}|{tuple(input_shape)}|{model!r}".encode())
    for key, tensor in model.state_dict().items():
        h.update(key.encode())
        h.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()


def onnx_export_path(model: nn.Module, input_shape: Sequence[int], cache_dir: str | os.PathLike | None = None) -> Path:
    """Where ``model``'s ONNX export is cached: named by its fingerprint."""
    folder = Path(cache_dir) if cache_dir else cache_root() / "engines"
    return folder / f"{model_fingerprint(model, input_shape)}.onnx"


def write_onnx(model: nn.Module, input_shape: Sequence[int], path: Path) -> Path:
    """Export ``model`` to ``path``, whole or not at all."""
    cpu_model = copy.deepcopy(model).to("cpu", torch.float32).eval()
    example = torch.zeros((2, *input_shape))
    with atomic_output(path, suffix=".onnx") as tmp:  # a concurrent loader sees either no file or a whole one
        # The TorchScript-based exporter needs no extra packages (the dynamo one needs onnxscript). Where an
        # operator fails it prints its whole graph (dozens of lines) through C++ to stdout, whatever its
        # verbose says: `TAG=$(python -m service.import_model ...)` took them for the tag. The exception says what failed.
        with warnings.catch_warnings(), torch.no_grad(), native_stdout_discarded():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                cpu_model, (example,), str(tmp), dynamo=False, opset_version=ONNX_OPSET,
                input_names=["images"], output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            )  # fmt: skip
    return path
