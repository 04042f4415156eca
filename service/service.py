"""The HTTP service: image in, gesture out, with the model imported by ``python -m service.import_model``.

    bentoml serve service.service:GestureClassifier --host 127.0.0.1 --port 3000

    POST /predict        one image: multipart field ``image``, or JSON ``image_b64``  -> prediction
    POST /predict_batch  several images: ``images`` (repeated) or ``images_b64``      -> [prediction]
    POST /info           what is served: model, classes, preprocessing, settings, batching
BentoML adds /readyz, /livez, /metrics and the OpenAPI page at /. Settings: service/settings.py.

Every answer comes from the checkpoint's own ``Classifier``: ``crop`` per upload, then ``classify_scores`` on
the model threads, which batch concurrent requests (service/microbatch.py), so a served prediction is
``load_classifier(checkpoint).predict(image)`` by construction. A small upload is cropped on the model
thread as part of its batch, a large one (``SMALL_UPLOAD_BYTES``), or one whose header declares more pixels than
a batch decodes (``BATCH_DECODE_PIXELS``), in a worker thread of its own first.
A model trained on hand crops finds the hands in a worker thread instead (service/hand_crops.py), its
crops share one model call, and the answer is ``predict_hands(image)``'s: the frame's label plus one
answer per hand. The request and response types are in service/schemas.py.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import time
from collections.abc import Awaitable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import bentoml
import numpy as np
from bentoml.exceptions import BadInput, BentoMLException

from gesture_core import Classifier, ClassScores, ImageDecodeError
from gesture_core.engines import EngineUnavailableError
from gesture_core.hands import Hand
from gesture_core.images import ImageTooLarge
from service.browser_demo import DEMO_PATH, allow_cors_origins, demo_app
from service.hand_crops import check_localiser, find_hand_crops, use_stored_hand_models, warm_up_localiser
from service.http_guard import EndpointFields, RequestGuard, too_many_images, use_the_open_file_hard_limit
from service.import_model import CHECKPOINT_FILE, LocalModel, find_model
from service.logs import keep_the_log_short
from service.microbatch import MicroBatcher
from service.schemas import (
    ImageBase64,
    ImageFile,
    ImageFiles,
    ImagesBase64,
    ModelInfo,
    PredictionOut,
    Threshold,
    TopK,
)
from service.settings import REQUEST_TIMEOUT_S, Settings, SettingsError, hardware_problem, unknown_settings, visible_gpus


def read_settings() -> Settings:
    """The settings, once, at start-up. A deployer's typo stops it with one line naming the variable
    (exit 2), where BentoML printed the import's 60-line traceback; doubtful ones are warned about."""
    try:
        settings = Settings.from_env()
    except SettingsError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    # Every worker imports this module again: warnings are said once, by the process that starts them. What
    # this machine's hardware cannot do stops `bentoml serve` (check_model), not `bentoml build`, which may
    # run on a machine without the deployment's GPUs.
    if bentoml.server_context.worker_index is None:
        hardware = hardware_problem(settings)
        for why in unknown_settings(os.environ) + ([hardware[1]] if hardware and hardware[0] == "warning" else []):
            print(f"warning: {why}", file=sys.stderr)
    return settings


SETTINGS = read_settings()  # the service's resources and workers depend on it

# Uploads up to this size are decoded and cropped on a model thread, in their batch: for the small
# images a webcam sends (a 640x480 JPEG is 30-100 KB) that saves a hand-over to a worker thread and
# back per request, and /predict served about 4% more requests without it (docs/performance.md).
# Larger uploads still get a thread of their own, so that one big photo never holds up a whole batch.
# A small file can still hide a big decode: 256 KB of flat PNG may declare 4.2 MP (16 pixels a byte, Settings.
# max_pixels_per_byte), 45 ms to decode, and 32 of them in one /predict_batch held every other request
# for 1.4 s a batch (a probe). So a batch decodes no upload of more than BATCH_DECODE_PIXELS, read
# from its header before any pixel: one above it is decoded apart, in a worker thread, as a large one is.
SMALL_UPLOAD_BYTES = 256 * 1024
BATCH_DECODE_PIXELS = 1_000_000  # a 1280x720 frame (921,600 pixels); a webcam's 640x480 is a third of it
# Those worker threads come from AnyIO's pool, which runs up to 40 at once, and one upload at the pixel
# limit takes about 256 MB to decode: 16 of them sent together grew the worker by 2,977 MB
# (``python -m benchmarks.hostile``, docs/reliability.md). Decoding is CPU-bound, so more at once than
# cores gains nothing; this many bound what they can hold.
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # Linux: the ones we may use
DECODES_AT_ONCE = min(4, CORES)

