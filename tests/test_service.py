"""The BentoML service in-process: model import, the service class called directly, and HTTP through its ASGI app.

A real `bentoml serve` is exercised in test_service_integration.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from bentoml.exceptions import BadInput
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from gesture_core import load_classifier
from gesture_core.engines import engine_installed
from service import import_model
from service.http_guard import RequestGuard
from service.settings import Limits
from tests.service_inputs import b64, bad_uploads, http_bad_requests, jpeg, odd_formats, sample_images

DEFAULT_UPLOAD_LIMIT = Limits().max_upload_bytes


@pytest.fixture(scope="session")
def bento_store(tmp_path_factory):
    """An empty BentoML home in tmp, also for code that already looked up the default store."""
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore

    home = tmp_path_factory.mktemp("bentoml-home")
    (home / "models").mkdir()
    with BentoMLContainer.model_store.patch(ModelStore(str(home / "models"))), \
            BentoMLContainer.model_store_dir.patch(str(home / "models")):
        yield home


@pytest.fixture(scope="session")
def stored_model(bento_store, random_head_checkpoint):
    return import_model.import_checkpoint(random_head_checkpoint)


@pytest.fixture(scope="session")
def reference(random_head_checkpoint):
    return load_classifier(random_head_checkpoint, device="cpu")


@pytest.fixture(scope="session")
def svc(stored_model):
    from service.service import GestureClassifier

    return GestureClassifier()


@pytest.fixture(scope="module")
def client(stored_model):
    from service.service import GestureClassifier

    with TestClient(GestureClassifier.to_asgi()) as client:
        yield client


@pytest.fixture(scope="session")
def images() -> list[tuple[str, bytes]]:
    return sample_images()


def scores(prediction: dict) -> dict[str, float]:
    return {item["label"]: item["score"] for item in prediction["top_k"]}


def assert_matches_reference(prediction: dict, probs: np.ndarray, classes: list[str], atol: float = 1e-5) -> None:
    best = int(np.argmax(probs))
    assert prediction["label"] == classes[best]
    for label, score in scores(prediction).items():
        assert score == pytest.approx(float(probs[classes.index(label)]), abs=atol)


# --- model import ------------------------------------------------------------------------------


def test_import_stores_checkpoint_and_metadata(stored_model, random_head_checkpoint):
    meta = stored_model.info.metadata
    assert meta["backbone"] == "efficientnet_lite0"
    assert meta["classes"] == [str(i) for i in range(10)]
    assert meta["input_size"] == 128
    assert meta["metrics"] == {"test": {"top1": 0.1}}
    assert len(meta["data_fingerprint"]["sha256"]) == 64
    stored_file = Path(stored_model.path_of(import_model.CHECKPOINT_FILE))
    assert stored_file.read_bytes() == random_head_checkpoint.read_bytes()
    assert stored_model.info.labels["backbone"] == "efficientnet_lite0"


def test_data_fingerprint_follows_the_split_file_lists(tmp_path, random_head_checkpoint):
    ckpt = {"classes": ["a", "b"], "train_config": {"data": "/data/x"}, "metrics": {}}
    run = tmp_path / "run"
    run.mkdir()
    split = {"classes": ["a", "b"], "train": [["a/1.jpg", 0], ["b/2.jpg", 1]], "val": [["a/3.jpg", 0]], "test": [["b/4.jpg", 1]]}
    (run / "split.json").write_text(json.dumps(split))
    first = import_model.data_fingerprint(run / "best.pt", ckpt)
    assert first["counts"] == {"train": 2, "val": 1, "test": 1} and first["basis"].startswith("split.json")
    split["train"].reverse()  # same files in another order: same data
    (run / "split.json").write_text(json.dumps(split))
    assert import_model.data_fingerprint(run / "best.pt", ckpt)["sha256"] == first["sha256"]
    split["test"] = [["b/5.jpg", 1]]  # another test image: other data
    (run / "split.json").write_text(json.dumps(split))
    assert import_model.data_fingerprint(run / "best.pt", ckpt)["sha256"] != first["sha256"]


def test_import_cli_prints_the_tag_and_rejects_non_checkpoints(bento_store, random_head_checkpoint, tmp_path, capsys):
    assert import_model.main([str(random_head_checkpoint), "--name", "cli-test"]) == 0
    tag = capsys.readouterr().out.strip()
    assert tag.startswith("cli-test:")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert import_model.main([str(junk)]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        import_model.main([str(random_head_checkpoint), "--name", "Bad Name!"])


# --- the service class, called directly -----------------------------------------------------------


def test_predict_equals_load_classifier(svc, reference, images, tmp_path):
    for name, data in images:
        path = tmp_path / name
        path.write_bytes(data)
        result = asyncio.run(svc.predict(image=path, top_k=10)).model_dump()
        probs = reference.predict_proba([data])[0]
        assert_matches_reference(result, probs, reference.classes, atol=0)  # same code path: bit-identical
        assert result["model"] == svc.model_tag and result["model"].startswith("gesture-classifier:")


def test_predict_batch_and_batched_equal_single_predictions(svc, reference, images):
    datas = [data for _, data in images]
    batch = asyncio.run(svc.predict_batch(images_b64=[b64(d) for d in datas], top_k=10))
    probs = reference.predict_proba(datas)
    for result, p in zip(batch, probs, strict=True):
        assert_matches_reference(result.model_dump(), p, reference.classes)
    single = asyncio.run(svc.predict_batched(image_b64=b64(datas[0]), top_k=10)).model_dump()
    assert_matches_reference(single, probs[0], reference.classes)


def test_concurrent_predicts_share_one_model_call(stored_model, reference, images, monkeypatch):
    """Requests that arrive while the model is busy wait in the micro-batcher, then run as one batch.
    One model thread, so that the batches that form are exactly predictable (several threads are
    covered in test_microbatch.py)."""
    from service.service import GestureClassifier

    monkeypatch.setenv("GESTURE_MODEL_THREADS", "1")
    svc = GestureClassifier()
    datas = [images[i % len(images)][1] for i in range(8)]
    before = svc.predict_batch_stats()

    async def all_at_once():
        return await asyncio.gather(*(svc.predict(image_b64=b64(d), top_k=10) for d in datas))

    with ThreadPoolExecutor(1) as pool:
        with svc._model_calls:  # the model is "busy": the first request holds the model thread
            pending = pool.submit(asyncio.run, all_at_once())
            deadline = time.monotonic() + 30
            # the model thread has taken the first request(s) and waits for the model; the rest queue
            while svc.batcher.stats.items - before["predict_images"] + svc.batcher._queue.qsize() < len(datas):
                assert time.monotonic() < deadline and not pending.done(), "requests never queued"
                time.sleep(0.005)
        results = pending.result(60)
    for result, p in zip(results, reference.predict_proba(datas), strict=True):
        assert_matches_reference(result.model_dump(), p, reference.classes)
    after = svc.predict_batch_stats()
    assert after["predict_images"] - before["predict_images"] == len(datas)
    assert after["predict_model_calls"] - before["predict_model_calls"] == 2  # the busy call, then all the others
    assert after["predict_largest_batch"] >= len(datas) // 2
    svc.stop_batcher()


def test_every_batch_size_is_warmed_up_before_serving(stored_model, monkeypatch):
    from service.service import BATCHING, GestureClassifier

    sizes = []
    original = GestureClassifier.inner.classify
    monkeypatch.setattr(GestureClassifier.inner, "classify", lambda self, crops: sizes.append(len(crops)) or original(self, crops))
    GestureClassifier()
    assert sizes == list(range(1, BATCHING.max_batch_size + 1))


def test_predict_batching_can_be_turned_off(stored_model, reference, images, monkeypatch):
    from service import settings
    from service.service import GestureClassifier

    monkeypatch.setenv("GESTURE_PREDICT_BATCHING", "sometimes")
    with pytest.raises(settings.SettingsError, match="choose one of on, off"):
        GestureClassifier()
    monkeypatch.setenv("GESTURE_PREDICT_BATCHING", "off")
    plain = GestureClassifier()
    assert plain.batcher is None and plain.predict_batch_stats()["predict_model_calls"] == 0
    result = asyncio.run(plain.predict(image_b64=b64(images[0][1]), top_k=10)).model_dump()
    assert_matches_reference(result, reference.predict_proba([images[0][1]])[0], reference.classes, atol=0)


def test_base64_data_url_top_k_and_threshold(svc, reference, images):
    data = images[0][1]
    plain = asyncio.run(svc.predict(image_b64=b64(data), top_k=3)).model_dump()
    data_url = asyncio.run(svc.predict(image_b64="data:image/jpeg;base64," + b64(data), top_k=3)).model_dump()
    assert plain == data_url and len(plain["top_k"]) == 3
    assert [s["score"] for s in plain["top_k"]] == sorted((s["score"] for s in plain["top_k"]), reverse=True)
    rejected = asyncio.run(svc.predict(image_b64=b64(data), threshold=1.0)).model_dump()
    assert rejected["label"] is None and rejected["score"] == plain["score"]


@pytest.mark.parametrize("name", sorted(bad_uploads()))
def test_bad_images_raise_bad_input_with_a_reason(svc, name):
    data, phrase = bad_uploads()[name]
    with pytest.raises(BadInput, match=phrase):
        asyncio.run(svc.predict(image_b64=b64(data)))


def test_corrupt_jpeg_body_is_bad_input(svc):
    whole = jpeg(2, 160)
    corrupt = whole[:300] + bytes(len(whole) - 302) + b"\xff\xd9"  # valid header and end marker, zeroed data
    try:
        result = asyncio.run(svc.predict(image_b64=b64(corrupt)))
    except BadInput:
        return
    assert result.label is not None  # a decoder that conceals the damage must still give a normal answer


def test_odd_image_modes_are_decoded_like_read_rgb(svc, reference):
    for name, data in odd_formats().items():
        result = asyncio.run(svc.predict(image_b64=b64(data), top_k=10)).model_dump()
        assert_matches_reference(result, reference.predict_proba([data])[0], reference.classes, atol=0), name


def test_missing_image_and_too_many_images(svc, images):
    with pytest.raises(BadInput, match="multipart file field named 'image'"):
        asyncio.run(svc.predict())
    with pytest.raises(BadInput, match="got both"):
        asyncio.run(svc.predict(image=Path("x.jpg"), image_b64="AAAA"))
    too_many = [b64(images[0][1])] * (svc.limits.max_batch_images + 1)
    with pytest.raises(BadInput, match="GESTURE_MAX_BATCH_IMAGES"):
        asyncio.run(svc.predict_batch(images_b64=too_many))


def test_pixel_limit_is_configurable(stored_model, monkeypatch):
    from service.service import GestureClassifier

    monkeypatch.setenv("GESTURE_MAX_PIXELS", "5000")
    small = GestureClassifier()
    with pytest.raises(BadInput, match="above the limit of 5,000"):
        asyncio.run(small.predict(image_b64=b64(jpeg(0, 96))))  # 9216 pixels
    assert asyncio.run(small.predict(image_b64=b64(jpeg(0, 64)))).label is not None


@pytest.mark.parametrize("name,value,phrase", [
    ("GESTURE_MAX_UPLOAD_MB", "lots", "expected a whole number >= 1"),
    ("GESTURE_MAX_PIXELS", "0", "expected a whole number >= 1"),
    ("GESTURE_BATCH_SIZE", "1", ">= 2"),
    ("GESTURE_DEVICE", "tpu", "choose one of auto, cpu, cuda"),
    ("GESTURE_TORCH_THREADS", "-1", "(default unset)"),
    ("GESTURE_LOOP_DECODE_PIXELS", "-1", "expected a whole number >= 0"),
    ("GESTURE_TRACING", "yes", "choose one of on, off"),
])
def test_malformed_settings_are_refused_with_the_valid_range(monkeypatch, name, value, phrase):
    from service import settings

    monkeypatch.setenv(name, value)
    with pytest.raises(settings.SettingsError, match=re.escape(phrase)):
        settings.Limits.from_env(), settings.BatchingConfig.from_env(), settings.device(), settings.torch_threads()
        settings.loop_decode_pixels(1), settings.tracing()


def test_info_describes_the_served_model(svc):
    info = svc.info().model_dump()
    assert info["backbone"] == "efficientnet_lite0" and info["classes"] == [str(i) for i in range(10)]
    assert info["input_size"] == 128 and info["model"] == svc.model_tag
    assert info["metrics"]["test"]["top1"] == 0.1 and info["device"] == "cpu"
    assert info["engine"] == f"{svc.classifier.engine.name}/fp32"


def test_engine_is_configurable(stored_model, random_head_checkpoint, monkeypatch):
    from service.service import GestureClassifier

    monkeypatch.setenv("GESTURE_ENGINE", "torch")
    eager = GestureClassifier()
    assert eager.info().engine == "torch/fp32"
    assert eager.info().batching["predict_model_threads"] == 1  # eager calls would fight over the cores
    reference = load_classifier(random_head_checkpoint, device="cpu", engine="torch")
    data = jpeg(4)
    result = asyncio.run(eager.predict(image_b64=b64(data), top_k=10)).model_dump()
    assert_matches_reference(result, reference.predict_proba([data])[0], reference.classes, atol=0)


def test_openvino_takes_batches_on_several_model_threads(stored_model, monkeypatch):
    from service import settings
    from service.service import GestureClassifier

    if not engine_installed("openvino"):
        pytest.skip("openvino is not installed")
    monkeypatch.setenv("GESTURE_ENGINE", "openvino")
    monkeypatch.setenv("GESTURE_MODEL_THREADS", "3")
    svc = GestureClassifier()
    assert svc.info().batching["predict_model_threads"] == 3 == len(svc.batcher._threads)
    monkeypatch.setenv("GESTURE_MODEL_THREADS", "0")
    with pytest.raises(settings.SettingsError, match="GESTURE_MODEL_THREADS='0': expected a whole number >= 1"):
        GestureClassifier()


def test_small_images_decode_on_the_event_loop_and_large_ones_in_a_thread(stored_model, reference, monkeypatch):
    from service.service import GestureClassifier

    monkeypatch.setenv("GESTURE_LOOP_DECODE_PIXELS", "5000")
    svc = GestureClassifier()
    decoded_in: list[str] = []
    decode = svc.decode

    def recording_decode(data: bytes, what: str) -> np.ndarray:
        decoded_in.append(threading.current_thread().name)
        return decode(data, what)

    monkeypatch.setattr(svc, "decode", recording_decode)
    for data in (jpeg(1, 64), jpeg(2, 96)):  # 4,096 and 9,216 pixels
        result = asyncio.run(svc.predict(image_b64=b64(data), top_k=10)).model_dump()
        assert_matches_reference(result, reference.predict_proba([data])[0], reference.classes, atol=0)
    loop = threading.current_thread().name  # asyncio.run runs the loop in this thread
    assert decoded_in[0] == loop and decoded_in[1] != loop
    with pytest.raises(BadInput, match="not a recognised image format"):  # refused on the loop, no hand-off
        asyncio.run(svc.predict(image_b64=b64(b"not an image")))
    assert decoded_in[2] == loop


def test_loop_decoding_defaults_to_the_resize_size_and_can_be_turned_off(stored_model, svc, monkeypatch):
    from service.service import GestureClassifier

    size = svc.preprocess.config.resize_size
    assert svc.loop_decode_pixels == size * size
    assert svc.decodes_on_loop(jpeg(0, size)) and not svc.decodes_on_loop(jpeg(0, size + 1))
    monkeypatch.setenv("GESTURE_LOOP_DECODE_PIXELS", "0")
    assert not GestureClassifier().decodes_on_loop(jpeg(0, 8))


def test_tracing_is_off_unless_asked_for(stored_model, monkeypatch, caplog):
    from bentoml._internal.configuration.containers import BentoMLContainer
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    from service.service import GestureClassifier, logger, tracing_config, warn_if_tracing_excluded

    monkeypatch.setattr(logger, "handlers", [caplog.handler])  # BentoML's loggers do not propagate to pytest's
    app = GestureClassifier.to_asgi()  # the app `bentoml serve` builds, with BentoML's middlewares
    otel = next(m for m in app.user_middleware if m.cls is OpenTelemetryMiddleware)
    for route in ("/predict", "/predict_batch", "/info", "/readyz"):
        assert otel.kwargs["excluded_urls"].url_disabled(f"http://127.0.0.1:3000{route}"), route
    monkeypatch.setenv("GESTURE_TRACING", "on")
    assert tracing_config() == {}
    exporter = BentoMLContainer.config.tracing.exporter_type
    configured = exporter.get()
    exporter.set("otlp")  # a user who configured BentoML tracing
    try:
        warn_if_tracing_excluded()
        assert not caplog.records
        monkeypatch.setenv("GESTURE_TRACING", "off")
        warn_if_tracing_excluded()
    finally:
        exporter.set(configured)
    assert "exporter (otlp)" in caplog.text and "set GESTURE_TRACING=on" in caplog.text


def test_missing_model_says_how_to_import_one(bento_store):
    from service.service import LocalModel, ModelNotImported

    with pytest.raises(ModelNotImported, match=r"python -m service\.import_model RUN/best\.pt"):
        LocalModel("no-such-model:latest").resolve()


# --- HTTP through the ASGI app ---------------------------------------------------------------------


def test_http_predict_multipart_and_json(client, reference, images):
    name, data = images[1]
    multipart = client.post("/predict", files={"image": (name, data, "image/jpeg")}, data={"top_k": "10"})
    assert multipart.status_code == 200, multipart.text
    assert_matches_reference(multipart.json(), reference.predict_proba([data])[0], reference.classes, atol=0)
    as_json = client.post("/predict", json={"image_b64": b64(data), "top_k": 10})
    assert as_json.json() == multipart.json()


SHORTCUT_CASES = {
    "plain": {},
    "top_k": {"top_k": "3"},
    "threshold_rejects": {"top_k": "10", "threshold": "0.999"},
    "threshold_as_text": {"threshold": " 0.5"},
}


@pytest.mark.parametrize("case", SHORTCUT_CASES)
def test_predict_shortcut_answers_exactly_as_bentoml(client, images, monkeypatch, case):
    from service import service

    answered = []
    parse = service.plain_predict_request
    monkeypatch.setattr(service, "plain_predict_request", lambda *a: answered.append(parse(*a)) or answered[-1])
    name, data = images[2]
    post = lambda: client.post("/predict", files={"image": (name, data, "image/jpeg")}, data=SHORTCUT_CASES[case])  # noqa: E731
    shortcut = post()
    monkeypatch.setattr(service, "PREDICT_SHORTCUT", False)
    bentoml_path = post()
    assert len(answered) == 1 and answered[0] is not None  # the first answer came from the shortcut, the second not
    assert shortcut.status_code == bentoml_path.status_code == 200
    assert shortcut.content == bentoml_path.content
    assert without_date(shortcut.headers) == without_date(bentoml_path.headers)


def without_date(headers) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k != "date"}


@pytest.mark.parametrize("case", ["top_k_zero", "file_text", "file_empty", "file_truncated_jpeg", "wrong_field_name"])
def test_requests_the_predict_shortcut_leaves_to_bentoml_get_bentoml_answers(client, monkeypatch, case):
    from service import service

    kwargs = http_bad_requests(DEFAULT_UPLOAD_LIMIT)[case]
    shortcut = client.post("/predict", **kwargs)
    monkeypatch.setattr(service, "PREDICT_SHORTCUT", False)
    bentoml_path = client.post("/predict", **kwargs)
    assert 400 <= shortcut.status_code < 500 and shortcut.status_code == bentoml_path.status_code
    assert shortcut.json() == bentoml_path.json()


def test_only_plain_multipart_predicts_take_the_shortcut():
    from service.http_guard import form_parts
    from service.service import PlainPredict, plain_predict_request

    def request(*parts: tuple[str, str | None, bytes], content_type: bytes = b"multipart/form-data; boundary=XyZ"):
        body = b"".join(
            b"--XyZ\r\nContent-Disposition: form-data; name=\"%s\"%s\r\n\r\n%s\r\n"
            % (name.encode(), b"" if filename is None else b'; filename="%s"' % filename.encode(), content)
            for name, filename, content in parts) + b"--XyZ--\r\n"
        _, form = form_parts({"headers": [(b"content-type", content_type)]}, body)
        return plain_predict_request(form) if form else None  # the guard offers multipart bodies only

    image = ("image", "a.jpg", b"JPEG bytes")
    assert request(image) == PlainPredict(b"JPEG bytes", 5, None)  # the endpoint's own defaults (None: the model's threshold)
    assert request(image, ("top_k", None, b"2"), ("threshold", None, b"0.25")) == PlainPredict(b"JPEG bytes", 2, 0.25)
    for not_plain in [
        request(image, content_type=b"application/json"),
        request(image, image),  # two images
        request(("images", "a.jpg", b"x")),  # wrong field
        request(image, ("top_k", None, b"2"), ("top_k", None, b"3")),  # a repeated value
        request(image, ("crop", None, b"1")),  # a field /predict does not take
        request(image, ("top_k", None, b"0")),  # out of range: BentoML words the error
        request(image, ("image_b64", None, b"AAAA")),
        request(image, ("threshold", None, b"\xff")),  # not UTF-8
    ]:
        assert not_plain is None


def test_http_batch_endpoints(client, reference, images):
    datas = [d for _, d in images[:4]]
    resp = client.post("/predict_batch", files=[("images", (f"{i}.jpg", d)) for i, d in enumerate(datas)], data={"top_k": "10"})
    assert resp.status_code == 200, resp.text
    probs = reference.predict_proba(datas)
    assert len(resp.json()) == len(datas)
    for result, p in zip(resp.json(), probs, strict=True):
        assert_matches_reference(result, p, reference.classes)


def test_http_batched_endpoint_under_concurrency(client, reference, images):
    """16 concurrent single-image clients through BentoML's batching dispatcher: each gets its own answer."""
    jobs = [images[i % len(images)][1] for i in range(16)]
    post = lambda d: client.post("/predict_batched", files={"image": ("x.jpg", d)}, data={"top_k": "10"})  # noqa: E731
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(post, jobs))
    for data, resp in zip(jobs, responses, strict=True):
        assert resp.status_code == 200, resp.text
        assert_matches_reference(resp.json(), reference.predict_proba([data])[0], reference.classes)


