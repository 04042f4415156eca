"""Hand-crop mode (``--hands``) for training and evaluation: each image's hands are found once and cut
out by the same ``gesture_core.hands.hand_crop`` that the service runs, and the crops are cached.

The cache lives under ``$GESTURE_CACHE_DIR/hand-crops/<settings>/`` (default
``~/.cache/gesture-service/hand-crops``). ``<settings>`` hashes everything a crop depends on besides
the image: the localiser's settings and models (``HandLocaliser.settings``), ``resize_size`` (the crop's
side) and this format's version. Each image is keyed by its content hash, so a changed file is found
again and a renamed one is not. An entry is ``<digest>.json`` (the hands found, as
``gesture_core.hands.hand_to_dict``) and one lossless ``<digest>-<i>.png`` per hand, the PNGs written
first and the JSON last, each atomically: an entry is complete when its JSON exists.

Policy for images with no hand found (stated in docs/hands.md, and in metrics.json ``hands.policy``):

- training and validation skip them: there is no crop to learn from, and a class whose images never
  show a hand (such as the ASL set's ``nothing``) then has no training images at all;
- test and ``training.evaluate`` count every image: one with no hand is answered "no gesture", as the
  service answers it. That is right for a "no gesture" class (``gesture_core.rejection``), which it is
  counted as, and a miss for a gesture. Models without a "no gesture" class count it as a miss.

Training learns from each image's best hand (the localiser's first); a frame's answer at test time
follows ``Classifier.decide_hands`` over all its hands, as the service's does.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from gesture_core.checkpoint import atomic_output
from gesture_core.classifier import Classifier
from gesture_core.engines import cache_root
from gesture_core.hands import Hand, HandLocaliser, hand_crop, hand_from_dict, hand_to_dict
from gesture_core.images import ImageDecodeError, read_image_file, read_rgb
from gesture_core.preprocess import DataConfig
from training.data import Sample, Splits, decode_failure, decode_file
from training.features import bytes_digest
from training.loop import progress_bar
from training.report import classification_metrics, rank_mistakes

HAND_CROPS_FORMAT_VERSION = 1
POLICY = ("no hand found: skipped in training and validation; in the test, answered 'no gesture' "
          "(counted as the reject class when the model has one, else a miss)")  # fmt: skip
LISTED = 5  # names of no-hand images shown at start-up
PNG_HEAD = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"  # the signature and the IHDR chunk's length and type
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the last chunk of every PNG, as OpenCV writes it


@dataclass(frozen=True)
class HandCropEntry:
    """One image's hands and their cached crops (``resize_size``² PNGs, best hand first)."""

    source: str
    hands: list[Hand]
    crops: list[str]
    error: str | None = None  # why the image did not decode (it then has no hands)


