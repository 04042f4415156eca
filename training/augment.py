"""Training augmentation (albumentations 2). Evaluation never augments: it is the shared Preprocess."""

from __future__ import annotations

import os
from collections.abc import Callable

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # its update check would hang offline

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402

from gesture_core.preprocess import DataConfig, Preprocess  # noqa: E402

PRESETS = ("default", "light", "none")
Transform = Callable[[np.ndarray, int], torch.Tensor]


def build_train_transform(
    config: DataConfig,
    *,
    preset: str = "default",
    flip: bool = True,
    pca_lighting: bool = False,
    scale_jitter: bool = False,
) -> Transform:
    """(rgb uint8 HWC, seed) -> normalised tensor; the seed makes each sample's augmentation reproducible.

    ``flip=False`` for gestures whose meaning changes when mirrored; ``pca_lighting`` is AlexNet's
    (Krizhevsky et al. 2012) colour noise; ``scale_jitter`` is VGG's training-scale jitter (shorter side
    uniformly in [S, 2S] then a random crop) in place of the random resized crop.
    """
    if preset not in PRESETS:
        raise ValueError(f"augmentation preset {preset!r}: choose one of {', '.join(PRESETS)}")
    if preset == "none":
        return build_eval_transform(config)
    steps: list[A.BasicTransform] = _geometry(config, preset, scale_jitter)
    if flip:
        steps.append(A.HorizontalFlip(p=0.5))
    if preset == "default":
        steps += [
            A.Affine(rotate=(-12, 12), scale=(0.9, 1.1), border_mode=cv2.BORDER_REFLECT_101, p=0.3),
            A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03, p=0.8),
            A.ToGray(p=0.05),
        ]
    if pca_lighting:
        steps.append(A.FancyPCA(alpha=0.1, p=1.0))
    if config.in_chans == 1:
        steps.append(A.ToGray(num_output_channels=1, p=1.0))
    steps += [A.Normalize(mean=config.mean, std=config.std, max_pixel_value=255.0), ToTensorV2()]
    return SeededTransform(A.Compose(steps))


class SeededTransform:
    """Picklable (loader workers may be spawned), and reseeded per sample for reproducibility."""

    def __init__(self, pipeline: A.Compose):
        self.pipeline = pipeline

    def __call__(self, rgb: np.ndarray, seed: int) -> torch.Tensor:
        self.pipeline.set_random_seed(seed)
        return self.pipeline(image=rgb)["image"]


def _geometry(config: DataConfig, preset: str, scale_jitter: bool) -> list[A.BasicTransform]:
    size = config.input_size
    if scale_jitter:
        sides = list(range(config.resize_size, 2 * config.resize_size + 1, 8))
        return [A.SmallestMaxSize(max_size=sides, area_for_downscale="image"), A.RandomCrop(size, size)]
    if preset == "light":
        return [A.SmallestMaxSize(max_size=config.resize_size, area_for_downscale="image"), A.RandomCrop(size, size)]
    # Milder than ImageNet's (0.08, 1): a crop that loses the fingers changes a gesture's label.
    return [A.RandomResizedCrop(size=(size, size), scale=(0.35, 1.0), area_for_downscale="image")]


class EvalTransform:
    """The shared Preprocess, with the (ignored) seed argument of the training transforms."""

    def __init__(self, config: DataConfig):
        self.preprocess = Preprocess(config)

    def __call__(self, rgb: np.ndarray, seed: int = 0) -> torch.Tensor:
        return self.preprocess(rgb)


def build_eval_transform(config: DataConfig) -> Transform:
    return EvalTransform(config)
