"""What the Classifier answers for a dataset's images, as the service answers them: each image cropped by the
checkpoint's Preprocess (in the loader's workers, so decoding runs beside the model), then the Classifier's own
model call. ``training.evaluate`` (its metrics, predictions.csv and "no gesture" report), the run's test report and
the benchmarks that score a split read it through here, so their figures are the service's by construction.
Calibration fits on the feature cache's outputs instead (``training.calibrate.split_outputs``), so that a run's
features are computed once."""

from __future__ import annotations

import numpy as np
import torch

from gesture_core.classifier import Classifier
from gesture_core.preprocess import DataConfig, Preprocess, tta_crops, tta_view_count
from training.calibrate import SplitOutputs
from training.data import ImageDataset, Sample, make_loader
from training.loop import IGNORE_LABEL


def served_outputs(classifier: Classifier, samples: list[Sample], *, batch_size: int = 64, workers: int = 2) -> tuple[SplitOutputs, list[str]]:
    """(logits and penultimate features as the Classifier computes them, paths that failed to decode):
    ``crop``, then ``classify_logits`` (the model call behind ``classify_scores``). Ranked, the logits give
    ``evaluate_samples``' metrics (the temperature keeps their order); with the features they give the
    "no gesture" figures the service's own scores would."""
    logits, features, targets, index, failed = [], [], [], [], []
    for crops, target, kept in crop_batches(classifier, samples, "none", batch_size, workers, failed):
        batch_logits, batch_features = classifier.classify_logits(list(crops[:, 0]))
        logits.append(batch_logits)
        features.append(batch_features if batch_features is not None else np.zeros((len(crops), 0), np.float32))
        targets.append(target)
        index.append(kept)
    if not logits:  # every file failed to decode
        logits, features, targets, index = [np.zeros((0, len(classifier.classes)), np.float32)], [np.zeros((0, 0), np.float32)], [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    outputs = SplitOutputs(np.concatenate(features), np.concatenate(logits), np.concatenate(targets), np.concatenate(index))
    return outputs, failed


def crop_batches(classifier: Classifier, samples: list[Sample], tta: str, batch_size: int, workers: int, failed: list[str]):
    """Batches of (uint8 crops (images, views, H, W, 3), labels, indexes in ``samples``)
    of the images that decoded, cropped by the checkpoint's Preprocess in the loader's workers; the
    paths of those that did not go to ``failed``."""
    dc = classifier.data_config
    views = tta_view_count(tta)
    dataset = ImageDataset(samples, CropViews(dc, tta), min_side=dc.resize_size, placeholder_shape=(views, dc.input_size, dc.input_size, 3),
                           placeholder_dtype=torch.uint8)
    # Fewer images per batch under TTA, so one batch holds about as many views as without it.
    loader = make_loader(dataset, batch_size=max(1, batch_size // views), workers=workers, pin_memory=False)
    for crops, target, index in loader:
        keep = target != IGNORE_LABEL
        failed += [samples[i].path for i in index[~keep].tolist()]
        if keep.any():
            yield crops[keep].numpy(), target[keep].numpy(), index[keep].numpy()


class CropViews:
    """(rgb, seed) -> the views' uint8 crops from the shared Preprocess, (views, H, W, 3); picklable for
    loader workers."""

    def __init__(self, config: DataConfig, mode: str):
        self.preprocess, self.mode = Preprocess(config), mode
        tta_view_count(mode)  # rejects unknown modes up front

    def __call__(self, rgb: np.ndarray, seed: int = 0) -> torch.Tensor:
        return torch.from_numpy(np.stack(tta_crops(self.preprocess, rgb, self.mode)))
