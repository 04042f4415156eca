"""What the speed benchmarks share: the machine's description, the matmul ceiling, noise-resistant
timing, and printing a table or JSON lines.

Timing is "best of several short windows": on a machine shared with other jobs, a window in which
another process took the cores says nothing about our code, so the fastest window is the estimate of
what the code does on the hardware. The ceiling is measured the same way, in the same process, so the
percentage of the ceiling compares like with like.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

MATMUL_SIZE = 2048


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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


def matmul_ceiling(dtype: torch.dtype = torch.float32, *, seconds: float = 2.0, device: str = "cpu") -> float:
    """GFLOP/s of a large square matmul: what this process can get from the hardware in ``dtype``."""
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device).to(dtype)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device).to(dtype)
    torch.mm(a, b)
    sync = torch.cuda.synchronize if device == "cuda" else None
    flops = 2 * MATMUL_SIZE**3
    return best_rate(lambda: torch.mm(a, b), items=flops, seconds=seconds, windows=4, sync=sync) / 1e9


def rescale_to_ceiling(row: dict[str, Any], ceiling: float) -> None:
    """Restate a row's percentage against ``ceiling``: the best matmul of the run (start or end). On a
    shared machine the lower one was measured while other jobs held the cores, and would flatter every row."""
    row["ceiling_gflops"] = round(ceiling, 1)
    row["pct_of_ceiling"] = round(100 * row["achieved_gflops"] / ceiling, 1)


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