logger = logging.getLogger("bentoml.service.gesture")


class ModelNotServable(BentoMLException):
    pass


@bentoml.asgi_app(demo_app(), path=DEMO_PATH)  # the browser demo page (docs/webcam.md)
@bentoml.service(
    resources=SETTINGS.resources(),
    workers=SETTINGS.workers,
    traffic={"timeout": REQUEST_TIMEOUT_S},  # the concurrency limit is the request guard's, counted once a body has arrived
    # BentoML's OpenTelemetry middleware costs CPU on every request even with no exporter configured.
    tracing={} if SETTINGS.tracing else {"excluded_urls": [".*"]},
)
class GestureClassifier:
    # At class scope so that `bentoml build` packages the model; GESTURE_MODEL picks another one.
    model_ref = LocalModel(SETTINGS.model_tag)

    def __init__(self, settings: Settings = SETTINGS) -> None:
        self.settings = settings
        self.decode_limits = settings.decode_limits()  # once: every upload is decoded within them
        self.batch_decode_limits = {**self.decode_limits, "max_pixels": min(settings.max_pixels, BATCH_DECODE_PIXELS)}
        stored = find_model(packaged_model_ref() or type(self).model_ref)
        self.model_tag = str(stored.tag)
        self.metadata = dict(stored.info.metadata)
        # Loaded once here, before the server reports ready; never on a request.
        runtime = settings.runtime_for_worker(bentoml.server_context.worker_index, visible_gpus())  # its own GPU, where there are several
        self.classifier: Classifier = runtime.load(stored.path_of(CHECKPOINT_FILE))
        use_stored_hand_models(self.classifier, Path(stored.path))
        # Engines that overlap calls (OpenVINO's streams) get a second model thread, so that the next
        # batch forms and starts while one finishes; for the others a core is better spent inside the call.
        threads = 2 if self.classifier.engine.concurrent_calls else 1
        if OPEN_FILES[1] > OPEN_FILES[0]:
            logger.info("open-file limit raised from %d to %d (each connection holds one)", *OPEN_FILES)
        self.warm_up(settings.batch_size)
        if self.classifier.hands_mode:
            warm_up_localiser(self.classifier)
        self.batcher = MicroBatcher(self.classify_uploads, settings.batch_size, name="gesture-model", threads=threads)
        self.decode_slots = anyio.CapacityLimiter(DECODES_AT_ONCE)  # the worker threads that decode large uploads
        # Everything loaded so far lives as long as the worker. Out of the collector's sight, it no
        # longer makes each full collection walk torch's, BentoML's and the model's objects (over
        # 400,000) while every in-flight request waits: p99 went from about 3x p50 to 1.1-1.6x.
        gc.collect()
        gc.freeze()

    def warm_up(self, largest: int) -> None:
        """One model call at every batch size the model threads can form, before the server reports
        ready: an engine's first call at a new shape is slow (OpenVINO: 50-100 ms more)."""
        started = time.perf_counter()
        crop = self.classifier.blank_crop()  # RGB whatever the model's channels: one channel failed every worker's start
        for batch in range(1, largest + 1):
            self.classifier.classify([crop] * batch)
        logger.info("model warmed up at batch sizes 1-%d in %.1f s", largest, time.perf_counter() - started)

    @bentoml.on_deployment
    def check_model() -> None:
        """Runs once in `bentoml serve`'s main process, before any worker starts: a model that cannot
        be loaded and run stops the server here, with the reason. Failing in a worker's __init__
        instead, it would make BentoML restart the worker every few seconds, for ever."""
        if (hardware := hardware_problem(SETTINGS)) and hardware[0] == "error":
            raise ModelNotServable(hardware[1])
        packaged = packaged_model_ref()
        if packaged is not None and os.environ.get("GESTURE_MODEL", "").strip() and SETTINGS.model_tag != str(packaged.tag):
            print(f"warning: GESTURE_MODEL={SETTINGS.model_tag} is not used: a Bento serves the model it was built with, {packaged.tag}; "
                  "build another Bento to serve another model", file=sys.stderr)  # a pod spec's setting was ignored without a word
        stored = find_model(packaged or GestureClassifier.inner.model_ref)
        try:
            classifier = SETTINGS.runtime.load(stored.path_of(CHECKPOINT_FILE))
            use_stored_hand_models(classifier, Path(stored.path))
        except EngineUnavailableError as err:  # this model and this engine: another engine serves it
            raise ModelNotServable(f"model {stored.tag} cannot be served with GESTURE_ENGINE={SETTINGS.runtime.engine}: {err}; "
                                   "set GESTURE_ENGINE to torch or auto") from None
        except ValueError as err:  # the checkpoint, or a setting or engine that cannot run it
            raise ModelNotServable(f"model {stored.tag} cannot be served: {err}. Import a working checkpoint with "
                                   "python -m service.import_model RUN/best.pt, or set GESTURE_MODEL to another version "
                                   "(bentoml models list).") from None
        if problem := check_localiser(classifier):
            raise ModelNotServable(f"model {stored.tag} cannot be served: {problem}")
        logger.info("model %s loads and runs", stored.tag)

    @bentoml.on_shutdown
    def stop_batcher(self) -> None:
        self.batcher.close()
        stats = self.batcher.stats
        logger.info("model threads stopped: %d images in %d model calls", stats.items, stats.batches)

    @bentoml.api
    async def predict(self, image: ImageFile = None, image_b64: ImageBase64 = None, top_k: TopK = 5, threshold: Threshold = None) -> PredictionOut:
        """Classify one image: multipart field `image`, or JSON `{"image_b64": ...}`."""
        if (image is None) == (image_b64 is None):
            raise BadInput("send exactly one image: a multipart file field named 'image', or JSON {\"image_b64\": \"<base64>\"}"
                           + ("" if image is None else " (got both)"))
        upload, field = (image, "image") if image is not None else (image_b64, "image_b64")  # the field a reason names
        if self.classifier.hands_mode:
            return await self.predict_hands(upload, field, top_k, threshold)
        return self.prediction(await self.scores(await self.model_input(upload, field)), top_k, threshold)

    @bentoml.api
    async def predict_batch(self, images: ImageFiles = None, images_b64: ImagesBase64 = None,
                            top_k: TopK = 5, threshold: Threshold = None) -> list[PredictionOut]:
        """Classify several images in one request (repeat the multipart field `images`, or JSON `images_b64`)."""
        if images is not None and images_b64 is not None:  # one way only (an empty list too): the answers come in the order of one list
            raise BadInput("send the images one way: repeat the multipart file field 'images', or JSON {\"images_b64\": [...]} (got both)")
        uploads: list[Path | bytes] = list(images or images_b64 or [])
        field = "images" if images else "images_b64"
        fields = [f"{field}[{i}]" for i in range(len(uploads))]
        if not uploads:
            raise BadInput("send at least one image: repeat the multipart file field 'images', or JSON {\"images_b64\": [...]}")
        if len(uploads) > self.settings.batch_size:
            raise BadInput(too_many_images(len(uploads), self.settings.batch_size))
        # the uploads are decoded side by side, as many at once as decode_slots allows (they were decoded one after another)
        if self.classifier.hands_mode:
            found = first_failure_raised(await settled(self.find_hands(upload, field) for upload, field in zip(uploads, fields, strict=True)))
            scores = await asyncio.gather(*(self.batcher.many(crops) for _, crops in found))
            return [self.hands_prediction(hands, p, top_k, threshold) for (hands, _), p in zip(found, scores, strict=True)]
        # a large upload is decoded here, a small one with its batch: which failed is known once both have run
        inputs = await settled(self.model_input(upload, field) for upload, field in zip(uploads, fields, strict=True))
        scores = iter(await settled(self.scores(item) for item in inputs if not isinstance(item, BaseException)))
        answers = [item if isinstance(item, BaseException) else next(scores) for item in inputs]
        return [self.prediction(p, top_k, threshold) for p in first_failure_raised(answers)]

    @bentoml.api
    def info(self) -> ModelInfo:
        """What is being served."""
        c = self.classifier.data_config
        stats = self.batcher.stats
        return ModelInfo(
            model=self.model_tag, backbone=self.classifier.backbone, classes=self.classifier.classes,
            input_size=c.input_size, resize_size=c.resize_size, mean=list(c.mean), std=list(c.std),
            interpolation=c.interpolation, crop=c.crop, hands=c.hands, frame_aspect=self.classifier.frame_aspect, metrics=self.metadata.get("metrics", {}),
            data_fingerprint=without_local_path(self.metadata.get("data_fingerprint", {})), device=str(self.classifier.device),
            engine=f"{self.classifier.engine.name}/{self.classifier.engine.precision}",
            settings={**self.settings.describe(), "model": self.model_tag},
            batching={"model_calls": stats.batches, "images": stats.items, "largest_batch": stats.largest,
                      "model_threads": len(self.batcher.threads)},
            rejection=self.classifier.rejection.info(),
        )

    async def model_input(self, upload: Path | bytes, what: str) -> Upload | np.ndarray:
        """What the model threads take: a small upload as it is (``classify_uploads`` crops it in the
        batch), a large one's crop, made in a worker thread so that it holds up neither the event loop
        nor a batch."""
        size = upload.stat().st_size if isinstance(upload, Path) else len(upload)
        if size <= SMALL_UPLOAD_BYTES:
            return Upload(upload, what)
        return await self.crop_apart(Upload(upload, what))

    async def crop_apart(self, upload: Upload) -> np.ndarray:
        return await anyio.to_thread.run_sync(crop_upload, self.classifier, *upload, self.decode_limits, limiter=self.decode_slots)

    async def scores(self, item: Upload | np.ndarray) -> ClassScores:
        """The model threads' answer for ``model_input``'s item; an upload that declares more pixels than a
        batch decodes (DecodeApart) is cropped apart first, and its crop sent again."""
        try:
            return await self.batcher(item)
        except DecodeApart:
            return await self.batcher(await self.crop_apart(item))

    def classify_uploads(self, items: list[Upload | np.ndarray]) -> list[ClassScores | Exception]:
        """One model call (on a model thread) for a batch of crops and small uploads; an upload that does
        not decode gets its BadInput in its place, which fails that request alone."""
        results: list[ClassScores | Exception | None] = [None] * len(items)
        crops: dict[int, np.ndarray] = {}
        for i, item in enumerate(items):
            try:
                crops[i] = crop_upload(self.classifier, *item, self.batch_decode_limits, in_batch=True) if isinstance(item, Upload) else item
            except Exception as err:  # noqa: BLE001 - BadInput for an image that does not decode: that request's alone
                results[i] = err
        if crops:
            for i, scores in zip(crops, self.classifier.classify_scores(list(crops.values())), strict=True):
                results[i] = scores
        return results

    def prediction(self, scores: ClassScores, top_k: int, threshold: float | None) -> PredictionOut:
        return prediction_out(self.classifier, scores, top_k, threshold, self.model_tag)

    async def predict_hands(self, upload: Path | bytes, what: str, top_k: int, threshold: float | None) -> PredictionOut:
        """A hand-crop model: the hands found in a worker thread, their crops in one model call."""
        hands, crops = await self.find_hands(upload, what)
        return self.hands_prediction(hands, await self.batcher.many(crops), top_k, threshold)

    async def find_hands(self, upload: Path | bytes, what: str) -> tuple[list[Hand], list[np.ndarray]]:
        """The upload's hands and their crops, found in a worker thread (hand detection never holds up the event loop)."""
        return await anyio.to_thread.run_sync(find_hand_crops, self.classifier, upload, what, self.decode_limits, limiter=self.decode_slots)

    def hands_prediction(self, hands: list[Hand], scores: list[ClassScores], top_k: int, threshold: float | None) -> PredictionOut:
        """The classifier's own per-hand and frame decisions (``Classifier.decide_hands``)."""
        frame = self.classifier.decide_hands(hands, scores, k=top_k, threshold=threshold)
        return PredictionOut(**frame.to_dict(), model=self.model_tag)


