"""The A/B for the service's batching: /predict batched by BentoML's adaptive batching instead of the
worker's micro-batcher (service/microbatch.py). A benchmark, not part of the product:

    bentoml serve benchmarks.adaptive_service:AdaptiveGestureClassifier
    python -m benchmarks.batching        # both, under the same load

BentoML batches the calls to a ``batchable`` API across requests. A single-image endpoint gets that
the way BentoML composes services: an API service decodes and crops each upload, and calls a model
service (``bentoml.depends``) whose batchable ``classify`` runs in its own worker process, so every
crop crosses one more process boundary than in the product's service.
"""

from __future__ import annotations

import anyio
import bentoml
import numpy as np

from service.import_model import CHECKPOINT_FILE, LocalModel, find_model
from service.schemas import ImageBase64, ImageFile, PredictionOut, Threshold, TopK
from service.service import SETTINGS, crop_upload, prediction_out

MAX_LATENCY_MS = 10_000  # generous: the comparison is about throughput, not about BentoML shedding load with 503s


def load_stored_classifier():
    stored = find_model(LocalModel(SETTINGS.model_tag))
    return str(stored.tag), SETTINGS.runtime.load(stored.path_of(CHECKPOINT_FILE))


@bentoml.service(workers=1, traffic={"timeout": 30})
class BatchedModel:
    model_ref = LocalModel(SETTINGS.model_tag)

    def __init__(self) -> None:
        _, self.classifier = load_stored_classifier()
        size = self.classifier.data_config.input_size
        for batch in range(1, SETTINGS.batch_size + 1):  # every shape once before serving, as the product does
            self.classifier.classify([np.zeros((size, size, 3), np.uint8)] * batch)

    @bentoml.api(batchable=True, max_batch_size=SETTINGS.batch_size, max_latency_ms=MAX_LATENCY_MS)
    def classify(self, crops: np.ndarray) -> np.ndarray:
        return self.classifier.classify(list(crops))


@bentoml.service(workers=1, traffic={"timeout": 30})
class AdaptiveGestureClassifier:
    model = bentoml.depends(BatchedModel)

    def __init__(self) -> None:
        self.model_tag, self.classifier = load_stored_classifier()  # for its crop: the product's own decoding
        self.decode_limits = SETTINGS.decode_limits()

    @bentoml.api
    async def predict(self, image: ImageFile = None, image_b64: ImageBase64 = None, top_k: TopK = 5, threshold: Threshold = None) -> PredictionOut:
        upload = image if image is not None else image_b64
        crop = await anyio.to_thread.run_sync(crop_upload, self.classifier, upload, "image", self.decode_limits)
        probs = await self.model.to_async.classify(crop[None])
        return prediction_out(self.classifier, np.asarray(probs)[0], top_k, threshold, self.model_tag)

    @bentoml.api
    def info(self) -> dict:
        return {"model": self.model_tag, "backbone": self.classifier.backbone, "input_size": self.classifier.data_config.input_size,
                "device": str(self.classifier.device), "engine": f"{self.classifier.engine.name}/{self.classifier.engine.precision}"}
