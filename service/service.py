"""The HTTP service: image in, gesture out, with the model imported by ``python -m service.import_model``.

    bentoml serve service.service:GestureClassifier --host 127.0.0.1 --port 3000

Endpoints (all POST, JSON out; the OpenAPI page at / documents them):
    /predict          one image (multipart field ``image``, or JSON ``image_b64``)  -> prediction
    /predict_batch    several images in one request (``images`` / ``images_b64``)   -> [prediction]
    /predict_batched  like /predict, through BentoML's adaptive batching (for comparison; /predict
                      already batches concurrent requests inside the worker, service/microbatch.py)
    /classify_crops   the batchable step behind /predict_batched (preprocessed crops -> probabilities)
    /info             what is being served: backbone, classes, input size, metrics, limits
BentoML adds /readyz, /livez and /metrics.

Decoding is ``gesture_core.read_rgb`` and preprocessing the checkpoint's own ``Preprocess``, so a
served prediction is exactly ``load_classifier(checkpoint).predict(image)``.
"""

from __future__ import annotations

import base64
import binascii
import gc
import json
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import aiohttp
import anyio
import bentoml
import numpy as np
import torch
from bentoml.exceptions import BadInput, BentoMLException, NotFound, ServiceUnavailable
from pydantic import AfterValidator, BaseModel, Field

from gesture_core import Classifier, ImageDecodeError, load_classifier
from gesture_core.images import probe_image
from service import settings
from service.http_guard import FormPart, RequestGuard, Send
from service.import_model import CHECKPOINT_FILE
from service.microbatch import BatchStats, MicroBatcher

LIMITS = settings.Limits.from_env()
BATCHING = settings.BatchingConfig.from_env()
MODEL_TAG = settings.model_tag()
# With tracing on, every request takes BentoML's path, so that its spans and request ids are complete.
PREDICT_SHORTCUT = settings.predict_shortcut() and not settings.tracing()
CUDA = torch.cuda.is_available()
INTERNAL_CALL_ATTEMPTS = 3

logger = logging.getLogger("bentoml.service.gesture")


class ModelNotImported(NotFound):
    pass


class LocalModel(bentoml.models.BentoModel):
    """A model from the local store only: a missing model fails start-up saying how to import one,
    instead of BentoML's attempt to pull it from BentoCloud."""

    def resolve(self, base_path: Any = None) -> bentoml.Model:
        find_model(self)
        return super().resolve(base_path)


class LabelScore(BaseModel):
    label: str
    score: float


class PredictionOut(BaseModel):
    label: str | None = Field(description="the gesture; null when rejected (top score below `threshold`, or a 'no gesture' class such as none or nothing)")
    score: float = Field(description="probability of the top class")
    top_k: list[LabelScore] = Field(description="the k most probable classes, best first")
    model: str = Field(description="name:version of the served model")


class ModelInfo(BaseModel):
    model: str
    backbone: str
    classes: list[str]
    input_size: int
    resize_size: int
    mean: list[float]
    std: list[float]
    interpolation: str
    metrics: dict[str, Any] = Field(description="validation/test top-1, top-5 and image counts from training")
    data_fingerprint: dict[str, Any] = Field(description="sha256 of the training split file lists")
    device: str
    engine: str = Field(description="what runs the model: torch, compile, onnx or openvino, and its precision")
    limits: dict[str, int]
    batching: dict[str, int] = Field(description="batch limits, and /predict's model calls and images since start-up")
    rejection: dict[str, Any] = Field(description="'no gesture': reject classes, temperature, the default threshold and how it was chosen; "
                                                  "calibration says 'uncalibrated' for checkpoints from before calibration")


def check_base64(value: str | None) -> str | None:
    if value is not None:
        decode_base64(value)
    return value


def check_crop(value: str) -> str:
    """Reject a malformed crop before it joins a batch, so it cannot fail other clients' requests."""
    raw = decode_base64(value, "crop")
    try:
        expected = bentoml.get_current_service().crop_bytes
    except BentoMLException:  # not inside a server: the API method checks the size itself
        return value
    if len(raw) != expected:
        raise ValueError(f"a crop must be {expected:,} bytes (input_size x input_size x 3, uint8), got {len(raw):,}")
    return value