class HandCropCache:
    """The hand crops of image files, made once by ``localiser`` (built on the first miss when not given)."""

    def __init__(self, data_config: DataConfig, *, localiser: HandLocaliser | Callable[[], HandLocaliser] | None = None):
        self.data_config = data_config
        self._localiser = localiser
        self.detected = 0  # images run through the localiser by this object (the rest came from the cache)
        settings = self.localiser_settings()
        key = json.dumps([HAND_CROPS_FORMAT_VERSION, settings, data_config.resize_size], sort_keys=True)
        self.folder = cache_root() / "hand-crops" / hashlib.blake2b(key.encode(), digest_size=12).hexdigest()

    def localiser_settings(self) -> dict[str, Any]:
        # the settings a default HandLocaliser has, without loading its models (a full cache needs none)
        localiser = self._localiser if isinstance(self._localiser, HandLocaliser) else None
        return localiser.settings() if localiser is not None else default_localiser_settings()

    @property
    def localiser(self) -> HandLocaliser:
        if not isinstance(self._localiser, HandLocaliser):
            self._localiser = self._localiser() if callable(self._localiser) else HandLocaliser()
        return self._localiser

    def entry(self, path: str) -> HandCropEntry:
        """The image's entry, from the cache or made now (and stored). Keyed by the bytes it is made from: a
        digest read apart from them stored a file that could not be read then under one key for all such files."""
        try:
            data = read_image_file(path)
        except (OSError, ImageDecodeError):
            return HandCropEntry(path, [], [], decode_failure(path))  # not stored: the loader reports it as for any run
        digest = bytes_digest(data)
        stored = self._load(path, digest)
        return stored if stored is not None else self._make(path, data, digest)

    def entries(self, samples: Sequence[Sample], desc: str = "hand crops") -> list[HandCropEntry]:
        return [self.entry(sample.path) for sample in progress_bar(samples, desc)]

    def _load(self, path: str, digest: str) -> HandCropEntry | None:
        index = self.folder / f"{digest}.json"
        try:
            stored = json.loads(index.read_text())
            hands = [hand_from_dict(d) for d in stored["hands"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # absent, or unreadable: made again
        crops = [str(self.folder / f"{digest}-{i}.png") for i in range(len(hands))]
        if not all(self._crop_intact(crop) for crop in crops):
            return None  # a crop deleted, emptied or cut short: made again, where it failed every later run
        return HandCropEntry(path, hands, crops, stored.get("error"))

    def _crop_intact(self, crop: str) -> bool:
        """Whether a cached crop is a whole PNG of the crop's size: its signature and size, and its last chunk
        (IEND), two short reads where decoding every crop would cost the step it saves."""
        try:
            with open(crop, "rb") as f:
                head = f.read(24)
                f.seek(-12, os.SEEK_END)
                tail = f.read(12)
        except OSError:
            return False
        side = self.data_config.resize_size.to_bytes(4, "big")
        return head[:16] == PNG_HEAD and head[16:24] == side * 2 and tail == PNG_END

    def _make(self, path: str, data: bytes, digest: str) -> HandCropEntry:
        try:
            rgb = read_rgb(data)  # full size, as Classifier.find_hands decodes
        except ImageDecodeError as err:
            return HandCropEntry(path, [], [], str(err))  # not stored: the loader reports it as for any run
        hands = self.localiser.find(rgb)
        self.detected += 1
        self.folder.mkdir(parents=True, exist_ok=True)
        crops = [str(write_png_atomic(self.folder / f"{digest}-{i}.png", hand_crop(rgb, hand, self.data_config)))
                 for i, hand in enumerate(hands)]  # fmt: skip
        write_text_atomic(self.folder / f"{digest}.json", json.dumps({"hands": [hand_to_dict(h) for h in hands]}))
        return HandCropEntry(path, hands, crops)


def default_localiser_settings() -> dict[str, Any]:
    """``HandLocaliser().settings()`` without loading the models: the defaults of its signature."""
    import inspect

    params = inspect.signature(HandLocaliser).parameters
    settings = {name: params[name].default for name in ("landmarks", "max_hands", "min_palm_score", "min_presence")}
    from gesture_core.hands import HAND_MODEL_FILES

    return {**settings, "models": {f.name: f.sha256 for f in HAND_MODEL_FILES}}


def write_png_atomic(path: Path, rgb: np.ndarray) -> Path:
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"could not encode a hand crop for {path}")
    return write_bytes_atomic(path, encoded.tobytes())


def write_text_atomic(path: Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return path


# --------------------------------------------------------------------------- training's splits


@dataclass
class HandCropReport:
    """What the crop step found: per split, the images with no hand (paths), and the counts."""

    images: dict[str, int] = field(default_factory=dict)
    no_hand: dict[str, list[str]] = field(default_factory=dict)
    failed: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}: images that did not decode
    from_cache: int = 0
    detected: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"policy": POLICY, "images": self.images, "no_hand": {name: len(paths) for name, paths in self.no_hand.items()},
                "no_hand_files": {name: paths for name, paths in self.no_hand.items()},
                "detected": self.detected, "from_cache": self.from_cache}  # fmt: skip

    def summary(self) -> str:
        """The start-up lines: the counts, the policy and a few names."""
        total = sum(self.images.values())
        missing = sum(len(paths) for paths in self.no_hand.values())
        per_split = ", ".join(f"{name} {len(paths)} of {self.images[name]}" for name, paths in self.no_hand.items())
        lines = [f"hand crops: {total} images, {self.detected} run through the hand localiser now, "
                 f"{self.from_cache} from the cache ({self.seconds:.1f} s)",
                 f"no hand found in {missing} of {total} images ({per_split}); {POLICY}"]  # fmt: skip
        names = [path for paths in self.no_hand.values() for path in paths][:LISTED]
        lines += [f"  {path}" for path in names]
        if missing > len(names):
            lines.append(f"  … and {missing - len(names)} more (metrics.json lists all)")
        return "\n".join(lines)


def hand_crop_splits(splits: Splits, cache: HandCropCache) -> tuple[Splits, HandCropReport]:
    """``splits`` with each image replaced by its best hand's crop; images with no hand (or that do not
    decode) are left out, and the report lists them. The test's crops serve the open-set report; the
    test's scores come from the whole images (``frame_outputs``), where no image is left out."""
    started, report = time.perf_counter(), HandCropReport()
    before = cache.detected
    mapped = {}
    for name in ("train", "val", "test"):
        samples = getattr(splits, name)
        entries = cache.entries(samples, f"hand crops {name}")
        mapped[name] = [Sample(entry.crops[0], sample.label) for sample, entry in zip(samples, entries, strict=True) if entry.crops]
        report.images[name] = len(samples)
        report.no_hand[name] = [entry.source for entry in entries if not entry.crops and entry.error is None]
        report.failed += [{"path": entry.source, "reason": entry.error} for entry in entries if entry.error is not None]
    report.detected = cache.detected - before
    report.from_cache = sum(report.images.values()) - report.detected
    report.seconds = time.perf_counter() - started
    return replace(splits, train=mapped["train"], val=mapped["val"], test=mapped["test"]), report


