"""The BentoML service in-process: model import, the service class called directly, and HTTP through
its ASGI app (BentoML's own app, with the request guard). A real `bentoml serve` is exercised in
test_service_integration.py."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from bentoml.exceptions import BadInput
from PIL import Image
from python_multipart.multipart import DEFAULT_MAX_HEADER_SIZE
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from benchmarks.hostile_inputs import b64, bad_uploads, encode, flat_png, form_part, http_bad_requests, multipart
from gesture_core import ImageDecodeError, load_classifier
from gesture_core.cli import python_command
from gesture_core.runtime import MOST_THREADS, Runtime
from service import import_model
from service import settings as settings_module
from service.hand_crops import find_hand_crops
from service.http_guard import (
    FORM_LIMITS,
    MAX_FILENAME_BYTES,
    MAX_HEADER_BYTES,
    Arrival,
    BodyMemory,
    EndpointFields,
    FormPart,
    NoRoomForBody,
    RequestGuard,
    parts_problem,
)
from service.schemas import decode_base64
from service.settings import Settings, SettingsError, hardware_problem, unknown_settings
from tests.helpers import heic_photo_start, synthetic_image
from tests.service_inputs import (
    ambiguous_requests,
    assert_refused_as_documented,
    expected_refusal,
    jpeg,
    odd_formats,
    sample_images,
)

DEFAULT_UPLOAD_LIMIT = Settings().max_upload_bytes


@pytest.fixture(scope="session")
def stored_model(random_head_checkpoint):
    return import_model.import_checkpoint(random_head_checkpoint)  # into the tests' BENTOML_HOME (conftest)


@pytest.fixture(scope="session")
def reference(random_head_checkpoint):
    return load_classifier(random_head_checkpoint, device="cpu")


def service_with(**changes):
    from service.service import SETTINGS, GestureClassifier

    return GestureClassifier.inner(replace(SETTINGS, **changes))


@pytest.fixture(scope="session")
def svc(stored_model):
    return service_with()


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
    assert prediction["top_k"] and prediction["top_k"][0]["label"] == classes[best], prediction  # an empty top_k checks nothing
    assert prediction["score"] == pytest.approx(float(probs[best]), abs=atol)
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


def test_a_run_without_test_images_is_imported(random_head_checkpoint, tmp_path):
    """A run trained with --test-split 0 has no test top-1 (None), which BentoML's metadata refused:
    "error: metadata entries must be basic python types like 'str', 'int', or 'complex', got 'NoneType'"."""
    path = tmp_path / "run" / "best.pt"
    path.parent.mkdir()
    ckpt = torch.load(random_head_checkpoint, weights_only=True)
    torch.save({**ckpt, "metrics": {"val": {"top1": 0.9, "top5": 1.0, "n": 10}, "test": {"top1": None, "top5": None, "n": 0}}}, path)
    stored = import_model.import_checkpoint(path, name="no-test-split")
    assert stored.info.metadata["metrics"] == {"val": {"top1": 0.9, "top5": 1.0, "n": 10}, "test": {"n": 0}}
    assert stored.info.labels["test_top1"] == "n/a"


def test_data_fingerprint_follows_the_split_file_lists(tmp_path):
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


def test_import_cli_prints_the_tag_and_rejects_non_checkpoints(stored_model, random_head_checkpoint, tmp_path, capsys):
    assert import_model.main([str(random_head_checkpoint), "--name", "cli-test"]) == 0
    tag = capsys.readouterr().out.strip()
    assert tag.startswith("cli-test:")
    assert import_model.main([str(random_head_checkpoint), "--name", "CLI-Test"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("cli-test:")  # the store lower-cases names, and the user is told
    assert "note: stored as 'cli-test': BentoML model names are lower case" in err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert import_model.main([str(junk)]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        import_model.main([str(random_head_checkpoint), "--name", "Bad Name!"])
    last = tmp_path / "run" / "last.pt"  # what finetune adds to a checkpoint for --resume
    last.parent.mkdir()
    torch.save({**torch.load(random_head_checkpoint, weights_only=True), "epoch": 3, "optimizer": {}}, last)
    assert import_model.main([str(last)]) == 2  # it stored the latest epoch's weights, uncalibrated, as the model to serve
    assert f"pass the run's best.pt, e.g. {python_command()} -m service.import_model {last.parent}" in capsys.readouterr().err


# --- the service class, called directly -----------------------------------------------------------


def test_predict_equals_load_classifier(svc, reference, images, tmp_path):
    for name, data in images:
        path = tmp_path / name
        path.write_bytes(data)
        result = asyncio.run(svc.predict(image=path, top_k=10)).model_dump()
        expected = reference.predict(data, k=10)
        assert result["label"] == expected.label and scores(result) == dict(expected.top_k)  # the same pipeline: bit-identical
        assert result["model"] == svc.model_tag and result["model"].startswith("gesture-classifier:")
        assert result["hands"] is None  # a whole-image model: no per-hand answers (tests/test_hands_service.py has them)


def test_predict_batch_equals_single_predictions(svc, reference, images):
    datas = [data for _, data in images]
    batch = asyncio.run(svc.predict_batch(images_b64=datas, top_k=10))
    for result, p in zip(batch, reference.predict_proba(datas), strict=True):
        assert_matches_reference(result.model_dump(), p, reference.classes)


def test_concurrent_predicts_share_one_model_call(stored_model, reference, images, monkeypatch):
    """Requests that arrive while the model is busy wait in the micro-batcher, then run as one batch.
    The first request holds the model call (an Event) until the seven others have queued, so the
    batches are exactly [1, 7] however slow the machine; eager torch, so one model thread."""
    from gesture_core.classifier import Classifier
    from service import microbatch

    classify, submit = Classifier.classify_scores, microbatch.MicroBatcher.submit
    serving, calls, queued = threading.Event(), [], []
    model_busy, release = threading.Event(), threading.Event()

    def held_classify(self, crops):
        if serving.is_set():  # not the warm-up
            calls.append(len(crops))
            if len(calls) == 1:
                model_busy.set()
                assert release.wait(120), "the other requests never queued"
        return classify(self, crops)

    def counted_submit(self, item):
        future = submit(self, item)
        queued.append(future)  # after the real submit: the item is in the queue by now
        return future

    monkeypatch.setattr(Classifier, "classify_scores", held_classify)
    monkeypatch.setattr(microbatch.MicroBatcher, "submit", counted_submit)
    svc = service_with(runtime=Runtime(engine="torch"))
    serving.set()
    datas = [images[i % len(images)][1] for i in range(8)]

    async def predict_all(batch: list[bytes]):
        return await asyncio.gather(*(svc.predict(image_b64=d, top_k=10) for d in batch))

    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(asyncio.run, predict_all(datas[:1]))
            assert model_busy.wait(120), "the first request never reached the model"
            others = pool.submit(asyncio.run, predict_all(datas[1:]))
            deadline = time.monotonic() + 120
            while len(queued) < len(datas):
                assert time.monotonic() < deadline and not others.done(), f"{len(queued)} of {len(datas)} requests queued"
                time.sleep(0.01)
            release.set()
            results = first.result(120) + others.result(120)
    finally:
        release.set()
        svc.stop_batcher()
    assert calls == [1, 7]
    for result, p in zip(results, reference.predict_proba(datas), strict=True):
        assert_matches_reference(result.model_dump(), p, reference.classes)
    stats = svc.info().batching
    assert (stats["model_calls"], stats["images"], stats["largest_batch"]) == (2, 8, 7)


def test_every_batch_size_is_warmed_up_before_serving(stored_model, monkeypatch):
    from gesture_core.preprocess import Preprocess

    sizes = []
    original = Preprocess.normalize_batch  # what every model call of the Classifier's goes through
    monkeypatch.setattr(Preprocess, "normalize_batch", lambda self, crops: sizes.append(len(crops)) or original(self, crops))
    service_with(batch_size=6)
    assert sizes == [1, *range(1, 7)]  # the load check's blank frame (Runtime.load), then the warm-up at every size


def validated(endpoint: str, body: dict):
    """The endpoint's arguments as BentoML hands them over: its input model, validated from JSON."""
    from service.service import GestureClassifier

    return dict(GestureClassifier.apis[endpoint].input_spec.model_validate_json(json.dumps(body)))


