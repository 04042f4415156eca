"""The real thing: `python -m service.import_model`, `bentoml serve` on a free 127.0.0.1 port and
`bentoml build`, each in its own process with BENTOML_HOME in tmp."""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

from benchmarks.common import PeakRss
from benchmarks.hostile import most_of_a_body, readable, worker_pid
from benchmarks.hostile_inputs import b64, http_bad_requests, many_header_units
from benchmarks.server_process import REPO, ServerStartError, serve_process
from gesture_core import load_classifier
from service.http_guard import use_the_open_file_hard_limit
from service.settings import BODIES_HELD
from tests.service_inputs import ambiguous_requests, assert_refused_as_documented, jpeg, sample_images

pytestmark = pytest.mark.integration

UPLOAD_LIMIT_MB = 4  # below the default, to show the limit is configurable
USUAL_OPEN_FILE_LIMIT = 1024  # Linux's usual soft limit (ulimit -n), which the module's server starts with


def run_cli(args: list[str], home) -> subprocess.CompletedProcess:
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "1"}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def import_cli(checkpoint, home) -> str:
    done = run_cli(["-m", "service.import_model", str(checkpoint)], home)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("bentoml-home")


@pytest.fixture(scope="module")
def model_tag(home, random_head_checkpoint):
    return import_cli(random_head_checkpoint, home)


@pytest.fixture(scope="module")
def server(home, model_tag):
    env = {"GESTURE_MAX_UPLOAD_MB": str(UPLOAD_LIMIT_MB)}
    with serve_process(bentoml_home=home, env=env, open_file_limit=USUAL_OPEN_FILE_LIMIT) as running:
        yield running


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def assert_same_as_local(served: dict, probs: np.ndarray, classes: list[str], atol: float, label: str | None = "top") -> None:
    """``label``: what the local classifier decides (None: "no gesture"); "top" for a model that never rejects."""
    top = classes[int(np.argmax(probs))]
    assert served["label"] == (top if label == "top" else label), served
    assert served["top_k"] and served["top_k"][0]["label"] == top, served  # an empty top_k checks nothing
    assert served["score"] == pytest.approx(float(probs.max()), abs=atol)
    for item in served["top_k"]:
        assert item["score"] == pytest.approx(float(probs[classes.index(item["label"])]), abs=atol)


def test_served_predictions_equal_load_classifier(http, model_tag, random_head_checkpoint):
    local = load_classifier(random_head_checkpoint, device="cpu")
    images = sample_images()
    reference = local.predict_proba([data for _, data in images])
    for (name, data), probs in zip(images, reference, strict=True):
        single = http.post("/predict", files={"image": (name, data, "image/jpeg")}, data={"top_k": "10"})
        assert single.status_code == 200, single.text
        assert single.json()["model"] == model_tag
        assert single.json()["hands"] is None  # a whole-image model: the key is there, null (docs/serving.md)
        assert_same_as_local(single.json(), probs, local.classes, atol=1e-5)
        as_json = http.post("/predict", json={"image_b64": b64(data), "top_k": 10})
        assert as_json.json() == single.json()
    batch = http.post("/predict_batch", files=[("images", item) for item in images], data={"top_k": "10"})
    assert batch.status_code == 200, batch.text
    for served, probs in zip(batch.json(), reference, strict=True):
        assert_same_as_local(served, probs, local.classes, atol=1e-5)


def test_concurrent_clients_share_model_calls_on_predict(http, server):
    images = [data for _, data in sample_images(include_large=False)]
    jobs = [images[i % len(images)] for i in range(48)]
    one_by_one = {d: http.post("/predict", files={"image": ("x.jpg", d)}).json() for d in images}
    before = http.post("/info").json()["batching"]
    with ThreadPoolExecutor(16) as pool:
        served = list(pool.map(lambda d: http.post("/predict", files={"image": ("x.jpg", d)}, data={"top_k": "10"}), jobs))
    after = http.post("/info").json()["batching"]
    for data, resp in zip(jobs, served, strict=True):
        assert resp.status_code == 200, resp.text
        assert resp.json()["label"] == one_by_one[data]["label"]
        assert resp.json()["score"] == pytest.approx(one_by_one[data]["score"], abs=1e-5)
    # /info's counters come from the micro-batcher: a batcher that stopped merging requests would make
    # one model call per image. 16 clients against one model call at a time always leave requests
    # waiting for the next call.
    assert after["images"] - before["images"] == len(jobs)
    assert after["model_calls"] - before["model_calls"] < len(jobs)
    assert after["largest_batch"] >= 2