class Upload(NamedTuple):
    """An upload not decoded yet, and how errors name it ("image", "images[2]")."""

    data: Path | bytes
    what: str


def crop_upload(classifier: Classifier, upload: Path | bytes, what: str, limits: dict[str, float], *, in_batch: bool = False) -> np.ndarray:
    """``classifier.crop`` of an upload within the decoding ``limits`` (``Settings.decode_limits``), or
    BadInput (400) saying what is wrong with the image."""
    data = upload.read_bytes() if isinstance(upload, Path) else upload  # bytes: errors never show the temp path
    try:
        return classifier.crop(data, **limits)
    except ImageDecodeError as err:
        if in_batch and isinstance(err, ImageTooLarge):  # above a batch's pixel limit: decoded apart, within the service's
            raise DecodeApart from None
        raise BadInput(f"{what}: {err}") from None


class DecodeApart(Exception):
    """An upload small in bytes whose header declares more pixels than a batch decodes (BATCH_DECODE_PIXELS)."""


async def settled(awaitables: Iterable[Awaitable[Any]]) -> list[Any]:
    """Their results or exceptions, in their order, run side by side."""
    return await asyncio.gather(*awaitables, return_exceptions=True)


def first_failure_raised(results: list[Any]) -> list[Any]:
    """``results``, unless one is an exception: then the first in their order is raised, so a batch's error names
    the first image sent that does not decode, whichever failed first in time."""
    if failed := next((r for r in results if isinstance(r, BaseException)), None):
        raise failed
    return results