def test_base64_data_url_top_k_and_threshold(svc, images):
    data = images[0][1]
    plain = asyncio.run(svc.predict(**validated("predict", {"image_b64": b64(data), "top_k": 3}))).model_dump()
    data_url = asyncio.run(svc.predict(**validated("predict", {"image_b64": "data:image/jpeg;base64," + b64(data), "top_k": 3}))).model_dump()
    assert plain == data_url and len(plain["top_k"]) == 3
    assert [s["score"] for s in plain["top_k"]] == sorted((s["score"] for s in plain["top_k"]), reverse=True)
    rejected = asyncio.run(svc.predict(image_b64=data, threshold=1.0)).model_dump()
    assert rejected["label"] is None and rejected["score"] == plain["score"]


def test_base64_as_encoders_write_it_is_decoded_once_into_the_image(svc, images):
    import base64

    data = images[0][1]
    wrapped = "\n".join(b64(data)[i : i + 76] for i in range(0, len(b64(data)), 76)) + "\n"  # `base64 photo.jpg`
    for variant in (b64(data), wrapped, "data:image/jpeg;base64," + wrapped, base64.urlsafe_b64encode(data).decode().rstrip("="), " " + b64(data) + "\r\n",
                    "DATA:image/jpeg;base64," + b64(data), " data:image/jpeg;base64," + b64(data)):  # a scheme in any case; a space before it
        assert validated("predict", {"image_b64": variant})["image_b64"] == data  # the handler gets the image's bytes
        assert validated("predict_batch", {"images_b64": [variant, b64(data)]})["images_b64"] == [data, data]
    for garbage in (b64(data)[:-8] + "!!!!" + b64(data)[-4:], "a", "ab=c"):
        with pytest.raises(ValueError, match="not valid base64"):
            decode_base64(garbage.encode())
        with pytest.raises(ValueError, match="not valid base64"):
            validated("predict", {"image_b64": garbage})
    assert "base64" in json.dumps(openapi_field("predict", "image_b64"))
    assert validated("predict", {"image_b64": "data:application/octet-stream;BASE64," + b64(data)})["image_b64"] == data  # the bytes decide
    for text_url in ("data:," + b64(data), "data:image/jpeg," + b64(data), "data:image/svg+xml,%3Csvg%3E", "data:text/plain;charset=utf-8,hi"):
        with pytest.raises(ValueError, match=r"a data: URL without ;base64 holds text, not an image's bytes: send data:image/jpeg;base64,<base64>"):
            validated("predict", {"image_b64": text_url})


def test_base64_spaced_out_costs_a_copy_not_an_object_per_letter():
    """16 MB of "A A A ..." in image_b64 took 750 MB of the worker to strip (an object per letter from
    bytes.split), on the event loop; its answer is a 400 all the same."""
    import tracemalloc

    spaced = b"A " * 1_000_000
    tracemalloc.start()
    with pytest.raises(ValueError):  # 1,000,000 letters decode to bytes that are no image, or are not base64 at all
        decode_base64(spaced + b"!")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 3 * len(spaced), peak  # a stripped copy, then its decode; the objects took 25 bytes a letter
    assert decode_base64(b" ".join([b64(b"\x00" * 30).encode()[i:i + 1] for i in range(40)])) == b"\x00" * 30


def openapi_field(endpoint: str, field: str) -> dict:
    from service.service import GestureClassifier

    return GestureClassifier.apis[endpoint].input_spec.model_json_schema()["properties"][field]


@pytest.mark.parametrize("name", sorted(bad_uploads()))
def test_bad_images_raise_bad_input_with_a_reason(svc, name):
    data, phrase = bad_uploads()[name]
    with pytest.raises(BadInput, match=phrase):
        asyncio.run(svc.predict(image_b64=data))


def test_a_phone_photo_in_a_format_not_decoded_is_named_with_the_way_to_a_jpeg(svc):
    """An iPhone's HEIC photo was "not a recognised image format"; PIL names AVIF itself."""
    avif = encode(Image.fromarray(synthetic_image(1, 7, 96)), "AVIF")
    for data, phrase in ((heic_photo_start(), "image_b64: unsupported image format HEIC (a phone's High Efficiency photo; an iPhone "
                                                 "takes JPEG with Settings > Camera > Formats > Most Compatible): send JPEG, PNG"),
                         (avif, "image_b64: unsupported image format AVIF: send JPEG, PNG")):
        with pytest.raises(BadInput) as refused:
            asyncio.run(svc.predict(image_b64=data))
        assert str(refused.value).startswith(phrase)


def test_hand_crop_models_decode_uploads_within_the_same_limits(reference):
    # find_hand_crops decodes before it looks for hands, so any classifier shows which limits it applies.
    with pytest.raises(BadInput, match="image: image too large for its file size"):
        find_hand_crops(reference, flat_png(), "image", Settings().decode_limits())


def test_corrupt_jpeg_body_is_refused_like_load_classifier_refuses_it(svc, reference):
    whole = jpeg(2, 160)
    corrupt = whole[:300] + bytes(len(whole) - 302) + b"\xff\xd9"  # its header cut inside a segment, zeros, an end marker
    with pytest.raises(ImageDecodeError) as local:
        reference.predict_proba([corrupt])
    assert "truncated or corrupt JPEG" in str(local.value)  # no image data after the header's segments
    with pytest.raises(BadInput) as served:
        asyncio.run(svc.predict(image_b64=corrupt))
    assert str(served.value) == f"image_b64: {local.value}"  # the field it came in ("image:" before, which it was not)
    with pytest.raises(BadInput, match=r"^images_b64\[1\]: "):  # "images[1]" before
        asyncio.run(svc.predict_batch(images_b64=[whole, corrupt]))


def test_odd_image_modes_are_decoded_like_load_classifier(svc, reference):
    for name, data in odd_formats().items():
        result = asyncio.run(svc.predict(image_b64=data, top_k=10)).model_dump()
        assert_matches_reference(result, reference.predict_proba([data])[0], reference.classes, atol=0), name


def test_small_uploads_are_cropped_in_the_batch_and_large_or_many_pixels_ones_first_to_the_same_answer(svc, reference):
    from PIL import Image

    from service.service import BATCH_DECODE_PIXELS, SMALL_UPLOAD_BYTES, DecodeApart, Upload

    small = jpeg(4)
    large = encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (420, 420, 3), np.uint8)), "PNG")  # noise: no compression
    assert len(small) <= SMALL_UPLOAD_BYTES < len(large)
    assert isinstance(asyncio.run(svc.model_input(small, "image")), Upload)  # decoded later, by a model thread
    assert isinstance(asyncio.run(svc.model_input(large, "image")), np.ndarray)  # cropped now, in a worker thread
    # Small in bytes, but more pixels than a batch decodes: 32 flat 4 MP PNGs of 256 KB in one /predict_batch
    # held every other request for 1.4 s a batch. A model thread reads its header only, and it is cropped apart.
    flat = encode(Image.fromarray(np.full((1100, 1000, 3), (90, 120, 150), np.uint8)), "PNG")
    assert len(flat) <= SMALL_UPLOAD_BYTES and 1100 * 1000 > BATCH_DECODE_PIXELS
    assert isinstance(svc.classify_uploads([Upload(flat, "image")])[0], DecodeApart)
    # A progressive JPEG of a megapixel: its blocks of coefficients, held at once, passed the service's limit but not the
    # batch's, which refused it with a 400 where it was to be decoded apart (a review).
    ramp = np.linspace(0, 255, 1000).astype(np.uint8)
    photo = np.stack([np.tile(ramp, (1000, 1)), np.tile(ramp[:, None], (1, 1000)), np.full((1000, 1000), 90, np.uint8)], axis=-1)
    progressive = encode(Image.fromarray(photo), "JPEG", progressive=True, quality=80)
    assert len(progressive) <= SMALL_UPLOAD_BYTES and isinstance(svc.classify_uploads([Upload(progressive, "image")])[0], DecodeApart)
    for data in (small, large, flat, progressive):
        result = asyncio.run(svc.predict(image_b64=data, top_k=10)).model_dump()
        expected = reference.predict(data, k=10)
        assert result["label"] == expected.label and scores(result) == dict(expected.top_k)
    answers = asyncio.run(svc.predict_batch(images_b64=[small, flat], top_k=10))
    assert [a.label for a in answers] == [reference.predict(data, k=1).label for data in (small, flat)]