def test_shutdown_stops_the_model_thread_cleanly_and_start_up_warns_once(home, model_tag, tmp_path):
    """Two workers and a misspelt setting: the warning is said once, by the process that starts them
    (each worker imports the service too, and said it again)."""
    env = {"GESTURE_WORKERS": "2", "GESTURE_BATCHSIZE": "8"}
    with serve_process(bentoml_home=home, log_path=tmp_path / "serve.log", env=env) as running:
        image = sample_images(include_large=False)[0][1]
        assert httpx.post(f"{running.url}/predict", files={"image": ("x.jpg", image)}, timeout=60).status_code == 200
    assert running.process.returncode is not None
    assert "Traceback" not in running.log(), running.log()[-3000:]
    assert "model threads stopped: 1 images in 1 model calls" in running.log(), running.log()[-3000:]
    assert running.log().count("warning: GESTURE_BATCHSIZE is not a setting") == 1, running.log()[-3000:]


@pytest.mark.parametrize("case", sorted(http_bad_requests(UPLOAD_LIMIT_MB * 1024 * 1024)))
def test_bad_requests_get_the_documented_answer_and_the_server_keeps_serving(http, server, case):
    limit = UPLOAD_LIMIT_MB * 1024 * 1024
    assert_refused_as_documented(http.post("/predict", **http_bad_requests(limit)[case]), case, limit)
    assert server.process.poll() is None
    assert http.post("/predict", files={"image": ("ok.jpg", jpeg(0))}).status_code == 200


def test_refused_requests_are_logged_in_one_line_each(http, server):
    """BentoML logs each one as an ERROR with its traceback; service/logs.py makes it one line."""
    assert http.post("/predict", json={"image_b64": "!!"}).status_code == 400
    assert http.post("/predict", files={"image": ("a.jpg", b"not an image")}).status_code == 400
    log = server.log()
    assert "Traceback" not in log, log[-3000:]
    assert "[WARNING] [entry_service:GestureClassifier:1] Refused /predict [POST] (400): image_b64: Value error, not valid base64" in log
    assert "Refused /predict [POST] (400): image: not a recognised image format" in log


def test_headers_are_bounded_and_no_log_line_quotes_one_whole(http, server):
    """BentoML's access line quotes the Content-Type whole: one of 8 MB wrote 8 MB to the log (and took
    5.2 s to answer). Past the header limit: 431; under it, the line is cut short."""
    body = (b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
            + jpeg(0) + b"\r\n--b--\r\n")
    before = len(server.log())
    padded = http.post("/predict", content=body, headers={"Content-Type": "multipart/form-data; boundary=b" + "; a=b" * 10_000})  # 50 KB
    assert padded.status_code == 200, padded.text
    assert http.post("/predict", files={"image": ("ok.jpg", jpeg(0))}).status_code == 200  # its access line is written by now
    logged = server.log()[before:]
    assert re.search(r"\.\.\. \(cut: 50,\d{3} characters\)", logged) and len(logged) < 6000, logged[:3000]
    over = http.post("/predict", content=body, headers={"Content-Type": "multipart/form-data; boundary=b" + "; a=b" * 20_000})
    assert over.status_code == 431 and over.json()["error"].startswith("request headers over 65,536 bytes in all")


def test_a_forged_log_line_in_a_path_is_written_escaped(http, server):
    """BentoML's access line writes the request's path decoded: %0D%0A began a line of the client's making."""
    forged = "2026-12-05T19:20:00+0000 [ERROR] [entry_service:GestureClassifier:1] FORGED_BY_CLIENT"
    assert http.get("/x%0D%0A" + forged.replace(" ", "%20")).status_code == 404
    assert http.post("/predict", files={"image": ("ok.jpg", jpeg(0))}).status_code == 200  # the 404's access line is written by now
    lines = [line for line in server.log().splitlines() if "FORGED_BY_CLIENT" in line]
    assert lines and all(not line.startswith("2026-12-05T19:20:00") and "/x\\r\\n2026-12-05" in line for line in lines), lines


def test_an_oversized_upload_is_refused_before_a_client_that_waits_for_the_go_ahead_sends_it(server):
    """curl sends "Expect: 100-continue" for a large upload; the 413 came only after it had sent all of it."""
    parts = urlsplit(server.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % (UPLOAD_LIMIT_MB * 1024 * 1024 + 1))
        answer = read_until_closed(sock)  # nothing of the body is ever sent
    assert answer.startswith(b"HTTP/1.1 413 ") and b"GESTURE_MAX_UPLOAD_MB" in answer, answer[:300]


