"""Hostile input against the real ``bentoml serve`` on 127.0.0.1 (loopback only): each class of bad
request from issue #17, the status each one gets, the worker's peak RSS growth per request, and the
latency of normal clients while slow clients hold connections open.

    .venv/bin/python -m benchmarks.hostile --quick        # well under 2 minutes on an idle 2-core machine
    .venv/bin/python -m benchmarks.hostile --slow-seconds 45 --checkpoint runs/NAME/best.pt

Classes: aspect-ratio bombs (tiny strips that resizing would make huge, alone and three at once),
large images (legal ones up to the pixel limit, and bombs past it), JPEG scan bombs (progressive files
whose every extra scan costs a pass over the whole image), costly decoders (PPM that PIL decodes in
Python), costly bodies (deep JSON, or thousands of
keys, form fields or multipart parts, which would take seconds to parse), large headers (10 MB of one,
a Content-Type of 1,600,000 parameters, 200,000 cookies), malformed uploads, ambiguous requests,
slow clients (each sends its request body at 1 byte per second, reconnecting whenever
the server lets go), idle connections (2,000 that send nothing or an unfinished request line,
against a server started with Linux's usual soft limit of 1,024 open files), and held bodies (150
clients that each send all but the last byte of an upload at the server's limit, then wait). Peak RSS growth is the worker's high-water mark (reset through
/proc/PID/clear_refs before each request) minus its RSS before it. The last lines judge the issue's
targets: no 5xx, at most 256 MB of growth for any single request (1 GB for 16 large ones sent
together), normal clients all served with p99 under 1 s while the slow clients connect, and while the idle
connections are held, and the bodies held in memory within their budget (service.http_guard.BodyMemory)
while normal clients are all served; the exit code is 1 when one is missed.
"""

from __future__ import annotations

import select
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from benchmarks.common import PeakRss, client_count, describe_machine, machine, measured_seconds, note, served_checkpoint
from benchmarks.hostile_inputs import (
    exif_bomb,
    form_part,
    gif_with_noise_rows,
    http_bad_requests,
    many_header_units,
    multipart,
    netpbm,
    noise_jpeg,
    padded_webp,
    png_of_rows,
    png_strip,
    png_with_noise_rows,
    png_with_text_chunks,
    progressive_jpeg,
    small_png_of_many_pixels,
    sparse_jpeg,
    tiff_of_strips,
    with_exif,
)
from benchmarks.serve_latency import drive, load_images, make_checkpoint, running_service
from gesture_core.cli import CommandParser, command
from gesture_core.engines import ENGINE_CHOICES
from service.http_guard import use_the_open_file_hard_limit

RSS_TARGET_MB = 256
TOGETHER_TARGET_MB = 4 * RSS_TARGET_MB  # large uploads sent together: at most 4 decodes at once
# Unfinished bodies held: a worker holds 1 GB of bodies at the default upload limit (Settings.body_memory_bytes).
HELD_TARGET_MB = 1024 + RSS_TARGET_MB
P99_TARGET_MS = 1000
STARTING_OPEN_FILE_LIMIT = 1024  # the server starts with Linux's usual soft limit, as in most shells and containers
LOG_TARGET_BYTES = 1024  # server log per request: a line or two, not a traceback or a decoder's warnings (service/logs.py)
BOUNDARY = "hostile-7d1e"


@dataclass(frozen=True)
class Attack:
    kind: str
    name: str
    method: str
    path: str
    request: dict[str, Any] = field(default_factory=dict, hash=False)  # httpx.request keyword arguments
    copies: int = 1  # sent at the same time


@dataclass
class Outcome:
    attack: Attack
    statuses: list[int]
    reason: str
    rss_growth_mb: float
    seconds: float


@dataclass
class SlowClientReport:
    connections: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)


