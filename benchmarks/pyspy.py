"""Where a server's Python threads spend their CPU, from py-spy samples (``pip install py-spy``).

py-spy samples only Python threads, and by default only the ones that are running, not waiting. The
inference engines' own threads (OpenVINO, ONNX Runtime) are native and invisible to it, so the
profile is exactly the per-request Python work around the model: HTTP, multipart parsing, decoding,
preprocessing and hand-offs. Each running sample is put in the first category whose pattern occurs in
its stack, innermost frame first.

Beside the samples, ``cpu_by_role`` accounts for every thread's CPU time exactly (from /proc), by what
the thread is: the event loop, the model threads, the request threads, or the engine's native threads,
which py-spy cannot see. Only that table says how much of a request's CPU the network itself takes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

RATE = 250  # samples per second per thread

# (category, pattern on a frame, "function (path/of/file.py:line)" with the path as imported); the first
# match from the innermost frame wins
CATEGORIES = [
    ("engine call (Python side, and waiting on the engine where that waits busily)", r"\(gesture_core/engines\.py"),
    ("JPEG decode", r"\(gesture_core/images\.py"),
    ("resize, crop, normalise", r"\(gesture_core/preprocess\.py"),
    ("multipart parsing", r"\((?:multipart|python_multipart)/|\(service/http_guard\.py"),
    ("BentoML request/response handling", r"\((?:bentoml|_bentoml_impl|_bentoml_sdk|pydantic|pydantic_core)/"),
    ("HTTP server (uvicorn, h11/httptools, starlette)", r"\((?:uvicorn|h11|httptools|starlette|anyio)/"),
    ("asyncio event loop", r"\((?:asyncio|uvloop)/"),
    ("micro-batcher thread", r"\(service/microbatch\.py"),
    ("our service code", r"\(service/"),
]


# (role, pattern on the Python thread name), for the per-thread CPU table; threads with no Python
# frames (the engines' own) are the last role
THREAD_ROLES = [
    ("event loop: HTTP, BentoML, middlewares", r"^MainThread$"),
    ("model threads: decoding and cropping small uploads, normalise, engine call and softmax (Python side)", r"^gesture-model"),
    ("request threads: decoding and cropping uploads over 256 KB, finding hands", r"^AnyIO worker"),
    ("other Python threads", r""),
]
NATIVE_ROLE = "engine's native threads (the network itself), and other non-Python threads"
SUPERVISOR_ROLE = "bentoml serve's supervisor process"


def executable() -> str | None:
    """py-spy beside this Python (a virtualenv's bin/, which need not be on PATH), else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def available() -> bool:
    return executable() is not None


@contextmanager
def recording(pid: int, path: Path, seconds: float) -> Iterator[None]:
    """Sample ``pid`` and its children into ``path`` (py-spy's raw collapsed stacks) while the body runs."""
    if not available():
        raise RuntimeError("py-spy is not installed: pip install py-spy (or pip install -e '.[dev]')")
    command = [executable(), "record", "--pid", str(pid), "--subprocesses", "--rate", str(RATE), "--nonblocking",
               "--format", "raw", "--duration", str(max(1, round(seconds))), "--output", str(path)]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield
    finally:
        _, err = process.communicate(timeout=seconds + 60)
        if process.returncode != 0 or not path.exists():
            raise RuntimeError(f"py-spy failed ({process.returncode}): {err.decode(errors='replace')[-500:]}")


def categorise(raw: str) -> Counter[str]:
    """Samples per category, from py-spy's raw output (``frame;frame;…;innermost count`` per line)."""
    patterns = [(name, re.compile(pattern)) for name, pattern in CATEGORIES]
    counts: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")[::-1]
        name = next((n for f in frames for n, p in patterns if p.search(f)), "other")
        counts[name] += int(count)
    return counts


def per_request_ms(counts: Counter[str], requests: int) -> list[dict[str, float | str]]:
    """Rows of (category, samples, CPU ms per request), largest first."""
    total = sum(counts.values()) or 1
    return [{"category": name, "samples": n, "share": n / total, "ms_per_req": 1000 * n / RATE / max(requests, 1)}
            for name, n in counts.most_common()]  # fmt: skip


def thread_names(pid: int) -> dict[int, str]:
    """OS thread id -> Python thread name, for the Python threads of ``pid`` (``py-spy dump``)."""
    out = subprocess.run([executable(), "dump", "--pid", str(pid), "--json"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"py-spy dump failed ({out.returncode}): {out.stderr[-500:]}")
    return {t["os_thread_id"]: t["thread_name"] or "" for t in json.loads(out.stdout) if t.get("os_thread_id")}


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """User + system CPU seconds of each thread of ``pid`` so far, from /proc (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # the thread ended
            continue
        seconds[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    return seconds


def thread_role(name: str | None) -> str:
    if name is None:
        return NATIVE_ROLE
    return next(role for role, pattern in THREAD_ROLES if re.search(pattern, name))


def cpu_by_role(
    before: dict[int, float], after: dict[int, float], names: dict[int, str], requests: int, supervisor: bool = False
) -> Counter[str]:
    """CPU ms per request of each thread role between two ``thread_cpu_seconds`` snapshots of one process."""
    ms: Counter[str] = Counter()
    for tid, seconds in after.items():
        role = SUPERVISOR_ROLE if supervisor else thread_role(names.get(tid))
        ms[role] += 1000 * (seconds - before.get(tid, 0.0)) / max(requests, 1)
    return ms
