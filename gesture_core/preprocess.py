"""The one deterministic preprocessing: RGB uint8 HWC -> normalised float tensor CHW.

Training evaluation, the HTTP service and the webcam all call this same object, built from the
``DataConfig`` stored in the checkpoint, so train/serve skew cannot happen.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import cv2
import numpy as np
import torch

from gesture_core.images import ImageSource, bgr_to_rgb, check_dimensions, read_rgb

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_UPSCALE = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST}
# center: shorter side to resize_size, then the centre input_size square (ImageNet's eval crop).
# letterbox: the whole frame, longer side to input_size, padded to a square with the mean colour.
# resize: the whole frame squeezed to input_size x input_size (aspect ratio not kept).
CROP_MODES = ("center", "letterbox", "resize")
# Above this, one image takes gigabytes on its way through resizing and augmentation (an input of
# 100,000 px asked OpenCV for 30 GB), while the largest input of a backbone here is 299 px (inception_v3).
MAX_INPUT_SIZE = 1024
# a shorter side below this is scaled up many times to any backbone's input: an icon, not a photo (training.check
# warns of such images; the webcam demo and capture refuse a --roi square this small)
TINY_SIDE = 16
# An image's shorter side is resized to resize_size before the crop: a checkpoint asking 100,000 px made
# OpenCV ask for 40 GB, and 8,000 px cost 250 MB and a second per webcam frame. Twice the largest input
# leaves room for any crop share down to one half.
MAX_RESIZE_SIZE = 2 * MAX_INPUT_SIZE
# Below this, normalising multiplies a pixel by more than a thousand (a std of 1e-50 is 0 as float32: NaN)
MIN_STD = 1e-3
WHOLE_FRAME_MODES = ("letterbox", "resize")


@dataclass(frozen=True)
class DataConfig:
    """What a backbone expects of its input (timm calls this the pretrained ``data_config``)."""

    input_size: int = 224
    resize_size: int = 256
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    in_chans: int = 3
    crop: str = "center"  # one of CROP_MODES; checkpoints written before whole-frame modes have none: center
    # each hand found by gesture_core.hands is cropped (gesture_core.hands.hand_crop), then classified;
    # checkpoints written before hand crops have none: False
    hands: bool = False

    def __post_init__(self) -> None:
        if self.interpolation not in _UPSCALE:
            raise ValueError(f"interpolation {self.interpolation!r}: choose one of {sorted(_UPSCALE)}")
        if self.crop not in CROP_MODES:
            raise ValueError(f"crop {self.crop!r}: choose one of {', '.join(CROP_MODES)}")
        if not isinstance(self.hands, bool):
            raise ValueError(f"hands must be True or False, got {self.hands!r}")
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ValueError(f"mean/std need {self.in_chans} values, got {len(self.mean)} / {len(self.std)}")
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (self.input_size, self.resize_size, self.in_chans)):
            raise ValueError(f"input_size, resize_size and in_chans must be integers, got {self.input_size!r}, {self.resize_size!r}, {self.in_chans!r}")
        if self.input_size > MAX_INPUT_SIZE:
            raise ValueError(f"input size {self.input_size} px: at most {MAX_INPUT_SIZE}")
        if self.input_size < 1:
            raise ValueError(f"input size {self.input_size} px: at least 1")
        if self.resize_size < self.input_size:
            raise ValueError(f"resize size {self.resize_size} px is below the input size {self.input_size} px it is cropped to")
        if self.resize_size > MAX_RESIZE_SIZE:
            raise ValueError(f"resize size {self.resize_size} px: at most {MAX_RESIZE_SIZE}")
        # A std of 0 divided every pixel by 0: the model saw NaN and answered a uniform guess. The mean is a
        # share of 255 (letterbox fills the border with it as a uint8 colour).
        if not all(isinstance(v, numbers.Real) and 0 <= v <= 1 for v in self.mean) or not all(
                isinstance(v, numbers.Real) and MIN_STD <= v <= 1 for v in self.std):
            raise ValueError(f"mean must be numbers in 0-1 and std numbers in {MIN_STD}-1, got {self.mean} / {self.std}")
        # Python's own numbers, whatever was given (NumPy's, a list): a checkpoint holding NumPy scalars was written, and
        # then refused by torch.load(weights_only=True); a list made the frozen config unhashable.
        for name in ("input_size", "resize_size", "in_chans"):
            object.__setattr__(self, name, int(getattr(self, name)))
        for name in ("mean", "std"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))

    @property
    def crop_pct(self) -> float:
        return self.input_size / self.resize_size

    def with_input_size(self, size: int) -> DataConfig:
        """Same crop ratio at another resolution (e.g. ``--image-size 160``)."""
        return replace(self, input_size=size, resize_size=max(size, round(size / self.crop_pct)))

    def with_crop_pct(self, crop_pct: float) -> DataConfig:
        """The centre crop's share of the shorter side (timm's ``crop_pct``; 1.0: the whole side)."""
        if not 0.0 < crop_pct <= 1.0:
            raise ValueError(f"crop_pct {crop_pct}: choose a fraction of the shorter side in (0, 1]")
        return replace(self, resize_size=max(self.input_size, round(self.input_size / crop_pct)))

    def with_crop(self, crop: str) -> DataConfig:
        return replace(self, crop=crop)

    def with_hands(self, hands: bool) -> DataConfig:
        return replace(self, hands=bool(hands))

    def with_channels(self, in_chans: int) -> DataConfig:
        if in_chans == self.in_chans:
            return self
        if in_chans == 1:
            return replace(self, in_chans=1, mean=(float(np.mean(self.mean)),), std=(float(np.mean(self.std)),))
        return replace(self, in_chans=in_chans, mean=(self.mean[0],) * in_chans, std=(self.std[0],) * in_chans)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataConfig:
        d = dict(d)
        for key in ("mean", "std"):  # a list, not a tensor: an expanded one (stride 0) holds 10**9 values in a few bytes
            if not isinstance(d[key], list | tuple) or len(d[key]) > 4:
                raise ValueError(f"{key} must be a list of one value per channel, got {type(d[key]).__name__} of {len(d[key]) if hasattr(d[key], '__len__') else 1}")
            d[key] = tuple(d[key])
        return cls(**d)


def evaluation_geometry(config: DataConfig, input_size: int | None = None, crop_pct: float | None = None) -> DataConfig:
    """The same model seen at another input size and/or centre-crop share, as timm's ``validate.py
    --img-size --crop-pct`` does: for measuring what the stored geometry costs or gains."""
    if config.hands:
        raise ValueError("a hands-mode model sees each hand's crop at its trained size: "
                         "evaluate it at its stored geometry (no input size or crop share)")
    if crop_pct is not None and config.crop != "center":
        raise ValueError(f"a crop share sets the centre crop; this model keeps the whole frame (crop={config.crop}): "
                         "change the input size alone")
    seen = config if input_size is None else config.with_input_size(input_size)
    return seen if crop_pct is None else seen.with_crop_pct(crop_pct)


# A whole-frame model learnt hands as its training frames' shape squeezed (or letterboxed) them to a square:
# frames this many times wider or narrower read as hands of another shape. A phone held upright (9:16) on
# a model of 4:3 webcam frames is 2.4 times narrower; 16:9 on 4:3 (1.33 times) is near enough.
ASPECT_MISMATCH = 1.5


def frame_aspect_of(fields: Mapping[str, Any]) -> float | None:
    """``frame_aspect`` of a checkpoint (written by training for whole-frame models) or of the service's /info;
    None where absent or not a sensible ratio: a note's figure, never a reason to refuse a model."""
    value = fields.get("frame_aspect")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.01 <= value <= 100:
        return None
    return float(value)