# A case's class, by the first words its name contains (benchmarks/hostile_inputs.py names them).
KINDS = (
    (("nested_100000", "keys", "1001_fields", "2500_parts", "thousand"), "costly body"),  # seconds of parsing on the event loop
    (("part_", "file_name", "text_field"), "malformed"),  # multipart that BentoML's form parsing fails on
    (("strip",), "aspect ratio"),
    (("scan",), "many scans"),
    (("_segments", "_chunks", "_blocks", "_byte_header", "_entries", "_junk"), "costly header"),  # parsed unit by unit by PIL
    (("hiding", "twice"), "two-way header"),  # a header the checks and the decoder read differently
    (("bomb", "over_limit", "flat", "_6000x6000"), "large image"),
    (("ico_", "_eps"), "other format"),  # read by PIL, not decoded by the product
)


def kind_of(case: str) -> str:
    return next((kind for words, kind in KINDS if any(word in case for word in words)), "malformed")


def attacks(upload_limit: int) -> list[Attack]:
    """The service tests' bad requests (benchmarks/hostile_inputs.py), and more of each class of the issue."""
    image, strip = noise_jpeg(1), png_strip(39_000, 1)
    cases = [Attack(kind_of(name), name, "POST", "/predict", request) for name, request in http_bad_requests(upload_limit).items()]
    return cases + [
        Attack("aspect ratio", "three 39000x1 at once", "POST", "/predict", {"files": {"image": ("s.png", strip)}}, copies=3),
        Attack("aspect ratio", "2000x100 (20:1, legal)", "POST", "/predict", {"files": {"image": ("s.png", png_strip(2_000, 100))}}),
        Attack("aspect ratio", "39000x1 in /predict_batch", "POST", "/predict_batch", {"files": [("images", ("s.png", strip))]}),
        Attack("large image", "6320x6320 PNG (at the pixel limit)", "POST", "/predict", {"files": {"image": ("l.png", png_with_noise_rows(6_320, 6_320))}}),
        # Each goes to a worker thread to decode; the service lets a few run at once (service.service.DECODES_AT_ONCE).
        Attack("large image", "16 PNGs at the pixel limit at once", "POST", "/predict",
               {"files": {"image": ("l.png", png_with_noise_rows(6_320, 6_320))}}, copies=16),
        # Decoders that hold more than a PNG's bytes a pixel (python -m benchmarks.decode_cost): refused below the limit, or made leaner.
        Attack("large image", "6320x6320 GIF (at the pixel limit)", "POST", "/predict", {"files": {"image": ("l.gif", gif_with_noise_rows(6_320, 6_320))}}),
        Attack("large image", "6320x6320 WebP with alpha (at the pixel limit)", "POST", "/predict",
               {"files": {"image": ("l.webp", padded_webp(6_320, alpha=True, size_bytes=2_600_000))}}),
        Attack("large image", "6320x6320 animated WebP (at the pixel limit)", "POST", "/predict",
               {"files": {"image": ("l.webp", padded_webp(6_320, frames=2, size_bytes=2_600_000))}}),
        Attack("large image", "6320x6320 JPEG of one scan per colour, 4:4:4 (at the pixel limit)", "POST", "/predict",
               {"files": {"image": ("l.jpg", sparse_jpeg(6_320, 6_320, subsampled=False, interleaved=False))}}),
        Attack("large image", "32 JPEGs of 20460x1023, two bits a block, in /predict_batch", "POST", "/predict_batch",
               {"files": [("images", (f"{i}.jpg", sparse_jpeg(20_460, 1_023))) for i in range(32)]}),
        Attack("large image", "7000x7000 PNG (past the limit)", "POST", "/predict", {"files": {"image": ("l.png", png_strip(7_000, 7_000))}}),
        Attack("costly header", "PNG of 95 malformed chunks (under the limit, legal)", "POST", "/predict",
               {"files": {"image": ("h.png", many_header_units("PNG", 95))}}),  # libpng warns of each
        Attack("costly header", "TIFF of 990 unknown tags (under the limit, legal)", "POST", "/predict",
               {"files": {"image": ("h.tif", many_header_units("TIFF", 990))}}),  # OpenCV warns of each
        Attack("costly header", "PNG of 95 text chunks of 1 MB each (108 KB, legal)", "POST", "/predict",
               {"files": {"image": ("t.png", png_with_text_chunks())}}),  # PIL's reader inflated each to open it
        Attack("costly header", "TIFF of 2,000,000 strip offsets for 2000x2000 (16 MB)", "POST", "/predict",
               {"files": {"image": ("s.tif", tiff_of_strips(2_000, 2_000, 2_000_000))}}),  # PIL's reader made an object for each
        Attack("costly header", "PNG whose EXIF has 65,535 entries on one 200 KB value (1 MB)", "POST", "/predict",
               {"files": {"image": ("e.png", with_exif("PNG", exif_bomb()))}}),  # OpenCV copied the value for each
        Attack("costly header", "WebP whose EXIF has 65,535 entries on one 200 KB value (1 MB)", "POST", "/predict",
               {"files": {"image": ("e.webp", with_exif("WEBP", exif_bomb()))}}),
        Attack("costly header", "PNG of 64x64 then 1 GB of zeros in its compressed data (1 MB)", "POST", "/predict",
               {"files": {"image": ("z.png", png_of_rows(np.zeros((64, 64, 3), np.uint8), extra_zeros=1 << 30))}}),  # libpng inflated it all
        # Formats PIL decodes in Python: PBM/PGM/PPM of plain text, or binary of any maxval but 255 (6.3 s for this one).
        Attack("costly decoder", "binary PPM of maxval 1, 2300x2300 (16 MB, legal)", "POST", "/predict",
               {"files": {"image": ("p.ppm", netpbm(6, np.zeros((2_300, 2_300, 3), np.uint8), maxval=1))}}),
        Attack("costly decoder", "plain-text PPM, 1630x1630 (16 MB, legal)", "POST", "/predict",
               {"files": {"image": ("p.ppm", netpbm(3, np.zeros((1_630, 1_630, 3), np.uint8)))}}),
        Attack("many scans", "progressive 2000x1000 JPEG, 100 scans (at the limit, legal)", "POST", "/predict",
               {"files": {"image": ("p.jpg", progressive_jpeg(2_000, 1_000, repeated_scans=90))}}),
        Attack("many scans", "progressive 4000x4000 JPEG, 1,010 scans", "POST", "/predict",
               {"files": {"image": ("p.jpg", progressive_jpeg(4_000, 4_000, repeated_scans=1_000))}}),
        # BentoML writes each upload to a temporary file before /predict_batch can count them.
        Attack("costly body", "1,000 one-byte files to /predict_batch", "POST", "/predict_batch",
               {"files": [("images", (f"{i}.jpg", b"x")) for i in range(1_000)]}),
        Attack("costly body", "JSON object of 1,000,000 keys (12 MB)", "POST", "/predict",
               {"content": ("{" + ",".join(f'"k{i}":0' for i in range(1_000_000)) + "}").encode(), "headers": {"content-type": "application/json"}}),
        Attack("costly body", "2,000,000 urlencoded fields (16 MB)", "POST", "/predict",
               {"content": b"&".join([b"top_k=1"] * 2_000_000), "headers": {"content-type": "application/x-www-form-urlencoded"}}),
        # Read by uvicorn's HTTP parser before any middleware runs; BentoML passes it no header limit.
        Attack("large header", "10 MB request header (GET /readyz)", "GET", "/readyz", {"headers": {"X-Padding": "a" * 10_000_000}}),
        # Parsed again in Python, parameter by parameter, by every layer that reads the media type.
        Attack("large header", "Content-Type of 1,600,000 parameters (8 MB)", "POST", "/predict",
               with_parameters(multipart(form_part("image", image, "a.jpg")), 1_600_000)),
        Attack("large header", "200,000 Cookie headers", "POST", "/predict",
               {"files": {"image": ("a.jpg", image)}, "headers": [("cookie", "a=b")] * 200_000}),
        Attack("ambiguous", "two image files", "POST", "/predict", {"files": [("image", ("a.jpg", image)), ("image", ("b.jpg", image))]}),
        Attack("ambiguous", "top_k twice", "POST", "/predict", {"files": {"image": ("a.jpg", image)}, "data": {"top_k": ["1", "3"]}}),
        Attack("ambiguous", "top_k: true", "POST", "/predict", {"files": {"image": ("a.jpg", image)}, "data": {"top_k": "true"}}),
        Attack("ambiguous", "PUT /predict", "PUT", "/predict", {"files": {"image": ("a.jpg", image)}}),
        Attack("ambiguous", "file to an unknown route", "POST", "/nowhere", {"files": {"image": ("a.jpg", image)}}),
        Attack("ambiguous", "GET /predict", "GET", "/predict"),
    ]


