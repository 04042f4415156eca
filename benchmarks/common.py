"""What the speed benchmarks share: the machine's description, the GEMM ceiling, noise-resistant
timing, and printing a table or JSON lines.

Timing is "best of several short windows": on a machine shared with other jobs, a window in which
another process took the cores says nothing about our code, so the fastest window is the estimate of
what the code does on the hardware. The ceiling is the best large GEMM or 3x3 convolution of torch,
ONNX Runtime and OpenVINO in the row's precision, measured the same way, with the theoretical peak
stated beside it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gesture_core.backbones import get_backbone
from gesture_core.checkpoint import CheckpointError, load_checkpoint
from gesture_core.cli import checkpoint_arg, refuse_empty_path
from training.cli import float_in, int_at_least

MATMUL_SIZE = 2048
GEMM_FLOPS = 2 * MATMUL_SIZE**3  # a multiply and an add per term
FMA_PIPES = 2  # per core, on current AMD and Intel server cores


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_family() -> int | None:
    """/proc/cpuinfo's "cpu family" (AMD: 25 is Zen 3/4, 26 is Zen 5), where the kernel gives it."""
    try:
        return int(next(line for line in open("/proc/cpuinfo") if line.startswith("cpu family")).split(":", 1)[1])
    except (OSError, StopIteration, ValueError):
        return None


def cpu_flags() -> list[str]:
    """The vector extensions that decide CPU inference speed (AVX-512, bf16, AMX, VNNI)."""
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split(":", 1)[1].split()
    except (OSError, StopIteration):
        return []
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "avx512_fp16")
    return [f for f in wanted if f in flags]


def machine() -> dict[str, Any]:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_flags": cpu_flags(),
        "gpu": gpu,
        "torch": torch.__version__,
        "load_average": [round(x, 1) for x in os.getloadavg()],
    }


def describe_machine(info: dict[str, Any] | None = None) -> str:
    info = info or machine()
    gpu = info["gpu"] or "no GPU"
    load = ", ".join(f"{x:.1f}" for x in info["load_average"])
    return (f"{info['cpu']}, {info['cores']} cores ({info['torch_threads']} torch threads; {' '.join(info['cpu_flags'])}), "
            f"{gpu}, torch {info['torch']}; load average {load}")  # fmt: skip


def best_rate(
    call: Callable[[], Any], *, items: int, seconds: float, windows: int = 3, sync: Callable[[], Any] | None = None
) -> float:
    """Items per second of the fastest of ``windows`` windows of about ``seconds / windows`` each (at least one call)."""
    return best_rate_and_cpu(call, items=items, seconds=seconds, windows=windows, sync=sync)[0]


def best_rate_and_cpu(
    call: Callable[[], Any], *, items: int, seconds: float, windows: int = 3, sync: Callable[[], Any] | None = None
) -> tuple[float, float]:
    """``best_rate``, and the CPU ms per item of that window, counted over every thread of the process
    (threads that spin while they wait show up in it)."""
    best = (0.0, 0.0)
    for _ in range(windows):
        calls, cpu, start = 0, time.process_time(), time.perf_counter()
        while True:
            call()
            calls += 1
            if sync:
                sync()
            elapsed = time.perf_counter() - start
            if elapsed >= seconds / windows:
                break
        rate = calls * items / elapsed
        if rate > best[0]:
            best = (rate, 1e3 * (time.process_time() - cpu) / (calls * items))
    return best


@dataclass(frozen=True)
class Ceiling:
    """The most GFLOP/s this machine gave in one precision: the best of a large GEMM and a large 3x3
    convolution among the installed libraries (``by_kernel``: "library kernel" -> GFLOP/s), beside the
    theoretical peak from the core count, SIMD width and clock."""

    precision: str
    gflops: float
    kernel: str  # which "library kernel" gave ``gflops``
    by_kernel: dict[str, float]
    peak_gflops: float | None
    peak_formula: str

    def describe(self) -> str:
        kernels = ", ".join(f"{name} {rate:.0f}" for name, rate in self.by_kernel.items())
        peak = f"{self.peak_gflops:.0f} GFLOP/s = {self.peak_formula}" if self.peak_gflops else self.peak_formula
        return f"{self.precision}: {self.gflops:.0f} GFLOP/s ({self.kernel}; by kernel: {kernels}); theoretical peak {peak}"


