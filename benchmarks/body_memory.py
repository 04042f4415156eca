"""What a request body costs the service's worker while it is answered, by how it is sent: a JSON
body (the image as base64) against a multipart upload of the same image, sent by many clients at once
to the real ``bentoml serve`` on 127.0.0.1. The figures behind ``service.http_guard.PARSED_IN_MEMORY_WEIGHT``.

    .venv/bin/python -m benchmarks.body_memory                # 32 requests of 16 MB at once, each way
    .venv/bin/python -m benchmarks.body_memory --clients 16

The image is a noise PNG of about 12 MB (2000x1990, under every limit), so its base64 fills a 16 MB
body. Prints, for each way, the worker's peak RSS growth (its high-water mark, reset through
/proc/PID/clear_refs, minus its RSS before) for the requests together and per request, and their statuses.
"""

from __future__ import annotations

import base64
import json
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np

from benchmarks.common import PeakRss, client_count, describe_machine, machine, note
from benchmarks.hostile import worker_pid
from benchmarks.serve_latency import drive, load_images, make_checkpoint, running_service
from gesture_core.cli import CommandParser, command


def noise_png() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (1990, 2000, 3), np.uint8)
    return cv2.imencode(".png", pixels)[1].tobytes()


def requests_of(image: bytes) -> dict[str, dict]:
    """httpx keyword arguments for /predict, each way of sending ``image``."""
    return {"JSON (image_b64)": {"content": json.dumps({"image_b64": base64.b64encode(image).decode()}).encode(),
                                 "headers": {"content-type": "application/json"}},
            "multipart (image)": {"files": {"image": ("image.png", image)}}}


def sent_together(url: str, request: dict, clients: int) -> Counter:
    with ThreadPoolExecutor(clients) as pool:
        return Counter(pool.map(lambda _: httpx.post(url + "/predict", timeout=300, **request).status_code, range(clients)))


@command
def main(argv: list[str] | None = None) -> int:
    p = CommandParser(prog="python -m benchmarks.body_memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=client_count, default=32, help="requests sent at once, each way")
    args = p.parse_args(argv)
    note(f"machine: {describe_machine(machine())}")
    image = noise_png()
    with tempfile.TemporaryDirectory(prefix="body-memory-") as tmp, running_service(make_checkpoint(Path(tmp) / "bench.pt")) as server:
        rss = PeakRss(worker_pid(server.process.pid))
        drive(server.url, "predict", load_images(8), clients=1, duration=1.0, warmup=0.0)  # first requests warm the worker
        print(f"| {args.clients} requests at once to /predict | body bytes | worker peak RSS growth | per request | statuses |\n"
              "| --- | ---: | ---: | ---: | --- |")
        for way, request in requests_of(image).items():
            body = len(httpx.Request("POST", server.url, **request).read())
            statuses, grew = rss.measure(lambda r=request: sent_together(server.url, r, args.clients))
            print(f"| {way} | {body:,} | {grew:,.0f} MB | {grew / args.clients:,.1f} MB | {dict(statuses)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
