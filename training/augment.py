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
        steps.append(AlexNetLighting(alpha=0.1))
    if config.in_chans == 1:
        steps.append(A.ToGray(num_output_channels=1, p=1.0))
    steps += [A.Normalize(mean=config.mean, std=config.std, max_pixel_value=255.0), ToTensorV2()]
    return SeededTransform(A.Compose(steps))


# ImageNet's RGB principal components (pixels in [0, 1]), as published with fb.resnet.torch.
IMAGENET_PCA_EIGVAL = np.array([0.2175, 0.0188, 0.0045], np.float32)
IMAGENET_PCA_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]], np.float32)


class AlexNetLighting(A.ImageOnlyTransform):
    """AlexNet's PCA colour noise (Krizhevsky et al. 2012, 4.1): one RGB offset per image, the principal
    components weighted by their eigenvalues times alpha ~ N(0, ``alpha``), added to every pixel.
    (albumentations' FancyPCA scales each pixel's deviation from the mean instead: a contrast change.)"""

    def __init__(self, alpha: float = 0.1, p: float = 1.0):
        super().__init__(p=p)
        self.alpha = alpha

    def get_params(self) -> dict[str, np.ndarray]:
        weights = self.random_generator.normal(0.0, self.alpha, 3).astype(np.float32) * IMAGENET_PCA_EIGVAL
        return {"offset": 255.0 * IMAGENET_PCA_EIGVEC @ weights}

    def apply(self, img: np.ndarray, offset: np.ndarray, **params) -> np.ndarray:
        return np.clip(np.rint(img.astype(np.float32) + offset), 0, 255).astype(np.uint8)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("alpha",)


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