def with_parameters(request: dict, count: int) -> dict:
    """``request`` with ``count`` more parameters on its Content-Type ("; a=b" each)."""
    return {**request, "headers": {"content-type": request["headers"]["content-type"] + "; a=b" * count}}


def send(url: str, attack: Attack) -> tuple[int, str]:
    try:
        response = httpx.request(attack.method, url + attack.path, timeout=120, **attack.request)
    except httpx.HTTPError as err:
        return 0, f"{type(err).__name__}: {err}"
    try:
        payload = response.json()
    except ValueError:
        return response.status_code, "(not JSON) " + response.text[:80]
    return response.status_code, str(payload.get("error", "")) if isinstance(payload, dict) and "error" in payload else "(ok)"


def worker_pid(server_pid: int) -> int:
    """The service worker: the descendant of `bentoml serve` with the most memory (it holds the model)."""
    children = psutil.Process(server_pid).children(recursive=True)
    return max(children, key=lambda p: p.memory_info().rss).pid


def run_attacks(url: str, rss: PeakRss, upload_limit: int) -> list[Outcome]:
    outcomes = []
    for attack in attacks(upload_limit):
        started = time.perf_counter()
        with ThreadPoolExecutor(attack.copies) as pool:
            replies, growth = rss.measure(lambda a=attack: list(pool.map(lambda _: send(url, a), range(a.copies))))
        outcomes.append(Outcome(attack, [s for s, _ in replies], replies[0][1], growth, time.perf_counter() - started))
        note(f"  {attack.kind:12} {attack.name:38} {outcomes[-1].statuses} +{growth:.0f} MB  {replies[0][1][:90]}")
    return outcomes


