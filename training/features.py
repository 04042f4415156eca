"""Cached backbone features for frozen-backbone training (a linear probe, or the frozen phase of a staged run).

While the backbone is frozen, its output for an image never changes, so it is computed once — through
the fastest inference engine (``gesture_core.engines``, OpenVINO on CPU) — and the head is trained on
the stored features: every epoch after the first takes seconds instead of a pass over all the images.

The cache key covers everything the features depend on: the frozen network (architecture and weights,
hashed), the preprocessing (DataConfig) and every image file's content hash, so a changed file, other
weights or another input size never reuse stale features. Files live under
``$GESTURE_CACHE_DIR/features`` (default ``~/.cache/gesture-service/features``).

Trade-off: cached features are those of the deterministic evaluation view (the shared Preprocess).
They are exact for ``--augment none`` (its training view *is* the evaluation view), which is why
``--cache-features auto`` turns the cache on only then; ``--cache-features on`` also caches with
augmentation, training the frozen phase without it (much faster, usually a little less accurate).
Dropout inside the frozen part is off (features are computed once, in eval mode); a dropout layer right
before the head is still applied to the cached features during training, as in the uncached run.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gesture_core.backbones import Backbone, drop_aux, get_submodule_or_none, set_submodule
from gesture_core.checkpoint import atomic_torch_save
from gesture_core.engines import Engine, build_engine, cache_root, model_fingerprint
from gesture_core.images import ImageDecodeError, read_image_file
from gesture_core.preprocess import DataConfig
from training.augment import build_eval_transform
from training.data import ImageDataset, Sample, make_loader
from training.loop import IGNORE_LABEL, EpochResult, classification_loss, progress_bar

CACHE_CHOICES = ("auto", "on", "off")
FEATURES_FORMAT_VERSION = 1
EXTRACT_BATCH = 64


@contextmanager
def torch_threads(count: int):
    """The head's tiny matmuls gain nothing from more threads, and on a busy machine every extra thread
    turns each small op into a wait for a descheduled sibling (milliseconds instead of microseconds)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def use_feature_cache(cache_features: str, augment: str) -> bool:
    """Whether frozen epochs train on cached features (see the module docstring for the trade-off)."""
    if cache_features not in CACHE_CHOICES:
        raise ValueError(f"--cache-features {cache_features!r}: choose one of {', '.join(CACHE_CHOICES)}")
    return cache_features == "on" or (cache_features == "auto" and augment == "none")


def feature_extractor(model: nn.Module, backbone: Backbone) -> nn.Module:
    """A copy of ``model`` with its main head replaced by Identity (and no auxiliary heads), in eval mode."""
    features = copy.deepcopy(model)
    drop_aux(features)
    set_submodule(features, backbone.heads[0], nn.Identity())
    return features.eval()


def head_dropout(model: nn.Module, backbone: Backbone) -> float:
    """The rate of a Dropout applied right before the main head (VGG, MobileNetV3, GoogLeNet), else 0."""
    previous = None
    for name, module in model.named_modules():
        if name == backbone.heads[0]:
            return float(previous.p) if isinstance(previous, nn.Dropout) else 0.0
        if not any(True for _ in module.children()):
            previous = module
    return 0.0


@dataclass
class CachedSplit:
    features: torch.Tensor  # (N, D) float32
    labels: torch.Tensor  # (N,) int64, IGNORE_LABEL where the image failed to decode

    @property
    def failed(self) -> list[int]:
        return (self.labels == IGNORE_LABEL).nonzero().flatten().tolist()


def file_digest(path: str) -> str:
    try:
        return bytes_digest(read_image_file(path))
    except (OSError, ImageDecodeError):
        return "unreadable"  # the loader reports it; a file that appears later changes the key


def bytes_digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def cache_key(extractor_fingerprint: str, data_config: DataConfig, samples: Sequence[Sample]) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([FEATURES_FORMAT_VERSION, extractor_fingerprint, data_config.to_dict()], sort_keys=True).encode())
    for sample in samples:
        h.update(f"{file_digest(sample.path)}:{sample.label};".encode())
    return h.hexdigest()


def cached_features(
    extractor: nn.Module,
    samples: Sequence[Sample],
    data_config: DataConfig,
    *,
    device: torch.device,
    workers: int = 2,
    desc: str = "features",
    engine: Callable[[], Engine] | None = None,
) -> CachedSplit:
    """Features of ``samples`` (eval view), loaded from the cache or computed once and stored.
    ``engine`` returns the inference engine to compute them with (default: built here)."""
    shape = (data_config.in_chans, data_config.input_size, data_config.input_size)
    key = cache_key(model_fingerprint(extractor, shape), data_config, samples)
    path = cache_root() / "features" / f"{key}.pt"
    if path.is_file():
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            return CachedSplit(stored["features"], stored["labels"])
        except Exception:  # a corrupt cache file is recomputed, never fatal
            path.unlink(missing_ok=True)
    split = extract_features(
        extractor, samples, data_config, device=device, workers=workers, desc=desc, engine=engine() if engine else None
    )
    try:
        atomic_torch_save({"features": split.features, "labels": split.labels}, path)
    except OSError as err:  # a cache: one that cannot be written costs the next run this extraction, not this run its report
        warnings.warn(f"features not cached: cannot write {path.parent} ({err.strerror or err}); "
                      "set GESTURE_CACHE_DIR to a writable folder to keep them for the next run", stacklevel=2)
    return split


def extractor_engine(extractor: nn.Module, data_config: DataConfig, device: torch.device) -> Engine:
    """The fastest engine for the extractor, in fp32 so cached features match the uncached run's."""
    shape = (data_config.in_chans, data_config.input_size, data_config.input_size)
    return build_engine(extractor, engine="auto", precision="fp32", device=device, input_shape=shape)


