"""Training augmentation (albumentations 2). Evaluation never augments: it is the shared Preprocess."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # its update check would hang offline

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402

from gesture_core.class_names import name_words, unglue  # noqa: E402
from gesture_core.images import ImageDecodeError, read_image_file, upright_size  # noqa: E402
from gesture_core.preprocess import ASPECT_MISMATCH, CROP_MODES, WHOLE_FRAME_MODES, DataConfig, Preprocess  # noqa: E402

PRESETS = ("default", "light", "none")
FLIP_CHOICES = ("auto", "on", "off")
# Words whose meaning a mirror image reverses. Whole words only ("bright", "upright" and the ASL
# letters "L" and "R" are not directions), matched in snake_case, kebab-case and camelCase names.
DIRECTION_WORDS = frozenset({
    "left", "right", "leftward", "rightward", "leftwards", "rightwards", "lft", "rgt", "rght",
    "clockwise", "anticlockwise", "counterclockwise", "cw", "ccw",
})  # fmt: skip
# Names written in one lower-case word ("swipeleft", "lefthand") are split only where the other part is
# one of these, so that "bright", "upright", "copyright" and "leftover" stay words of their own.
GLUED_TO_DIRECTION = frozenset({
    "swipe", "swiping", "point", "pointing", "turn", "turning", "move", "moving", "slide", "sliding", "go",
    "thumb", "thumbs", "hand", "arrow", "look", "rotate", "rotating", "wave", "waving", "tilt", "push",
    "scroll", "shift", "to", "roll", "flick", "palm", "finger", "fist", "side",
})  # fmt: skip
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
    uniformly in [S, 2S] then a random crop) in place of the random resized crop. The images come out
    at ``config.input_size`` (``--train-size`` passes the served config scaled to its size).
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


def direction_sensitive(classes: Sequence[str]) -> list[str]:
    """The class names a horizontal flip would turn into another class (left <-> right, clockwise <-> anticlockwise)."""
    return [c for c in classes if any(w in DIRECTION_WORDS or glued_direction(w) for w in name_words(c))]


def glued_direction(word: str) -> bool:
    """"swipeleft", "rightturn", "lefthand": a direction glued to a gesture word (GLUED_TO_DIRECTION)."""
    return bool(unglue(word, GLUED_TO_DIRECTION, ("left", "right")) or unglue(word, ("left", "right"), GLUED_TO_DIRECTION))


def resolve_flip(setting: str, classes: Sequence[str]) -> tuple[bool, str]:
    """(flip or not, the start-up line that says why) for ``--flip auto|on|off``.

    auto flips, because a mirrored hand is the same gesture made with the other hand (left-handed
    users, mirrored cameras), unless a class name says its meaning has a direction.
    """
    if setting not in FLIP_CHOICES:
        raise ValueError(f"--flip {setting!r}: choose one of {', '.join(FLIP_CHOICES)}")
    if setting != "auto":
        return setting == "on", f"horizontal flips {setting} (--flip {setting})"
    directional = direction_sensitive(classes)
    if directional:
        return False, f"horizontal flips off (--flip auto): class names are direction-sensitive ({', '.join(directional)}); --flip on overrides"
    return True, "horizontal flips on (--flip auto: no class name has a direction such as left/right; --flip off for mirrored meanings)"


CROP_CHOICES = ("auto", *CROP_MODES)
FAR_FROM_SQUARE = 1.2  # longer/shorter side: 4:3 webcam frames (1.33) are, 5:4 and squarer photos are not
ASPECT_SAMPLE = 200  # about this many image headers read to decide --crop auto: every n-th image, 200 to 399 of them
OTHER_SHAPES = 0.25  # frame_aspect: above this share of frames of another shape, the frames have no one shape


def resolve_crop(setting: str, sizes: Sequence[tuple[int, int]], recordings: bool, whole_frame: str = "resize") -> tuple[str, str]:
    """(crop mode, the start-up line that says why) for ``--crop auto|center|letterbox|resize``; ``sizes``: the
    training images' (width, height) that auto decides from (``sampled_sizes``).

    auto keeps the whole frame (``whole_frame``) of recordings (``recordings``: the split found capture
    sessions or frame sequences) whose images are mostly far from square: the centre square of a 4:3
    webcam frame drops a quarter of its width, where a pointing hand often is. Photos taken one by one
    are framed around their subject, and keep the centre crop (flowers scored 1.6 points lower whole).
    ``resize`` rather than ``letterbox``: fine-tuned, it scored higher with hands anywhere and at the
    edges alike (docs/training.md, "Whole-frame input").
    """
    if setting not in CROP_CHOICES:
        raise ValueError(f"--crop {setting!r}: choose one of {', '.join(CROP_CHOICES)}")
    if setting != "auto":
        return setting, f"input geometry: {setting} (--crop {setting})"
    ratios = [max(w, h) / max(1, min(w, h)) for w, h in sizes]
    far = sum(r >= FAR_FROM_SQUARE for r in ratios)
    if ratios and far > len(ratios) / 2 and recordings:
        return whole_frame, (f"input geometry: {whole_frame}, the whole frame (--crop auto: recordings, {far} of {len(ratios)} sampled images "
                             f"are {FAR_FROM_SQUARE}:1 or wider)")  # fmt: skip
    if ratios and far > len(ratios) / 2:
        return "center", (f"input geometry: center crop (--crop auto: photos taken one by one, framed around their subject, though {far} of "
                          f"{len(ratios)} sampled images are {FAR_FROM_SQUARE}:1 or wider; --crop resize keeps the whole frame)")  # fmt: skip
    return "center", f"input geometry: center crop (--crop auto: {len(ratios) - far} of {len(ratios)} sampled images are near square)"


def frame_aspect(sizes: Sequence[tuple[int, int]]) -> float | None:
    """The training frames' typical width/height (the median of ``sampled_sizes``): stored in the checkpoint, so
    the webcam can say when a whole-frame model sees frames of another shape. None for no readable image, and for
    frames of many shapes (more than OTHER_SHAPES of them ASPECT_MISMATCH off the median: portrait and landscape
    recordings together), which taught the model more than one shape."""
    ratios = [w / max(1, h) for w, h in sizes]
    if not ratios:
        return None
    median = float(np.median(ratios))
    others = sum(max(r, median) / min(r, median) >= ASPECT_MISMATCH for r in ratios)
    return round(median, 3) if others <= OTHER_SHAPES * len(ratios) else None


def sampled_sizes(paths: Sequence[str]) -> list[tuple[int, int]]:
    """(width, height) as shown of every n-th image, about ASPECT_SAMPLE of them; those that cannot be read are left out."""
    sizes = []
    for path in paths[:: max(1, len(paths) // ASPECT_SAMPLE)]:
        try:
            sizes.append(upright_size(read_image_file(path)))
        except (OSError, ImageDecodeError):
            continue
    return sizes


class SeededTransform:
    """Picklable (loader workers may be spawned), and reseeded per sample for reproducibility."""

    def __init__(self, pipeline: A.Compose):
        self.pipeline = pipeline

    def __call__(self, rgb: np.ndarray, seed: int) -> torch.Tensor:
        self.pipeline.set_random_seed(seed)
        return self.pipeline(image=rgb)["image"]


def _geometry(config: DataConfig, preset: str, scale_jitter: bool) -> list[A.BasicTransform]:
    size = config.input_size
    if config.crop in WHOLE_FRAME_MODES:
        return _whole_frame_geometry(config, preset)
    if scale_jitter:
        sides = list(range(config.resize_size, 2 * config.resize_size + 1, 8))
        return [A.SmallestMaxSize(max_size=sides, area_for_downscale="image"), A.RandomCrop(size, size)]
    if preset == "light":
        return [A.SmallestMaxSize(max_size=config.resize_size, area_for_downscale="image"), A.RandomCrop(size, size)]
    # Milder than ImageNet's (0.08, 1): a crop that loses the fingers changes a gesture's label.
    return [A.RandomResizedCrop(size=(size, size), scale=(0.35, 1.0), area_for_downscale="image")]


class WholeFrame(A.ImageOnlyTransform):
    """``Preprocess.crop`` of a whole-frame data config, as an albumentations step."""

    def __init__(self, config: DataConfig, p: float = 1.0):
        super().__init__(p=p)
        self.preprocess = Preprocess(config)

    def apply(self, img: np.ndarray, **params) -> np.ndarray:
        return self.preprocess.crop(img)


def _whole_frame_geometry(config: DataConfig, preset: str) -> list[A.BasicTransform]:
    """The eval geometry itself (``Preprocess.crop``: letterbox or squeeze to a square, so training sees
    frames exactly as the service will), then a mild random zoom: the gesture may sit anywhere in the
    frame, so a crop as tight as the centre-crop recipe's could cut it out."""
    steps = [WholeFrame(config)]
    if preset == "default":
        size = config.input_size
        steps.append(A.RandomResizedCrop(size=(size, size), scale=(0.7, 1.0), ratio=(0.9, 1.1), area_for_downscale="image"))
    return steps


class EvalTransform:
    """The shared Preprocess, with the (ignored) seed argument of the training transforms."""

    def __init__(self, config: DataConfig):
        self.preprocess = Preprocess(config)

    def __call__(self, rgb: np.ndarray, seed: int = 0) -> torch.Tensor:
        return self.preprocess(rgb)


def build_eval_transform(config: DataConfig) -> Transform:
    return EvalTransform(config)