def slow_clients(url: str, count: int, stop: threading.Event, report: SlowClientReport) -> None:
    """``count`` connections that each declare a 1 MB multipart upload and send it at 1 byte per second,
    reconnecting whenever the server answers or closes; records what the server did to them."""
    host, port = url.removeprefix("http://").split(":")
    head = (f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            "Content-Length: 1000000\r\n\r\n").encode()

    def connect() -> socket.socket | None:
        try:
            sock = socket.create_connection((host, int(port)), timeout=5)
            sock.sendall(head)
            report.connections += 1
            return sock
        except OSError:
            report.outcomes["connect failed"] += 1
            return None

    socks = [connect() for _ in range(count)]
    while not stop.wait(1.0):
        for i, sock in enumerate(socks):
            if sock is None or answered(sock, report):
                if sock is not None:
                    sock.close()
                socks[i] = connect()
                continue
            try:
                sock.send(b"x")
            except OSError:
                report.outcomes["reset"] += 1
                sock.close()
                socks[i] = connect()
    for sock in socks:
        if sock is not None:
            sock.close()


def readable(sock: socket.socket) -> bool:
    """Whether the server has sent something or closed the connection (poll: select() stops at fd 1,024)."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def answered(sock: socket.socket, report: SlowClientReport) -> bool:
    """Whether the server has answered or closed this connection (recorded as its status or 'closed')."""
    answer = answer_of(sock)
    if answer == "held":
        return False
    report.outcomes[answer] += 1
    return True


def slow_client_attack(url: str, images: list[bytes], count: int, seconds: float, clients: int) -> tuple[dict, SlowClientReport]:
    stop, report = threading.Event(), SlowClientReport()
    attacker = threading.Thread(target=slow_clients, args=(url, count, stop, report), daemon=True)
    attacker.start()
    time.sleep(2.0)  # let them connect and start trickling
    result = drive(url, "predict", images, clients=clients, duration=seconds, warmup=0.0)
    stop.set()
    attacker.join(10)
    return result.summary(), report


@command
def main(argv: list[str] | None = None) -> int:
    p = CommandParser(prog="python -m benchmarks.hostile", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=served_checkpoint, help="default: efficientnet_lite0 with ImageNet weights and a random 10-class head")
    p.add_argument("--engine", default="auto", choices=ENGINE_CHOICES, help="GESTURE_ENGINE for the service")
    p.add_argument("--slow-clients", type=client_count, default=130)
    p.add_argument("--slow-seconds", type=measured_seconds, default=40.0, help="how long normal clients are measured during the slow-client attack")
    p.add_argument("--normal-clients", type=client_count, default=4)
    p.add_argument("--idle-connections", type=client_count, default=2000, help="connections opened and held without a complete request")
    p.add_argument("--idle-seconds", type=measured_seconds, default=4.0, help="how long normal clients are measured while they are held")
    p.add_argument("--held-bodies", type=client_count, default=150, help="clients that send all but the last byte of an upload at the limit, then wait")
    p.add_argument("--quick", action="store_true", help="a 15 s slow-client attack and a 4 s baseline")
    args = p.parse_args(argv)
    baseline_seconds = 4.0 if args.quick else 10.0
    if args.quick:
        args.slow_seconds = 15.0
    started = time.perf_counter()
    use_the_open_file_hard_limit()  # this process opens the idle connections
    note(f"machine: {describe_machine(machine())}")
    images = load_images(16)
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        checkpoint = args.checkpoint or make_checkpoint(Path(tmp) / "bench.pt")
        with running_service(checkpoint, env={"GESTURE_ENGINE": args.engine}, open_file_limit=STARTING_OPEN_FILE_LIMIT) as server:
            served = httpx.post(f"{server.url}/info").json()
            note(f"server ready after {time.perf_counter() - started:.0f} s (import, start-up check, worker warm-up): "
                 f"{served['backbone']} @ {served['input_size']} px, engine {served['engine']}, settings {served['settings']}")
            upload_limit = served["settings"]["max_upload_bytes"]  # the server's own limit (GESTURE_MAX_UPLOAD_MB)
            rss = PeakRss(worker_pid(server.process.pid))
            drive(server.url, "predict", images, clients=1, duration=1.0, warmup=0.0)  # first requests warm the worker
            note("single requests (kind, case, statuses, worker peak RSS growth, reason):")
            log_before = len(server.log())
            outcomes = run_attacks(server.url, rss, upload_limit)
            logged = server.log()[log_before:]
            logged = {"bytes_per_request": len(logged) / sum(len(o.statuses) for o in outcomes), "tracebacks": logged.count("Traceback")}
            baseline = drive(server.url, "predict", images, clients=args.normal_clients, duration=baseline_seconds, warmup=0.0).summary()
            note(f"normal clients alone: {baseline}")
            during, report = slow_client_attack(server.url, images, args.slow_clients, args.slow_seconds, args.normal_clients)
            idle = idle_connection_attack(server.url, images, args.idle_connections, args.normal_clients, args.idle_seconds, rss.pid)
            held = held_body_attack(server.url, images, args.held_bodies, args.normal_clients, rss, upload_limit)
            batches = costly_batch_attack(server.url, images, args.normal_clients, served["settings"]["batch_size"])
            alive = server.process.poll() is None
    print_summary(outcomes, baseline, during, report, args, alive, logged, idle, held, batches)
    note(f"finished in {time.perf_counter() - started:.0f} s")
    return 0 if verdicts(outcomes, during, logged, idle, held, batches)[1] else 1


COSTLY_BATCH_CLIENTS = 4


def costly_batch_attack(url: str, images: list[bytes], clients: int, batch_size: int, seconds: float = 4.0) -> dict:
    """COSTLY_BATCH_CLIENTS clients posting /predict_batch of ``batch_size`` small PNGs of 3.2 MP each
    (``small_png_of_many_pixels``), one after another, while normal clients are measured: a model thread that
    decoded them held every batch of the others' (6.3 s for a /predict before BATCH_DECODE_PIXELS)."""
    stop, png = threading.Event(), small_png_of_many_pixels()
    body = multipart(*(form_part("images", png, f"{i}.png") for i in range(batch_size)))

    def attack() -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                client.post(f"{url}/predict_batch", **body)

    attackers = [threading.Thread(target=attack, daemon=True) for _ in range(COSTLY_BATCH_CLIENTS)]
    for attacker in attackers:
        attacker.start()
    time.sleep(0.5)  # their first batches are in
    normal = drive(url, "predict", images, clients=clients, duration=seconds, warmup=0.0).summary()
    stop.set()
    for attacker in attackers:
        attacker.join(60)
    return {**normal, "batch_size": batch_size, "png_bytes": len(png)}