@pytest.mark.parametrize("fmt, units, warning", [("PNG", 95, "libpng warning"), ("TIFF", 990, "TIFF_Warning")])
def test_an_uploads_oddities_write_nothing_to_the_log(http, server, fmt, units, warning):
    """A legal file with many malformed chunks or unknown tags: its decoder warned of each, one log
    line apiece (about 130 KB a request for the TIFF)."""
    before = len(server.log())
    resp = http.post("/predict", files={"image": (f"odd.{fmt.lower()}", many_header_units(fmt, units))})
    assert resp.status_code == 200, resp.text
    assert http.post("/predict", files={"image": ("ok.jpg", jpeg(0))}).status_code == 200  # its log lines are written by now
    logged = server.log()[before:]
    assert warning not in logged and len(logged) < 2000, logged[:3000]


@pytest.mark.parametrize("content_type", ["Multipart/Form-Data", "MULTIPART/FORM-DATA"])
def test_a_media_type_in_any_case_is_read_as_that_type(http, content_type):
    """Media types are case-insensitive; BentoML read this multipart body as JSON ("Invalid JSON")."""
    boundary = "Ab0-CaseSensitive"  # a boundary keeps its case
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n".encode()
            + jpeg(0) + f"\r\n--{boundary}--\r\n".encode())
    resp = http.post("/predict", content=body, headers={"Content-Type": f"{content_type}; boundary={boundary}"})
    expected = http.post("/predict", files={"image": ("a.jpg", jpeg(0))})
    assert resp.status_code == 200, resp.text
    assert resp.json() == expected.json()


@pytest.mark.parametrize("case", sorted(ambiguous_requests()))
def test_ambiguous_requests_get_the_reason_in_json(http, case):
    request, status, phrase = ambiguous_requests()[case]
    resp = http.request(**request)
    assert resp.status_code == status and phrase in resp.json()["error"], resp.text


def test_fifty_megabyte_upload_is_refused(http):
    resp = http.post("/predict", files={"image": ("huge.jpg", os.urandom(50 * 1024 * 1024))})
    assert resp.status_code == 413 and "GESTURE_MAX_UPLOAD_MB" in resp.json()["error"]


def test_bentomls_own_client_calls_every_endpoint(server, random_head_checkpoint, tmp_path):
    """bentoml.SyncHTTPClient, as BentoML's docs call a service: /predict raised TypeError on every answer of a
    whole-image model, as BentoML published its null hands as an array, and the client iterated it."""
    import bentoml

    local = load_classifier(random_head_checkpoint, device="cpu")
    name, data = sample_images()[0]
    photo = tmp_path / name
    photo.write_bytes(data)
    with bentoml.SyncHTTPClient(server.url) as client:
        answer = client.predict(image=photo, top_k=3)
        assert answer["hands"] is None and len(answer["top_k"]) == 3
        assert_same_as_local(answer, local.predict_proba([data])[0], local.classes, atol=1e-5)
        assert client.predict(image_b64=b64(data), top_k=3) == answer
        batch = client.predict_batch(images=[photo], images_b64=None)
        assert [item["top_k"][0] for item in batch] == [answer["top_k"][0]] 
        assert client.info()["classes"] == local.classes


def test_health_info_and_openapi(http, model_tag):
    for path in ("/readyz", "/livez", "/metrics", "/docs.json"):
        assert http.get(path).status_code == 200, path
    info = http.post("/info").json()
    assert info["model"] == model_tag and info["settings"]["max_upload_bytes"] == UPLOAD_LIMIT_MB * 1024 * 1024
    assert info["rejection"]["calibration"] == "uncalibrated" and info["rejection"]["threshold"] == 0.0  # a checkpoint without calibration
    paths = http.get("/docs.json").json()["paths"]
    assert {"/predict", "/predict_batch", "/info"} <= set(paths) and not {"/predict_batched", "/classify_crops"} & set(paths)
    answer = paths["/predict"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]["properties"]
    assert all(answer[field]["nullable"] for field in ("label", "gesture_score", "hands"))  # published as never null, before
    assert "request_total" in http.get("/metrics").text


SLOW_CLIENTS = 6  # against a concurrency limit of 2: BentoML's own limit would lock every other client out


