"""The service's request and response types: what /predict, /predict_batch and /info take and answer.

BentoML builds each endpoint's input model, its OpenAPI page and its validation errors from these.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field, GetCoreSchemaHandler, GetJsonSchemaHandler, StrictFloat, StrictInt, WithJsonSchema
from pydantic_core import core_schema


def nullable(schema: dict[str, Any]) -> WithJsonSchema:
    """A response field that may be null, as one schema with OpenAPI 3.0's ``nullable``. BentoML 1.4.39 keeps only
    the first member of each ``anyOf`` in an endpoint's response schema (``_bentoml_sdk.method._flatten_field``), so
    ``list[HandOut] | None`` was published as an array, not null, and ``bentoml.SyncHTTPClient`` iterated the null
    /predict answers for every whole-image model (TypeError); a null label was published as a string. A nullable
    list has no ``items`` here: the client iterates the items it is given a schema for, null or not."""
    return WithJsonSchema({**schema, "nullable": True})


NullableText = Annotated[str | None, nullable({"type": "string"})]
NullableScore = Annotated[float | None, nullable({"type": "number"})]


class LabelScore(BaseModel):
    label: str
    score: float


class HandOut(BaseModel):
    box: list[int] = Field(description="x0, y0, x1, y1: the hand's box in the uploaded image's pixels")
    handedness: NullableText = Field(description="left or right, as MediaPipe labels a mirrored (selfie) image: "
                                               "in a picture that is not mirrored, left is the person's right hand")
    hand_score: float = Field(description="the hand detector's confidence that a hand is there (0-1)")
    label: NullableText = Field(description="this hand's gesture; null when rejected, by the same rule as the frame's label")
    score: float = Field(description="probability of this hand's top class")
    top_k: list[LabelScore] = Field(description="this hand's k most probable classes, best first")
    gesture_score: NullableScore = Field(default=None, description=(
        "what the threshold applied to, 0-1, for a model calibrated with another --reject-score than max_softmax (/info: "
        "rejection.score): that score's rank among the validation gestures'; null when the threshold applies to `score`"))


class PredictionOut(BaseModel):
    label: NullableText = Field(description="the gesture; null when rejected (top score, or `gesture_score` where it is given, below `threshold`, or a 'no gesture' class such as none or nothing). "
                                          "Hand-crop models: the label of the accepted hand with the highest gesture_score (else score); null when no hand is accepted or found")
    score: float = Field(description="probability of the top class (hand-crop models: of the hand the label comes from; 0 when no hand is found)")
    top_k: list[LabelScore] = Field(description="the k most probable classes, best first (hand-crop models: that hand's; empty when no hand is found)")
    gesture_score: NullableScore = Field(default=None, description=(
        "what the threshold applied to, 0-1, for a model calibrated with another --reject-score than max_softmax (/info: "
        "rejection.score): that score's rank among the validation gestures'; null when the threshold applies to `score`"))
    model: str = Field(description="name:version of the served model")
    hands: Annotated[list[HandOut] | None, nullable({"type": "array"})] = Field(default=None, description=(
        "always present. Models trained on hand crops (/info: hands is true): one answer per hand found, best first, "
        "[] when there is none, each as the HandOut schema (box, handedness, hand_score, label, score, top_k, gesture_score). "
        "Models that classify the whole image: null"))


class ModelInfo(BaseModel):
    model: str
    backbone: str
    classes: list[str]
    input_size: int
    resize_size: int
    mean: list[float]
    std: list[float]
    interpolation: str
    crop: str = Field(description="how an image becomes the model's square: center, letterbox or resize (the whole frame)")
    hands: bool = Field(description="true: the model classifies hand crops, so /predict finds the hands first and answers per hand")
    frame_aspect: float | None = Field(None, description="a whole-frame model's training frames: their typical width/height, which "
                                       "frames of another shape (a phone held upright) do not match; null when unknown or not whole-frame")
    metrics: dict[str, Any] = Field(description="validation/test top-1, top-5 and image counts from training")
    data_fingerprint: dict[str, Any] = Field(description="sha256 of the training split file lists")
    device: str
    engine: str = Field(description="what runs the model: torch, compile, onnx or openvino, and its precision")
    settings: dict[str, Any] = Field(description="the service's settings, as read at start-up")
    batching: dict[str, int] = Field(description="model calls and images since start-up, and the largest batch")
    rejection: dict[str, Any] = Field(description="'no gesture': reject classes, temperature, the default threshold and how it was chosen; "
                                                  "calibration says 'uncalibrated' for checkpoints from before calibration")


# The URL-safe alphabet's two letters, as the standard one spells them (JWT-style encoders, Python's urlsafe_b64encode).
URL_SAFE = bytes.maketrans(b"-_", b"+/")
WHITESPACE = b" \t\n\r\x0b\x0c"  # what bytes.split() splits on: line breaks of wrapped base64, and any spaces


def decode_base64(value: bytes) -> bytes:
    """Base64 as encoders write it: plain or URL-safe, with or without its padding, wrapped over lines
    (``base64 photo.jpg`` breaks every 76 characters, as MIME does), or a browser data URL
    (``data:image/jpeg;base64,...``; its media type is not checked, the bytes decide, as a browser labels
    a file it does not know application/octet-stream). Anything else outside the alphabet is refused."""
    if value[:16].lstrip()[:5].lower() == b"data:" and b"," in value:  # a URL scheme is case-insensitive (RFC 3986)
        header, value = value.split(b",", 1)
        if not header.lower().rstrip().endswith(b";base64"):  # data:,text or data:image/svg+xml,%3Csvg...: percent-encoded text
            raise ValueError("a data: URL without ;base64 holds text, not an image's bytes: send data:image/jpeg;base64,<base64>")
    try:  # most clients send it plain: normalising every body first would cost more than the decode itself
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        pass
    # One pass in C: value.split() made an object of every run between two spaces, and in a probe 16 MB of
    # "A A A ..." took 0.5 s of the event loop and 750 MB of the worker to join them again.
    value = value.translate(URL_SAFE, WHITESPACE)
    try:
        return base64.b64decode(value + b"=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64") from None


class Base64Image:
    """A JSON field holding an image as base64 (``decode_base64``), decoded once as the request is
    validated: the endpoint receives the image's bytes, and the OpenAPI page shows a base64 string.

    A type of its own rather than pydantic's ``Annotated[bytes, EncodedBytes(...)]``: BentoML 1.4
    (``patch_annotation``) wraps an ``Annotated`` type inside ``| None`` or ``list[...]`` in its own
    metadata once more, and ``EncodedBytes`` then refuses to build the endpoint's input model."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(
            decode_base64, core_schema.bytes_schema(),
            serialization=core_schema.plain_serializer_function_ser_schema(base64.b64encode),
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        return {"type": "string", "format": "base64"}


# Strict: `true` is not 1, and "3" in JSON is not 3 (multipart text is JSON-decoded by BentoML first).
TopK = Annotated[StrictInt, Field(ge=1, le=1000, description="how many classes to list in top_k")]
Threshold = Annotated[StrictFloat | None, Field(ge=0.0, le=1.0, allow_inf_nan=False, description="between 0 and 1: below this gesture_score (score, where that is null) the "
                                                                               "label is null (default: the model's calibrated threshold, shown by /info)")]
# `Path` (not Optional[Path]) with a None default: BentoML 1.4 only treats a plain Path as a file upload.
ImageFile = Annotated[Path, Field(description="the image file (JPEG, PNG, WebP, BMP, TIFF, ...)")]
ImageFiles = Annotated[list[Path], Field(description="the image files; repeat the multipart field")]
ImageBase64 = Annotated[Base64Image | None, Field(description="the image file as base64 (or a data: URL), for JSON clients")]
ImagesBase64 = Annotated[list[Base64Image] | None, Field(description="the image files as base64 (or data: URLs), for JSON clients")]