@dataclass
class IdleReport:
    count: int
    held: int  # still open when the normal clients had finished
    rss_growth_mb: float
    open_file_limit: int  # the worker's soft limit, as it raised it
    normal: dict


def idle_connection_attack(url: str, images: list[bytes], count: int, clients: int, seconds: float, worker: int) -> IdleReport:
    """``count`` connections that send nothing (half of them) or an unfinished request line, held
    while normal clients are measured: uvicorn closes neither kind, so each holds a file descriptor."""
    host, port = url.removeprefix("http://").split(":")
    before = psutil.Process(worker).memory_info().rss
    idle = []
    try:
        for i in range(count):
            sock = socket.create_connection((host, int(port)), timeout=5)
            if i % 2:
                sock.sendall(f"POST /predict HTTP/1.1\r\nHost: {host}\r\n".encode())
            idle.append(sock)
        time.sleep(1.0)  # accepted by the worker
        normal = drive(url, "predict", images, clients=clients, duration=seconds, warmup=0.0).summary()
        growth = (psutil.Process(worker).memory_info().rss - before) / 2**20
        held = sum(not readable(sock) for sock in idle)
    finally:
        for sock in idle:
            sock.close()
    return IdleReport(count, held, growth, psutil.Process(worker).rlimit(psutil.RLIMIT_NOFILE)[0], normal)