def decode_base64(value: str, what: str = "image_b64") -> bytes:
    """Plain base64 or a browser data URL (``data:image/jpeg;base64,...``)."""
    if value.startswith("data:") and "," in value:
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not valid base64") from None


TopK = Annotated[int, Field(ge=1, le=1000, description="how many classes to list in top_k")]
Threshold = Annotated[float | None, Field(ge=0.0, le=1.0, description="between 0 and 1: below this top score the label is null "
                                                                         "(default: the model's calibrated threshold, shown by /info)")]
# `Path` (not Optional[Path]) with a None default: BentoML 1.4 only treats a plain Path as a file upload.
ImageFile = Annotated[Path, Field(description="the image file (JPEG, PNG, WebP, BMP, TIFF, ...)")]
ImageFiles = Annotated[list[Path], Field(description="the image files; repeat the multipart field")]
ImageBase64 = Annotated[str | None, AfterValidator(check_base64),
                        Field(description="the image file as base64 (or a data: URL), for JSON clients")]
Crop = Annotated[str, AfterValidator(check_crop)]


def resources() -> dict[str, Any]:
    return {"cpu": "2", "memory": "2Gi", **({"gpu": 1} if CUDA else {})}


def tracing_config() -> dict[str, Any]:
    """BentoML runs every request through OpenTelemetry's middleware even when no exporter is
    configured (its default), where no span is ever recorded: 4 to 5 points of /predict's throughput
    against the engine's on a 2-core CPU (README, Speed). Unless GESTURE_TRACING=on, every route is
    excluded from it."""
    return {} if settings.tracing() else {"excluded_urls": [".*"]}