def test_large_uploads_are_decoded_a_few_at_a_time_whatever_arrives_together(svc, reference, monkeypatch):
    """Each large upload is decoded in a worker thread; AnyIO's pool would run 40 at once, each up to
    the pixel limit's 256 MB. At most DECODES_AT_ONCE run together, and the rest wait their turn."""
    import threading
    import time

    from PIL import Image

    from service import service as module

    running, most, lock = 0, 0, threading.Lock()
    crop_upload = module.crop_upload

    def counted(*args, **kwargs):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            time.sleep(0.05)  # long enough for every waiting decode to start, were it allowed to
            return crop_upload(*args, **kwargs)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(module, "crop_upload", counted)
    large = encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (420, 420, 3), np.uint8)), "PNG")
    assert len(large) > module.SMALL_UPLOAD_BYTES

    async def together(count: int):
        return await asyncio.gather(*(svc.predict(image_b64=large, top_k=1) for _ in range(count)))

    answers = asyncio.run(together(3 * module.DECODES_AT_ONCE))
    assert most == module.DECODES_AT_ONCE
    assert {a.top_k[0].label for a in answers} == {reference.predict(large, k=1).top_k[0][0]}
    # one request's images side by side too: /predict_batch decoded them one after another
    most = 0
    batch = asyncio.run(svc.predict_batch(images_b64=[large] * (2 * module.DECODES_AT_ONCE), top_k=1))
    assert most == module.DECODES_AT_ONCE and {a.top_k[0].label for a in batch} == {answers[0].top_k[0].label}
    cut = large[: len(large) - 5000]  # a truncated PNG, still large
    with pytest.raises(BadInput, match=r"^images_b64\[1\]: "):  # the first in the order sent, whichever failed first
        asyncio.run(svc.predict_batch(images_b64=[large, cut, large, cut[:-1]]))
    with pytest.raises(BadInput, match=r"^images_b64\[2\]: "):  # a small one, decoded with its batch, before a large one
        asyncio.run(svc.predict_batch(images_b64=[large, large, b"not an image", cut]))


def test_an_upload_that_does_not_decode_fails_alone_in_a_shared_model_call(svc, reference):
    from service.service import Upload

    good, crop = jpeg(1), reference.crop(jpeg(2))
    results = svc.classify_uploads([Upload(good, "images[0]"), Upload(b"not an image", "images[1]"), crop])
    assert isinstance(results[1], BadInput) and str(results[1]).startswith("images[1]: ")
    np.testing.assert_array_equal(np.stack([results[0].probs, results[2].probs]), reference.classify([reference.crop(good), crop]))
    assert isinstance(svc.classify_uploads([Upload(b"", "image")])[0], BadInput)  # nothing to classify: no model call


def test_missing_image_and_too_many_images(svc, images):
    with pytest.raises(BadInput, match="multipart file field named 'image'"):
        asyncio.run(svc.predict())
    with pytest.raises(BadInput, match="got both"):
        asyncio.run(svc.predict(image=Path("x.jpg"), image_b64=b"\0"))
    too_many = [images[0][1]] * (svc.settings.batch_size + 1)
    with pytest.raises(BadInput, match="GESTURE_BATCH_SIZE"):
        asyncio.run(svc.predict_batch(images_b64=too_many))


def test_predict_batch_takes_the_threshold_and_a_whole_batch_and_top_k_is_bounded(svc, images):
    """Three rules that passed the suite when broken (mutations): /predict_batch ignoring its threshold, refusing
    exactly GESTURE_BATCH_SIZE images, and a top_k of any size (each a list as long as it asks for, past the classes)."""
    from pydantic import ValidationError

    from service.service import GestureClassifier

    data = images[0][1]
    single = asyncio.run(svc.predict(image_b64=data))
    above = (single.gesture_score if single.gesture_score is not None else single.score) + 1e-6
    assert single.label is not None and above < 1
    for threshold in (0.0, above):
        batch = asyncio.run(svc.predict_batch(images_b64=[data], threshold=threshold))[0]
        assert batch.label == asyncio.run(svc.predict(image_b64=data, threshold=threshold)).label == (None if threshold else single.label)
    assert len(asyncio.run(svc.predict_batch(images_b64=[data] * svc.settings.batch_size, top_k=1))) == svc.settings.batch_size
    for api in ("predict", "predict_batch"):
        spec = GestureClassifier.apis[api].input_spec
        assert spec.model_validate({"top_k": 1000}).top_k == 1000
        with pytest.raises(ValidationError, match="less than or equal to 1000"):
            spec.model_validate({"top_k": 1001})


def test_pixel_limit_is_a_setting(stored_model):
    small = service_with(max_pixels=5000)
    with pytest.raises(BadInput, match="above the limit of 5,000"):
        asyncio.run(small.predict(image_b64=jpeg(0, 96)))  # 9216 pixels
    assert asyncio.run(small.predict(image_b64=jpeg(0, 64))).label is not None


def test_info_describes_the_served_model_and_its_settings(svc):
    info = svc.info().model_dump()
    assert info["backbone"] == "efficientnet_lite0" and info["classes"] == [str(i) for i in range(10)]
    assert info["input_size"] == 128 and info["model"] == svc.model_tag and info["crop"] == "center" and info["hands"] is False
    assert info["metrics"]["test"]["top1"] == 0.1 and info["device"] == "cpu"
    assert info["engine"] == f"{svc.classifier.engine.name}/fp32"
    assert info["settings"] == {**svc.settings.describe(), "model": svc.model_tag}


def test_engine_is_a_setting_and_eager_torch_gets_one_model_thread(stored_model, random_head_checkpoint):
    eager = service_with(runtime=Runtime(engine="torch"))
    assert eager.info().engine == "torch/fp32" and eager.info().batching["model_threads"] == 1
    reference = load_classifier(random_head_checkpoint, device="cpu", engine="torch")
    data = jpeg(4)
    result = asyncio.run(eager.predict(image_b64=data, top_k=10)).model_dump()
    assert_matches_reference(result, reference.predict_proba([data])[0], reference.classes, atol=0)


def test_missing_model_says_how_to_import_one(stored_model):
    from service.import_model import LocalModel, ModelNotImported

    with pytest.raises(ModelNotImported, match=r"python -m service\.import_model RUN/best\.pt"):
        LocalModel("no-such-model:latest").resolve()
    # a version misspelt: it was told to import a training run first, where the name's versions are what it needs
    with pytest.raises(ModelNotImported, match=rf"no model {stored_model.tag.name}:nope in the local BentoML model store, which holds "
                       rf".*{stored_model.tag}.*: set GESTURE_MODEL to one of them, or to {stored_model.tag.name} for the latest"):
        LocalModel(f"{stored_model.tag.name}:nope").resolve()


