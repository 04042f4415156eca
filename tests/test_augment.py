"""Training augmentation (training.augment): each setting does what its flag says, reproducibly.

The transforms here normalise with mean 0 and std 1, so a tensor times 255 is the augmented image's
pixels, which the tests compare with the input exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gesture_core.preprocess import DataConfig
from tests.helpers import make_image_folder
from training.augment import build_train_transform
from training.data import ImageDataset, SeededSampler, load_splits, make_loader

SEEDS = range(40)


def config(input_size: int = 32, resize_size: int = 32) -> DataConfig:
    return DataConfig(input_size=input_size, resize_size=resize_size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def pixels(tensor: torch.Tensor) -> np.ndarray:
    return np.rint(tensor.permute(1, 2, 0).numpy() * 255).astype(np.int32)


def noise(size: int, low: int = 0, high: int = 256) -> np.ndarray:
    """An image with no symmetry, so that a flip or a shifted crop is always visible."""
    return np.random.default_rng(size).integers(low, high, (size, size, 3), dtype=np.uint8)


def window_offset(image: np.ndarray, crop: np.ndarray) -> tuple[int, int] | None:
    """(y, x) where ``crop`` is an exact window of ``image``, or None."""
    size = crop.shape[0]
    for y in range(image.shape[0] - size + 1):
        for x in range(image.shape[1] - size + 1):
            if np.array_equal(image[y : y + size, x : x + size], crop):
                return y, x
    return None


@pytest.mark.parametrize("flip", [True, False])
def test_flip_setting_mirrors_about_half_the_samples_or_none(flip):
    image = noise(32)
    transform = build_train_transform(config(), preset="light", flip=flip)
    outputs = [pixels(transform(image, seed)) for seed in SEEDS]
    mirrored = [np.array_equal(out, image[:, ::-1]) for out in outputs]
    assert all(m or np.array_equal(out, image) for m, out in zip(mirrored, outputs, strict=True))  # nothing else changes
    if flip:
        assert 0.25 <= np.mean(mirrored) <= 0.75, np.mean(mirrored)
    else:
        assert not any(mirrored)


def test_light_preset_is_a_random_crop_of_the_resized_image_and_nothing_else():
    image = noise(32)
    light = build_train_transform(config(24, 32), preset="light", flip=False)
    offsets = [window_offset(image, pixels(light(image, seed))) for seed in SEEDS]
    assert None not in offsets  # colours untouched: every output is an exact window of the input
    assert len(set(offsets)) >= 10  # and the window moves
    default = build_train_transform(config(24, 32), preset="default", flip=False)
    assert sum(window_offset(image, pixels(default(image, seed))) is None for seed in SEEDS) >= len(SEEDS) // 2  # colour jitter


def shorter_side_before_the_crop(crop: np.ndarray) -> float:
    """For crops of RAMP: its values rise 4 per pixel over 64 pixels, so after resizing to side S the
    slope is 256 / S per pixel."""
    row = crop[:, :, 0].mean(axis=0)
    return 256 / np.polyfit(np.arange(len(row)), row, 1)[0]


RAMP = np.repeat(np.repeat((np.arange(64) * 4).astype(np.uint8)[None, :, None], 64, axis=0), 3, axis=2)


def test_scale_jitter_resizes_the_shorter_side_between_s_and_2s_before_cropping():
    jittered = build_train_transform(config(), preset="light", flip=False, scale_jitter=True)
    sides = [round(shorter_side_before_the_crop(pixels(jittered(RAMP, seed)))) for seed in SEEDS]
    assert set(sides) <= set(range(32, 65)) and min(sides) <= 40 and max(sides) >= 56, sides
    assert len(set(sides)) >= 4
    fixed = build_train_transform(config(), preset="light", flip=False)
    assert {round(shorter_side_before_the_crop(pixels(fixed(RAMP, seed)))) for seed in SEEDS} == {32}


def test_pca_lighting_adds_one_colour_offset_per_image_as_alexnet_does():
    """AlexNet's lighting shifts every pixel of an image by the same RGB offset (a new one per sample);
    a per-pixel change, like albumentations' FancyPCA, is a contrast change instead."""
    image = noise(32, low=60, high=196)  # room for the offset: no clipping
    plain = build_train_transform(config(), preset="light", flip=False)
    lit = build_train_transform(config(), preset="light", flip=False, pca_lighting=True)
    assert all(np.array_equal(pixels(plain(image, seed)), image) for seed in SEEDS)  # without it, no colour change
    offsets = []
    for seed in SEEDS:
        change = pixels(lit(image, seed)) - image
        assert (change == change[0, 0]).all(), f"seed {seed}: not one offset for the whole image"
        offsets.append(tuple(change[0, 0]))
    assert sum(offset != (0, 0, 0) for offset in offsets) >= len(SEEDS) // 2
    assert len(set(offsets)) >= 10  # a new draw per sample


def test_same_batches_whatever_the_number_of_workers(tmp_path):
    """The per-sample seeds come from the sampler, not from the worker that happens to load a sample."""
    splits = load_splits(make_image_folder(tmp_path / "data", per_class=6, size=48), val_split=0.0, test_split=0.0)
    transform = build_train_transform(config(32, 40), preset="default", pca_lighting=True)

    def batches(workers: int, epoch: int) -> list[tuple[torch.Tensor, ...]]:
        sampler = SeededSampler(len(splits.train), seed=3)
        sampler.set_epoch(epoch)
        loader = make_loader(ImageDataset(splits.train, transform), batch_size=4, workers=workers, sampler=sampler)
        return [tuple(batch) for batch in loader]

    in_process = batches(0, epoch=1)
    assert len(in_process) == 5
    for (images_a, labels_a, index_a), (images_b, labels_b, index_b) in zip(in_process, batches(2, epoch=1), strict=True):
        assert torch.equal(index_a, index_b) and torch.equal(labels_a, labels_b)
        assert torch.equal(images_a, images_b)
    next_epoch = batches(0, epoch=2)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(in_process, next_epoch, strict=True))  # augmentation does vary


@pytest.mark.parametrize("crop", ["center", "letterbox", "resize"])
@pytest.mark.parametrize("preset", ["default", "light", "none"])
def test_train_size_sets_the_training_images_size_in_every_geometry(crop, preset):
    """--train-size: the served config scaled to that size gives training images of that size whatever
    the preset and crop mode; the served config (what the checkpoint stores and the service uses) keeps its own."""
    served = config(40, 46).with_crop(crop)
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)  # 4:3, as a webcam frame
    smaller = build_train_transform(served.with_input_size(32), preset=preset)
    assert {tuple(smaller(image, seed).shape) for seed in range(8)} == {(3, 32, 32)}
    assert tuple(build_train_transform(served, preset=preset)(image, 0).shape) == (3, 40, 40)
    assert served.input_size == 40


def test_train_size_keeps_the_crop_share_of_the_light_preset():
    """The light preset is the evaluation's resize and random crop; at a smaller training size it keeps
    the served config's crop share (24 of 32 -> 18 of 24), so the crop only moves, as at full size."""
    image = noise(32)
    light = build_train_transform(config(24, 32).with_input_size(18), preset="light", flip=False)
    resized_side = {round(shorter_side_before_the_crop(pixels(light(RAMP, seed)))) for seed in SEEDS}
    assert resized_side == {24}
    assert tuple(light(image, 0).shape) == (3, 18, 18)