def frame_shape_note(crop: str, trained_aspect: float | None, width: int, height: int) -> str | None:
    """Why frames of ``width`` x ``height`` may be read worse by a whole-frame model (``crop``) than its training
    frames (``trained_aspect``: their typical width/height), or None where they fit or it is unknown."""
    if crop not in WHOLE_FRAME_MODES or not trained_aspect or width < 1 or height < 1:
        return None
    aspect = width / height
    if max(aspect, trained_aspect) / min(aspect, trained_aspect) < ASPECT_MISMATCH:
        return None
    fitted = "squeezed" if crop == "resize" else "letterboxed"
    return (f"these frames are {width}x{height} ({_orientation(aspect)}), and this model was trained on whole frames of "
            f"about {trained_aspect:.2f}:1 ({_orientation(trained_aspect)}), each {fitted} to a square: hands here take "
            "another shape than any it learnt, and it may read them worse; turn the camera to match, or train on frames like these")


def _orientation(aspect: float) -> str:
    return "portrait" if aspect < 1 / 1.1 else "landscape" if aspect > 1.1 else "square"


class Preprocess:
    """Bring the image to ``input_size``² as ``config.crop`` says (see CROP_MODES), then normalise.

    With ``config.hands`` the image given is a hand crop (``gesture_core.hands.hand_crop``, a
    ``resize_size``² square), and the same geometry applies to it as to any image."""

    def __init__(self, config: DataConfig):
        self.config = config
        mean = np.asarray(config.mean, np.float32) * 255.0
        std = np.asarray(config.std, np.float32) * 255.0
        # (x - mean*255) / (std*255) folded into one multiply-add per pixel.
        self._scale = (1.0 / std).astype(np.float32)
        self._shift = (-mean / std).astype(np.float32)
        self._pad = tuple(round(255 * m) for m in config.mean)  # letterbox borders: the mean colour, 0 once normalised

    def __repr__(self) -> str:
        c = self.config
        hands = ", of each hand" if c.hands else ""
        return f"Preprocess(resize={c.resize_size}, crop={c.input_size} {c.crop}{hands}, mean={c.mean}, std={c.std})"

    def __call__(self, rgb: np.ndarray) -> torch.Tensor:
        return self.normalize(self.crop(rgb))

    def load(self, source: ImageSource, **read_kwargs: Any) -> torch.Tensor:
        """Decode (at reduced size when possible) and preprocess a path, bytes, PIL image or RGB array."""
        return self(self.read(source, **read_kwargs))

    def load_batch(self, sources: Sequence[ImageSource], **read_kwargs: Any) -> torch.Tensor:
        """``load`` for several images at once, as one (N, C, H, W) batch."""
        return self.normalize_batch([self.crop(self.read(source, **read_kwargs)) for source in sources])

    def read(self, source: ImageSource, **read_kwargs: Any) -> np.ndarray:
        return read_rgb(source, **{"min_side": self.config.resize_size, **read_kwargs})  # a caller's min_side wins

    def from_bgr(self, frame: np.ndarray) -> torch.Tensor:
        """``load`` of an OpenCV (BGR) frame."""
        return self.load(bgr_to_rgb(frame))

    def views(self, rgb: np.ndarray, mode: str = "none") -> torch.Tensor:
        """Test-time-augmentation views (see ``TTA_MODES``) as a (views, C, H, W) tensor."""
        return tta_views(self, rgb, mode)

    def crop(self, rgb: np.ndarray) -> np.ndarray:
        """The deterministic geometric part: uint8 HWC in, uint8 ``input_size``² out."""
        c = self.config
        if c.crop == "letterbox":
            return letterbox(rgb, c.input_size, c.interpolation, pad=self._pad)
        if c.crop == "resize":
            return resize_to(rgb, (c.input_size, c.input_size), c.interpolation)
        return center_crop(resize_shorter(rgb, c.resize_size, c.interpolation), c.input_size)

    def normalize(self, rgb: np.ndarray) -> torch.Tensor:
        """uint8 HWC (already ``input_size``) -> float32 CHW, normalised with the backbone's mean/std."""
        return self.normalize_batch([rgb])[0]

    def normalize_batch(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        """uint8 HWC crops of one size -> one float32 (N, C, H, W) batch, normalised as ``normalize``.

        Each crop is copied once into the batch and the multiply-add runs in place on the whole batch,
        with no torch operator: ``torch.stack`` of crops normalised one by one cost far more CPU, as
        its copy wakes torch's OpenMP threads, which then spin (``python -m benchmarks.model_call``).
        """
        if len(crops) == 0:  # len: a stacked N x H x W x 3 array of crops has no single truth value
            raise ValueError("no crops to normalise: pass at least one image")
        for i, rgb in enumerate(crops):
            if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3):
                # a float image (0-1) was normalised as if 0-255: about -1 everywhere, and answered without a word
                got = f"{rgb.dtype} of shape {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
                raise ValueError(f"Preprocess takes uint8 RGB images (H x W x 3, 0-255); image {i} is {got}: "
                                 "decode it with gesture_core.read_rgb, which converts floats, 16 bits and grey")
        h, w = crops[0].shape[:2]
        out = np.empty((len(crops), self.config.in_chans, h, w), np.float32)
        for i, rgb in enumerate(crops):
            if rgb.shape[:2] != (h, w):
                raise ValueError(f"crops in one batch must share a size: crop {i} is {rgb.shape[:2]}, crop 0 is {(h, w)}")
            if self.config.in_chans == 1:
                rgb = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[:, :, None]
            out[i] = rgb.transpose(2, 0, 1)
        out *= self._scale[:, None, None]
        out += self._shift[:, None, None]
        return torch.from_numpy(out)

    def denormalize(self, tensor: torch.Tensor) -> np.ndarray:
        """Inverse of ``normalize`` for display (feature maps, Grad-CAM overlays)."""
        arr = (tensor.detach().cpu().numpy().transpose(1, 2, 0) - self._shift) / self._scale
        arr = np.clip(arr.round(), 0, 255).astype(np.uint8)
        return np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr


