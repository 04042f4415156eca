"""Decode anything a user can hand us (a path, raw bytes, a PIL image, an array) into RGB uint8 HWC.

Every entry point of the product (dataset loading, HTTP uploads, webcam frames) goes through
``read_rgb`` so grayscale, RGBA, CMYK, 16-bit, EXIF-rotated, truncated and oversized images are
handled once, with one error type whose message can be shown to a user.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

# Decompression-bomb guard: about 2.5x a 24 MP photo, far beyond anything a classifier needs.
DEFAULT_MAX_PIXELS = 64_000_000

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray

cv2.setNumThreads(1)  # decoding runs inside loader workers and request handlers; oversubscription hurts


class ImageDecodeError(ValueError):
    """An input that is not a usable image; ``str(err)`` is a user-facing reason."""


def read_rgb(
    source: ImageSource,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    min_side: int | None = None,
) -> np.ndarray:
    """Return the image as a contiguous RGB uint8 array of shape (H, W, 3).

    ``min_side`` lets JPEG decoding run at 1/2, 1/4 or 1/8 scale while the shorter side stays at
    least that large: a 3024x3024 photo resized to 256 anyway decodes about 30x faster.
    """
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source)
    if isinstance(source, Image.Image):
        return _pil_to_rgb(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return decode_rgb(bytes(source), max_pixels=max_pixels, min_side=min_side)
    path = Path(source)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError(f"{path}: no such file") from None
    except OSError as err:
        raise ImageDecodeError(f"{path}: cannot read ({err.strerror or err})") from None
    try:
        return decode_rgb(data, max_pixels=max_pixels, min_side=min_side)
    except ImageDecodeError as err:
        raise ImageDecodeError(f"{path}: {err}") from None


def decode_rgb(data: bytes, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, min_side: int | None = None) -> np.ndarray:
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    fmt, (width, height) = probe_image(data)
    if max_pixels is not None and width * height > max_pixels:
        raise ImageDecodeError(
            f"image too large: {width}x{height} = {width * height:,} pixels, above the limit of {max_pixels:,}"
        )
    if fmt == "JPEG" and not jpeg_is_complete(data):
        raise ImageDecodeError("truncated JPEG (no end-of-image marker)")
    if fmt in ("JPEG", "PNG", "WEBP", "BMP", "TIFF"):
        flag = _reduced_flag(fmt, width, height, min_side)
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
        if bgr is not None and bgr.ndim == 3 and bgr.shape[2] == 3:
            return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return _decode_with_pil(data)


def probe_image(data: bytes) -> tuple[str, tuple[int, int]]:
    """Read only the header: (format, (width, height)). Cheap, and safe against bombs."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return (img.format or "unknown"), img.size
    except Image.DecompressionBombError as err:
        raise ImageDecodeError(f"image too large ({err})") from None
    except Exception:  # PIL raises a zoo of types for garbage input
        raise ImageDecodeError("not a recognised image format") from None


def bgr_to_rgb(frame: np.ndarray) -> np.ndarray:
    """OpenCV frames (webcam, video files) are BGR; everything downstream expects RGB."""
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def jpeg_is_complete(data: bytes) -> bool:
    # Cameras sometimes append padding or a short trailer after the end-of-image marker.
    return b"\xff\xd9" in data[-32:] or data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9")


def _reduced_flag(fmt: str, width: int, height: int, min_side: int | None) -> int:
    if fmt != "JPEG" or not min_side:
        return cv2.IMREAD_COLOR
    short = min(width, height)
    for factor, flag in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2)):
        # 2x margin so the final resize still downsamples (keeps antialiasing comparable).
        if short // factor >= 2 * min_side:
            return flag
    return cv2.IMREAD_COLOR


def _decode_with_pil(data: bytes) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return _pil_to_rgb(img)
    except ImageDecodeError:
        raise
    except Exception as err:
        raise ImageDecodeError(f"corrupt or truncated image ({type(err).__name__}: {err})") from None


def _pil_to_rgb(img: Image.Image) -> np.ndarray:
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        return _array_to_rgb((arr * (255.0 / top)).round().astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
    return _array_to_rgb(np.asarray(img.convert("RGB") if img.mode not in ("RGB", "RGBA") else img))


def _array_to_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise ImageDecodeError(f"expected a uint8 image array, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    elif not (arr.ndim == 3 and arr.shape[2] == 3):
        raise ImageDecodeError(f"expected an HxW, HxWx1, HxWx3 or HxWx4 image array, got shape {arr.shape}")
    return np.ascontiguousarray(arr)
