"""HTTP serving speed: p50 latency and throughput for N concurrent single-image clients on /predict,
batched by the worker's micro-batcher (the service) or by BentoML's adaptive batching (the A/B in
benchmarks/adaptive_service.py).

    .venv/bin/python -m benchmarks.serve_latency                     # efficientnet_lite0 @224, 16 clients, 20 s each
    .venv/bin/python -m benchmarks.serve_latency --checkpoint runs/NAME/best.pt --duration 30 --json out.json

Everything is real: the checkpoint goes through ``python -m service.import_model`` into a private
BentoML store, ``bentoml serve`` runs on a free 127.0.0.1 port, and the clients post JPEG files
(sign-digits photos, or generated ones when ../shared/data is absent) as multipart uploads. Without
--checkpoint the model has ImageNet weights and an untrained head: speed does not depend on the head.

Reusable pieces: ``running_service`` (import + serve) and ``drive`` (concurrent clients for a bounded time).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from benchmarks.common import check_input_size, client_count, csv_list, measured_seconds, served_checkpoint, warmup_seconds
from benchmarks.server_process import REPO, SERVICE_TARGET, RunningServer, serve_process
from gesture_core.cli import CommandParser, command
from gesture_core.engines import ENGINE_CHOICES, PRECISIONS
from gesture_core.runtime import DEVICES
from training.cli import backbone_name, image_size

DATA = REPO.parent / "shared" / "data" / "sign-digits"
# batching -> the service that `bentoml serve` runs; both answer POST /predict with the same contract
TARGETS = {"microbatch": SERVICE_TARGET, "adaptive": "benchmarks.adaptive_service:AdaptiveGestureClassifier"}


@dataclass
class LoadResult:
    route: str
    clients: int
    seconds: float
    latencies_ms: list[float] = field(repr=False)
    errors: dict[str, int]
    mean_batch_size: float | None = None

    @property
    def requests(self) -> int:
        return len(self.latencies_ms)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def summary(self) -> dict:
        return {"route": self.route, "clients": self.clients, "seconds": round(self.seconds, 1), "requests": self.requests,
                "p50_ms": round(self.percentile(50), 1), "p90_ms": round(self.percentile(90), 1),
                "p99_ms": round(self.percentile(99), 1), "throughput_rps": round(self.throughput, 2),
                "errors": self.errors, "mean_batch_size": self.mean_batch_size}


def make_checkpoint(path: Path, backbone: str = "efficientnet_lite0", image_size: int | None = None, num_classes: int = 10) -> Path:
    """ImageNet weights (when available offline) and a random head: the speed of a fine-tuned model."""
    import torch

    from gesture_core import build_model, get_backbone, save_checkpoint
    from gesture_core.weights import WeightsUnavailableError

    spec = get_backbone(backbone)
    torch.manual_seed(0)
    try:
        model = build_model(backbone, num_classes, "imagenet" if spec.has_imagenet_weights else "none")
    except WeightsUnavailableError:
        model = build_model(backbone, num_classes, "none")
    data_config = spec.data_config.with_input_size(image_size) if image_size else spec.data_config
    return save_checkpoint(path, model=model, backbone=spec.name, classes=[str(i) for i in range(num_classes)],
                           data_config=data_config, train_config={"note": "benchmark: untrained head"})


def import_model(checkpoint: Path, bentoml_home: Path) -> str:
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home), "BENTOML_DO_NOT_TRACK": "1"}
    done = subprocess.run([sys.executable, "-m", "service.import_model", str(checkpoint)], cwd=REPO, env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"import_model failed:\n{done.stderr}")
    return done.stdout.strip()


@contextlib.contextmanager
def running_service(checkpoint: Path, env: Mapping[str, str] | None = None, target: str = SERVICE_TARGET,
                    open_file_limit: int | None = None) -> Iterator[RunningServer]:
    """Import ``checkpoint`` into a throw-away BentoML home and serve it on 127.0.0.1."""
    with tempfile.TemporaryDirectory(prefix="bentoml-bench-") as home:
        import_model(checkpoint, Path(home))
        with serve_process(bentoml_home=home, env=env, target=target, open_file_limit=open_file_limit) as server:
            yield server


def load_images(limit: int = 40) -> list[bytes]:
    """JPEG bytes of real sign-digit photos (mostly 100x100), spread over the classes."""
    if DATA.is_dir():
        paths = [p for d in sorted(DATA.iterdir()) if d.is_dir() for p in sorted(d.glob("*.JPG"))[:8] if p.stat().st_size < 200_000]
        return [p.read_bytes() for p in paths[:: max(1, len(paths) // limit)][:limit]]
    from PIL import Image

    rng = np.random.default_rng(0)
    images = []
    for _ in range(limit):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (100, 100, 3), dtype=np.uint8)).save(buf, "JPEG")
        images.append(buf.getvalue())
    return images


def multipart_body(data: bytes, field: str = "image", filename: str = "image.jpg") -> tuple[bytes, str]:
    """One file upload, encoded once: a load generator should spend its CPU sending, not encoding."""
    boundary = "gesture-bench-boundary-7f3a9c"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def drive(url: str, route: str, images: Sequence[bytes], *, clients: int = 16, duration: float = 20.0,
          warmup: float = 3.0, timeout: float = 60.0) -> LoadResult:
    """``clients`` threads, each posting one image at a time to ``route`` (multipart ``image``) in a
    closed loop over a keep-alive connection; latencies of requests started during the ``duration``
    after ``warmup`` count. The clients use ``http.client`` with bodies encoded in advance (as wrk or
    hey would), so that on a small machine they take little CPU from the server they measure."""
    start = time.perf_counter() + warmup
    stop = start + duration
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    lock = threading.Lock()
    bodies = [multipart_body(data) for data in images]
    address = urllib.parse.urlsplit(url)

    def client(index: int) -> None:
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=timeout)
        i = index
        while (sent := time.perf_counter()) < stop:
            body, content_type = bodies[i % len(bodies)]
            i += clients
            try:
                connection.request("POST", f"/{route}", body=body, headers={"Content-Type": content_type})
                resp = connection.getresponse()
                resp.read()
                outcome = None if resp.status == 200 else f"HTTP {resp.status}"
            except (OSError, http.client.HTTPException) as err:
                outcome = type(err).__name__
                connection.close()  # reconnects on the next request
            elapsed_ms = (time.perf_counter() - sent) * 1000
            if sent >= start:
                with lock:
                    if outcome is None:
                        latencies.append(elapsed_ms)
                    else:
                        errors[outcome] += 1
        connection.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = max(time.perf_counter(), stop) - start  # requests started before `stop` may finish after it
    return LoadResult(f"/{route}", clients, seconds, latencies, dict(errors))


def batch_size_stats(metrics_text: str, route: str = "classify") -> tuple[float, float]:
    """(sum, count) of BentoML's adaptive batch size histogram for ``route``."""
    def value(kind: str) -> float:
        found = re.findall(rf'bentoml_service_adaptive_batch_size_{kind}{{[^}}]*method_name="{route}"[^}}]*}} ([0-9.e+]+)', metrics_text)
        return sum(float(v) for v in found)

    return value("sum"), value("count")