@bentoml.service(resources=resources(), traffic={"timeout": 30, "max_concurrency": 128}, workers=1, tracing=tracing_config())
class GestureClassifier:
    # At class scope so `bentoml build` packages the model; GESTURE_MODEL picks another one.
    model_ref = LocalModel(MODEL_TAG)

    def __init__(self) -> None:
        stored = find_model(packaged_model_ref() or type(self).model_ref)
        self.limits = settings.Limits.from_env()
        if threads := settings.torch_threads():
            torch.set_num_threads(threads)
        self.model_tag = str(stored.tag)
        self.metadata = dict(stored.info.metadata)
        # Loaded once here, before the server reports ready; never on a request.
        self.classifier: Classifier = load_classifier(stored.path_of(CHECKPOINT_FILE), device=settings.device(),
                                                      engine=settings.engine(), precision=settings.precision())
        self.preprocess = self.classifier.preprocess
        size = self.preprocess.config.input_size
        self.crop_shape = (size, size, 3)
        self.crop_bytes = size * size * 3
        self.loop_decode_pixels = settings.loop_decode_pixels(self.preprocess.config.resize_size**2)
        # One model call at a time, except for engines that overlap calls (OpenVINO's streams): for the
        # others, a core is better spent inside the one call than in a second one competing with it.
        self.model_threads = settings.model_threads() if self.classifier.engine.concurrent_calls else 1
        self._model_calls = threading.Semaphore(self.model_threads)  # model calls at once, from any endpoint
        self.batcher: MicroBatcher[np.ndarray, np.ndarray] | None = None
        if settings.predict_batching():
            self.warm_up(BATCHING.max_batch_size)
            # With two model threads, the next batch forms and starts while the previous one finishes.
            self.batcher = MicroBatcher(self.classify, BATCHING.max_batch_size, name="gesture-model", threads=self.model_threads)
        # Everything loaded so far lives as long as the worker. Out of the collector's sight, it no
        # longer makes each full collection walk torch's, BentoML's and the model's objects (over
        # 400,000) while every in-flight request waits: p99 went from about 3x p50 to 1.1-1.6x.
        gc.collect()
        gc.freeze()
        warn_if_tracing_excluded()

    def warm_up(self, largest: int) -> None:
        """One model call at every batch size the micro-batcher can form, before the server reports
        ready: an engine's first call at a new shape is slow (OpenVINO: 50-100 ms more), and under load
        those first calls would otherwise land on live requests as latency spikes."""
        started = time.perf_counter()
        crop = np.zeros(self.crop_shape, np.uint8)
        for size in range(1, largest + 1):
            self.classify([crop] * size)
        logger.info("model warmed up at batch sizes 1-%d in %.1f s", largest, time.perf_counter() - started)

    @bentoml.on_shutdown
    def stop_batcher(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
            stats = self.batcher.stats
            logger.info("model threads stopped: %d /predict images in %d model calls", stats.items, stats.batches)

    @bentoml.api
    async def predict(self, image: ImageFile = None, image_b64: ImageBase64 = None, top_k: TopK = 5, threshold: Threshold = None) -> PredictionOut:
        """Classify one image: multipart field `image`, or JSON `{"image_b64": ...}`."""
        crop = await self.upload_crop(image, image_b64)
        return self.prediction(await self.probabilities(crop), top_k, threshold)

    @bentoml.api
    async def predict_batch(self, images: ImageFiles = None, images_b64: list[str] | None = None,
                            top_k: TopK = 5, threshold: Threshold = None) -> list[PredictionOut]:
        """Classify several images in one request (repeat the multipart field `images`, or JSON `images_b64`)."""
        uploads = await anyio.to_thread.run_sync(self.many_uploads, images, images_b64)
        crops = await anyio.to_thread.run_sync(self.decode_all, uploads)
        probs = await anyio.to_thread.run_sync(self.classify, crops)
        return [self.prediction(p, top_k, threshold) for p in probs]

    @bentoml.api
    async def predict_batched(self, image: ImageFile = None, image_b64: ImageBase64 = None, top_k: TopK = 5, threshold: Threshold = None) -> PredictionOut:
        """Same contract as /predict, batched through BentoML's adaptive batching instead of in the worker."""
        crop = await self.upload_crop(image, image_b64)
        probs = await self.batched_probabilities(crop)
        return self.prediction(np.asarray(probs, dtype=np.float32), top_k, threshold)

    @bentoml.api(batchable=True, max_batch_size=BATCHING.max_batch_size, max_latency_ms=BATCHING.max_latency_ms)
    def classify_crops(self, crops: list[Crop]) -> list[list[float]]:
        """Probabilities for centre crops already made by the model's Preprocess (base64 of
        input_size x input_size x 3 uint8 each). Used by /predict_batched; batched across requests."""
        arrays = [self.crop_array(c) for c in crops]
        return self.classify(arrays).tolist()

    @bentoml.api
    def info(self) -> ModelInfo:
        """What is being served."""
        c = self.preprocess.config
        return ModelInfo(
            model=self.model_tag, backbone=self.classifier.backbone, classes=self.classifier.classes,
            input_size=c.input_size, resize_size=c.resize_size, mean=list(c.mean), std=list(c.std),
            interpolation=c.interpolation, metrics=self.metadata.get("metrics", {}),
            data_fingerprint=self.metadata.get("data_fingerprint", {}), device=str(self.classifier.device),
            engine=f"{self.classifier.engine.name}/{self.classifier.engine.precision}",
            limits={"max_upload_bytes": LIMITS.max_upload_bytes, "max_pixels": self.limits.max_pixels,
                    "max_batch_images": self.limits.max_batch_images},
            batching={"max_batch_size": BATCHING.max_batch_size, "max_latency_ms": BATCHING.max_latency_ms,
                      **self.predict_batch_stats()},
            rejection=self.classifier.rejection.info(),
        )

    # --- the steps behind the endpoints -------------------------------------------------------

    async def upload_crop(self, image: Path | None, image_b64: str | None) -> np.ndarray:
        # read on the event loop: BentoML has just written the upload from it
        return await self.crop_of(self.one_upload(image, image_b64))

    async def crop_of(self, data: bytes) -> np.ndarray:
        """The image's centre crop. A small image (at most the model's resize size squared) is decoded
        right here, on the event loop, which costs less CPU than a hand-off to a worker thread and back
        (README, Speed). Larger ones decode in a worker thread, so a 12 MP photo never holds up the loop."""
        if self.decodes_on_loop(data):
            return self.decode(data, "image")
        return await anyio.to_thread.run_sync(self.decode, data, "image")

    def decodes_on_loop(self, data: bytes) -> bool:
        try:
            _, (width, height) = probe_image(data)
        except ImageDecodeError:
            return True  # decode() refuses it at once, with the reason
        return width * height <= self.loop_decode_pixels

    async def probabilities(self, crop: np.ndarray) -> np.ndarray:
        """One crop's class probabilities: through the worker's micro-batcher, or alone when it is off."""
        if self.batcher is None:
            return (await anyio.to_thread.run_sync(self.classify, [crop]))[0]
        return await self.batcher(crop)

    def predict_batch_stats(self) -> dict[str, int]:
        """How /predict's model calls were shared so far (benchmarks read the mean batch from it)."""
        stats = self.batcher.stats if self.batcher is not None else BatchStats()
        return {"predict_model_calls": stats.batches, "predict_images": stats.items, "predict_largest_batch": stats.largest,
                "predict_model_threads": self.model_threads if self.batcher is not None else 0}

    def one_upload(self, image: Path | None, image_b64: str | None) -> bytes:
        if (image is None) == (image_b64 is None):
            raise BadInput("send exactly one image: a multipart file field named 'image', or JSON {\"image_b64\": \"<base64>\"}"
                           + ("" if image is None else " (got both)"))
        return image.read_bytes() if image is not None else decode_base64(image_b64)

    def many_uploads(self, images: list[Path] | None, images_b64: list[str] | None) -> list[bytes]:
        if not images and not images_b64:
            raise BadInput("send at least one image: repeat the multipart file field 'images', or JSON {\"images_b64\": [...]}")
        uploads = [p.read_bytes() for p in images or []]
        for i, value in enumerate(images_b64 or []):
            try:
                uploads.append(decode_base64(value))
            except ValueError as err:
                raise BadInput(f"images_b64[{i}]: {err}") from None
        if len(uploads) > self.limits.max_batch_images:
            raise BadInput(f"{len(uploads)} images in one request; the limit is {self.limits.max_batch_images} (GESTURE_MAX_BATCH_IMAGES)")
        return uploads

    def decode(self, data: bytes, what: str) -> np.ndarray:
        """Bytes -> the model's uint8 centre crop, or BadInput (400) saying what is wrong with the image."""
        try:
            return self.preprocess.crop(self.preprocess.read(data, max_pixels=self.limits.max_pixels))
        except ImageDecodeError as err:
            raise BadInput(f"{what}: {err}") from None

    def decode_all(self, uploads: Sequence[bytes]) -> list[np.ndarray]:
        return [self.decode(data, f"images[{i}]") for i, data in enumerate(uploads)]

    def crop_array(self, crop_b64: str) -> np.ndarray:
        raw = decode_base64(crop_b64, "crop")
        if len(raw) != self.crop_bytes:
            raise BadInput(f"a crop must be {self.crop_bytes:,} bytes, got {len(raw):,}")
        return np.frombuffer(raw, np.uint8).reshape(self.crop_shape)

    async def batched_probabilities(self, crop: np.ndarray) -> list[float]:
        """One crop through /classify_crops: inside a server this call goes through BentoML's batching
        dispatcher (outside one, straight to the method). Bad images never get this far."""
        payload = [base64.b64encode(crop.tobytes()).decode("ascii")]
        for attempt in range(1, INTERNAL_CALL_ATTEMPTS + 1):
            try:
                return (await self.to_async.classify_crops(payload))[0]
            except (aiohttp.ClientConnectionError, RuntimeError) as err:
                # BentoML 1.4.39's in-process client replaces its HTTP session every 100 calls and
                # cuts the calls still running on the old one; classifying again is safe.
                if isinstance(err, RuntimeError) and "Session is closed" not in str(err):
                    raise
                logger.warning("internal /classify_crops call cut (%s), attempt %d of %d", err, attempt, INTERNAL_CALL_ATTEMPTS)
        raise ServiceUnavailable("the batching step kept failing; retry the request")

    def classify(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        batch = self.preprocess.normalize_batch(crops)
        with self._model_calls, torch.inference_mode():
            return self.classifier.probs(batch)

    def prediction(self, probs: np.ndarray, top_k: int, threshold: float | None) -> PredictionOut:
        result = self.classifier.decide(probs, k=top_k, threshold=threshold).to_dict()
        return PredictionOut(**result, model=self.model_tag)


class PlainPredict(NamedTuple):
    image: bytes
    top_k: int
    threshold: float | None


async def predict_shortcut(parts: list[FormPart], send: Send) -> bool:
    """Answer a plain multipart /predict (one `image` file, and optionally `top_k` and `threshold`)
    before Starlette's routing and BentoML's IO layer: no temp file for the upload, no Request or
    Response object. On a 2-core CPU that saves about 1 ms of CPU per request and raises /predict's
    throughput by about 10% (README, Speed). The values go through the endpoint's own BentoML input model and the
    methods behind `predict` compute the answer, so it is BentoML's answer byte for byte (tested).
    Any other request, or one that fails, goes on to BentoML, which alone validates and words errors."""
    request = plain_predict_request(parts) if PREDICT_SHORTCUT else None
    if request is None:
        return False
    service: GestureClassifier = bentoml.get_current_service()
    try:
        probs = await service.probabilities(await service.crop_of(request.image))
    except Exception:  # noqa: BLE001 - BentoML's path answers it: the error, its status and the log line
        return False
    payload = service.prediction(probs, request.top_k, request.threshold).model_dump_json().encode()
    headers = [(b"content-length", str(len(payload)).encode()), (b"content-type", b"application/json"),
               (b"server", f"BentoML Service/{GestureClassifier.name}".encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
    return True


def plain_predict_request(parts: list[FormPart]) -> PlainPredict | None:
    files = [part for part in parts if part.is_file]
    values = {part.name: part.content for part in parts if not part.is_file}
    if (len(files) != 1 or files[0].name != "image" or files[0].content is None or len(values) + 1 != len(parts)
            or not values.keys() <= {"top_k", "threshold"} or None in values.values()):
        return None
    try:
        spec = GestureClassifier.apis["predict"].input_spec.model_validate({k: form_value(v) for k, v in values.items()})
    except ValueError:  # pydantic's ValidationError, or text that is not UTF-8
        return None
    return PlainPredict(files[0].content, spec.top_k, spec.threshold)


def form_value(raw: bytes) -> Any:
    """A text field as BentoML's multipart parser reads it: JSON where it parses, else the string."""
    text = raw.decode()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def warn_if_tracing_excluded() -> None:
    from bentoml._internal.configuration.containers import BentoMLContainer

    exporter = BentoMLContainer.config.tracing.exporter_type.get()
    if exporter and not settings.tracing():
        logger.warning("BentoML tracing has an exporter (%s), but every route is excluded from tracing: "
                       "set GESTURE_TRACING=on to trace requests", exporter)


def packaged_model_ref() -> LocalModel | None:
    """Inside a built Bento: the exact model version it was built with (not whatever is latest now)."""
    bento = GestureClassifier.bento
    if bento is None:
        return None
    info = next(s for s in bento.info.services if s.name == GestureClassifier.name)
    return LocalModel(info.models[0].tag) if info.models else None


def find_model(ref: bentoml.models.BentoModel) -> bentoml.Model:
    """The stored model, or a start-up error that says how to import one (never a BentoCloud lookup)."""
    stored = ref.stored
    if stored is None:
        from bentoml._internal.configuration.containers import BentoMLContainer

        raise ModelNotImported(
            f"no model {ref.tag} in the BentoML model store ({BentoMLContainer.model_store_dir.get()}). "
            "Import a training run first:  python -m service.import_model RUN/best.pt  "
            "(or set GESTURE_MODEL=name:version to one listed by `bentoml models list`)."
        )
    if not Path(stored.path_of(CHECKPOINT_FILE)).is_file():
        raise ModelNotImported(f"model {stored.tag} has no {CHECKPOINT_FILE}; re-import it with python -m service.import_model RUN/best.pt")
    return stored


GestureClassifier.add_asgi_middleware(
    RequestGuard,
    max_body_bytes=LIMITS.max_upload_bytes,
    file_fields={api.route: frozenset(api.input_spec.multipart_fields) for api in GestureClassifier.apis.values()},
    shortcuts={"/predict": predict_shortcut},
)
