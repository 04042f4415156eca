"""HTTP service speed: the real ``bentoml serve`` on 127.0.0.1 under 1, 4 and 16 concurrent clients on
/predict, against the engine's own batched throughput; ``--batching microbatch adaptive`` adds the A/B
of the service's micro-batcher against BentoML's adaptive batching (benchmarks/adaptive_service.py), and
``floor`` the same /predict with no model behind it (benchmarks/bentoml_floor.py): BentoML's own CPU per
request, and from it the most /predict could serve if this project's code cost nothing.

    .venv/bin/python -m benchmarks.serve --quick
    .venv/bin/python -m benchmarks.serve --engine openvino --precision bf16 --clients 16 --duration 20 --json
    .venv/bin/python -m benchmarks.serve --image-size 160 --clients 64 --duration 60   # overload: fairness and memory
    .venv/bin/python -m benchmarks.serve --clients 16 --batching microbatch floor     # the service against BentoML's floor
    .venv/bin/python -m benchmarks.serve --device cuda --clients 1 16 32 64      # on a GPU: the engine at batch 32

Each client posts one real photo at a time (multipart JPEG) in a closed loop for a bounded time;
requests/s, latency percentiles and errors come from the clients. The reference is the same checkpoint
loaded with the same engine and precision (GESTURE_ENGINE / GESTURE_PRECISION, passed to the service)
in this process, timed on preprocessed batches of 16 (32 on a GPU; ``--engine-batch``) while the server
is idle: what the model alone can do. The server, the clients and that measurement share the machine's cores.
Server and client code are ``benchmarks.serve_latency``'s (``running_service``, ``drive``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchmarks import pyspy
from benchmarks.common import (
    best_rate,
    check_input_size,
    client_count,
    describe_machine,
    emit,
    machine,
    measured_seconds,
    note,
    served_checkpoint,
    warmup_seconds,
)
from benchmarks.serve_latency import TARGETS, batch_size_stats, drive, load_images, make_checkpoint, running_service
from gesture_core import load_classifier
from gesture_core.checkpoint import resolve_device
from gesture_core.cli import CommandParser, command
from gesture_core.engines import ENGINE_CHOICES, PRECISIONS
from gesture_core.runtime import DEVICES
from service.settings import MOST_BATCH_SIZE
from training.cli import backbone_name, image_size, int_at_least

# batching -> the service `bentoml serve` runs; "floor" answers without a model (benchmarks/bentoml_floor.py)
SERVICES = {**TARGETS, "floor": "benchmarks.bentoml_floor:BentoMLFloor"}

COLUMNS = [
    ("route", "endpoint", "s"), ("batching", "batching", "s"), ("clients", "clients", "d"), ("requests", "requests", "d"), ("req_per_s", "req/s", ".1f"),
    ("p50_ms", "p50 ms", ".0f"), ("p95_ms", "p95 ms", ".0f"), ("p99_ms", "p99 ms", ".0f"), ("p99_over_p50", "p99/p50", ".2f"),
    ("errors", "errors", "d"), ("mean_batch", "mean batch", ".1f"), ("pct_of_engine", "% of engine batched img/s", ".0f"),
    ("server_cpu_ms_per_req", "server CPU ms/req", ".1f"), ("client_cpu_ms_per_req", "client CPU ms/req", ".1f"),
    ("cpu_bound_req_per_s", "CPU-bound limit req/s", ".0f"), ("rss_mb", "server RSS MB after warm-up", ".0f"),
    ("rss_growth_mb", "RSS growth MB while measured", "+.0f"),
]  # fmt: skip
PROFILE_COLUMNS = [("category", "Python work (py-spy, running samples)", "s"), ("share", "share", ".0%"), ("ms_per_req", "CPU ms/req", ".2f")]
THREAD_COLUMNS = [("thread", "server threads", "s"), ("ms_per_req", "CPU ms/req", ".2f")]


def engine_throughput(
    checkpoint: Path, device: str, engine: str, precision: str, images: list[bytes], batches: tuple[int, ...], seconds: float
) -> tuple[dict[int, float], str]:
    """img/s of the model alone on preprocessed batches of each size, loaded exactly as the service loads it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        classifier = load_classifier(checkpoint, device, engine=engine, precision=precision)
    crops = [classifier.crop(data) for data in images]
    rates = {}
    for batch in batches:
        x = [crops[i % len(crops)] for i in range(batch)]
        classifier.classify(x)
        rates[batch] = best_rate(lambda x=x: classifier.classify(x), items=batch, seconds=seconds, windows=3)
    return rates, f"{classifier.engine.name}/{classifier.engine.precision}"