def test_http_info_and_health(client):
    info = client.post("/info").json()
    assert info["backbone"] == "efficientnet_lite0" and info["input_size"] == 128
    for path in ("/readyz", "/livez"):  # /metrics needs the real server's Prometheus setup: integration test
        assert client.get(path).status_code == 200, path


BAD_REQUESTS = http_bad_requests(DEFAULT_UPLOAD_LIMIT)


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
@pytest.mark.parametrize("route", ["/predict", "/predict_batched"])
def test_http_bad_requests_get_4xx_with_a_json_reason(client, route, case):
    resp = client.post(route, **BAD_REQUESTS[case])
    assert 400 <= resp.status_code < 500, resp.text
    body = resp.json()
    assert isinstance(body, dict) and body["error"], body
    assert client.get("/readyz").status_code == 200


def test_http_batch_names_the_bad_image(client):
    resp = client.post("/predict_batch", files=[("images", ("a.jpg", jpeg(0))), ("images", ("b.jpg", b"junk"))])
    assert resp.status_code == 400 and resp.json()["error"].startswith("images[1]:")
    wrong_field = client.post("/predict_batch", files={"image": ("a.jpg", jpeg(0))})
    assert wrong_field.status_code == 400 and "'images'" in wrong_field.json()["error"]


def test_http_crops_endpoint_rejects_wrong_sizes_before_batching(client):
    resp = client.post("/classify_crops", json={"crops": [b64(b"\x00" * 12)]})
    assert resp.status_code == 400 and "49,152 bytes" in json.dumps(resp.json())