# --- settings ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,value,phrase", [
    ("GESTURE_MAX_UPLOAD_MB", "lots", "GESTURE_MAX_UPLOAD_MB='lots': expected a whole number from 1 to 1,024 (default 16)"),
    ("GESTURE_MAX_PIXELS", "0", "expected a whole number from 1 to 250,000,000"),
    ("GESTURE_BATCH_SIZE", "0", "GESTURE_BATCH_SIZE='0': expected a whole number from 1 to 256"),
    ("GESTURE_DEVICE", "tpu", "GESTURE_DEVICE='tpu': choose one of auto, cpu, cuda"),
    ("GESTURE_ENGINE", "tensorrt", "choose one of auto, torch, compile, onnx, openvino"),
    ("GESTURE_PRECISION", "int8", "choose one of fp32, bf16, fp16"),
    ("GESTURE_THREADS", "-1", "(default PyTorch's, one per core)"),
    ("GESTURE_GPUS", "two", "GESTURE_GPUS='two': expected a whole number from 0 to"),
    ("GESTURE_WORKERS", "0", "GESTURE_WORKERS='0': expected a whole number from 1 to"),
    ("GESTURE_MAX_CONCURRENCY", "1.5", "expected a whole number from 1 to 100,000 (default 128)"),
    # int() reads these as 16, 8 and 32
    ("GESTURE_BATCH_SIZE", "1_6", "GESTURE_BATCH_SIZE='1_6': expected a whole number"),
    ("GESTURE_WORKERS", "+8", "GESTURE_WORKERS='+8': expected a whole number"),
    ("GESTURE_BATCH_SIZE", "\u0663\u0662", "expected a whole number from 1 to 256"),
    ("GESTURE_BODY_TIMEOUT_S", "-3", "GESTURE_BODY_TIMEOUT_S='-3'"),
    ("GESTURE_BODY_TIMEOUT_S", "100000", "GESTURE_BODY_TIMEOUT_S='100000': expected a whole number from 1 to 3,600"),  # an hour-long slot per client
    ("GESTURE_TRACING", "yes", "GESTURE_TRACING='yes': choose one of on, off"),
    # bounded: a huge thread count failed deep in torch, and warm-up runs every batch size up to the largest
    ("GESTURE_THREADS", "99999999999999999999999", f"expected a whole number from 1 to {MOST_THREADS}"),
    ("GESTURE_BATCH_SIZE", "10000", "GESTURE_BATCH_SIZE='10000': expected a whole number from 1 to 256 (default 32)"),
    ("GESTURE_MAX_UPLOAD_MB", "100000", "from 1 to 1,024"),
    ("GESTURE_WORKERS", "100000", f"from 1 to {MOST_THREADS}"),
    ("GESTURE_MODEL", "no such tag!!", "GESTURE_MODEL='no such tag!!': no such tag!! is not a valid BentoML tag"),
    # BentoML's own exception, and words: "Invalid Tag", or "Maybe you meant gesture-classifier::latest", no tag either
    ("GESTURE_MODEL", "a:b:c", "GESTURE_MODEL='a:b:c' is not a BentoML tag: give NAME or NAME:VERSION, one colon at most"),
    ("GESTURE_MODEL", "gesture-classifier:", "GESTURE_MODEL='gesture-classifier:' is not a BentoML tag"),
])
def test_malformed_settings_are_refused_with_the_valid_range(name, value, phrase):
    with pytest.raises(SettingsError, match=re.escape(phrase)):
        Settings.from_env({name: value})


def test_a_model_tag_in_capitals_is_taken_in_lower_case_without_a_word(caplog):
    """BentoML lowered it with a warning line of its own, above the one line of a refusal ("Bad Name")."""
    assert Settings.from_env({"GESTURE_MODEL": "Gesture-Classifier:V1"}).model_tag == "gesture-classifier:v1"
    with pytest.raises(SettingsError, match="GESTURE_MODEL='Bad Name'"):
        Settings.from_env({"GESTURE_MODEL": "Bad Name"})
    assert not [r for r in caplog.records if "lowercase" in r.getMessage()]