@dataclass
class HeldBodyReport:
    count: int
    upload_limit: int
    answers: Counter  # what the server did to the held bodies
    rss_growth_mb: float  # the worker's peak
    normal: dict


def held_body_attack(url: str, images: list[bytes], count: int, clients: int, rss: PeakRss, upload_limit: int) -> HeldBodyReport:
    """``count`` connections that each send all but the last byte of an upload at the limit and wait,
    one after another, while normal clients are measured: every body held is memory of the worker's."""
    held: list[socket.socket] = []

    def hold_bodies() -> None:
        for _ in range(count):
            held.append(most_of_a_body(url, upload_limit))

    def attack() -> dict:
        attacker = threading.Thread(target=hold_bodies, daemon=True)
        attacker.start()
        time.sleep(0.5)  # the first bodies are in
        normal = drive(url, "predict", images, clients=clients, duration=3.0, warmup=0.0).summary()
        attacker.join(120)
        return normal

    try:
        normal, growth = rss.measure(attack)
        time.sleep(0.5)  # answers to the last bodies dropped
        answers = Counter(answer_of(sock) for sock in held)
    finally:
        for sock in held:
            sock.close()
    return HeldBodyReport(count, upload_limit, answers, growth, normal)


def most_of_a_body(url: str, size: int) -> socket.socket:
    """A connection to ``url`` that has sent all but the last byte of a ``size``-byte upload to /predict, and waits."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
                 f"Content-Length: {size}\r\n\r\n".encode() + b"x" * (size - 1))
    return sock


def answer_of(sock: socket.socket) -> str:
    """The status the server answered on this connection, "closed", or "held" when it has not answered."""
    if not readable(sock):
        return "held"
    try:
        data = sock.recv(256)
    except OSError:
        data = b""
    return data.split(b" ")[1].decode() if data.startswith(b"HTTP/") else "closed"


def verdicts(outcomes: list[Outcome], during: dict, logged: dict, idle: IdleReport, held: HeldBodyReport, batches: dict) -> tuple[list[str], bool]:
    server_errors = sum(1 for o in outcomes for s in o.statuses if s >= 500 or s == 0)
    single = max((o for o in outcomes if o.attack.copies == 1), key=lambda o: o.rss_growth_mb)
    together = max((o for o in outcomes if o.attack.copies > 1), key=lambda o: o.rss_growth_mb)
    normal_ok = not during["errors"] and during["requests"] > 0 and during["p99_ms"] < P99_TARGET_MS
    log_ok = logged["bytes_per_request"] <= LOG_TARGET_BYTES and not logged["tracebacks"]
    idle_ok = not idle.normal["errors"] and idle.normal["requests"] > 0
    held_ok = not held.normal["errors"] and held.normal["requests"] > 0 and held.rss_growth_mb <= HELD_TARGET_MB
    batches_ok = not batches["errors"] and batches["requests"] > 0 and batches["p99_ms"] < P99_TARGET_MS
    lines = [
        f"{'PASS' if not server_errors else 'FAIL'}  5xx or no answer: {server_errors}",
        f"{'PASS' if single.rss_growth_mb <= RSS_TARGET_MB else 'FAIL'}  largest worker RSS growth for one request: "
        f"{single.rss_growth_mb:.0f} MB ({single.attack.name}); target <= {RSS_TARGET_MB} MB",
        f"{'PASS' if together.rss_growth_mb <= TOGETHER_TARGET_MB else 'FAIL'}  largest worker RSS growth for requests sent together: "
        f"{together.rss_growth_mb:.0f} MB ({together.attack.name}); target <= {TOGETHER_TARGET_MB} MB",
        f"{'PASS' if normal_ok else 'FAIL'}  normal clients during the slow-client attack: {during['requests']} served, "
        f"p99 {during['p99_ms']:.0f} ms, refused/failed {during['errors'] or 'none'}; target: all served, p99 < {P99_TARGET_MS} ms",
        f"{'PASS' if log_ok else 'FAIL'}  server log per request above: {logged['bytes_per_request']:,.0f} bytes, "
        f"{logged['tracebacks']} traceback(s); target <= {LOG_TARGET_BYTES:,} bytes, no traceback",
        f"{'PASS' if idle_ok else 'FAIL'}  normal clients while {idle.count:,} idle connections are held: {idle.normal['requests']} served, "
        f"refused/failed {idle.normal['errors'] or 'none'}; target: all served",
        f"{'PASS' if held_ok else 'FAIL'}  while {held.count} clients hold unfinished bodies of {held.upload_limit / 2**20:.0f} MB: worker RSS "
        f"{held.rss_growth_mb:+.0f} MB, normal clients {held.normal['requests']} served, refused/failed {held.normal['errors'] or 'none'}; "
        f"target: <= {HELD_TARGET_MB:,} MB, all served",
        f"{'PASS' if batches_ok else 'FAIL'}  normal clients while {COSTLY_BATCH_CLIENTS} clients send batches of small many-pixel PNGs: "
        f"{batches['requests']} served, p99 {batches['p99_ms']:.0f} ms, refused/failed {batches['errors'] or 'none'}; "
        f"target: all served, p99 < {P99_TARGET_MS} ms",
    ]
    return lines, (not server_errors and single.rss_growth_mb <= RSS_TARGET_MB and together.rss_growth_mb <= TOGETHER_TARGET_MB
                   and normal_ok and log_ok and idle_ok and held_ok and batches_ok)


def print_summary(outcomes: list[Outcome], baseline: dict, during: dict, report: SlowClientReport, args, alive: bool, logged: dict,
                  idle: IdleReport, held: HeldBodyReport, batches: dict) -> None:
    print(f"\nhostile input against bentoml serve on 127.0.0.1; {describe_machine(machine())}")
    print("\n| class | case | status | worker peak RSS growth | seconds | reason |\n| --- | --- | --- | ---: | ---: | --- |")
    for o in outcomes:
        statuses = ", ".join(map(str, o.statuses))
        print(f"| {o.attack.kind} | {o.attack.name} | {statuses} | {o.rss_growth_mb:.0f} MB | {o.seconds:.2f} | {' '.join(o.reason[:100].split())} |")
    by_kind: dict[str, Counter[int]] = {}
    for o in outcomes:
        by_kind.setdefault(o.attack.kind, Counter()).update(o.statuses)
    print("\nstatus counts: " + "; ".join(f"{kind}: {dict(sorted(c.items()))}" for kind, c in by_kind.items()))
    print(f"normal clients ({args.normal_clients}, closed loop) alone: {baseline['requests']} requests, p50 {baseline['p50_ms']:.0f} ms, "
          f"p99 {baseline['p99_ms']:.0f} ms, errors {baseline['errors'] or 'none'}")
    print(f"with {args.slow_clients} slow clients (1 byte/s, reconnecting) for {args.slow_seconds:.0f} s: {during['requests']} served, "
          f"p50 {during['p50_ms']:.0f} ms, p99 {during['p99_ms']:.0f} ms, errors {during['errors'] or 'none'}")
    print(f"slow clients: {report.connections} connections made; what the server did to them: {dict(report.outcomes) or 'nothing (all held open)'}")
    print(f"with {idle.count:,} idle connections (half of them an unfinished request line) for {args.idle_seconds:.0f} s: "
          f"{idle.normal['requests']} served, p50 {idle.normal['p50_ms']:.0f} ms, p99 {idle.normal['p99_ms']:.0f} ms, "
          f"errors {idle.normal['errors'] or 'none'}; {idle.held:,} still held open by the server; worker RSS {idle.rss_growth_mb:+.0f} MB; "
          f"its open-file limit {idle.open_file_limit:,} (started under {STARTING_OPEN_FILE_LIMIT:,})")
    print(f"with {held.count} clients that each sent all but the last byte of {held.upload_limit / 2**20:.0f} MB and wait: "
          f"{held.normal['requests']} served, p50 {held.normal['p50_ms']:.0f} ms, p99 {held.normal['p99_ms']:.0f} ms, "
          f"errors {held.normal['errors'] or 'none'}; worker peak RSS {held.rss_growth_mb:+.0f} MB; what the server did to them: {dict(held.answers)}")
    print(f"with {COSTLY_BATCH_CLIENTS} clients each sending /predict_batch of {batches['batch_size']} PNGs of 3.2 MP in "
          f"{batches['png_bytes'] / 1024:.0f} KB, one after another: {batches['requests']} served, p50 {batches['p50_ms']:.0f} ms, "
          f"p99 {batches['p99_ms']:.0f} ms, errors {batches['errors'] or 'none'}")
    print(f"server still running afterwards: {alive}")
    lines, _ = verdicts(outcomes, during, logged, idle, held, batches)
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