@torch.inference_mode()
def extract_features(
    extractor: nn.Module,
    samples: Sequence[Sample],
    data_config: DataConfig,
    *,
    device: torch.device,
    workers: int = 2,
    desc: str = "features",
    engine: Engine | None = None,
) -> CachedSplit:
    shape = (data_config.in_chans, data_config.input_size, data_config.input_size)
    engine = engine or extractor_engine(extractor, data_config, device)
    dataset = ImageDataset(samples, build_eval_transform(data_config), min_side=data_config.resize_size, placeholder_shape=shape)
    loader = make_loader(dataset, batch_size=EXTRACT_BATCH, workers=workers, pin_memory=device.type == "cuda")
    features, labels = [], []
    started, in_engine = time.perf_counter(), 0.0
    for images, target, _ in progress_bar(loader, desc):
        before = time.perf_counter()
        features.append(engine(images).float().flatten(1).cpu())
        in_engine += time.perf_counter() - before
        labels.append(target.long())
    total = time.perf_counter() - started
    # Where the time goes: the engine, or waiting for the loader to decode (the rest). A file that does
    # not decode went through as a placeholder (label -1): it is no photo of the split.
    failed = int(sum((t < 0).sum() for t in labels))
    print(f"{desc}: {len(samples) - failed} photos in {total:.1f} s ({engine.name} {in_engine:.1f} s, "
          f"{len(samples) / max(in_engine, 1e-9):.0f} img/s; waiting for decoding {total - in_engine:.1f} s)"
          + (f"; {failed} file(s) could not be read (gone or corrupt) and are left out" if failed else ""))  # fmt: skip
    if not features:
        return CachedSplit(torch.zeros((0, 0)), torch.zeros(0, dtype=torch.long))
    return CachedSplit(torch.cat(features), torch.cat(labels))


class FrozenFeatures:
    """The train and val features of a run, and the head trained on them.

    ``head`` is the model's own main head module, so training it here updates the model in place and
    the run's optimizer, scheduler, checkpoints and resume work exactly as for uncached epochs.
    """

    def __init__(
        self,
        model: nn.Module,
        backbone: Backbone,
        data_config: DataConfig,
        splits: dict[str, Sequence[Sample]],
        *,
        device: torch.device,
        workers: int,
    ):
        self.model, self.backbone, self.data_config, self.device, self.workers = model, backbone, data_config, device, workers
        self.samples = dict(splits)
        self.head = get_submodule_or_none(model, backbone.heads[0])
        self.dropout = head_dropout(model, backbone)
        self._cache: dict[str, CachedSplit] = {}

    def split(self, name: str) -> CachedSplit:
        if name not in self._cache:
            extractor = feature_extractor(self.model, self.backbone).to(self.device)
            built: list[Engine] = []  # one engine for every split that misses the cache, none if all hit

            def engine() -> Engine:
                if not built:
                    built.append(extractor_engine(extractor, self.data_config, self.device))
                return built[0]

            for split_name, samples in self.samples.items():
                if split_name not in self._cache:
                    found = cached_features(
                        extractor,
                        samples,
                        self.data_config,
                        device=self.device,
                        workers=self.workers,
                        desc=f"features {split_name}",
                        engine=engine,
                    )
                    self._cache[split_name] = CachedSplit(found.features.to(self.device), found.labels.to(self.device))
        return self._cache[name]

    def train_epoch(
        self,
        optimizer,
        scheduler,
        order: Sequence[int],
        *,
        batch_size: int,
        drop_last: bool,
        label_smoothing: float = 0.0,
        class_weights: torch.Tensor | None = None,
    ) -> EpochResult:
        """One epoch over the cached train features in ``order`` (the run's sampler order, so batches match)."""
        start = time.perf_counter()
        data = self.split("train")  # the first call computes (or loads) every split's features
        with torch_threads(1):
            self.head.train()
            result = self._train_batches(data, optimizer, scheduler, order, batch_size, drop_last, label_smoothing, class_weights)
        result.seconds = time.perf_counter() - start
        return result

    def _train_batches(
        self, data: CachedSplit, optimizer, scheduler, order, batch_size, drop_last, label_smoothing, class_weights
    ) -> EpochResult:
        order = torch.as_tensor(list(order), dtype=torch.long, device=self.device)
        stop = len(order) - len(order) % batch_size if drop_last else len(order)
        total_loss, correct, seen = 0.0, 0, 0
        for begin in range(0, stop, batch_size):
            index = order[begin : begin + batch_size]
            features, target = data.features[index], data.labels[index]
            if self.dropout:
                features = F.dropout(features, self.dropout, training=True)
            logits = self.head(features)
            loss = classification_loss(
                logits, target, aux_weight=0.0, label_smoothing=label_smoothing, class_weights=class_weights
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            valid = target != IGNORE_LABEL
            n = int(valid.sum())
            total_loss += loss.item() * n if n else 0.0  # every image of the batch failed to decode: its mean loss is NaN
            correct += int((logits.argmax(1) == target)[valid].sum())
            seen += n
        failed = sorted(set(data.failed) & set(order[:stop].tolist()))
        return EpochResult(total_loss / max(seen, 1), correct / max(seen, 1), seen, 0.0, failed)

    @torch.inference_mode()
    def logits(self, name: str) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """(logits, targets, failed indices) of the head on a cached split, like ``training.loop.predict_logits``."""
        data = self.split(name)
        self.head.eval()
        keep = data.labels != IGNORE_LABEL
        if not bool(keep.any()):
            return np.zeros((0, 0), np.float32), np.zeros(0, np.int64), data.failed
        with torch_threads(1):
            logits = self.head(data.features[keep]).float().cpu().numpy()
        return logits, data.labels[keep].cpu().numpy(), data.failed