def test_settings_defaults_and_scale_out():
    assert replace(Settings.from_env({}), gpus=0) == Settings()
    cpu = Settings.from_env({"GESTURE_DEVICE": "cpu", "GESTURE_WORKERS": "3", "GESTURE_MAX_CONCURRENCY": "10"})
    assert cpu.workers == 3 and cpu.concurrency_per_worker == 4 and "gpu" not in cpu.resources()
    gpus = Settings.from_env({"GESTURE_DEVICE": "cuda", "GESTURE_GPUS": "4", "GESTURE_WORKERS": "9"})
    assert gpus.workers == 4 and gpus.resources() == {"gpu": 4}  # one worker per GPU
    # BentoML shows each worker all 4 GPUs: worker i (from 1) loads the model on GPU i - 1, not all on GPU 0
    assert [gpus.runtime_for_worker(i, visible=4).device for i in (1, 2, 4)] == ["cuda:0", "cuda:1", "cuda:3"]
    assert gpus.runtime_for_worker(None, visible=4) == gpus.runtime and cpu.runtime_for_worker(2, visible=0) == cpu.runtime
    # 4 asked for, 2 there (warned at start-up): workers 3 and 4 share them, where cuda:2 would fail to load
    assert [gpus.runtime_for_worker(i, visible=2).device for i in (1, 2, 3, 4)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    with pytest.raises(SettingsError, match="GESTURE_GPUS=2 with GESTURE_DEVICE=cpu"):
        Settings.from_env({"GESTURE_DEVICE": "cpu", "GESTURE_GPUS": "2"})
    with pytest.raises(Exception, match="frozen|cannot assign"):
        Settings().batch_size = 1
    # 1 over 4 workers was 1 each, 4 in all: each worker takes at least one request
    with pytest.raises(SettingsError, match="GESTURE_MAX_CONCURRENCY=1 is below the 4 workers"):
        Settings.from_env({"GESTURE_DEVICE": "cpu", "GESTURE_WORKERS": "4", "GESTURE_MAX_CONCURRENCY": "1"})


def test_every_variable_the_settings_read_is_a_known_name():
    """SETTING_NAMES is what a misspelt name is checked against: a setting read but left out of it would be
    warned about as unknown."""
    import inspect

    from gesture_core import runtime

    read = set(re.findall(r'"(GESTURE_[A-Z_]+)"', inspect.getsource(Settings.from_env) + inspect.getsource(runtime.Runtime.from_env)))
    assert read == set(settings_module.SETTING_NAMES)


def test_misspelt_settings_and_gpus_this_machine_lacks_are_said(monkeypatch):
    env = {"GESTURE_BATCHSIZE": "8", "gesture_workers": "2", "GESTURE_CACHE_DIR": "/tmp", "GESTURE_THREADS": "2"}
    warned = unknown_settings(env)
    assert len(warned) == 2 and warned[0].startswith("GESTURE_BATCHSIZE is not a setting of the service and is ignored: did you mean GESTURE_BATCH_SIZE?")
    assert warned[1].startswith("gesture_workers is not a setting") and "GESTURE_WORKERS" in warned[1]
    monkeypatch.setattr(settings_module, "visible_gpus", lambda: 0)
    assert hardware_problem(Settings.from_env({"GESTURE_DEVICE": "cpu"})) is None
    assert hardware_problem(Settings.from_env({"GESTURE_DEVICE": "cuda"})) == (
        "error", "GESTURE_DEVICE=cuda, but no CUDA GPU is visible here: set GESTURE_DEVICE to auto or cpu")
    # a GPU node without its driver, or a container started without --gpus: it served on the CPU, ready, warned once
    assert hardware_problem(Settings.from_env({"GESTURE_GPUS": "2"})) == (
        "error", "GESTURE_GPUS=2, but no CUDA GPU is visible here (no driver, or a container started without --gpus?): "
                 "set GESTURE_GPUS=0 to serve on the CPU")
    # an engine or precision this machine lacks: the model's load said so, and told the deployer to import another model.
    # A CPU whose OpenVINO runs no fp16 (an AMD EPYC; a Xeon with AVX512-FP16 runs it, and then nothing is lacking)
    from gesture_core import engines

    monkeypatch.setattr(engines, "_openvino_cpu_capabilities", lambda: ("FP32", "BF16"))
    kind, why = hardware_problem(Settings.from_env({"GESTURE_PRECISION": "fp16"}))
    assert kind == "error" and why.startswith("GESTURE_ENGINE=auto with GESTURE_PRECISION=fp16: no installed engine runs fp16 on cpu; available here: torch")
    kind, why = hardware_problem(Settings.from_env({"GESTURE_ENGINE": "onnx", "GESTURE_PRECISION": "bf16"}))
    assert kind == "error" and why.startswith("GESTURE_ENGINE=onnx with GESTURE_PRECISION=bf16: engine 'onnx' cannot run bf16 on cpu")
    monkeypatch.setattr(settings_module, "visible_gpus", lambda: 1)
    assert hardware_problem(Settings.from_env({"GESTURE_GPUS": "2"})) == (
        "warning", "GESTURE_GPUS=2, but 1 CUDA GPU(s) are visible here: the workers share them; set GESTURE_GPUS to at most 1")
    assert hardware_problem(Settings.from_env({"GESTURE_GPUS": "1"})) is None


def test_the_service_takes_workers_resources_and_tracing_from_the_settings(tmp_path):
    import subprocess
    import sys

    from tests.helpers import REPO

    # two GPUs seen (on any machine), three asked for: started, and said
    show = ("import service.settings; service.settings.visible_gpus = lambda: 2\n"
            "from service.service import GestureClassifier as G; import json; print(json.dumps(G.config))")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "BENTOML_HOME": str(tmp_path),
           "GESTURE_GPUS": "3", "GESTURE_TRACING": "on"}
    done = subprocess.run([sys.executable, "-c", show], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    config = json.loads(done.stdout.strip().splitlines()[-1])
    assert config["workers"] == 3 and config["resources"] == {"gpu": 3} and not config.get("tracing")
    assert "warning: GESTURE_GPUS=3, but 2 CUDA GPU(s) are visible here" in done.stderr
    from service.service import SETTINGS, GestureClassifier

    assert GestureClassifier.config["workers"] == SETTINGS.workers and GestureClassifier.config["tracing"] == {"excluded_urls": [".*"]}
    assert "max_concurrency" not in GestureClassifier.config["traffic"]  # the guard's, counted once a body has arrived


def test_a_bad_setting_stops_the_service_at_import(tmp_path):
    import subprocess
    import sys

    from tests.helpers import REPO

    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "BENTOML_HOME": str(tmp_path), "GESTURE_MAX_UPLOAD_MB": "lots"}
    done = subprocess.run([sys.executable, "-c", "import service.service"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    # one line naming the variable, where bentoml serve printed the import's 64-line traceback
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: GESTURE_MAX_UPLOAD_MB='lots': expected a whole number from 1 to 1,024 (default 16)"], done.stderr
    if not torch.cuda.is_available():  # GPUs this machine lacks stop bentoml serve (test_service_model_check), not the import of a build
        env = {**env, "GESTURE_MAX_UPLOAD_MB": "16", "GESTURE_GPUS": "1"}
        done = subprocess.run([sys.executable, "-c", "import service.service"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and done.stderr.strip().splitlines() == [], done.stderr


# --- HTTP through the ASGI app ---------------------------------------------------------------------


def test_http_predict_multipart_and_json(client, reference, images):
    name, data = images[1]
    multipart = client.post("/predict", files={"image": (name, data, "image/jpeg")}, data={"top_k": "10"})
    assert multipart.status_code == 200, multipart.text
    assert_matches_reference(multipart.json(), reference.predict_proba([data])[0], reference.classes, atol=0)
    as_json = client.post("/predict", json={"image_b64": b64(data), "top_k": 10})
    assert as_json.json() == multipart.json()


def test_http_predict_batch(client, reference, images):
    datas = [d for _, d in images[:4]]
    resp = client.post("/predict_batch", files=[("images", (f"{i}.jpg", d)) for i, d in enumerate(datas)], data={"top_k": "10"})
    assert resp.status_code == 200, resp.text
    assert len(resp.json()) == len(datas)
    for result, p in zip(resp.json(), reference.predict_proba(datas), strict=True):
        assert_matches_reference(result, p, reference.classes)


def test_http_json_images_are_decoded_from_base64_once(client, reference, images, monkeypatch):
    import service.schemas

    decodes = []
    original = service.schemas.base64.b64decode
    monkeypatch.setattr(service.schemas.base64, "b64decode", lambda *a, **k: decodes.append(1) or original(*a, **k))
    datas = [d for _, d in images[:3]]
    one = client.post("/predict", json={"image_b64": b64(datas[0]), "top_k": 10})
    assert one.status_code == 200, one.text
    assert len(decodes) == 1
    several = client.post("/predict_batch", json={"images_b64": [b64(d) for d in datas], "top_k": 10})
    assert several.status_code == 200, several.text
    assert len(decodes) == 1 + len(datas)
    for result, p in zip(several.json(), reference.predict_proba(datas), strict=True):
        assert_matches_reference(result, p, reference.classes)


def test_http_concurrent_clients_get_their_own_answers(client, reference, images):
    jobs = [images[i % len(images)][1] for i in range(16)]
    post = lambda d: client.post("/predict", files={"image": ("x.jpg", d)}, data={"top_k": "10"})  # noqa: E731
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
def test_http_bad_requests_get_the_documented_status_and_reason(client, case):
    assert_refused_as_documented(client.post("/predict", **BAD_REQUESTS[case]), case, DEFAULT_UPLOAD_LIMIT)
    assert client.get("/readyz").status_code == 200


def test_multipart_bodies_at_the_limits_of_bentomls_parsing_are_served(client):
    """The request guard refuses only what BentoML's form parsing fails on: a part with 8 headers, one
    of them 4,224 bytes long, a 200-byte file name and a 1 MB text field all reach the model."""
    headers = (*(f"X-Note-{i}: x" for i in range(5)), "X-Note: " + "x" * (DEFAULT_MAX_HEADER_SIZE - 8))
    body = multipart(form_part("image", jpeg(1), "a" * (MAX_FILENAME_BYTES - 4) + ".jpg", headers=headers),
                     form_part("top_k", b" " * (FORM_LIMITS["max_part_size"] - 1) + b"3"))
    resp = client.post("/predict", **body)
    assert resp.status_code == 200 and len(resp.json()["top_k"]) == 3, resp.text


def test_a_raw_image_under_any_content_type_is_told_how_to_send_it(client):
    """Not counted as JSON either (it holds as many commas and brackets as a JSON body of a thousand values)."""
    data = encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (400, 400, 3), np.uint8)), "JPEG")
    assert sum(map(data.count, (b",", b":", b"{", b"["))) > 1000
    for content_type, sent_as in (("", "no Content-Type"), ("application/x-www-form-urlencoded", "application/x-www-form-urlencoded"),
                                  ("text/plain", "text/plain")):  # fmt: skip
        resp = client.post("/predict", content=data, headers={"content-type": content_type})  # the second: curl --data-binary @photo.jpg
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"].startswith(f"a raw JPEG body (sent as {sent_as}) is not taken: send the image as a multipart file field")


def test_every_bad_request_has_a_documented_answer():
    for case in BAD_REQUESTS:
        expected_refusal(case, DEFAULT_UPLOAD_LIMIT)  # a KeyError names a case added without its expected answer


@pytest.mark.parametrize("case", sorted(ambiguous_requests()))
def test_http_ambiguous_requests_are_refused_with_the_reason(client, case):
    request, status, phrase = ambiguous_requests()[case]
    resp = client.request(**request)
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json" and phrase in resp.json()["error"], resp.json()


def test_http_validation_errors_of_a_long_list_are_answered_in_a_few(client):
    """A list of 900 numbers where base64 goes (under the JSON punctuation limit) got one error per item, in the reason and in "detail" alike."""
    resp = client.post("/predict_batch", json={"images_b64": [5] * 900})
    assert resp.status_code == 400 and len(resp.json()["detail"]) == 5 and len(resp.content) < 2000, len(resp.content)
    assert resp.json()["error"].endswith("; and 895 more")


def test_http_batch_names_the_bad_image(client):
    resp = client.post("/predict_batch", files=[("images", ("a.jpg", jpeg(0))), ("images", ("b.jpg", b"junk"))])
    assert resp.status_code == 400 and resp.json()["error"].startswith("images[1]:")
    two_bad = [("images", ("a.jpg", jpeg(0))), ("images", ("b.txt", b"junk")), ("images", ("c.jpg", b""))]
    resp = client.post("/predict_batch", files=two_bad)
    assert resp.status_code == 400 and resp.json()["error"].startswith("images[1]:")  # the first in the order sent
    wrong_field = client.post("/predict_batch", files={"image": ("a.jpg", jpeg(0))})
    assert wrong_field.status_code == 400 and "unexpected field 'image'" in wrong_field.json()["error"]


# --- the request guard on its own ------------------------------------------------------------------


async def echo_length(request: Request):
    return JSONResponse({"length": len(await request.body())})


async def client_error(request: Request):
    return JSONResponse([{"error": "bad thing"}], status_code=400)


ECHO_FIELDS = EndpointFields(frozenset({"image", "top_k", "images"}), frozenset({"image", "images"}), frozenset({"images"}))


def guarded_app(**options) -> RequestGuard:
    app = Starlette(routes=[Route("/echo", echo_length, methods=["POST"]), Route("/bad", client_error, methods=["POST"])])
    settings = {"max_body_bytes": 1000, "body_timeout_s": 5, "max_concurrency": 8, "body_memory_bytes": 64_000, **options}
    return RequestGuard(app, {"/echo": ECHO_FIELDS, "/bad": EndpointFields(frozenset())}, **settings)


@pytest.fixture(scope="module")
def guarded():
    return TestClient(guarded_app())


def test_guard_limits_declared_and_streamed_bodies(guarded):
    assert guarded.post("/echo", content=b"x" * 1000).json() == {"length": 1000}
    declared = guarded.post("/echo", content=b"x" * 1001)
    assert declared.status_code == 413 and "limit is 1,000 bytes" in declared.json()["error"]
    streamed = guarded.post("/echo", content=iter([b"x" * 600, b"x" * 600]))  # chunked: no content-length
    assert streamed.status_code == 413 and "more than" in streamed.json()["error"]
    assert guarded.post("/echo", content=iter([b"x" * 400, b"x" * 400])).json() == {"length": 800}


def test_an_image_sent_as_text_names_the_json_field_for_it_where_there_is_one():
    """{"image": "<base64>"} in JSON was told to use a multipart upload, which a JSON client does not make."""
    predict_like = EndpointFields(frozenset({"image", "image_b64", "images", "images_b64", "top_k"}), frozenset({"image", "images"}), frozenset({"images"}))
    for name in ("image", "images"):
        assert parts_problem([FormPart(name, False)], predict_like).endswith(f"not text; a JSON body sends it as base64 in '{name}_b64'")
    assert parts_problem([FormPart("image", False)], ECHO_FIELDS).endswith("not text")  # no JSON field to name


def test_guard_checks_form_fields(guarded):
    assert guarded.post("/echo", files={"image": ("a.jpg", b"123")}, data={"top_k": "3"}).status_code == 200
    assert guarded.post("/echo", files=[("images", ("a.jpg", b"1")), ("images", ("b.jpg", b"2"))]).status_code == 200
    assert "unexpected field 'photo'" in guarded.post("/echo", files={"photo": ("a.jpg", b"1")}).json()["error"]
    assert "must be a file" in guarded.post("/echo", data={"image": "x"}, files={"images": ("", b"")}).json()["error"]
    assert "must be text" in guarded.post("/echo", files={"top_k": ("a.txt", b"3")}).json()["error"]
    twice = guarded.post("/echo", files=[("image", ("a.jpg", b"1")), ("image", ("b.jpg", b"2"))])
    assert twice.json() == {"error": "field 'image' was sent more than once; it takes one value (several images: repeat 'images' on /echo)"}
    assert twice.status_code == 400
    assert "'top_k' was sent more than once" in guarded.post("/echo", content=b'{"top_k": 1, "top_k": 2}').json()["error"]


def test_guard_refuses_a_boundary_the_parser_cannot_take_and_query_parameters(guarded):
    """A boundary over 256 bytes raised python-multipart's own error past the guard: a plain-text 500,
    30 s later. A query string was not read at all: ?top_k=1 was answered with the default."""
    boundary = "Z" * 300
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n\r\n123\r\n"
            f"--{boundary}--\r\n").encode()
    long = guarded.post("/echo", content=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert long.status_code == 400 and long.json() == {"error": "the multipart boundary is 300 bytes; the limit is 256 (RFC 2046 allows 70)"}
    ok = body.replace(boundary.encode(), b"Z" * 250)
    assert guarded.post("/echo", content=ok, headers={"Content-Type": f"multipart/form-data; boundary={'Z' * 250}"}).status_code == 200
    mixed = guarded.post("/echo", content=body, headers={"Content-Type": f"multipart/mixed; boundary={'Z' * 250}"})
    assert mixed.status_code == 400 and mixed.json()["error"].startswith("a multipart/mixed body is not taken: send multipart/form-data")
    query = guarded.post("/echo?top_k=1", files={"image": ("a.jpg", b"1")})
    assert query.status_code == 400 and query.json()["error"].startswith("query parameters are not read (top_k=1): send them in the body")



def test_guard_refuses_headers_over_the_limit_before_anything_parses_them(guarded):
    """A Content-Type of 1,600,000 parameters (8 MB) took the service 5.2 s to answer, each layer that
    reads the media type parsing them in Python; every route, known or not, refuses such headers first."""
    padded = {"Content-Type": "multipart/form-data; boundary=x" + "; a=b" * 20_000}  # 100 KB
    for method, path in (("POST", "/echo"), ("GET", "/echo"), ("GET", "/nowhere")):
        resp = guarded.request(method, path, headers=padded)
        assert resp.status_code == 431 and resp.json()["error"].startswith(f"request headers over {MAX_HEADER_BYTES:,} bytes in all"), resp.text
        assert resp.headers["connection"] == "close"
    cookies = [("Cookie", f"c{i}=" + "v" * 90) for i in range(100)]  # 10 KB of cookies: well under the limit
    assert guarded.post("/echo", files={"image": ("a.jpg", b"123")}, headers=cookies).status_code == 200
    many = [("Cookie", "a=b")] * (MAX_HEADER_BYTES // 13 + 1)  # small headers count too: 4 bytes each besides name and value
    assert guarded.post("/echo", files={"image": ("a.jpg", b"123")}, headers=many).status_code == 431



def test_guard_refuses_more_images_than_a_request_may_send_before_bentoml_stores_them():
    """BentoML writes every upload to a temporary file before the endpoint counts them: 1,000 one-byte
    files took the server 0.33 s before /predict_batch refused them."""
    fields = EndpointFields(frozenset({"images"}), frozenset({"images"}), frozenset({"images"}), most_files=2)
    app = Starlette(routes=[Route("/echo", echo_length, methods=["POST"])])
    with TestClient(RequestGuard(app, {"/echo": fields}, max_body_bytes=10_000, body_timeout_s=5, max_concurrency=8,
                                 body_memory_bytes=640_000)) as guarded:
        assert guarded.post("/echo", files=[("images", (f"{i}.jpg", b"1")) for i in range(2)]).status_code == 200
        three = guarded.post("/echo", files=[("images", (f"{i}.jpg", b"1")) for i in range(3)])
        assert three.status_code == 400 and three.json() == {"error": "3 images in one request; the limit is 2 (GESTURE_BATCH_SIZE)"}


def test_a_log_line_is_cut_at_its_limit_whatever_the_client_sent():
    """BentoML's access line quotes the request's Content-Type whole: 8 MB of log for one request."""
    import logging

    from service.logs import MAX_LINE_CHARS, OneShortLine

    record = logging.LogRecord("bentoml.access", logging.INFO, __file__, 1, "%s (type=%s)", ("POST /predict", "x" * 10_000), None)
    assert OneShortLine().filter(record)
    assert record.getMessage() == "POST /predict (type=" + "x" * (MAX_LINE_CHARS - 20) + "... (cut: 10,021 characters)"


def test_a_log_line_writes_what_a_client_sent_escaped():
    """BentoML's access line writes the request's path decoded: a path of %0D%0A and a forged date
    wrote a line of the client's making that read as the server's own ERROR."""
    import logging

    from service.logs import OneShortLine

    forged = "/x\r\n2026-12-05T19:20:00+0000 [ERROR] [entry_service:GestureClassifier:1] forged\x00\u202e"
    record = logging.LogRecord("bentoml.access", logging.INFO, __file__, 1, "%s (status=%s)", (forged, 404), None)
    assert OneShortLine().filter(record)
    assert record.getMessage() == "/x\\r\\n2026-12-05T19:20:00+0000 [ERROR] [entry_service:GestureClassifier:1] forged\\x00\\u202e (status=404)"


def test_a_log_line_is_formatted_once():
    """The filter measures the formatted line; the handler formatted it a second time, for every access line."""
    import logging

    from service.logs import OneShortLine

    class Counted:
        calls = 0

        def __str__(self) -> str:
            Counted.calls += 1
            return "ok"

    short = logging.LogRecord("bentoml.access", logging.INFO, __file__, 1, "%s", (Counted(),), None)
    assert OneShortLine().filter(short) and logging.Formatter("%(message)s").format(short) == "ok"
    assert Counted.calls == 1


def test_info_shows_the_training_data_by_name_not_by_its_path_on_that_machine():
    from service.service import without_local_path

    fingerprint = {"sha256": "ab" * 32, "source": "/home/anna/private/gestures", "counts": {"train": 3}}
    assert without_local_path(fingerprint) == {**fingerprint, "source": "gestures"}
    assert without_local_path({}) == {} and without_local_path({"source": "flowers"})["source"] == "flowers"


def test_guard_makes_every_error_json(guarded):
    assert guarded.post("/bad").json() == {"error": "bad thing"}
    missing = guarded.post("/nowhere", files={"image": ("a.jpg", b"1")})
    assert missing.status_code == 404 and missing.json()["error"].startswith("no such endpoint: POST /nowhere")
    far = guarded.get("/" + "a" * 60_000)  # the path is cut short: an answer never grows with what was sent
    assert far.status_code == 404 and far.json()["error"] == f"no such endpoint: GET /{'a' * 199}... (60,001 characters) (the API is listed at GET /docs.json)"
    wrong_method = guarded.get("/echo")
    assert wrong_method.status_code == 405 and wrong_method.json()["error"] == "GET /echo: method not allowed; use POST"


def test_guard_gives_a_slow_body_408_and_counts_only_complete_bodies():
    async def scenario():
        guard = guarded_app(body_timeout_s=0.2, max_concurrency=1)
        sent: list[dict] = []

        async def trickle():  # one byte, then nothing
            if not sent:
                sent.append({})
                return {"type": "http.request", "body": b"x", "more_body": True}
            await asyncio.sleep(3600)

        answers: list[dict] = []

        async def record(message):
            answers.append(message)

        scope = {"type": "http", "method": "POST", "path": "/echo", "headers": [], "query_string": b""}
        slow = asyncio.create_task(guard(scope, trickle, record))
        await asyncio.sleep(0.05)
        assert guard.in_progress == 0  # a body still arriving holds no slot
        await asyncio.wait_for(slow, 5)
        return answers

    answers = asyncio.run(scenario())
    assert answers[0]["status"] == 408 and (b"connection", b"close") in answers[0]["headers"]
    assert b"GESTURE_BODY_TIMEOUT_S" in answers[1]["body"]


def guard_answers(guard: RequestGuard, messages: list[bytes], path: str = "/echo") -> list[dict]:
    """What ``guard`` sends for one POST whose body arrives as ``messages``, one ASGI message each (TestClient joins
    a chunked body into one message, so a limit applied per message passed every test written with it)."""

    async def scenario():
        answers: list[dict] = []
        pending = [{"type": "http.request", "body": chunk, "more_body": i < len(messages) - 1} for i, chunk in enumerate(messages)]

        async def receive():
            return pending.pop(0) if pending else await asyncio.sleep(3600)

        async def record(message):
            answers.append(message)

        scope = {"type": "http", "method": "POST", "path": path, "headers": [], "query_string": b""}
        await asyncio.wait_for(guard(scope, receive, record), 5)
        return answers

    return asyncio.run(scenario())


def test_guard_counts_a_streamed_body_over_all_its_messages():
    """Two messages of 600 bytes are a 1,200-byte body: a limit of 1,000 checked per message let it through
    (a mutation the suite passed), and so any body in small enough pieces."""
    answers = guard_answers(guarded_app(), [b"x" * 600, b"x" * 600])
    assert answers[0]["status"] == 413 and b"more than 1,200 bytes; the limit is 1,000 bytes" in answers[1]["body"]
    answers = guard_answers(guarded_app(), [b"x" * 100] * 9)
    assert answers[0]["status"] == 200 and json.loads(answers[1]["body"]) == {"length": 900}


def test_guard_answers_429_above_the_requests_in_progress_limit():
    """No test asserted the 429: a limit counted one request too late passed the suite (a mutation)."""

    async def scenario():
        release = asyncio.Event()

        async def held(request: Request):
            await release.wait()
            return JSONResponse({"ok": True})

        app = Starlette(routes=[Route("/echo", held, methods=["POST"])])
        guard = RequestGuard(app, {"/echo": ECHO_FIELDS}, max_body_bytes=1000, body_timeout_s=5, max_concurrency=1, body_memory_bytes=64_000)
        answers: dict[str, list[dict]] = {"first": [], "second": []}

        def post(name: str):
            sent = []

            async def receive():
                if sent:
                    return await asyncio.sleep(3600)
                sent.append(1)
                return {"type": "http.request", "body": b"{}", "more_body": False}

            async def record(message):
                answers[name].append(message)

            scope = {"type": "http", "method": "POST", "path": "/echo", "headers": [(b"content-type", b"application/json")], "query_string": b""}
            return guard(scope, receive, record)

        first = asyncio.create_task(post("first"))
        while guard.in_progress < 1:
            await asyncio.sleep(0.01)
        await asyncio.wait_for(post("second"), 5)
        release.set()
        await asyncio.wait_for(first, 5)
        return answers

    answers = asyncio.run(scenario())
    second = answers["second"]
    assert second[0]["status"] == 429 and (b"retry-after", b"1") in second[0]["headers"]
    assert json.loads(second[1]["body"])["error"].startswith("server busy: 1 request in progress, the limit of this worker")
    assert answers["first"][0]["status"] == 200


def test_guard_answers_a_declared_oversized_body_that_never_comes_within_the_body_timeout():
    """The 413 waits for the body it drains, but no longer than a body may take: a client that
    declared 2 MB and sent nothing held the connection until BentoML's 504, 30 s later."""

    async def scenario():
        guard = guarded_app(body_timeout_s=0.2)
        answers: list[dict] = []

        async def nothing():
            await asyncio.sleep(3600)

        async def record(message):
            answers.append(message)

        scope = {"type": "http", "method": "POST", "path": "/echo", "headers": [(b"content-length", b"2000")], "query_string": b""}
        await asyncio.wait_for(guard(scope, nothing, record), 5)
        return answers

    answers = asyncio.run(scenario())
    assert answers[0]["status"] == 413 and (b"connection", b"close") in answers[0]["headers"]
    assert b"request body is 2,000 bytes; the limit is 1,000 bytes" in answers[1]["body"]


@pytest.mark.parametrize("headers, status", [([(b"content-length", b"2000")], 413),
                                             ([(b"content-length", b"500"), (b"content-encoding", b"gzip")], 415)])
def test_guard_refuses_a_body_from_its_headers_before_a_client_that_waits_for_the_go_ahead_sends_it(headers, status):
    """With "Expect: 100-continue" a client sends its body only once told to, and uvicorn tells it at the
    guard's first read: draining the body before the 413 had curl upload all 20 MB of it first."""
    reads: list[str] = []

    async def scenario():
        answers: list[dict] = []

        async def receive():
            reads.append("read")  # uvicorn's "100 Continue" goes out here
            return {"type": "http.request", "body": b"", "more_body": False}

        async def record(message):
            answers.append(message)

        scope = {"type": "http", "method": "POST", "path": "/echo", "headers": [*headers, (b"expect", b"100-Continue")], "query_string": b""}
        await asyncio.wait_for(guarded_app()(scope, receive, record), 5)
        return answers

    answers = asyncio.run(scenario())
    assert answers[0]["status"] == status and (b"connection", b"close") in answers[0]["headers"] and reads == []


def test_guard_drops_the_bodies_arriving_the_longest_to_stay_within_its_memory():
    """Bodies were held without bound while they arrived: 150 clients that each sent all but the last
    byte of 16 MB and waited grew the worker by 2,394 MB until their body timeout. Now the bodies held stay within the guard's
    budget, a normal request still gets through, and nothing is left counted."""
    budget = 64_000  # guarded_app's
    stalled_clients = budget // 800 + 8  # eight more than it holds

    async def scenario():
        guard = guarded_app(body_timeout_s=30)  # uploads of up to 1,000 bytes
        answers: dict[int, list[dict]] = {i: [] for i in range(stalled_clients + 1)}
        most_held = 0

        def most_of_a_body():  # 800 bytes of 1,000, then nothing
            sent = []

            async def receive():
                nonlocal most_held
                most_held = max(most_held, guard.bodies.held)
                if not sent:
                    sent.append(1)
                    return {"type": "http.request", "body": b"x" * 800, "more_body": True}
                await asyncio.sleep(3600)
            return receive

        def recorder(i):
            async def record(message):
                answers[i].append(message)
            return record

        scope = {"type": "http", "method": "POST", "path": "/echo", "headers": [], "query_string": b""}
        uploads = {**scope, "headers": [(b"content-type", b"multipart/form-data; boundary=x")]}  # counted as they are
        stalled = [asyncio.create_task(guard(uploads, most_of_a_body(), recorder(i))) for i in range(stalled_clients)]
        await asyncio.sleep(0.1)

        async def whole_body():
            return {"type": "http.request", "body": b"y" * 500, "more_body": False}

        await asyncio.wait_for(guard(scope, whole_body, recorder(stalled_clients)), 5)
        await asyncio.sleep(0.1)
        for task in stalled:
            task.cancel()
        await asyncio.gather(*stalled, return_exceptions=True)
        return answers, most_held, guard.bodies

    answers, most_held, bodies = asyncio.run(scenario())
    assert answers[len(answers) - 1][1]["body"] == b'{"length":500}'
    dropped = [i for i, sent in answers.items() if sent and sent[0]["status"] == 503]
    # The oldest, one for each body that came after the budget was full, and two for the last one: not
    # multipart, so parsed in memory, its 500 bytes count twice.
    assert dropped == list(range(10)), dropped
    assert b"had been arriving the longest; retry shortly" in answers[0][1]["body"]
    assert (b"retry-after", b"1") in answers[0][0]["headers"] and (b"connection", b"close") in answers[0][0]["headers"]
    assert most_held <= budget
    assert bodies.held == 0 and not bodies.arriving


def test_a_body_parsed_in_memory_counts_twice_against_the_bodies_held():
    """BentoML parses a JSON or urlencoded body in memory and keeps what it parsed until the answer,
    where a multipart body's files go to temporary files: 32 requests at once grew the worker by 34-40 MB
    each with a 16 MB JSON body, 19-24 MB with the same image as multipart (python -m benchmarks.body_memory)."""
    client = TestClient(guarded_app(body_memory_bytes=1500))
    assert client.post("/echo", files={"image": ("a.jpg", b"x" * 700)}).status_code == 200  # about 850 bytes, counted once
    as_json = {"content-type": "application/json"}
    refused = client.post("/echo", content=json.dumps({"top_k": "x" * 780}), headers=as_json)  # 793 bytes, counted twice
    assert refused.status_code == 503 and "this one did not fit" in refused.json()["error"]
    assert client.post("/echo", content=json.dumps({"top_k": "x" * 700}), headers=as_json).status_code == 200
    assert client.post("/echo", content="top_k=" + "x" * 780, headers={"content-type": "application/x-www-form-urlencoded"}).status_code == 503


def test_body_memory_refuses_a_body_when_the_bodies_being_served_fill_it():
    bodies = BodyMemory(budget=1000)
    served = Arrival()
    bodies.take(served, 800)
    bodies.arrived(served)  # its request is being answered: it is never dropped
    with pytest.raises(NoRoomForBody):
        bodies.take(Arrival(), 300)
    bodies.release(served)
    bodies.take(Arrival(), 300)
    assert bodies.held == 300


def test_guard_refuses_a_compressed_body_from_its_headers_without_reading_it():
    """The 415 came after the whole body was read into memory; a chunked one (no length to drain by)
    is answered at once, and its connection closed."""

    async def scenario(headers):
        guard = guarded_app(body_timeout_s=30)
        answers: list[dict] = []

        async def endless():  # a compressed upload that never ends: reading it would wait for the timeout
            await asyncio.sleep(0)
            return {"type": "http.request", "body": b"x" * 100, "more_body": True}

        async def record(message):
            answers.append(message)

        scope = {"type": "http", "method": "POST", "path": "/echo", "headers": headers, "query_string": b""}
        await asyncio.wait_for(guard(scope, endless, record), 2)
        return answers

    chunked = asyncio.run(scenario([(b"content-encoding", b"gzip")]))
    assert chunked[0]["status"] == 415 and (b"connection", b"close") in chunked[0]["headers"]
    assert b"Content-Encoding gzip is not taken: send it uncompressed" in chunked[1]["body"]
    client = TestClient(guarded_app())
    sized = client.post("/echo", content=b"x" * 500, headers={"Content-Encoding": "br"})
    assert sized.status_code == 415 and sized.headers.get("connection") != "close"  # a body of known length is drained
    assert client.post("/echo", content=b"x" * 500, headers={"Content-Encoding": "identity"}).json() == {"length": 500}


def test_the_webcam_and_the_service_read_the_same_runtime():
    from service.webcam.demo import build_parser

    args = build_parser().parse_args(["--url", "http://127.0.0.1:3000", "--device", "cpu", "--engine", "onnx", "--precision", "bf16", "--threads", "3"])
    env = {"GESTURE_DEVICE": "cpu", "GESTURE_ENGINE": "onnx", "GESTURE_PRECISION": "bf16", "GESTURE_THREADS": "3"}
    assert Runtime.from_args(args) == Runtime.from_env(env) == Settings.from_env(env).runtime == Runtime("cpu", "onnx", "bf16", 3)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--url", "http://127.0.0.1:3000", "--threads", "0"])


@pytest.mark.parametrize("error, line", [
    (BadInput("image: not a recognised image format"), "Refused /predict [POST] (400): image: not a recognised image format"),
    ("validation", "Refused /predict [POST] (400): top_k: Input should be greater than or equal to 1"),
    (RuntimeError("engine failed"), None),
])
def test_a_refused_request_is_one_warning_line_and_a_server_error_keeps_its_traceback(error, line):
    import logging
    import sys

    from service.logs import RefusedRequestsInOneLine

    if error == "validation":
        from service.service import GestureClassifier

        try:
            GestureClassifier.apis["predict"].input_spec.model_validate({"top_k": 0})
        except Exception as err:  # noqa: BLE001 - pydantic's ValidationError, as BentoML meets it
            error = err
    try:
        raise error
    except Exception:  # noqa: BLE001
        record = logging.LogRecord("bentoml", logging.ERROR, __file__, 1, "Exception on %s [%s]", ("/predict", "POST"), sys.exc_info())
    assert RefusedRequestsInOneLine().filter(record)
    formatted = logging.Formatter("%(levelname)s %(message)s").format(record)
    if line is None:  # the server's own failure: unchanged
        assert formatted.startswith("ERROR Exception on /predict [POST]\nTraceback") and "engine failed" in formatted
    else:
        assert formatted == f"WARNING {line}"


def test_a_trailing_slash_is_redirected_by_starlette_and_a_websocket_is_refused(client, images):
    """What docs/serving.md says of the two answers that are Starlette's own, not JSON: the redirect keeps the method and body."""
    sent = {"files": {"image": ("a.jpg", images[0][1])}}
    redirected = client.post("/predict/", follow_redirects=False, **sent)
    assert (redirected.status_code, redirected.headers["location"].rsplit("/", 1)[-1], redirected.content) == (307, "predict", b"")
    assert client.post("/predict/", **sent).json()["label"] == client.post("/predict", **sent).json()["label"]
    from starlette.websockets import WebSocketDisconnect

    with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect("/predict"):
        pass
    assert refused.value.code == 1000