def cpu_seconds(pid: int, *, descendants: bool = True) -> float:
    """User + system CPU time of a process and (by default) all its descendants (the server and its workers)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *(root.children(recursive=True) if descendants else [])]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def batch_counts(url: str, batching: str) -> tuple[float, float]:
    """(images, model calls) so far: the micro-batcher's from /info, adaptive batching's from BentoML's metrics."""
    if batching == "floor":
        return 0.0, 0.0
    if batching == "microbatch":
        counts = httpx.post(f"{url}/info").json()["batching"]
        return counts["images"], counts["model_calls"]
    return batch_size_stats(httpx.get(f"{url}/metrics").text)


def rss_mb(pid: int) -> float:
    """Resident memory of the server and all its processes (the workers hold the model)."""
    try:
        root = psutil.Process(pid)
        return sum(proc.memory_info().rss for proc in (root, *root.children(recursive=True))) / 2**20
    except psutil.NoSuchProcess:
        return 0.0


class RssSampler:
    """The server's RSS every ``interval`` seconds in a thread, while a load runs: flat memory under
    load means the samples after warm-up stay level."""

    def __init__(self, pid: int, interval: float = 0.5):
        self.pid, self.interval, self.samples = pid, interval, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), rss_mb(self.pid)))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def after(self, moment: float) -> list[float]:
        return [mb for t, mb in self.samples if t >= moment] or [rss_mb(self.pid)]


def load_test(
    url: str, batching: str, images: list[bytes], clients: int, duration: float, warmup: float, reference: float, server_pid: int
) -> dict[str, Any]:
    before = batch_counts(url, batching)
    cpu_before, own_before, started = cpu_seconds(server_pid), cpu_seconds(os.getpid(), descendants=False), time.perf_counter()
    with RssSampler(server_pid) as memory:
        result = drive(url, "predict", images, clients=clients, duration=duration, warmup=warmup)
    wall = time.perf_counter() - started
    measured_rss = memory.after(started + warmup)
    # Where the cores went, per measured request: the server (HTTP, decoding, model) and the clients.
    per_request = lambda cpu: 1000 * cpu / wall * result.seconds / max(result.requests, 1)  # noqa: E731
    server_ms, client_ms = (
        per_request(cpu_seconds(server_pid) - cpu_before),
        per_request(cpu_seconds(os.getpid(), descendants=False) - own_before),
    )  # the server is our child: not counted twice
    after = batch_counts(url, batching)
    mean_batch = (after[0] - before[0]) / (after[1] - before[1]) if after[1] > before[1] else None
    p50, p99 = result.percentile(50), result.percentile(99)
    return {
        "route": "/predict", "batching": batching, "clients": clients, "seconds": round(result.seconds, 1), "requests": result.requests,
        "req_per_s": round(result.throughput, 2), "p50_ms": round(p50, 1), "p95_ms": round(result.percentile(95), 1),
        "p99_ms": round(p99, 1), "p99_over_p50": round(p99 / p50, 2) if p50 else None,
        "errors": sum(result.errors.values()), "error_kinds": result.errors, "mean_batch": mean_batch,
        "engine_img_per_s": round(reference, 2),
        "pct_of_engine": round(100 * result.throughput / reference, 1) if batching != "floor" else None,  # no model: no share of it
        "server_cpu_ms_per_req": round(server_ms, 2), "client_cpu_ms_per_req": round(client_ms, 2),
        # all cores busy with exactly this work per request: the most this machine could serve
        "cpu_bound_req_per_s": round(1000 * (os.cpu_count() or 1) / (server_ms + client_ms), 1) if server_ms else None,
        "rss_mb": round(measured_rss[0]), "rss_growth_mb": round(measured_rss[-1] - measured_rss[0]), "kind": "serve",
    }  # fmt: skip