@dataclass(frozen=True)
class Kernel:
    """A large dense kernel, its FLOPs counted as the models' are (2 x multiply-adds, direct convolution)."""

    name: str
    input_shape: tuple[int, ...]
    weight_shape: tuple[int, ...]
    flops: int

    @property
    def is_matmul(self) -> bool:
        return len(self.input_shape) == 2  # else a 3x3 convolution over NCHW


# A GEMM alone is no ceiling for CNNs: ONNX Runtime and OpenVINO ran resnet18 past their own GEMM
# (blocked layouts, and 3x3 kernels cheaper than the direct convolution the models' FLOPs count).
# The convolution is resnet18's layer2 at batch 16, counted the same way as the models.
GEMM = Kernel("GEMM", (MATMUL_SIZE, MATMUL_SIZE), (MATMUL_SIZE, MATMUL_SIZE), GEMM_FLOPS)
CONV3X3 = Kernel("conv3x3", (16, 128, 28, 28), (128, 128, 3, 3), 2 * 16 * 128 * 28 * 28 * 128 * 9)
KERNELS = (GEMM, CONV3X3)
SMALL_GEMM = Kernel("GEMM", (MATMUL_SIZE // 4,) * 2, (MATMUL_SIZE // 4,) * 2, 2 * (MATMUL_SIZE // 4) ** 3)


def hardware_ceiling(precision: str = "fp32", *, seconds: float = 2.0, device: str = "cpu") -> Ceiling:
    """The best of a large GEMM and a large 3x3 convolution in ``precision`` through torch, ONNX Runtime
    and OpenVINO (those installed, and on the CPU for the last two). One library alone is no ceiling: on
    AMD CPUs MKL's torch.mm is far from the hardware's peak, and models run through OpenVINO went past it."""
    rates = {}
    for kernel in KERNELS:
        rates[f"torch {kernel.name}"] = torch_rate(kernel, precision, seconds / len(KERNELS), device)
        if device == "cpu":
            for name, measure in (("onnxruntime", onnxruntime_rate), ("openvino", openvino_rate)):
                rate = measure(kernel, precision, seconds / len(KERNELS))
                if rate:
                    rates[f"{name} {kernel.name}"] = rate
    rates = {name: round(rate, 1) for name, rate in rates.items()}
    best = max(rates, key=rates.__getitem__)
    peak, formula = theoretical_peak(precision) if device == "cpu" else (None, "not computed for GPUs")
    if peak and rates[best] > peak:  # a VM may report only the base clock, and the cores boost above it
        implied = (max_clock_ghz() or 0) * rates[best] / peak
        formula += f"; the {best} implies at least {implied:.2f} GHz (boost), so the peak is at least that rate"
        peak = rates[best]
    return Ceiling(precision, rates[best], best, rates, peak, formula)


def best_ceiling(first: Ceiling, second: Ceiling) -> Ceiling:
    """Of two measurements of the same ceiling (a run's start and end), the higher: on a shared
    machine the lower one was measured while other jobs held the cores, and would flatter every row."""
    return first if first.gflops >= second.gflops else second


def _operands(kernel: Kernel, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.standard_normal(kernel.input_shape, np.float32), rng.standard_normal(kernel.weight_shape, np.float32)


def torch_rate(kernel: Kernel, precision: str, seconds: float, device: str) -> float:
    """GFLOP/s of ``kernel`` through torch. The GEMM is first timed at a quarter of its size: where one
    full call would outlast ``seconds`` (torch's bf16 GEMM on a CPU without native bf16 ran at 0.3
    GFLOP/s, about a minute per call), the small one is the measurement."""
    if kernel is GEMM:
        pilot = _torch_rate(SMALL_GEMM, precision, seconds / 8, device, windows=1)
        if GEMM.flops / (pilot * 1e9) > seconds:
            return pilot
    return _torch_rate(kernel, precision, seconds, device)


def _torch_rate(kernel: Kernel, precision: str, seconds: float, device: str, windows: int = 4) -> float:
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    x, w = (torch.from_numpy(a).to(device=device, dtype=dtype) for a in _operands(kernel))
    if kernel.is_matmul:
        call = lambda: torch.mm(x, w)  # noqa: E731
    else:  # channels-last: the layout training and the fast engines use
        x, w = x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)
        call = lambda: torch.nn.functional.conv2d(x, w, padding=1)  # noqa: E731
    with torch.inference_mode():
        call()
        sync = torch.cuda.synchronize if device == "cuda" else None
        return best_rate(call, items=kernel.flops, seconds=seconds, windows=windows, sync=sync) / 1e9


def kernel_onnx_model(kernel: Kernel):
    """An ONNX graph of one fp32 MatMul or 3x3 Conv (padding 1): X (input) with W (a constant)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(_operands(kernel)[1], "W")
    if kernel.is_matmul:
        node, output_shape = helper.make_node("MatMul", ["X", "W"], ["Y"]), list(kernel.input_shape)
    else:
        node = helper.make_node("Conv", ["X", "W"], ["Y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        output_shape = [kernel.input_shape[0], kernel.weight_shape[0], *kernel.input_shape[2:]]
    graph = helper.make_graph(
        [node], kernel.name,
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(kernel.input_shape))],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, output_shape)], [weights],
    )  # fmt: skip
    return onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def onnxruntime_rate(kernel: Kernel, precision: str, seconds: float) -> float | None:
    """ONNX Runtime's CPU provider runs MatMul and Conv in fp32 only."""
    if precision != "fp32" or importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
        return None
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(kernel_onnx_model(kernel).SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = _operands(kernel, seed=1)[0]
    session.run(None, {"X": x})
    return best_rate(lambda: session.run(None, {"X": x}), items=kernel.flops, seconds=seconds, windows=4) / 1e9


def openvino_rate(kernel: Kernel, precision: str, seconds: float) -> float | None:
    """OpenVINO's CPU plugin, with the precision as its inference hint (as gesture_core.engines sets it)."""
    if importlib.util.find_spec("openvino") is None or importlib.util.find_spec("onnx") is None:
        return None
    import openvino as ov

    core = ov.Core()
    hint = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}[precision]
    if precision != "fp32" and precision.upper() not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        return None
    model = core.read_model(kernel_onnx_model(kernel).SerializeToString(), b"")
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": torch.get_num_threads(),
                                                 "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    x = _operands(kernel, seed=1)[0]
    request.infer([x])
    return best_rate(lambda: request.infer([x]), items=kernel.flops, seconds=seconds, windows=4) / 1e9


def theoretical_peak(precision: str) -> tuple[float | None, str]:
    """(GFLOP/s, the formula) from cores x SIMD lanes x 2 (a fused multiply-add) x FMA pipes x clock.
    The datapath is 512 bits on Intel cores with AVX-512 and on AMD Zen 5 (CPU family 26), 256 bits on
    Zen 4 (which runs AVX-512 as two 256-bit halves) and with AVX2; two FMA pipes per core. The clock is
    the highest the kernel reports; in a VM that may be the base clock, below what the core boosts to. bf16 dot products (AVX512_BF16)
    and fp16 arithmetic (AVX512_FP16) do twice the fp32 lanes; AMX is not counted."""
    ghz = max_clock_ghz()
    if ghz is None:
        return None, "unknown (no clock speed in /proc/cpuinfo or cpufreq)"
    flags, cores = cpu_flags(), os.cpu_count() or 1
    full_avx512 = "avx512f" in flags and ("AMD" not in cpu_model() or (cpu_family() or 0) >= 26)
    width = 512 if full_avx512 else 256 if ("avx2" in flags or "avx512f" in flags) else 128
    lanes = width // 32 * (2 if (precision == "bf16" and "avx512_bf16" in flags) or (precision == "fp16" and "avx512_fp16" in flags) else 1)
    peak = cores * lanes * 2 * FMA_PIPES * ghz
    return round(peak, 1), f"{cores} cores x {lanes} {precision} lanes ({width}-bit) x 2 (FMA) x {FMA_PIPES} FMA pipes x {ghz:.2f} GHz"


def max_clock_ghz() -> float | None:
    try:
        return int(open("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read()) / 1e6
    except (OSError, ValueError):
        pass
    try:
        return max(float(line.split(":")[1]) for line in open("/proc/cpuinfo") if line.startswith("cpu MHz")) / 1e3
    except (OSError, ValueError):
        return None


def rescale_to_ceiling(row: dict[str, Any], ceiling: Ceiling) -> None:
    """State a row's percentage against ``ceiling``; a row above 100% means the ceiling is wrong, and says so."""
    row["ceiling_gflops"] = round(ceiling.gflops, 1)
    row["ceiling_kernel"] = ceiling.kernel
    row["peak_gflops"] = ceiling.peak_gflops
    row["pct_of_ceiling"] = round(100 * row["achieved_gflops"] / ceiling.gflops, 1)
    if row["pct_of_ceiling"] > 100:
        note(f"warning: a row reaches {row['pct_of_ceiling']:.0f}% of the {ceiling.precision} ceiling, which is then no ceiling: {row}")


def emit(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]], *, as_json: bool, title: str = "") -> None:
    """JSON lines on stdout, or a markdown table; ``columns`` are (key, header, format)."""
    if as_json:
        for row in rows:
            print(json.dumps(row), flush=True)
        return
    if title:
        print(f"\n{title}")
    print("| " + " | ".join(header for _, header, _ in columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        cells = [format(row[key], fmt) if row.get(key) is not None else "–" for key, _, fmt in columns]
        print("| " + " | ".join(cells) + " |")
    sys.stdout.flush()


def note(message: str) -> None:
    """Progress and context on stderr, so --json output stays pure JSON lines; under torchrun, rank 0's only."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(message, file=sys.stderr, flush=True)


class PeakRss:
    """A process's peak RSS during a block (a service worker, or a decode in a fresh process), as growth
    over its RSS just before (Linux /proc)."""

    def __init__(self, pid: int):
        self.pid = pid

    def field_kb(self, name: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
        raise RuntimeError(f"/proc/{self.pid}/status has no {name}")

    def measure(self, work: Callable[[], object]) -> tuple[object, float]:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # high-water mark := current RSS
        before = self.field_kb("VmRSS")
        result = work()
        return result, (self.field_kb("VmHWM") - before) / 1024


def csv_list(kind=str, choices=None):
    """An argparse type for comma-separated values of ``kind``, each one of ``choices`` where given. An empty
    item ("a,,b", ",") is refused: it is a typo, and "," ran nothing for an hour's benchmark."""
    allowed = f": choose from {', '.join(map(str, choices))}" if choices else ""

    def parse(text: str):
        items = [v.strip() for v in text.split(",")]
        if not all(items):
            raise argparse.ArgumentTypeError(f"{text!r} has an empty item: expected comma-separated values{allowed}")
        values = [kind(v) for v in items]
        if unknown := [str(v) for v in values if choices and v not in choices]:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown)}{allowed}")
        return values

    return parse


# Seconds a benchmark measures or warms up for: NaN never closed a timing window (no comparison with it
# is true) and 1e30 ran on; a day is past what any benchmark here needs.
MOST_SECONDS = 24 * 3600
measured_seconds = float_in(0.1, MOST_SECONDS, high_inclusive=True)
warmup_seconds = float_in(0.0, MOST_SECONDS, high_inclusive=True)
# Clients or connections of a load test: each is a thread or an open socket of this process, so a count
# past ten thousand measures this machine's limits rather than the service.
MOST_CLIENTS = 10_000
client_count = int_at_least(1, MOST_CLIENTS)


def check_input_size(parser: argparse.ArgumentParser, backbones: Sequence[str], size: int | None) -> None:
    """--image-size against each backbone's own minimum (``image_size`` took the smallest any backbone takes),
    before the work rather than when a model is built."""
    for name in backbones if size is not None else ():
        try:
            get_backbone(name).check_input_size(size)
        except ValueError as err:
            parser.error(f"argument --image-size: {err}")


def existing_folder(text: str) -> Path:
    """A folder given by hand, found before the work rather than when the benchmark first reads it."""
    refuse_empty_path(text, "a folder")
    if not Path(text).expanduser().is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file: pass a folder" if Path(text).expanduser().exists() else f"{text}: no such folder")
    return Path(text).expanduser()


def finished_run(text: str) -> Path:
    """A training run's folder with its model and its test split (best.pt and split.json), checked before the work."""
    run = existing_folder(text)
    if missing := [name for name in ("best.pt", "split.json") if not (run / name).is_file()]:
        raise argparse.ArgumentTypeError(f"{text} is not a finished training run: it has no {' or '.join(missing)}")
    return run


def served_checkpoint(text: str) -> Path:
    """A checkpoint (or a run folder) the service can load, read now: a photo passed for one was found out
    only once the service was being started, as a traceback from its import."""
    path = checkpoint_arg("best.pt")(text)
    try:
        load_checkpoint(path)
    except CheckpointError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return path