# --- the request guard on its own ------------------------------------------------------------------


async def echo_length(request):
    return JSONResponse({"length": len(await request.body())})


async def client_error(request):
    return JSONResponse([{"error": "bad thing"}], status_code=400)


@pytest.fixture(scope="module")
def guarded():
    app = Starlette(routes=[Route("/echo", echo_length, methods=["POST"]), Route("/bad", client_error, methods=["POST"])])
    return TestClient(RequestGuard(app, max_body_bytes=1000, file_fields={"/echo": frozenset({"image"})}))


def test_guard_limits_declared_and_streamed_bodies(guarded):
    assert guarded.post("/echo", content=b"x" * 1000).json() == {"length": 1000}
    declared = guarded.post("/echo", content=b"x" * 1001)
    assert declared.status_code == 413 and "limit is 1,000 bytes" in declared.json()["error"]
    streamed = guarded.post("/echo", content=iter([b"x" * 600, b"x" * 600]))  # chunked: no content-length
    assert streamed.status_code == 413 and "more than" in streamed.json()["error"]
    assert guarded.post("/echo", content=iter([b"x" * 400, b"x" * 400])).json() == {"length": 800}


def test_guard_checks_form_fields(guarded):
    ok = guarded.post("/echo", files={"image": ("a.jpg", b"123")}, data={"top_k": "3"})
    assert ok.status_code == 200
    assert "'image'" in guarded.post("/echo", files={"photo": ("a.jpg", b"1")}).json()["error"]
    assert "must be a file upload" in guarded.post("/echo", data={"image": "x"}, files={"other": ("", b"")}).json()["error"]


def test_guard_unwraps_bentoml_error_lists(guarded):
    assert guarded.post("/bad").json() == {"error": "bad thing"}