def measure(server: RunningServer, batching: str, images: Sequence[bytes], clients: int, duration: float, warmup: float) -> LoadResult:
    before = batch_size_stats(httpx.get(f"{server.url}/metrics").text)
    result = drive(server.url, "predict", images, clients=clients, duration=duration, warmup=warmup)
    after = batch_size_stats(httpx.get(f"{server.url}/metrics").text)
    if after[1] > before[1]:
        result.mean_batch_size = round((after[0] - before[0]) / (after[1] - before[1]), 2)
    result.route = f"/predict ({batching})"
    return result


def model_cost(checkpoint: Path, batch_sizes: Sequence[int] = (1, 8), threads: int | None = None, rounds: int = 5,
               engine: str = "auto") -> tuple[str, dict[int, float]]:
    """Bare model time per image (ms) at each batch size, run in a worker thread like the service does,
    interleaving the sizes so that a busy machine affects them alike."""
    import torch

    from gesture_core import load_classifier

    classifier = load_classifier(checkpoint, device="auto", engine=engine)
    size = classifier.data_config.input_size
    batches = {bs: torch.randn(bs, classifier.data_config.in_chans, size, size) for bs in batch_sizes}
    spent = dict.fromkeys(batch_sizes, 0.0)
    images = max(batch_sizes)

    def run() -> None:
        if threads:
            torch.set_num_threads(threads)
        for bs in batch_sizes:
            classifier.logits(batches[bs])  # warm-up
        for _ in range(rounds):
            for bs in batch_sizes:
                start = time.perf_counter()
                for _ in range(max(1, images // bs)):
                    classifier.logits(batches[bs])
                spent[bs] += time.perf_counter() - start

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    per_image = {bs: round(spent[bs] * 1000 / (rounds * max(1, images // bs) * bs), 1) for bs in batch_sizes}
    return f"{classifier.engine.name}/{classifier.engine.precision}", per_image


def machine() -> str:
    """The hardware, and how busy it was: figures from a shared machine are only comparable within one run."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {gpu}, torch {torch.__version__}, load average {load}"


def format_table(results: Sequence[LoadResult]) -> str:
    rows = ["| endpoint | clients | requests | p50 ms | p90 ms | throughput img/s | mean batch | errors |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        s = r.summary()
        rows.append(f"| `{r.route}` | {r.clients} | {r.requests} | {s['p50_ms']:.0f} | {s['p90_ms']:.0f} | {s['throughput_rps']:.1f} | "
                    f"{s['mean_batch_size'] or 1} | {sum(r.errors.values())} |")
    return "\n".join(rows)


@command
def main(argv: list[str] | None = None) -> int:
    p = CommandParser(prog="python -m benchmarks.serve_latency", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=served_checkpoint, help="a training checkpoint (default: efficientnet_lite0, random head)")
    p.add_argument("--backbone", type=backbone_name, default="efficientnet_lite0", help="without --checkpoint: the backbone to time")
    p.add_argument("--image-size", type=image_size, help="without --checkpoint: input size (default: the backbone's)")
    p.add_argument("--clients", type=client_count, default=16)
    p.add_argument("--duration", type=measured_seconds, default=20.0, help="measured seconds per endpoint")
    p.add_argument("--warmup", type=warmup_seconds, default=5.0, help="seconds per endpoint before measuring (BentoML's batcher calibrates itself first)")
    p.add_argument("--batching", type=csv_list(str, TARGETS), default=list(TARGETS), help=f"comma-separated, from {', '.join(TARGETS)}")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="server environment, e.g. GESTURE_THREADS=1 (repeatable)")
    p.add_argument("--model-only", action="store_true", help="time the bare model at batch sizes 1 and 8 instead (no server)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    check_input_size(p, [args.backbone], args.image_size)
    server_env = dict(item.split("=", 1) for item in args.env if "=" in item)
    if len(server_env) != len(args.env):
        p.error("--env takes NAME=VALUE")
    for name, choices in (("GESTURE_ENGINE", ENGINE_CHOICES), ("GESTURE_PRECISION", PRECISIONS), ("GESTURE_DEVICE", DEVICES)):
        if server_env.get(name, choices[0]) not in choices:  # else the server refuses it to start, after the import
            p.error(f"argument --env: {name}={server_env[name]}: choose one of {', '.join(choices)}")
    if args.model_only:
        return model_only(args, server_env)
    images = load_images()
    load_before = machine()
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        checkpoint = args.checkpoint or make_checkpoint(Path(tmp) / "bench.pt", args.backbone, args.image_size)
        results = []
        for batching in args.batching:
            with running_service(checkpoint, server_env, TARGETS[batching]) as server:
                info = httpx.post(f"{server.url}/info").json()
                results.append(measure(server, batching, images, args.clients, args.duration, args.warmup))
    print(f"{info['backbone']} @ {info['input_size']} px on {info['device']} ({info['engine']}); {len(images)} JPEGs, "
          f"{args.clients} clients, {args.duration:.0f} s per endpoint, server env {server_env or '-'}\nbefore: {load_before}\nafter:  {machine()}")
    print(format_table(results))
    if args.json:
        args.json.write_text(json.dumps({"model": info, "machine_before": load_before, "machine_after": machine(), "results": [r.summary() for r in results]}, indent=2))
    return 0 if all(r.requests for r in results) else 1


def model_only(args: argparse.Namespace, server_env: Mapping[str, str]) -> int:
    threads = int(server_env["GESTURE_THREADS"]) if "GESTURE_THREADS" in server_env else None
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        checkpoint = args.checkpoint or make_checkpoint(Path(tmp) / "bench.pt", args.backbone, args.image_size)
        engine, cost = model_cost(checkpoint, threads=threads, engine=server_env.get("GESTURE_ENGINE", "auto"))
    print(f"bare model, engine {engine}, {threads or 'default'} torch threads; {machine()}")
    for bs, ms in cost.items():
        print(f"batch {bs:>2}: {ms:.1f} ms per image")
    return 0


if __name__ == "__main__":
    sys.exit(main())