def resize_shorter(rgb: np.ndarray, size: int, interpolation: str = "bilinear") -> np.ndarray:
    """Scale the shorter side to ``size``. An array too elongated for that (``MAX_ASPECT_RATIO``) is
    refused with ImageDecodeError before the resized array is allocated."""
    h, w = rgb.shape[:2]
    check_dimensions(w, h, max_pixels=None)
    new_w, new_h = resized_size(w, h, size)
    return resize_to(rgb, (new_h, new_w), interpolation)


def resize_to(rgb: np.ndarray, hw: tuple[int, int], interpolation: str = "bilinear") -> np.ndarray:
    if rgb.shape[:2] == hw:
        return rgb
    # INTER_AREA antialiases when shrinking, as PIL/torchvision resizing does.
    shrinking = hw[0] * hw[1] < rgb.shape[0] * rgb.shape[1]
    flag = cv2.INTER_AREA if shrinking else _UPSCALE[interpolation]
    resized = cv2.resize(rgb, (hw[1], hw[0]), interpolation=flag)
    return resized[:, :, None] if resized.ndim == 2 and rgb.ndim == 3 else resized


def longer_side_at_most(frame: np.ndarray, side: int = MAX_INPUT_SIZE) -> np.ndarray:
    """``frame`` with its longer side scaled down to ``side``, for a frame kept as training data (a
    recording's frames, a capture): no model takes a larger input, and a 4K video's frames would be
    large JPEGs, each decoded again every epoch."""
    scale = side / max(frame.shape[:2])
    if scale >= 1:
        return frame
    return resize_to(frame, (max(1, round(frame.shape[0] * scale)), max(1, round(frame.shape[1] * scale))))


