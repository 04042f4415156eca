"""The service's side of hand-crop models (``DataConfig.hands``): find the hands of an upload and cut
each one out for the model, in a worker thread; the crops then go through the micro-batcher together.

Everything here runs only for a hand-crop model: a model that classifies the whole image never builds
a ``HandLocaliser``, so LiteRT (``ai_edge_litert``) is never imported for it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from bentoml.exceptions import BadInput

from gesture_core import Classifier, ImageDecodeError
from gesture_core.hands import Hand, HandLocaliser, HandModelsUnavailableError
from service.import_model import HAND_MODELS_FOLDER

logger = logging.getLogger("bentoml.service.gesture")

WARM_UP_FRAME = (480, 640)  # a webcam frame's height and width


def find_hand_crops(classifier: Classifier, upload: Path | bytes, what: str, limits: dict[str, float]) -> tuple[list[Hand], list[np.ndarray]]:
    """The upload's hands (best first) and one model crop per hand, or BadInput (400) saying what is
    wrong with the image (``limits``: ``Settings.decode_limits``). Runs in a worker thread: decoding and
    hand detection take milliseconds."""
    data = upload.read_bytes() if isinstance(upload, Path) else upload  # bytes: errors never show the temp path
    try:
        rgb, hands = classifier.find_hands(data, **limits)
    except ImageDecodeError as err:
        raise BadInput(f"{what}: {err}") from None
    return hands, classifier.hand_crops(rgb, hands)


def warm_up_localiser(classifier: Classifier) -> None:
    """Build the hand localiser and run it once before the server reports ready: LiteRT's first run is slow."""
    started = time.perf_counter()
    classifier.localiser.find(np.zeros((*WARM_UP_FRAME, 3), np.uint8))
    logger.info("hand localiser warmed up in %.1f s", time.perf_counter() - started)


def use_stored_hand_models(classifier: Classifier, stored_folder: Path) -> None:
    """A hand-crop model imported with its detector's files (service.import_model) uses those, so a
    Bento or a container serves it with no prepare step; one imported without them uses the cache's."""
    if classifier.hands_mode and (stored_folder / HAND_MODELS_FOLDER).is_dir():
        classifier.localiser = HandLocaliser(stored_folder / HAND_MODELS_FOLDER)


def check_localiser(classifier: Classifier) -> str | None:
    """Why a hand-crop model cannot be served here (the hand models or LiteRT are missing), or None."""
    if not classifier.hands_mode:
        return None
    try:
        classifier.localiser  # noqa: B018 - building it loads both models
    except HandModelsUnavailableError as err:
        return f"it classifies hand crops, and {err}"
    return None