def floor_bound(rows: list[dict[str, Any]], engine_img_per_s: float) -> str | None:
    """The most /predict can serve through BentoML on these cores: the engine's CPU per image (all
    cores busy at its batched rate) plus BentoML's own server CPU and the client's per request, as the
    floor run measured them at the largest client count; this project's code counted as free."""
    floor = max((r for r in rows if r["batching"] == "floor"), key=lambda r: r["clients"], default=None)
    if floor is None or not floor["requests"]:
        return None
    cores = os.cpu_count() or 1
    engine_ms = 1000 * cores / engine_img_per_s
    bound = 1000 * cores / (engine_ms + floor["server_cpu_ms_per_req"] + floor["client_cpu_ms_per_req"])
    return (f"BentoML's own path (no model, {floor['clients']} clients): {floor['server_cpu_ms_per_req']:.2f} ms server CPU and "
            f"{floor['client_cpu_ms_per_req']:.2f} ms client CPU per request; with the engine's {engine_ms:.2f} ms per image on "
            f"{cores} cores, /predict can serve at most {bound:.1f} req/s = {100 * bound / engine_img_per_s:.0f}% of the engine, "
            "even if decoding, cropping and batching cost nothing")


def python_profile(
    server, images: list[bytes], clients: int, seconds: float, folder: Path
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A separate load run under py-spy: CPU ms per request of each kind of Python work in the server
    (sampled), and of each kind of server thread (counted exactly, the engine's native threads included)."""
    path = folder / "py-spy.txt"
    processes = server_processes(server.process.pid)
    names = {pid: pyspy.thread_names(pid) for pid in processes}
    before = {pid: pyspy.thread_cpu_seconds(pid) for pid in processes}
    with pyspy.recording(server.process.pid, path, seconds):
        result = drive(server.url, "predict", images, clients=clients, duration=seconds, warmup=0.0)
    roles: Counter[str] = Counter()
    for pid in processes:
        roles.update(pyspy.cpu_by_role(before[pid], pyspy.thread_cpu_seconds(pid), names[pid], result.requests,
                                       supervisor=pid == server.process.pid))  # fmt: skip
    rows = pyspy.per_request_ms(pyspy.categorise(path.read_text()), result.requests)
    threads = [{"thread": role, "ms_per_req": ms} for role, ms in roles.most_common()]
    for row in rows + threads:
        row.update(route="/predict", clients=clients, kind="python_profile" if "category" in row else "thread_cpu")
    return rows, threads


def server_processes(pid: int) -> list[int]:
    root = psutil.Process(pid)
    return [root.pid, *(child.pid for child in root.children(recursive=True))]


def service_setting(item: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name.startswith("GESTURE_"):
        raise argparse.ArgumentTypeError(f"{item!r}: expected GESTURE_<SETTING>=VALUE, e.g. GESTURE_TRACING=on")
    return name, value


@command
def main(argv: list[str] | None = None) -> int:
    p = CommandParser(prog="python -m benchmarks.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=served_checkpoint, help="default: efficientnet_lite0 with ImageNet weights and a random 10-class head")
    p.add_argument("--backbone", type=backbone_name, default="efficientnet_lite0", help="without --checkpoint")
    p.add_argument("--image-size", type=image_size, help="without --checkpoint: input size (default: the backbone's)")
    p.add_argument("--device", default="auto", choices=DEVICES, help="GESTURE_DEVICE for the service, and where the engine alone is timed")
    p.add_argument("--engine", default="auto", choices=ENGINE_CHOICES, help="GESTURE_ENGINE for the service")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS, help="GESTURE_PRECISION for the service")
    p.add_argument("--service-env", nargs="+", default=[], metavar="NAME=VALUE", type=service_setting,
                   help="more service settings, e.g. GESTURE_TRACING=on (docs/serving.md, Settings)")
    p.add_argument("--clients", type=client_count, nargs="+", default=[1, 4, 16])
    p.add_argument("--engine-batch", type=int_at_least(1, MOST_BATCH_SIZE), help="the batch size of the reference, the engine alone (default: 16 on a CPU, "
                   "32 on a GPU, as the targets use)")
    p.add_argument("--batching", nargs="+", choices=list(SERVICES), default=["microbatch"],
                   help="microbatch: the service; adaptive: the A/B with BentoML's adaptive batching; "
                        "floor: the same /predict with no model (BentoML's own cost)")
    p.add_argument("--duration", type=measured_seconds, default=15.0, help="measured seconds per endpoint and client count")
    p.add_argument(
        "--warmup", type=warmup_seconds, default=3.0, help="seconds of load before measuring (the adaptive batcher calibrates itself)"
    )
    p.add_argument("--quick", action="store_true", help="4 s per measurement, 1 s warm-up (under 2 minutes)")
    p.add_argument("--py-spy", action="store_true", help="after the measurements, profile the server's Python threads with py-spy "
                   "under the largest client count, and print where their CPU goes per request")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    args = p.parse_args(argv)
    check_input_size(p, [args.backbone], args.image_size)
    if args.py_spy and not pyspy.available():
        p.error("--py-spy needs py-spy: pip install py-spy (it is in the [dev] extra)")
    if args.batching == ["floor"]:
        p.error("--batching floor is measured beside a service with a model: add microbatch or adaptive")
    args.batching.sort(key=lambda batching: batching == "floor")  # the model's service first: /info names what was measured
    if args.quick:
        args.duration, args.warmup = 4.0, 1.0
    info = machine()
    note(f"machine: {describe_machine(info)}")
    images = load_images()
    try:
        on_gpu = resolve_device(args.device).type == "cuda"
    except ValueError as err:  # --device cuda where there is none
        p.error(str(err))
    batch = args.engine_batch or (32 if on_gpu else 16)
    env = {"GESTURE_DEVICE": args.device, "GESTURE_ENGINE": args.engine, "GESTURE_PRECISION": args.precision}
    if on_gpu:  # one worker on one GPU, as the engine alone is timed (GESTURE_GPUS=N in --service-env for more)
        env["GESTURE_GPUS"] = "1"
    env.update(args.service_env)
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        checkpoint = args.checkpoint or make_checkpoint(Path(tmp) / "bench.pt", args.backbone, args.image_size)
        rows, rates = [], {}
        for batching in args.batching:
            with running_service(checkpoint, env=env, target=SERVICES[batching]) as server:
                if batching != "floor":
                    served = httpx.post(f"{server.url}/info").json()
                if not rates:  # measured while the server idles, so both sides of the ratio had the cores to themselves
                    rates, engine_name = engine_throughput(checkpoint, args.device, args.engine, args.precision, images,
                                                           (1, batch), 3.0 if args.quick else 8.0)  # fmt: skip
                    note(f"{served['backbone']} @ {served['input_size']} px, engine {engine_name}: {rates[batch]:.1f} img/s at batch {batch} (no HTTP)")
                for clients in args.clients:
                    rows.append(load_test(server.url, batching, images, clients, args.duration, args.warmup, rates[batch], server.process.pid))
                    r = rows[-1]
                    note(f"  /predict ({batching}) x{clients}: {r['req_per_s']:.1f} req/s, p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, "
                         f"{r['errors']} errors" + ("" if r["pct_of_engine"] is None else f", {r['pct_of_engine']:.0f}% of the engine"))  # fmt: skip
                if args.py_spy and batching == args.batching[0]:
                    profile, threads = python_profile(server, images, max(args.clients), args.duration, Path(tmp))
    reference = rates[batch]
    for r in rows:
        r.update(
            backbone=served["backbone"],
            engine=engine_name,
            input_size=served["input_size"],
            engine_batch1_img_per_s=round(rates[1], 2),
        )
    note(f"engine alone: {rates[1]:.1f} img/s one image at a time, {reference:.1f} img/s at batch {batch}")
    if not on_gpu and (floor := floor_bound(rows, reference)):  # a bound in CPU time: no meaning for a GPU's engine
        note(floor)
    title = (f"HTTP service, {served['backbone']} @ {served['input_size']} px, engine {engine_name} "
             f"({rates[1]:.1f} img/s one at a time, {reference:.1f} at batch {batch}, without HTTP); {describe_machine(info)}")  # fmt: skip
    emit(rows, COLUMNS, as_json=args.json, title=title)
    if args.py_spy:
        emit(profile, PROFILE_COLUMNS, as_json=args.json,
             title=f"Where the server's Python threads spend CPU: /predict ({args.batching[0]}), {max(args.clients)} clients (engine threads not included)")
        emit(threads, THREAD_COLUMNS, as_json=args.json,
             title=f"CPU per request by server thread, same run (all threads, from /proc; total {sum(t['ms_per_req'] for t in threads):.2f} ms)")
    return 0 if all(r["requests"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