# --------------------------------------------------------------------------- frame-level evaluation


@dataclass
class FrameOutputs:
    """A hands-mode model's answers on whole images, as the service gives them.

    ``probs``: per image, the probabilities of the hand its answer comes from (``FramePrediction.source``);
    zeros for an image with no hand, which ``no_hand`` marks. ``labels``: the answer (None: "no gesture").
    """

    probs: np.ndarray
    targets: np.ndarray
    no_hand: np.ndarray
    labels: list[str | None]
    failed: list[int]  # indices of images that did not decode (left out of the arrays above)


def frame_outputs(classifier: Classifier, samples: Sequence[Sample], cache: HandCropCache, *, batch_size: int = 64,
                  threshold: float | None = None, desc: str = "frames") -> FrameOutputs:  # fmt: skip
    """Each image through the Classifier's hands pipeline: its hands and crops (from ``cache``, made by
    ``hand_crop`` as ``Classifier.hand_crops`` makes them), ``classify``, ``decide_hands``."""
    rows, targets, no_hand, labels, failed = [], [], [], [], []
    entries = cache.entries(samples, desc)
    for start in range(0, len(entries), batch_size):
        chunk = list(zip(samples[start : start + batch_size], entries[start : start + batch_size], strict=True))
        crops = [classifier.preprocess.crop(cached_crop(path)) for _, entry in chunk for path in entry.crops]
        scores = classifier.classify_scores(crops) if crops else []
        offset = 0
        for i, (sample, entry) in enumerate(chunk):
            if entry.error is not None:
                failed.append(start + i)
                continue
            mine = scores[offset : offset + len(entry.hands)]
            offset += len(entry.hands)
            frame = classifier.decide_hands(entry.hands, mine, k=1, threshold=threshold)
            rows.append(mine[frame.source].probs if frame.source is not None else np.zeros(len(classifier.classes), np.float32))
            targets.append(sample.label)
            no_hand.append(frame.source is None)
            labels.append(frame.frame.label)
    shape = (len(rows), len(classifier.classes))
    return FrameOutputs(np.stack(rows) if rows else np.zeros(shape, np.float32), np.asarray(targets, np.int64),
                        np.asarray(no_hand, bool), labels, failed)  # fmt: skip


def cached_crop(path: str) -> np.ndarray:
    try:
        return decode_file(path)
    except ImageDecodeError as err:  # _crop_intact checks its ends only: a crop damaged within, or since, fails here
        raise ImageDecodeError(f"hand crop {path}: {err} (changed since it was made): delete that file, and the next command makes it anew") from None


def frame_metrics(classifier: Classifier, outputs: FrameOutputs) -> dict[str, Any]:
    """classification_metrics on frames: an image with no hand counts as the first "no gesture" class
    (a miss when the model has none); ``hands`` adds how many had none."""
    scores = np.log(outputs.probs.clip(1e-12))
    return classification_metrics(scores, outputs.targets, classifier.classes, no_answer=outputs.no_hand,
                                  no_answer_class=no_hand_class(classifier))  # fmt: skip


def frame_mistakes(classifier: Classifier, samples: Sequence[Sample], outputs: FrameOutputs) -> list[dict[str, Any]]:
    """``top_mistakes`` per frame (what test_mistakes.png shows): the whole images, each with the
    label of the hand its answer came from, or "no hand found" after the confident mistakes."""
    failed = set(outputs.failed)
    paths = [sample.path for i, sample in enumerate(samples) if i not in failed]
    return rank_mistakes(paths, outputs.probs, outputs.targets, classifier.classes, outputs.no_hand, no_hand_class(classifier))


def no_hand_class(classifier: Classifier) -> int | None:
    """The class a frame with no hand counts as: the first "no gesture" class, if the model has one."""
    return next(iter(classifier.reject_indices), None)


def format_no_hand(test_metrics: dict[str, Any]) -> str:
    """One line for the console: how many frames had no hand, and what they counted as."""
    block = test_metrics.get("no_answer") or {}
    counted = f"counted as {block['counted_as']!r}" if block.get("counted_as") else "each a miss (the model has no 'no gesture' class)"
    return f"  no hand found in {block.get('n', 0)} of {test_metrics['n']} images: answered 'no gesture', {counted}"


def crop_samples(samples: Sequence[Sample], cache: HandCropCache) -> list[Sample]:
    """The best hand's crop of each image that has one (for the open-set report, which scores crops)."""
    return [Sample(entry.crops[0], sample.label) for sample, entry in zip(samples, cache.entries(samples), strict=True) if entry.crops]