def prediction_out(classifier: Classifier, scores: ClassScores, top_k: int, threshold: float | None, model_tag: str) -> PredictionOut:
    """The classifier's own decision: its reject classes, and its stored threshold unless one is given."""
    return PredictionOut(**classifier.decide(scores, k=top_k, threshold=threshold).to_dict(), model=model_tag)


def packaged_model_ref() -> LocalModel | None:
    """Inside a built Bento: the exact model version it was built with (not whatever is latest now)."""
    bento = GestureClassifier.bento
    if bento is None:
        return None
    info = next(s for s in bento.info.services if s.name == GestureClassifier.name)
    return LocalModel(info.models[0].tag) if info.models else None


def endpoint_fields(api: Any) -> EndpointFields:
    """An endpoint's fields, from its BentoML input model: which take files, and which are lists; and
    the most images a request may send."""
    spec = api.input_spec
    lists = {name for name, info in spec.model_fields.items() if "list[" in str(info.annotation).lower()}
    return EndpointFields(frozenset(spec.model_fields), frozenset(spec.multipart_fields), frozenset(lists), SETTINGS.batch_size)


keep_the_log_short()
OPEN_FILES = use_the_open_file_hard_limit()  # one per connection (service/http_guard.py: idle connections)
allow_cors_origins(GestureClassifier, SETTINGS.cors_origins)  # first, so that the request guard's answers carry CORS headers too
GestureClassifier.add_asgi_middleware(
    RequestGuard,
    endpoints={api.route: endpoint_fields(api) for api in GestureClassifier.apis.values()},
    max_body_bytes=SETTINGS.max_upload_bytes,
    body_timeout_s=SETTINGS.body_timeout_s,
    max_concurrency=SETTINGS.concurrency_per_worker,
    body_memory_bytes=SETTINGS.body_memory_bytes,
)


def without_local_path(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """The data fingerprint as /info shows it: the training data's folder name, not where it lay on
    the training machine (an absolute path told any caller about that machine's file system)."""
    source = fingerprint.get("source")
    return {**fingerprint, "source": Path(source).name} if isinstance(source, str) and source else fingerprint