def start_slow_upload(url: str, declared: int = 10_000) -> socket.socket:
    """A client that sends its headers and the first byte of a body it never finishes."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=60)
    sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n{" % declared)
    return sock


def trickle(sockets: list[socket.socket], answered: list, stop: threading.Event) -> None:
    """One more byte a second on every socket the server has not answered yet."""
    while not stop.wait(1.0):
        for sock, answer in zip(sockets, answered, strict=True):
            if not answer.done():  # a byte after the server's close would make it reset the connection
                with contextlib.suppress(OSError):
                    sock.send(b" ")


def read_until_closed(sock: socket.socket) -> bytes:
    """The whole answer: the server closes the connection after it, and the head and body may come in separate reads."""
    sock.settimeout(60)
    chunks = []
    with contextlib.suppress(ConnectionResetError):  # what came before a reset is the answer
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks)


def test_slow_clients_hold_no_concurrency_slot_and_get_408(home, model_tag):
    env = {"GESTURE_MAX_CONCURRENCY": "2", "GESTURE_BODY_TIMEOUT_S": "4"}
    with serve_process(bentoml_home=home, env=env) as server:
        started = time.monotonic()
        slow = [start_slow_upload(server.url) for _ in range(SLOW_CLIENTS)]
        stop = threading.Event()
        with ThreadPoolExecutor(len(slow)) as readers:  # each answer is read as soon as it comes
            answered = [readers.submit(read_until_closed, sock) for sock in slow]
            trickler = threading.Thread(target=trickle, args=(slow, answered, stop), daemon=True)
            trickler.start()
            try:
                time.sleep(0.5)  # the slow requests have reached the service
                with httpx.Client(base_url=server.url, timeout=60) as http:
                    for seed in range(4):
                        resp = http.post("/predict", files={"image": ("ok.jpg", jpeg(seed))})
                        assert resp.status_code == 200, resp.text
                answers = [future.result(120) for future in answered]
                waited = time.monotonic() - started
            finally:
                stop.set()
                trickler.join()
                for sock in slow:
                    sock.close()
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 408") and b"GESTURE_BODY_TIMEOUT_S" in answer, answer
    assert waited >= 3.5  # they were given their time, not refused at once


def test_idle_connections_beyond_the_usual_open_file_limit_lock_no_client_out(http, server):
    """Connections that send nothing, or an unfinished request, hold a file descriptor each for as
    long as they stay open: uvicorn has no timeout for them. Started under a soft limit of 1,024 open
    files, 1,100 of them made the server reset every other connection, until the worker raised its
    limit to the hard one (service/http_guard.py)."""
    wanted = USUAL_OPEN_FILE_LIMIT + 76
    if use_the_open_file_hard_limit()[1] < wanted + 200:  # this process opens them
        pytest.skip("this process cannot open enough connections")
    address = urlsplit(server.url)
    idle = []
    try:
        for i in range(wanted):
            sock = socket.create_connection((address.hostname, address.port), timeout=10)
            if i % 2:  # half of them begin a request and never finish it
                sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
            idle.append(sock)
        time.sleep(1)  # the worker has accepted them
        for seed in range(3):
            with httpx.Client(base_url=server.url, timeout=30) as fresh:  # a new connection each time
                resp = fresh.post("/predict", files={"image": ("ok.jpg", jpeg(seed))})
            assert resp.status_code == 200, resp.text
    finally:
        for sock in idle:
            sock.close()
    assert http.get("/readyz").status_code == 200


def test_clients_that_send_most_of_a_body_and_wait_hold_a_bounded_share_of_memory(http, server):
    """Each client sends all but the last byte of an upload at the limit, then waits. Bodies were held
    without bound until their body timeout: 150 such clients at 16 MB grew the worker by 2,394 MB. Now
    the worker holds BODIES_HELD of them (256 MB at this server's 4 MB) and drops the oldest with 503,
    and a normal request is still answered."""
    clients = 150  # 600 MB sent in all
    worker = PeakRss(worker_pid(server.process.pid))
    waiting = []

    def send_and_wait() -> httpx.Response:
        for _ in range(clients):
            waiting.append(most_of_a_body(server.url, UPLOAD_LIMIT_MB * 2**20))
        return http.post("/predict", files={"image": ("ok.jpg", jpeg(0))})

    try:
        normal, growth_mb = worker.measure(send_and_wait)
        answers = [read_until_closed(sock) for sock in waiting if readable(sock)]
    finally:
        for sock in waiting:
            sock.close()
    assert normal.status_code == 200, normal.text
    assert growth_mb < 400, growth_mb  # 256 MB of bodies, and what a request costs
    assert len(answers) >= clients - BODIES_HELD and all(a.startswith(b"HTTP/1.1 503") for a in answers), answers[:3]
    assert b"had been arriving the longest; retry shortly" in answers[0]


def test_missing_model_fails_start_up_with_import_instructions(tmp_path):
    with pytest.raises(ServerStartError, match=r"python -m service\.import_model RUN/best\.pt"):
        with serve_process(bentoml_home=tmp_path, ready_timeout=120):
            pass


def assert_imports_are_packed(src: Path) -> None:
    """Every project module that the packed code imports is packed too. (Here the editable install would
    hide a missing one; in a container built from the Bento it is an ImportError at start-up.)"""
    packed = {p.relative_to(src).as_posix() for p in src.rglob("*.py")}
    assert "service/service.py" in packed
    for name in sorted(packed):
        for node in ast.walk(ast.parse((src / name).read_text())):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            for module in (m for m in modules if m.split(".")[0] in {"service", "gesture_core", "training"}):
                path = module.replace(".", "/")
                assert f"{path}.py" in packed or f"{path}/__init__.py" in packed, f"{name} imports {module}, which bentofile.yaml does not include"


def assert_containerizable(bento: Path) -> None:
    """What `bentoml containerize` builds from: the Dockerfile with the system packages, and the pins."""
    dockerfile = next(bento.glob("env/docker/Dockerfile"), None)
    assert dockerfile is not None, sorted(p.relative_to(bento).as_posix() for p in bento.rglob("*") if "src" not in p.parts)
    text = dockerfile.read_text()
    assert "libglib2.0-0" in text and "libgomp1" in text and "3.11" in text, text[:2000]
    requirements = (bento / "env" / "python" / "requirements.txt").read_text()
    assert "torch==2.14.1" in requirements and "bentoml==1.4.39" in requirements and "openvino" in requirements


def test_bentoml_build_packages_and_pins_the_imported_model(tmp_path, random_head_checkpoint):
    built_with = import_cli(random_head_checkpoint, tmp_path)
    done = run_cli(["-m", "bentoml", "build", "--output", "tag"], tmp_path)
    assert done.returncode == 0, done.stderr + done.stdout
    bento_tag = done.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    info = run_cli(["-m", "bentoml", "get", bento_tag, "-o", "json"], tmp_path)
    assert info.returncode == 0, info.stderr
    assert [m["tag"] for m in json.loads(info.stdout)["services"][0]["models"]] == [built_with]
    newer = import_cli(random_head_checkpoint, tmp_path)  # now "latest" is another version
    assert newer != built_with
    bento = tmp_path / "bentos" / bento_tag.replace(":", "/")
    assert_imports_are_packed(bento / "src")
    assert {p.name for p in (bento / "src" / "service" / "demo").iterdir()} >= {"index.html", "demo.js", "demo.css"}  # the /demo page
    assert_containerizable(bento)
    log = tmp_path / "serve.log"  # GESTURE_MODEL names the newer version: the Bento keeps its own, and says so
    with serve_process(bentoml_home=tmp_path, target=bento_tag, env={"GESTURE_MODEL": newer}, log_path=log) as server:
        assert httpx.post(f"{server.url}/info", timeout=60).json()["model"] == built_with
        assert httpx.post(f"{server.url}/predict", files={"image": ("ok.jpg", jpeg(0))}, timeout=60).status_code == 200
    assert f"warning: GESTURE_MODEL={newer} is not used: a Bento serves the model it was built with, {built_with}" in log.read_text()


@pytest.mark.slow
def test_served_fine_tuned_model_recognises_sign_digits(sign_digits_run, tmp_path):
    """The real model from a short fine-tune, served: same answers as load_classifier on held-out images."""
    tag = import_cli(sign_digits_run / "best.pt", tmp_path)
    local = load_classifier(sign_digits_run / "best.pt", device="cpu")
    split = json.loads((sign_digits_run / "split.json").read_text())
    root, test_items = Path(split["root"]), split["test"][::10][:30]
    with serve_process(bentoml_home=tmp_path) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        correct = 0
        for rel, label in test_items:
            data = (root / rel).read_bytes()
            served = http.post("/predict", files={"image": (rel, data)}).json()
            assert served["model"] == tag
            probs, expected = local.predict_proba([data])[0], local.predict(data)
            assert_same_as_local(served, probs, local.classes, atol=1e-5, label=expected.label)  # its calibrated threshold too
            assert (served["gesture_score"] is None) == (expected.gesture_score is None)  # the default score gives one
            if expected.gesture_score is not None:
                assert served["gesture_score"] == pytest.approx(expected.gesture_score, abs=0.01)
            correct += served["label"] == local.classes[label]
    assert correct / len(test_items) >= 0.5  # a 3-epoch fine-tune; chance is 0.1