def letterbox(rgb: np.ndarray, size: int, interpolation: str = "bilinear", pad: tuple[int, ...] = (0, 0, 0)) -> np.ndarray:
    """The whole image, longer side ``size``, centred on a ``size``² canvas of colour ``pad``."""
    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    new_h, new_w = max(1, min(size, round(h * scale))), max(1, min(size, round(w * scale)))
    canvas = np.empty((size, size, rgb.shape[2]), np.uint8)
    canvas[:] = np.asarray(pad[: rgb.shape[2]], np.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = resize_to(rgb, (new_h, new_w), interpolation)
    return canvas


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after scaling the shorter side to ``size``."""
    scale = size / min(width, height)
    return max(size, round(width * scale)), max(size, round(height * scale))


def center_crop(rgb: np.ndarray, size: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return rgb[top : top + size, left : left + size]


# Test-time augmentation: views of one image, all built from the same resize/crop/normalise as
# Preprocess, and counted as forward passes per image (the cost multiplier).
TTA_MODES = ("none", "flip", "5crop", "10crop", "multiscale")
# Shorter side as a multiple of resize_size: 256, 288, 320 px at 224 (GoogLeNet used 256-352).
MULTISCALE_FACTORS = (1.0, 1.125, 1.25)


def tta_modes(config: DataConfig) -> tuple[str, ...]:
    """The TTA modes a model of ``config`` takes: all for a centre crop; for a whole-frame model none and flip,
    since the others take crops."""
    return TTA_MODES if config.crop == "center" else ("none", "flip")


def tta_view_count(mode: str) -> int:
    return {"none": 1, "flip": 2, "5crop": 5, "10crop": 10, "multiscale": 2 * len(MULTISCALE_FACTORS)}[_check_tta(mode)]


def tta_crops(preprocess: Preprocess, rgb: np.ndarray, mode: str) -> list[np.ndarray]:
    """uint8 ``input_size``² crops for ``mode``; the first is always exactly ``preprocess.crop(rgb)``.

    flip: + mirror. 5crop: centre + 4 corners of the resized image (AlexNet). 10crop: those + mirrors.
    multiscale: centre crops with the shorter side at each of MULTISCALE_FACTORS x resize_size, + mirrors.
    """
    _check_tta(mode)
    c = preprocess.config
    if mode not in tta_modes(c):
        raise ValueError(f"TTA mode {mode!r} takes crops; this model sees whole frames ({c.crop}): choose {' or '.join(tta_modes(c))}")
    if mode == "multiscale":
        crops = [center_crop(resize_shorter(rgb, round(c.resize_size * f), c.interpolation), c.input_size) for f in MULTISCALE_FACTORS]
        return crops + [hflip(v) for v in crops]
    if mode in ("5crop", "10crop"):
        crops = five_crops(resize_shorter(rgb, c.resize_size, c.interpolation), c.input_size)
        return crops + [hflip(v) for v in crops] if mode == "10crop" else crops
    crop = preprocess.crop(rgb)
    return [crop, hflip(crop)] if mode == "flip" else [crop]


def tta_views(preprocess: Preprocess, rgb: np.ndarray, mode: str) -> torch.Tensor:
    """(views, C, H, W) normalised tensors for one image; ``tta_view_count(mode)`` views."""
    return preprocess.normalize_batch(tta_crops(preprocess, rgb, mode))


def five_crops(rgb: np.ndarray, size: int) -> list[np.ndarray]:
    """Centre, then top-left, top-right, bottom-left, bottom-right ``size``² crops."""
    h, w = rgb.shape[:2]
    bottom, right = max(0, h - size), max(0, w - size)
    corners = [rgb[y : y + size, x : x + size] for y, x in ((0, 0), (0, right), (bottom, 0), (bottom, right))]
    return [center_crop(rgb, size), *corners]


def hflip(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rgb[:, ::-1])


def _check_tta(mode: str) -> str:
    if mode not in TTA_MODES:
        raise ValueError(f"TTA mode {mode!r}: choose one of {', '.join(TTA_MODES)}")
    return mode
