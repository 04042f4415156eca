"""BentoML's own cost of a /predict request: the product's /predict, with the same input and output
types and service options, but no model behind it. A benchmark, not part of the product:

    python -m benchmarks.serve --clients 16 --batching microbatch floor

Every request still goes through what BentoML does for the real one (HTTP, the multipart upload
written to a temporary file, the validated input model, the serialised answer); the handler returns
one fixed prediction without reading the upload. The server's CPU per request here is the floor under
the real service's: ``benchmarks.serve`` turns it into the most /predict could serve even if this
project's own code (decoding, cropping, batching) cost nothing.
"""

from __future__ import annotations

import bentoml

from service.schemas import ImageBase64, ImageFile, LabelScore, PredictionOut, Threshold, TopK
from service.settings import REQUEST_TIMEOUT_S

ANSWER = PredictionOut(label="0", score=0.9, top_k=[LabelScore(label=str(i), score=0.9 / (i + 1)) for i in range(5)],
                       model="floor:none", hands=None)


@bentoml.service(workers=1, traffic={"timeout": REQUEST_TIMEOUT_S}, tracing={"excluded_urls": [".*"]})  # the product's options
class BentoMLFloor:
    @bentoml.api
    async def predict(self, image: ImageFile = None, image_b64: ImageBase64 = None, top_k: TopK = 5, threshold: Threshold = None) -> PredictionOut:
        return ANSWER

    @bentoml.api
    def info(self) -> dict:
        return {"model": ANSWER.model}
