"""Decode anything a user can hand us (a path, raw bytes, a PIL image, an array) into RGB uint8 HWC.

Every entry point of the product (dataset loading, HTTP uploads, webcam frames) goes through
``read_rgb`` so grayscale, RGBA, CMYK, 16-bit, EXIF-rotated, truncated and oversized images are
handled once, with one error type whose message can be shown to a user.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import re
import stat
import struct
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
from PIL import ExifTags, Image, ImageOps

# Decompression-bomb guard: about 2.5x a 24 MP photo, far beyond anything a classifier needs.
DEFAULT_MAX_PIXELS = 64_000_000
# The largest file read as an image. 64 MP as an uncompressed TIFF of 16-bit RGBA samples, the
# largest an image within DEFAULT_MAX_PIXELS can be stored in, is 512 MB. A larger file named .jpg
# (a video, a disk image) was read whole into memory, in each data-loading worker, only to be refused.
MAX_IMAGE_FILE_BYTES = 1 << 30
# Resizing scales the shorter side to the model's size, so a 39000x1 strip (a 198-byte PNG) would
# become a 256 x 9,984,000 array (7.7 GB). 20:1 keeps any resize under 20x the model's own square
# and is far beyond real photos (flowers, the widest dataset here, peaks at 5.5:1; phone panoramas ~10:1).
MAX_ASPECT_RATIO = 20
# A lossless or WebP file can declare tens of millions of flat pixels in a few kilobytes: a 6000x6000
# black PNG is 115 KB and takes 0.4 s and 108 MB to decode (``python -m benchmarks.decode_cost``).
# Where ``max_pixels_per_byte`` is given (the HTTP service, whose uploads come from anyone), such an
# image above SMALL_IMAGE_PIXELS may declare at most that many pixels per byte of its file, so that
# decoding costs about what the upload does. The shared sets' photos saved as PNG take 0.95-2.67 bytes
# a pixel, far inside the service's 16 pixels a byte. A Huffman-coded sequential JPEG of one scan (what
# cameras, phones and browsers write) has its pixels counted at the scale it is decoded at
# (``min_side``: a 6000x6000 photo at 1/8 for the default model), and may have JPEG_PIXELS_PER_BYTE_FACTOR
# times as many: each of its pixels decodes in under half the time of a PNG's (a flat 6000x6000 in 164
# ms against 441). A 20460x1023 one of 123 KB, two bits a block, was decoded in full, about 100 ms
# for each in a /predict_batch of 32 (a probe). Other JPEGs are held to the limit on all their pixels:
# a progressive one keeps every coefficient of the full-size image whatever the scale, libjpeg decoded
# an arithmetic-coded 6000x6000 of 106 bytes, and a lossless one has no reduced scale
# (``python -m benchmarks.decode_cost``).
SMALL_IMAGE_PIXELS = 2_000_000  # about a 1080p frame: any file may be this large
JPEG_PIXELS_PER_BYTE_FACTOR = 2
# A JPEG of several scans (progressive, or one scan per colour) is decoded from all its blocks of
# coefficients, held in memory at 128 bytes a block (64 coefficients of 2 bytes) whatever the scale:
# one of 6324x6324 in full colour resolution (4:4:4) grew a process by 232 MB at the model's scale
# and 345 MB in full, where a PNG or a one-scan JPEG takes 231 (``python -m benchmarks.decode_cost``).
# They may take no more than the pixel limit's image takes as RGB (3 bytes a pixel): a colour-subsampled
# (4:2:0) JPEG fits to about the pixel limit (6320x6320 in the service), one of full colour resolution
# to half of it. Applied everywhere.
COEFFICIENT_BLOCK_BYTES = 128
# A progressive JPEG is decoded scan by scan, and every scan walks every block of the image, however
# little it holds: a scan of an 8000x8000 image can take 95 bytes, and 1000 repeated ones took 3.2 s
# to decode (``python -m benchmarks.decode_cost``). The JPEG standard allows any number of scans
# (libjpeg-turbo calls this LJT-01-003 and leaves the limit to the application); ordinary encoders
# write one (baseline) or about 10 (libjpeg's progression), mozjpeg a few more. Applied everywhere.
MAX_JPEG_SCANS = 100
# Before any pixel, PIL's readers parse a file's header unit by unit in Python: a 16 MB file padded
# with the smallest units of its format (empty JPEG comment segments, empty PNG text chunks, GIF
# comment blocks, PPM comment lines) took PIL 2-6 s to open, and libpng wrote a warning line for each
# such PNG chunk, after the pixel data as well (``python -m benchmarks.decode_cost``). A photo has a
# few dozen (the shared sets' JPEGs: at most 13 segments before the image data), so more than these
# are refused, after a walk that stops at the limit. Room is left for what editors write: an ICC
# profile in up to 255 JPEG segments, XMP in a GIF as a few hundred sub-blocks; PNG's is lower, for
# libpng's warning lines. Applied everywhere. Format -> (what is counted, the most allowed).
HEADER_LIMITS = {"JPEG": ("segments before its pixels", 1000), "PNG": ("chunks besides its pixels", 100),
                 "GIF": ("blocks before its pixels", 1000), "PPM": ("header bytes", 4096), "TIFF": ("directory entries", 1000)}
# The most chunks a PNG may have in all, image data included (a 16 MB one in libpng's 8 KB chunks has
# about 2,000); it is refused past them, and its chunks are walked once, up to one past it.
PNG_CHUNKS_WALKED = 20_000
# OpenCV's decoders read the EXIF block of a PNG (its eXIf chunk) or a WebP (its EXIF chunk) for the
# orientation, and copy every entry's value: 65,535 entries that all point at one 200 KB value, a 1 MB
# file, took 475 ms to decode as a PNG and 494 ms as a WebP (``python -m benchmarks.decode_cost``).
# A JPEG's EXIF fits in one 64 KB segment, so no camera writes a larger block; a larger one is
# refused. Applied everywhere.
MAX_EXIF_BYTES = 65_535
# The chunks that decide a PNG's pixels, and its orientation (eXIf). The rest (text, times, colour
# profiles, which neither decoder applies here) are left out before decoding: libpng writes a warning
# line to the server's stderr for each malformed one, and any client could send 100 a request.
PNG_PIXEL_CHUNKS = frozenset({b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND", b"eXIf"})
# Samples a pixel for each PNG colour type (grey, RGB, palette, grey and alpha, RGBA), and the seven
# passes of an interlaced (Adam7) image: first column, first row, column step, row step.
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
ADAM7_PASSES = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
TRUNCATED_JPEG = "truncated JPEG (no end-of-image marker)"
# Start-of-frame markers (C4 is a Huffman table, C8 reserved, CC an arithmetic-coding table), and the
# Huffman-coded sequential ones (baseline C0, extended C1): the only JPEGs whose pixels per byte are
# counted at the scale they are decoded at, when they have one scan (above).
FRAME_MARKERS = {*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC}
HUFFMAN_SEQUENTIAL_FRAMES = {0xC0, 0xC1}
LOSSLESS_FRAMES = {0xC3, 0xC7, 0xCB, 0xCF}  # any precision from 2 to 16 bits
# The formats decoded, by PIL's reader names (PPM reads PBM/PGM/PPM; JPEG also reads a phone's MPO).
# Nothing else is opened, not even to read its header: some of PIL's other readers decode the whole
# image as they open it (an ICO holding an 8000x8000 PNG: 64 million pixels decoded, 219 ms, just to
# read its size; ``python -m benchmarks.decode_cost``), EPS runs Ghostscript, and the rest (PSD, FITS,
# DDS, ...) are parsers nobody sends a gesture in.
DECODED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "PPM")
SUPPORTED = "JPEG, PNG, WebP, BMP, TIFF, GIF or PPM/PGM"
# The kinds of PPM decoded: PBM, PGM and PPM (P1-P6, in native code) and the grey float map (Pf, through
# PIL's C reader). PIL's PPM reader also opens its own variants (P0CMYK, and PyP, PyRGBA and PyCMYK "for
# test purposes only"), which are refused like any other format; each magic is one header token.
NETPBM_KINDS = (b"P1", b"P2", b"P3", b"P4", b"P5", b"P6")
PIL_PPM_MAGICS = (*NETPBM_KINDS, b"Pf", b"P0CMYK", b"PyP", b"PyRGBA", b"PyCMYK")
# Recordings people put where images go (a class folder, a webcam --source folder): named, not read as images.
# .mts, .m2ts: camcorders' recordings; .ts: an MPEG transport stream (a TypeScript file is no dataset's)
VIDEO_FILE_SUFFIXES = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".3gp", ".mts", ".m2ts", ".ts",
                                 ".flv", ".ogv"})
# FFmpeg, inside OpenCV, wrote a line of its own for a video it cannot read ("[mov,mp4,...] moov atom not
# found") before the one-line reason every command gives; OpenCV reads this when it first opens a video.
# OPENCV_FFMPEG_LOGLEVEL=16 in the environment shows FFmpeg's errors again.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
# The frames of a recording kept as images, one in this many, by capture and by training on videos:
# neighbouring frames are near copies.
VIDEO_FRAME_EVERY = 5
FRAME_JPEG_QUALITY = 95  # the JPEG quality those frames are saved at
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jfif", ".jpe", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"})  # the files taken as images
# File signatures, to name the format of a file whose header is cut or corrupt.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SIGNATURES = {b"\xff\xd8\xff": "JPEG", PNG_SIGNATURE: "PNG", b"GIF8": "GIF", b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}

# Photo formats that phones and cameras write and nothing here decodes, named in the refusal instead of
# "not a recognised image format" (or, in a dataset, "not an image file extension"): HEIF, an iPhone's
# "High Efficiency" photo and many Android phones', is known by the brand of its ISO-BMFF ftyp box,
# and in a dataset folder each by its suffix. (PIL names AVIF itself.)
HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1")
PHOTO_SUFFIXES_NOT_DECODED = {
    ".heic": "HEIC", ".heif": "HEIC", ".hif": "HEIC", ".avif": "AVIF", ".jxl": "JPEG XL",
    **dict.fromkeys((".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2"), "camera raw"),
}
# Files that are photos: the ones decoded, and the ones named in their refusal.
PHOTO_FILE_SUFFIXES = IMAGE_SUFFIXES | PHOTO_SUFFIXES_NOT_DECODED.keys()
FORMAT_NOTES = {"HEIC": "a phone's High Efficiency photo; an iPhone takes JPEG with Settings > Camera > Formats > Most Compatible"}


class CostlyPixels(NamedTuple):
    """A kind of image whose decoder holds more bytes a pixel than a photo's: its pixel limit is the
    limit divided by ``divisor``, so that one costs no more memory than a photo at the limit."""

    divisor: int
    kind: str
    advice: str


# Float or 32-bit TIFF samples are decoded at their own depth, 4 bytes each where every other image is
# decoded to 1.
DEEP_SAMPLES = CostlyPixels(8, "a TIFF of 32-bit samples", "re-save it as 8-bit")
# OpenCV decodes a WebP with alpha to 4 bytes a pixel and then copies it without the alpha, and holds
# an animation's canvas besides: at the service's pixel limit one grew a process by 273 MB, an
# animated one by 426 MB, where a PNG or a JPEG takes 231 (``python -m benchmarks.decode_cost``).
WEBP_CANVAS = CostlyPixels(2, "a WebP with alpha or animation", "re-save it as JPEG or PNG")
WEBP_ALPHA_FLAG, WEBP_ANIMATION_FLAG = 0x10, 0x02  # in the flags byte of a WebP's VP8X chunk
# TGA has no signature, and an uncompressed colour TGA starts with the four bytes that mark a CUR.
SHARED_SIGNATURES = {"CUR": "CUR or TGA"}

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray

cv2.setNumThreads(1)  # decoding runs inside loader workers and request handlers; oversubscription hurts


class ImageDecodeError(ValueError):
    """An input that is not a usable image; ``str(err)`` is a user-facing reason."""


class ImageTooLarge(ImageDecodeError):
    """An image whose header declares more than the ``max_pixels`` it was read with allows (its pixels, or a multi-scan
    JPEG's blocks of coefficients held at once), before any is decoded."""


def read_rgb(
    source: ImageSource,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    min_side: int | None = None,
    max_pixels_per_byte: float | None = None,
    check_png_data: bool = False,
) -> np.ndarray:
    """Return the image as a contiguous RGB uint8 array of shape (H, W, 3).

    ``min_side``: an image whose shorter side is at least twice that is reduced to 1/2, 1/4 or 1/8 of
    its size (``jpeg_scale``), a JPEG by its decoder (a 3024x3024 photo resized to 256 anyway decodes
    about 30x faster), any other image, array or PIL image by averaging, so that a photo gives
    nearly the same pixels whether it comes as a file, as bytes or already decoded (a 1080p webcam frame
    was kept whole, and scored apart from the same frame sent to the service as a JPEG).
    ``max_pixels_per_byte`` refuses files that declare far more pixels than their size explains
    (see SMALL_IMAGE_PIXELS); it applies to encoded files only. ``check_png_data`` refuses a PNG whose
    compressed image data holds more than its image (``png_data_past_its_image``), at the cost of
    inflating it once more. The service sets both; the user's own files are read without them.
    """
    if isinstance(source, np.ndarray):
        rgb = _array_to_rgb(source)
        check_dimensions(rgb.shape[1], rgb.shape[0], max_pixels=max_pixels)
        return reduced(rgb, min_side)
    if isinstance(source, Image.Image):
        check_dimensions(*source.size, max_pixels=max_pixels)
        with _pil_errors_as_decode_errors():
            return reduced(_pil_to_rgb(source, owned=False), min_side)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return decode_rgb(bytes(source), max_pixels=max_pixels, min_side=min_side, max_pixels_per_byte=max_pixels_per_byte,
                          check_png_data=check_png_data)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"an image is a path, encoded bytes, a PIL image or a numpy array (HxW, HxWx3 or HxWx4), not {type(source).__name__}")
    path = Path(source)
    try:
        data = read_image_file(path)
    except FileNotFoundError:
        raise ImageDecodeError(f"{path}: no such file") from None
    except OSError as err:
        raise ImageDecodeError(f"{path}: cannot read ({err.strerror or err})") from None
    except ImageDecodeError as err:
        raise type(err)(f"{path}: {err}") from None
    try:
        return decode_rgb(data, max_pixels=max_pixels, min_side=min_side, max_pixels_per_byte=max_pixels_per_byte,
                          check_png_data=check_png_data)
    except ImageDecodeError as err:
        raise type(err)(f"{path}: {err}") from None  # the file named, its kind kept (ImageTooLarge)


def read_image_file(path: str | os.PathLike) -> bytes:
    """A file's bytes, for decoding; ImageDecodeError, before any byte is read, for one larger than any
    image (MAX_IMAGE_FILE_BYTES) or one that is no regular file. OSError as ``open`` raises it."""
    # before opening it: opening a named pipe (FIFO) waits for a writer (evaluate hung on one a split.json
    # named), and /dev/zero gave a gigabyte of zeros to decode
    if (kind := stat.S_IFMT(os.stat(path).st_mode)) not in (stat.S_IFREG, stat.S_IFDIR):  # a folder: open's own error
        raise ImageDecodeError(f"not a regular file but a {'named pipe' if kind == stat.S_IFIFO else 'device or socket'}, so no image")
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_IMAGE_FILE_BYTES:
            raise ImageDecodeError(f"file too large for an image: {size / 2**30:,.1f} GB, above the limit of {MAX_IMAGE_FILE_BYTES / 2**30:.0f} GB "
                                   f"(a {DEFAULT_MAX_PIXELS // 1_000_000} MP image needs half that): a video or another file named as an image?")
        return f.read(MAX_IMAGE_FILE_BYTES + 1)  # no more, should it grow meanwhile


def decode_rgb(data: bytes, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, min_side: int | None = None,
               max_pixels_per_byte: float | None = None, check_png_data: bool = False) -> np.ndarray:
    """``read_rgb`` of an encoded image."""
    return reduced(_decode(data, max_pixels=max_pixels, min_side=min_side, max_pixels_per_byte=max_pixels_per_byte,
                           check_png_data=check_png_data), min_side)


def reduced(rgb: np.ndarray, min_side: int | None) -> np.ndarray:
    """The image at 1/2, 1/4 or 1/8 of its size by area averaging, as ``jpeg_scale`` has a JPEG decoded
    (``read_rgb``); as it is when that scale is 1, e.g. a JPEG its decoder already reduced. The size
    rounds up, as libjpeg's does."""
    scale = jpeg_scale(rgb.shape[1], rgb.shape[0], min_side)
    if scale == 1:
        return rgb
    return cv2.resize(rgb, (-(-rgb.shape[1] // scale), -(-rgb.shape[0] // scale)), interpolation=cv2.INTER_AREA)


def _decode(data: bytes, *, max_pixels: int | None, min_side: int | None, max_pixels_per_byte: float | None,
            check_png_data: bool) -> np.ndarray:
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    fmt, (width, height), layout, tiff, png, webp = probe_layout(data)
    costly = DEEP_SAMPLES if tiff_has_deep_samples(tiff) else webp
    check_dimensions(width, height, max_pixels=max_pixels, costly=costly)
    if problem := tiff_pieces_problem(tiff, width, height):
        raise ImageDecodeError(problem)
    if layout:
        check_jpeg_layout(layout, width, height, max_pixels=max_pixels)
    scale = jpeg_scale(width, height, min_side) if fmt == "JPEG" else 1
    if max_pixels_per_byte is not None and layout and layout.huffman_sequential and layout.scans == 1:
        check_file_size(width, height, len(data), max_pixels_per_byte * JPEG_PIXELS_PER_BYTE_FACTOR, scale=scale)
    elif max_pixels_per_byte is not None:
        check_file_size(width, height, len(data), max_pixels_per_byte)
    if fmt == "JPEG" and not jpeg_is_complete(data):
        raise ImageDecodeError(TRUNCATED_JPEG)
    if fmt == "PNG" and png is not None:
        data, png = png_pixel_chunks_only(data, png)
        if check_png_data and png_data_past_its_image(data, png):
            raise ImageDecodeError(f"PNG whose compressed image data holds more than its {width}x{height} image: re-save it")
    if fmt == "PPM" and data[:2] in NETPBM_KINDS:
        return _decode_netpbm(data)
    if fmt in ("JPEG", "PNG", "WEBP", "BMP", "TIFF"):
        flag = decode_flag(scale)
        if costly is DEEP_SAMPLES:
            # Float samples (0-1) IMREAD_COLOR casts to 8 bits unscaled: all black. Decoded at their own
            # depth instead, and scaled by _array_to_rgb, at 4 bytes a sample: hence a lower pixel limit.
            flag = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
        keep_decoder_warnings_quiet()
        try:
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
            if bgr is not None:
                check_decoded_size(fmt, bgr.shape, (width, height), scale)
            scalable = bgr is not None and (bgr.dtype in (np.uint8, np.uint16) or bgr.dtype.kind == "f")  # else PIL's scaling
            if scalable and bgr.ndim == 3 and bgr.shape[2] == 3:
                # In place: no third full-size array next to OpenCV's decoding buffer and its result.
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=bgr)
                return rgb if rgb.dtype == np.uint8 else _array_to_rgb(rgb)
            if scalable and bgr.ndim == 2:
                return _array_to_rgb(bgr)
        except cv2.error as err:
            raise ImageDecodeError(f"corrupt or undecodable {fmt} ({opencv_reason(err)})") from None
    return _decode_with_pil(data)


def check_decoded_size(fmt: str, shape: tuple[int, ...], size: tuple[int, int], scale: int) -> None:
    """Refuse an image whose decoder read another size than its header gave the checks before it (a
    header written to read two ways): that decode is paid, but never answered as the small image.
    Either way round, as OpenCV turns a photo by its EXIF orientation."""
    if sorted(shape[:2]) != sorted(-(-side // scale) for side in size):
        raise ImageDecodeError(f"{fmt} whose image data is {shape[1]}x{shape[0]} where its header says "
                               f"{size[0]}x{size[1]}: re-save it")


def keep_decoder_warnings_quiet() -> None:
    """OpenCV logs a WARN line for each oddity of a file it decodes: a TIFF's unknown tags were a line
    each, so a folder of TIFFs with a vendor's tags wrote a few lines per photo per epoch, and any
    client of the service about 130 KB per request (up to the 1,000 directory entries allowed). The
    file is decoded, or refused with this module's reason, either way. Errors still print, and a
    lower level set by the program is kept. (libpng's warnings bypass this level:
    ``png_pixel_chunks_only`` leaves out the chunks they are about.)"""
    if cv2.utils.logging.getLogLevel() > cv2.utils.logging.LOG_LEVEL_ERROR:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


def check_dimensions(width: int, height: int, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                     max_aspect_ratio: float = MAX_ASPECT_RATIO, costly: CostlyPixels | None = None) -> None:
    """Refuse, from the size alone and before anything is allocated, an image whose decoding or
    resizing would cost far more memory and time than any photo: too many pixels, or so elongated
    that scaling its shorter side up to the model's size makes a huge array. An image whose decoder
    holds more bytes a pixel (``costly``: DEEP_SAMPLES, WEBP_CANVAS) has a lower pixel limit."""
    if width < 1 or height < 1:
        raise ImageDecodeError(f"image has no pixels ({width}x{height})")
    if max_pixels is not None and costly:
        max_pixels //= costly.divisor
    if max_pixels is not None and width * height > max_pixels:
        kind, advice = (f"{costly.kind}, ", f" for such images: {costly.advice}") if costly else ("", "")
        raise ImageTooLarge(
            f"image too large: {kind}{width}x{height} = {width * height:,} pixels, above the limit of {max_pixels:,}{advice}"
        )
    ratio = max(width, height) / min(width, height)
    if ratio > max_aspect_ratio:
        raise ImageDecodeError(
            f"extreme aspect ratio: {width}x{height} is {ratio:,.0f}:1, above the limit of {max_aspect_ratio:g}:1"
        )


def check_file_size(width: int, height: int, size_bytes: int, max_pixels_per_byte: float, scale: int = 1) -> None:
    """Refuse, from the header, an image above SMALL_IMAGE_PIXELS that declares more than
    ``max_pixels_per_byte`` pixels per byte of its file: a small upload must not cost a large decode.
    A JPEG decoded at reduced ``scale`` (1/2, 1/4, 1/8) has the pixels of that scale counted."""
    decoded_width, decoded_height = math.ceil(width / scale), math.ceil(height / scale)
    pixels = decoded_width * decoded_height
    if pixels > SMALL_IMAGE_PIXELS and pixels > max_pixels_per_byte * size_bytes:
        decoded = f" decoded at 1/{scale} scale, {decoded_width}x{decoded_height}" if scale > 1 else ""
        raise ImageDecodeError(
            f"image too large for its file size: {width}x{height}{decoded} = {pixels:,} pixels in {size_bytes:,} bytes; "
            f"above {SMALL_IMAGE_PIXELS:,} pixels the limit is {max_pixels_per_byte:g} pixels per byte "
            "(send a photo, as JPEG, or scale it down)"
        )


class JpegLayout(NamedTuple):
    size: tuple[int, int] | None  # (width, height) from the start-of-frame segment; None if there is none before the scans
    frame: int | None  # the start-of-frame marker (0xC0 baseline, 0xC2 progressive, 0xC9 arithmetic, ...)
    scans: int
    segments: int = 0  # before the first scan; the walk stops past HEADER_LIMITS["JPEG"]
    blocks: int = 0  # the 8x8 blocks of every component, from the frame's sampling factors
    scan_bytes: int = 0  # from the first start-of-scan marker to the end of the file
    corrupt: bool = False  # a segment shorter than its own length field
    precision: int = 8  # bits a sample, from the start-of-frame segment: 8, or 12 in a DCT JPEG neither decoder reads

    @property
    def huffman_sequential(self) -> bool:
        return self.frame in HUFFMAN_SEQUENTIAL_FRAMES


def jpeg_layout(data: bytes) -> JpegLayout:
    """A JPEG's size, its kind (start-of-frame marker) and its number of scans, from its markers,
    without decoding anything.

    The segments before the first scan are walked by their lengths (so an EXIF thumbnail's markers are
    not counted); from there every start-of-scan marker counts: inside entropy-coded data a 0xFF byte
    is always followed by 0x00 or a restart marker, never by 0xDA. Bytes between two segments that
    are no marker are skipped to the next 0xFF, as libjpeg and PIL skip them (PIL one byte at a time,
    in Python: about 60 ms a megabyte), each run counting as a segment; so is a stuffed 0xFF 0x00, which
    both skip as well: read as a segment with a length, it hid the frame header libjpeg decodes behind
    a small one inside an APP1 segment, and 563 KB decoded as 144 megapixels. A segment whose length is under the
    two bytes of the length itself makes the file corrupt (``corrupt``), as libjpeg finds it."""
    i, size, frame, segments, blocks, precision = 2, None, None, 0, 0, 8
    while i + 4 <= len(data) and segments <= HEADER_LIMITS["JPEG"][1]:
        if data[i] != 0xFF:
            if (i := data.find(b"\xff", i)) < 0:
                break
            segments += 1
            continue
        marker = data[i + 1]
        if marker in (0xFF, 0x00, 0x01) or 0xD0 <= marker <= 0xD8:  # fill byte, stuffed zero, or a marker without a length
            i += 1 if marker == 0xFF else 2
            segments += 1  # fill bytes too: 16 MB of them would otherwise be 16 million steps of this walk
            continue
        if marker == 0xD9:
            break
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if length < 2:
            return JpegLayout(size, frame, 0, segments, blocks, corrupt=True, precision=precision)
        if marker == 0xDA:
            return JpegLayout(size, frame, data.count(b"\xff\xda", i), segments, blocks, max(0, len(data) - i - 2 - length), precision=precision)
        if marker in FRAME_MARKERS and size is None and i + 9 <= len(data):  # length, precision, height, width
            size = int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
            frame, blocks, precision = marker, frame_blocks(data[i + 4:i + 2 + length]), data[i + 4]
        i += 2 + length
        segments += 1
    return JpegLayout(size, frame, 0, segments, blocks, precision=precision)  # no scan before the end or a corrupt marker: the decoder reports it


def frame_blocks(frame: bytes) -> int:
    """The 8x8 blocks a JPEG's start-of-frame segment (its body: precision, height, width, then each
    component's id, sampling factors and table) declares, over all its components; 0 if it is corrupt."""
    height, width = int.from_bytes(frame[1:3], "big"), int.from_bytes(frame[3:5], "big")
    factors = [(byte >> 4, byte & 15) for byte in frame[7:6 + 3 * frame[5]:3]] if len(frame) > 5 else []
    if not factors or min(min(pair) for pair in factors) == 0:
        return 0
    most_h, most_v = max(h for h, _ in factors), max(v for _, v in factors)
    return sum(math.ceil(math.ceil(width * h / most_h) / 8) * math.ceil(math.ceil(height * v / most_v) / 8) for h, v in factors)


def header_units(data: bytes, png: list[PngChunk] | None, gif: tuple[int, int] | None) -> tuple[str, int]:
    """(format, how many) of the units PIL would parse one by one before any pixel of a PNG (its chunks
    besides the image data, which libpng reads, counted in ``png``, its ``png_chunks``), a GIF (its
    blocks and sub-blocks before the first image, counted in ``gif``, its ``gif_walk``), a PPM (its
    header bytes) or a TIFF (the entries of its first directory), each walk stopping past the format's
    limit (``HEADER_LIMITS``); a JPEG's are ``jpeg_layout``'s segments. ("", 0) for other formats."""
    if png is not None:
        return "PNG", png_chunks_besides_pixels(png)
    if gif is not None:
        return "GIF", gif[0]
    if ppm_magic(data):
        return "PPM", ppm_header_bytes(data)
    if data.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):  # the entry count of the first directory
        return "TIFF", tiff_directory(data)[2]
    return "", 0


def tiff_directory(data: bytes) -> tuple[str, int, int]:
    """(byte order, offset, entry count) of a TIFF's or BigTIFF's first directory; a count of 0 where
    the directory lies inside the header or past the end, a cut file that PIL's reader names."""
    order, big = "little" if data[0] == ord("I") else "big", data[2:4] in (b"+\x00", b"\x00+")  # BigTIFF: 8-byte fields
    header, width = (16, 8) if big else (8, 2)
    offset = int.from_bytes(data[8:16] if big else data[4:8], order)
    inside = header <= offset and offset + width <= len(data)
    return order, offset, int.from_bytes(data[offset:offset + width], order) if inside else 0


PngChunk = tuple[bytes, int, int]  # type, where its data starts, its length
# What the checks read of a TIFF's directory: its size, samples, strips and tiles (tiff_pieces_problem,
# tiff_has_deep_samples); each must be listed once.
TIFF_CHECKED_TAGS = frozenset({256, 257, 258, 273, 277, 278, 279, 284, 322, 323, 324, 325, 339})


def png_chunks(data: bytes) -> list[PngChunk]:
    """A PNG's chunks in file order, at most PNG_CHUNKS_WALKED + 1 of them: a chunk is its length
    (big-endian), type, data and CRC. Walked once per file and shared by the checks that read it
    (``Probe.png``): when each check walked them, a 64x64 PNG in 19,998 image-data chunks (252 KB) took
    the service's decode 43 ms, and 13 ms with one walk (``python -m benchmarks.decode_cost``)."""
    chunks, i, end = [], 8, len(data)
    while i + 8 <= end and len(chunks) <= PNG_CHUNKS_WALKED:
        (length,) = struct.unpack_from(">I", data, i)
        chunks.append((data[i + 4:i + 8], i + 8, length))
        i += 12 + length
    return chunks


def png_chunks_besides_pixels(chunks: list[PngChunk]) -> int:
    """A PNG's chunks other than image data, before it and after it: libpng (OpenCV) reads the ones
    after it too, and writes a warning line for each bad one."""
    return sum(kind != b"IDAT" for kind, _, _ in chunks)


def exif_block_bytes(data: bytes, png: list[PngChunk] | None) -> int:
    """The size of a PNG's first eXIf chunk (from ``png``, its ``png_chunks``), or of a WebP's EXIF
    chunk where its header says it has one (libwebp reads it only then); 0 for none and for other
    formats."""
    if png is not None:
        for kind, _, length in png:
            if kind in (b"eXIf", b"IEND"):
                return length if kind == b"eXIf" else 0
        return 0
    if not (data.startswith(b"RIFF") and data[8:16] == b"WEBPVP8X" and len(data) > 20 and data[20] & 0x08):
        return 0
    i = 12  # a RIFF chunk: type, length (little-endian), data, a pad byte to an even length
    for _ in range(PNG_CHUNKS_WALKED):  # an animated WebP has a chunk a frame
        if i + 8 > len(data):
            return 0
        length = int.from_bytes(data[i + 4:i + 8], "little")
        if data[i:i + 4] == b"EXIF":
            return length
        i += 8 + length + (length & 1)
    raise ImageDecodeError(f"WebP with more than {PNG_CHUNKS_WALKED:,} chunks before its EXIF block, far more than any photo: re-save it")


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, which comes first, when it is whole and its CRC holds;
    else None, and PIL names what is wrong. PIL's reader decompresses every text chunk and colour
    profile before the pixels as it opens a file, only to refuse the file past 64 MB of them: 95 text
    chunks of 1 MB each, a 108 KB PNG, took it 144 ms and were called a corrupt PNG
    (``python -m benchmarks.decode_cost``). Those chunks are left out before decoding
    (``png_pixel_chunks_only``), so no reader ever parses them."""
    if len(data) < 33 or data[8:16] != b"\x00\x00\x00\x0dIHDR" or zlib.crc32(data[12:29]) != int.from_bytes(data[29:33], "big"):
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def png_image_bytes(data: bytes) -> int | None:
    """How many bytes a PNG's image data inflates to, from its IHDR chunk: each row's samples and its
    filter byte, in each of the seven passes when it is interlaced; None where IHDR cannot tell."""
    size = png_size(data)
    if size is None or data[25] not in PNG_CHANNELS:
        return None
    (width, height), bits = size, data[24] * PNG_CHANNELS[data[25]]  # bit depth x samples a pixel
    total = 0
    for x0, y0, dx, dy in ADAM7_PASSES if data[28] == 1 else ((0, 0, 1, 1),):
        columns, rows = -(-max(width - x0, 0) // dx), -(-max(height - y0, 0) // dy)
        total += rows * (1 + -(-columns * bits // 8)) if columns else 0
    return total


def png_data_past_its_image(data: bytes, chunks: list[PngChunk]) -> bool:
    """Whether a PNG's compressed image data inflates to more than its image. libpng (OpenCV's decoder)
    inflates all of it, the part after the image too: a 1 MB PNG of a 64x64 image followed by 1 GB of
    zeros in its compressed data took 2.1 s to decode (``python -m benchmarks.decode_cost``). This inflates
    the data 1 MB at a time and stops past the image's size; a stream zlib cannot read is left to the
    decoder, whose reason is better."""
    if (expected := png_image_bytes(data)) is None:
        return False
    ends = next((n for n, (kind, _, _) in enumerate(chunks) if kind == b"IEND"), len(chunks))
    # One stream, then inflated: a piece per chunk cost a call per chunk, for 20,000 chunks of 12 bytes.
    whole = memoryview(data)  # slices of it copy nothing: bytes slices were a second copy of the stream
    stream = memoryview(b"".join(whole[start:start + length] for kind, start, length in chunks[:ends] if kind == b"IDAT"))
    inflater, produced = zlib.decompressobj(), 0
    # Fed 64 KB at a time: zlib's unconsumed tail is a copy of the input left, so feeding it all at once
    # copied the rest of a 15.6 MB stream for every 1 MB inflated.
    for start in range(0, len(stream), 1 << 16):
        piece = stream[start:start + (1 << 16)]
        while piece and not inflater.eof:
            try:
                produced += len(inflater.decompress(piece, 1 << 20))
            except zlib.error:
                return False
            if produced > expected:
                return True
            piece = inflater.unconsumed_tail
        if inflater.eof:
            break
    return False


def png_pixel_chunks_only(data: bytes, chunks: list[PngChunk]) -> tuple[bytes, list[PngChunk]]:
    """The PNG with only its ``PNG_PIXEL_CHUNKS`` (every image-data chunk, the first of each other kind),
    in their order, each chunk's bytes as they were, and those chunks where they now start; ``data``
    and ``chunks`` themselves where that is all it holds. A chunk cut short stays cut short, for the
    decoder to report."""
    seen, keep = set(), []
    for kind, _, _ in chunks:
        keep.append(kind in PNG_PIXEL_CHUNKS and (kind == b"IDAT" or kind not in seen))
        seen.add(kind)
        if kind == b"IEND":
            break
    if all(keep):  # no copy of an ordinary PNG, whose chunks are all of these
        return data, chunks
    kept, kept_chunks, written = [data[:8]], [], 8
    for (kind, start, length), wanted in zip(chunks, keep, strict=False):  # keep ends at IEND
        if wanted:
            kept.append(data[start - 8:start + length + 4])  # with its CRC
            kept_chunks.append((kind, written + 8, length))
            written += len(kept[-1])
    _, start, length = chunks[len(keep) - 1]
    kept.append(data[start + length + 4:])  # bytes too few for a chunk
    return b"".join(kept), kept_chunks


def gif_walk(data: bytes) -> tuple[int, int]:
    """(the blocks and sub-blocks of a GIF's extensions before its first image, where the walk stopped:
    at its first image descriptor, ',', in a whole GIF)."""
    flags = data[10] if len(data) > 10 else 0
    i, blocks, limit = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0), 0, HEADER_LIMITS["GIF"][1]  # after the colour table
    while i < len(data) and data[i] == 0x21 and blocks <= limit:  # an extension: its label, then sub-blocks
        i += 2
        while i < len(data) and data[i] and blocks <= limit:
            i += 1 + data[i]
            blocks += 1
        i += 1
        blocks += 1
    return blocks, i


def ppm_header_bytes(data: bytes) -> int:
    """Bytes up to the raster: magic, width, height and (but for P1/P4) maxval, with comments; past
    the limit the count stops there."""
    return ppm_header(data)[0]


def ppm_header(data: bytes) -> tuple[int, list[bytes]]:
    """(where the header's last token ends, its tokens: magic, width, height and, but for P1/P4,
    maxval), walking at most the header limit's bytes; fewer tokens where the limit or the file ends first."""
    needed = 3 if data[:2] in (b"P1", b"P4") else 4
    i, tokens, end = 0, [], min(len(data), HEADER_LIMITS["PPM"][1] + 1)
    while i < end and len(tokens) < needed:
        if data[i] == ord("#"):
            newline = data.find(b"\n", i, end)
            i = end if newline < 0 else newline + 1
        elif data[i] in b" \t\r\n":
            i += 1
        else:
            start = i
            while i < end and data[i] not in b" \t\r\n#":
                i += 1
            tokens.append(data[start:i])
    return (i if len(tokens) == needed else end), tokens


def ppm_magic(data: bytes) -> bytes | None:
    """The magic of a file PIL's PPM reader opens (``PIL_PPM_MAGICS``), ending at a separator; else None."""
    return next((m for m in PIL_PPM_MAGICS if data.startswith(m) and data[len(m):len(m) + 1] in (b" ", b"\t", b"\r", b"\n", b"#")), None)


def opencv_reason(err: cv2.error) -> str:
    """The one-line reason inside OpenCV's multi-line error text."""
    return getattr(err, "err", "") or str(err).strip().splitlines()[-1]


def probe_image(data: bytes) -> tuple[str, tuple[int, int]]:
    """Read only the header: (format, (width, height)). Cheap, and safe against bombs (``probe_layout``)."""
    return probe_layout(data)[:2]


def upright_size(data: bytes) -> tuple[int, int]:
    """``probe_image``'s (width, height) as the image is shown: a photo whose EXIF orientation turns it a
    quarter (5-8, a phone held upright) swaps them, as decoding does (``ImageOps.exif_transpose``)."""
    width, height = probe_image(data)[1]
    try:
        with Image.open(io.BytesIO(data), formats=DECODED_FORMATS) as img:
            turned = img.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)
    except Exception:  # noqa: BLE001 - PIL raises a zoo of types; a file it does not open has no EXIF for it to apply
        turned = False
    return (height, width) if turned else (width, height)


class Probe(NamedTuple):
    """What a file's header says: its format and size, and what the decoder's checks read of it besides."""

    format: str
    size: tuple[int, int]
    jpeg: JpegLayout | None = None  # a JPEG's markers: its scans and image data (``jpeg_layout``)
    tiff: dict[int, tuple[int, int]] = {}  # a TIFF's first directory (``tiff_entries``), never changed
    png: list[PngChunk] | None = None  # a PNG's chunks (``png_chunks``), walked once for every check
    webp_canvas: CostlyPixels | None = None  # WEBP_CANVAS for a WebP whose decoder holds a canvas (``webp_canvas``)


def probe_layout(data: bytes) -> Probe:
    """``probe_image``, with a JPEG's layout (its scans, for the decoder's scan limit) from the same walk,
    and a TIFF's first directory, read once for its size and the decoder's checks.

    A file whose header holds more units than any photo (``HEADER_LIMITS``) is refused first, after
    a walk that stops at the limit: PIL would parse each of them in Python.
    A JPEG's size comes from its own start-of-frame segment: PIL's reader also parses the EXIF block
    as it opens one (for its DPI), which made the probe cost twice what OpenCV takes to decode a
    100x100 photo. A PNG's comes from its IHDR chunk (``png_size``), and a TIFF's from
    its first directory (``tiff_pieces_problem`` says why). A JPEG whose markers give no size before a
    scan, or a corrupt segment, is refused here as well: neither PIL nor libjpeg would decode it."""
    layout = jpeg_layout(data) if data.startswith(b"\xff\xd8") else None
    png = png_chunks(data) if data.startswith(PNG_SIGNATURE) else None
    gif = gif_walk(data) if data.startswith((b"GIF87a", b"GIF89a")) else None
    fmt, count = ("JPEG", layout.segments) if layout else header_units(data, png, gif)
    if fmt and count > HEADER_LIMITS[fmt][1]:
        what, limit = HEADER_LIMITS[fmt]
        raise ImageDecodeError(f"{fmt} with more than {limit:,} {what}, far more than any photo: re-save it")
    if png is not None and len(png) > PNG_CHUNKS_WALKED:  # image-data chunks: a 16 MB PNG in libpng's 8 KB ones has about 2,000
        raise ImageDecodeError(f"PNG in more than {PNG_CHUNKS_WALKED:,} chunks, far more than any photo: re-save it")
    if (exif := exif_block_bytes(data, png)) > MAX_EXIF_BYTES:
        raise ImageDecodeError(f"{'PNG' if fmt == 'PNG' else 'WebP'} with an EXIF block of {exif:,} bytes, above the limit of {MAX_EXIF_BYTES:,} "
                               "(a JPEG's can be no larger): re-save it")
    if gif is not None and gif[1] < len(data) and data[gif[1]] != ord(","):
        # No image where the first one should begin: giflib refuses such a file; PIL skips the bytes
        # one at a time, in Python, while holding the GIL (1.5 s for 16 MB: python -m benchmarks.decode_cost).
        raise ImageDecodeError(unreadable_header(data))
    if fmt == "PPM" and (magic := ppm_magic(data)) not in (*NETPBM_KINDS, b"Pf"):
        raise ImageDecodeError(f"unsupported image format {magic.decode()} (a PPM variant of PIL's own): send {SUPPORTED}")
    if layout and data.startswith(b"\xff\xd8\xff"):  # what PIL takes for a JPEG
        if layout.size and layout.scans and not layout.corrupt:
            return Probe("JPEG", layout.size, layout)
        # PIL would walk the same markers, skipping junk between them one byte at a time in Python
        # while holding the GIL: about 1 s for 16 MB (python -m benchmarks.decode_cost), to fail as libjpeg does.
        raise ImageDecodeError(unreadable_header(data))
    if fmt == "PNG" and (size := png_size(data)):
        return Probe("PNG", size, png=png)
    tiff = tiff_entries(data) if fmt == "TIFF" else {}
    if size := tiff_size(tiff):
        return Probe("TIFF", size, tiff=tiff)  # PIL's reader makes an object per strip or tile to open it (tiff_pieces_problem)
    try:
        with Image.open(io.BytesIO(data), formats=DECODED_FORMATS) as img:
            return Probe(img.format or "unknown", img.size, layout, tiff, png, webp_canvas(img, data))
    except Image.DecompressionBombError as err:  # PIL's own limit, far above ours: its number would mislead
        declared = re.search(r"\((\d+) pixels\)", str(err))
        pixels = f"{int(declared.group(1)):,} pixels" if declared else "more pixels than PIL opens"
        raise ImageDecodeError(f"image too large: its header declares {pixels}, far more than any photo") from None
    except Exception:  # PIL raises a zoo of types for garbage input
        raise ImageDecodeError(unreadable_header(data)) from None


def tiff_entries(data: bytes) -> dict[int, tuple[int, int]]:
    """{tag: (how many values, the first)} of the SHORT, LONG and LONG8 fields in a TIFF's or BigTIFF's
    first directory ({} for anything else); the walk is bounded by ``header_units``' limit on entries,
    checked first. A directory that lists a tag the checks read twice is refused: libtiff reads the
    first, PIL and a dict the last, so a 10000x10000 image listed again as 100x100 passed every check
    as the small one and was decoded as the large one. Other tags repeated decode, as libtiff reads them."""
    if not data.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return {}
    order, offset, count = tiff_directory(data)
    # BigTIFF: an 8-byte entry count, then 20-byte entries whose values fit in 8 bytes; classic: 2, 12 and 4.
    counted, entry_size, inline = (8, 20, 8) if data[2:4] in (b"+\x00", b"\x00+") else (2, 12, 4)
    entries, tags = {}, set()
    first = offset + counted
    for entry in range(first, min(first + entry_size * count, len(data) - entry_size + 1), entry_size):
        tag, kind, values = (int.from_bytes(data[entry + a:entry + b], order) for a, b in ((0, 2), (2, 4), (4, 4 + inline)))
        if tag in tags and tag in TIFF_CHECKED_TAGS:
            raise ImageDecodeError(f"TIFF whose directory lists its tag {tag} twice, which decoders read differently: re-save it")
        tags.add(tag)
        size = {3: 2, 4: 4, 16: 8}.get(kind)  # SHORT, LONG, LONG8
        if size is None or values < 1:
            continue
        # Values that fit in the entry are in it; longer lists (one per sample) at an offset.
        value = entry + 4 + inline
        at = value if values * size <= inline else int.from_bytes(data[value:value + inline], order)
        if at + size <= len(data):
            entries[tag] = (values, int.from_bytes(data[at:at + size], order))
    return entries


def tiff_field(entries: dict[int, tuple[int, int]], tag: int, default: int) -> int:
    """The first value of a field of ``tiff_entries``, or ``default`` where the directory has none."""
    return entries.get(tag, (0, default))[1]


def tiff_pieces_problem(entries: dict[int, tuple[int, int]], width: int, height: int) -> str | None:
    """Why a TIFF's strips or tiles (``tiff_entries``; {} for other formats) would cost more to read
    than its size explains, or None: tiles under the 16x16 the format requires, or more strip or tile
    offsets than such an image has strips or tiles. PIL's reader makes an object for every offset in
    Python: 2,000,000 of them, 16 MB of file, took it 4.4 s to open (``python -m benchmarks.decode_cost``)."""
    if not entries:
        return None
    field = functools.partial(tiff_field, entries)
    planes = field(277, 1) if field(284, 1) == 2 else 1  # SamplesPerPixel, where PlanarConfiguration keeps each apart
    if 322 in entries or 324 in entries:  # TileWidth, TileOffsets
        tile_width, tile_height = field(322, 0), field(323, 0)
        if tile_width < 16 or tile_height < 16:
            return f"TIFF tiles of {tile_width}x{tile_height}, under the 16x16 the format requires: re-save it"
        kind, offsets, room = "tile", entries.get(324, (0, 0))[0], -(-width // tile_width) * -(-height // tile_height) * planes
    else:
        rows = min(max(field(278, height), 1), height)  # RowsPerStrip: by default the whole image
        kind, offsets, room = "strip", entries.get(273, (0, 0))[0], -(-height // rows) * planes
    if offsets > room:
        return f"TIFF with {offsets:,} {kind} offsets, more than the {room:,} {kind}s of its {width}x{height} image: re-save it"
    return None


def tiff_size(entries: dict[int, tuple[int, int]]) -> tuple[int, int] | None:
    """(width, height) from a TIFF's ``tiff_entries``, or None where they hold none."""
    return (entries[256][1], entries[257][1]) if 256 in entries and 257 in entries else None  # ImageWidth, ImageLength


def webp_canvas(img: Image.Image, data: bytes) -> CostlyPixels | None:
    """WEBP_CANVAS for an opened WebP with alpha or more than one frame (read from its header by PIL's
    opener, nothing decoded), or whose extended header (VP8X) marks alpha or animation, else None.
    OpenCV decodes an animation through its canvas whatever its frames: one of a single 6324x6324 frame,
    which PIL calls RGB of one frame, grew a process by 426 MB."""
    if img.format != "WEBP":
        return None
    flagged = data[12:16] == b"VP8X" and len(data) > 20 and data[20] & (WEBP_ALPHA_FLAG | WEBP_ANIMATION_FLAG)
    return WEBP_CANVAS if flagged or img.mode == "RGBA" or getattr(img, "n_frames", 1) > 1 else None


def tiff_has_deep_samples(entries: dict[int, tuple[int, int]]) -> bool:
    """Float samples (SampleFormat 3), or more than 16 bits a sample, in a TIFF's ``tiff_entries``
    ({} for other formats): what OpenCV's 8-bit decode gets wrong."""
    return tiff_field(entries, 339, 1) == 3 or tiff_field(entries, 258, 8) > 16  # SampleFormat, BitsPerSample


def signature_format(data: bytes) -> str | None:
    """The decoded format whose signature ``data`` starts with (JPEG, PNG, GIF, TIFF), or None."""
    return next((name for magic, name in SIGNATURES.items() if data.startswith(magic)), None)


def unreadable_header(data: bytes) -> str:
    """Why a file's header cannot be read: a known format cut short or corrupt, or no image at all."""
    fmt = signature_format(data)
    if fmt == "JPEG" and not jpeg_is_complete(data):
        return TRUNCATED_JPEG
    if fmt is not None:
        return f"truncated or corrupt {fmt} (its image header cannot be read)"
    other = other_format(data)
    if other is not None:
        return unsupported_format(other, f"send {SUPPORTED}")
    if video := video_container(data):  # a phone's clip, renamed or uploaded as a photo
        return f"a video ({video}), not an image: send one of its frames as {SUPPORTED}"
    return "not a recognised image format"


def video_container(data: bytes) -> str | None:
    """The video container ``data`` starts with (MP4/MOV, AVI, Matroska/WebM, MPEG-TS), or None; after
    ``other_format``, which names the photo formats that share MP4's box layout (HEIC, AVIF)."""
    if data[4:8] == b"ftyp":
        return "MP4/MOV"
    if data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return "AVI"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "Matroska/WebM"
    if len(data) > 188 and data[0] == data[188] == 0x47:  # a transport stream's packets: 188 bytes, each from 0x47
        return "MPEG-TS"
    return None


def unsupported_format(name: str, advice: str) -> str:
    """"unsupported image format NAME (what it is, where that helps): ADVICE"."""
    return f"unsupported image format {name}{f' ({FORMAT_NOTES[name]})' if name in FORMAT_NOTES else ''}: {advice}"


def other_format(data: bytes) -> str | None:
    """The name of a format PIL knows but the product does not decode, from the same 16-byte prefix
    test PIL itself runs before opening a file (``Image.OPEN``'s accept functions); nothing is parsed."""
    if data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS:  # PIL has no HEIF reader to test it
        return "HEIC"
    Image.init()
    for name, (_, accept) in Image.OPEN.items():
        try:  # some tests read a few bytes whatever the length: PIL itself catches their struct.error
            if name not in DECODED_FORMATS and accept is not None and accept(data[:16]):
                return SHARED_SIGNATURES.get(name, name)
        except Exception:  # noqa: BLE001, S112 - a test that cannot read this prefix does not recognise it
            continue
    return None


def bgr_to_rgb(frame: np.ndarray) -> np.ndarray:
    """An OpenCV frame (webcam, video file; BGR, or grayscale, BGRA, 16-bit as ``cv2.imread(...,
    IMREAD_UNCHANGED)`` gives them) as RGB uint8, what everything downstream expects: a 16-bit frame
    was normalised as if it were 8-bit, and scored as noise."""
    if not isinstance(frame, np.ndarray):
        raise TypeError(f"a BGR frame (bgr=True) is a numpy array as OpenCV gives it, not {type(frame).__name__}: "
                        "pass a path, bytes or PIL image without bgr=True")
    if frame.ndim == 3 and frame.shape[2] in (3, 4):
        if frame.size and frame.dtype in (np.uint8, np.uint16, np.float32):  # what cvtColor takes; it is the fast way
            frame = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB if frame.shape[2] == 3 else cv2.COLOR_BGRA2RGB)
        else:
            frame = frame[:, :, 2::-1]  # any other dtype or an empty frame: _array_to_rgb says what is wrong with it
    return _array_to_rgb(frame)


def jpeg_is_complete(data: bytes) -> bool:
    # Cameras sometimes append padding or a short trailer after the end-of-image marker.
    return b"\xff\xd9" in data[-32:] or data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9")


def decode_flag(scale: int) -> int:
    """OpenCV's flag to decode a JPEG at 1/``scale`` of its size (``jpeg_scale``); 1 decodes in full."""
    return {8: cv2.IMREAD_REDUCED_COLOR_8, 4: cv2.IMREAD_REDUCED_COLOR_4, 2: cv2.IMREAD_REDUCED_COLOR_2}.get(scale, cv2.IMREAD_COLOR)


def check_jpeg_layout(layout: JpegLayout, width: int, height: int, *, max_pixels: int | None) -> None:
    """Refuse, from its markers, a JPEG that neither decoder reads, or whose decoding costs far more
    than its pixels: too many scans, too many coefficients held at once, or too little image data."""
    if layout.precision == 12 and layout.frame not in LOSSLESS_FRAMES:
        # libjpeg reads 12-bit DCT JPEGs through another interface, which OpenCV's JPEG decoder does not
        # call, and PIL has no mode for them: both failed, OpenCV after 115 MB for one of 6320x6320.
        raise ImageDecodeError("unsupported image format: a JPEG of 12 bits a sample (a medical or raw converter's): re-save it as an 8-bit JPEG")
    if layout.scans > MAX_JPEG_SCANS:
        raise ImageDecodeError(f"JPEG with {layout.scans:,} scans, above the limit of {MAX_JPEG_SCANS} "
                               "(an ordinary JPEG has 1, a progressive one about 10): re-save it")
    if layout.scans > 1 and max_pixels is not None and layout.blocks * COEFFICIENT_BLOCK_BYTES > 3 * max_pixels:
        raise ImageTooLarge(f"image too large: a {width}x{height} JPEG of {layout.scans} scans is decoded from all its "
                               f"{layout.blocks:,} blocks at once, above the limit of {3 * max_pixels // COEFFICIENT_BLOCK_BYTES:,} "
                               "for a progressive or multi-scan JPEG: re-save it as a baseline JPEG")
    if layout.scans and layout.huffman_sequential and layout.scan_bytes * 4 < layout.blocks:
        # Each block takes at least two bits (its DC and end-of-block codes). libjpeg decodes data that
        # ends early as if zeros followed, with only a warning: a 6000x6000 cut to 625 bytes decoded.
        raise ImageDecodeError(f"truncated JPEG: its {width}x{height} image needs at least {math.ceil(layout.blocks / 4):,} "
                               f"bytes of image data, and the file holds {layout.scan_bytes:,}: re-save it")


def jpeg_scale(width: int, height: int, min_side: int | None) -> int:
    """8, 4 or 2 to decode a JPEG at that fraction of its size, keeping its shorter side at least twice
    ``min_side``; 1 (full scale) without ``min_side``."""
    short = min(width, height)
    # 2x margin so the final resize still downsamples (keeps antialiasing comparable).
    return next((factor for factor in (8, 4, 2) if min_side and short // factor >= 2 * min_side), 1)


def _decode_netpbm(data: bytes) -> np.ndarray:
    """A PBM, PGM or PPM (P1-P6) in native code, its samples scaled from the file's maxval to 0-255.

    PIL decodes the plain (text) kinds, and the binary ones of any maxval but 255, in Python: just
    under the service's 16 MB upload limit, a binary PPM of maxval 1 took it 6.1 s and a plain PPM
    2.4 s, where this takes 23-48 ms (``python -m benchmarks.decode_cost``). A binary raster is read
    as it lies in the file; OpenCV parses the plain ones, and scales their samples itself when they
    fit 8 bits."""
    end, tokens = ppm_header(data)
    try:
        width, height, maxval = int(tokens[1]), int(tokens[2]), int(tokens[3]) if len(tokens) == 4 else 1
    except (IndexError, ValueError):
        raise ImageDecodeError("corrupt PPM header (width, height or maxval is not a number)") from None
    if not 0 < maxval < 65536:
        raise ImageDecodeError(f"corrupt PPM header: maxval {maxval}, outside 1-65535")
    if data[1] in b"456":
        samples = _netpbm_raster(memoryview(data)[end + 1:], data[1:2], width, height, maxval)  # after the header's one whitespace byte
    else:
        samples = _plain_netpbm(data)
        maxval = 255 if samples.dtype == np.uint8 else maxval  # OpenCV scales 8-bit plain samples itself
    if maxval != 255:
        levels = np.arange(65536 if samples.dtype.itemsize == 2 else 256)
        samples = np.rint(np.minimum(levels, maxval) * (255.0 / maxval)).astype(np.uint8)[samples]
    rgb = _array_to_rgb(samples.astype(np.uint8, copy=False))
    return rgb if rgb.flags.writeable else rgb.copy()  # a raster read as it lies is a view of the file's bytes


def _netpbm_raster(raster: memoryview, kind: bytes, width: int, height: int, maxval: int) -> np.ndarray:
    """The samples of a binary PBM (P4: a bit a pixel, 1 is black), PGM (P5) or PPM (P6), unscaled."""
    if kind == b"4":
        row_bytes = (width + 7) // 8
        bits = _netpbm_samples(raster, np.dtype(np.uint8), (height, row_bytes))
        return (1 - np.unpackbits(bits, axis=1)[:, :width]).astype(np.uint8)  # maxval 1, and 1 is black
    dtype = np.dtype(">u2" if maxval > 255 else np.uint8)
    return _netpbm_samples(raster, dtype, (height, width, 3 if kind == b"6" else 1))


def _netpbm_samples(raster: memoryview, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    size = int(np.prod(shape)) * dtype.itemsize
    if len(raster) < size:
        raise ImageDecodeError(f"truncated PPM: {len(raster):,} of the {size:,} raster bytes its header declares")
    return np.frombuffer(raster, dtype, count=size // dtype.itemsize).reshape(shape)


def _plain_netpbm(data: bytes) -> np.ndarray:
    """The samples of a plain (text) PBM, PGM or PPM, as OpenCV reads them."""
    if data[-1:] not in b" \t\r\n":
        data += b"\n"  # OpenCV's reader needs a separator after the last sample, as the format has it
    keep_decoder_warnings_quiet()
    try:
        samples = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    except cv2.error as err:
        raise ImageDecodeError(f"corrupt or undecodable PPM ({opencv_reason(err)})") from None
    if samples is None:
        raise ImageDecodeError("corrupt or truncated PPM (a sample is missing or not a number)")
    return cv2.cvtColor(samples, cv2.COLOR_BGR2RGB) if samples.ndim == 3 else samples


def _decode_with_pil(data: bytes) -> np.ndarray:
    with _pil_errors_as_decode_errors(), Image.open(io.BytesIO(data), formats=DECODED_FORMATS) as img:
        img.load()
        return _pil_to_rgb(img, owned=True)


@contextlib.contextmanager
def _pil_errors_as_decode_errors() -> Iterator[None]:
    try:
        yield
    except ImageDecodeError:
        raise
    except Image.UnidentifiedImageError:  # its text quotes the file object: <_io.BytesIO object at 0x7f...>
        raise ImageDecodeError("corrupt or undecodable image: neither OpenCV nor PIL reads its header") from None
    except Exception as err:  # PIL raises a zoo of types for corrupt data
        raise ImageDecodeError(f"corrupt or truncated image ({type(err).__name__}: {err})") from None


def _pil_to_rgb(img: Image.Image, *, owned: bool) -> np.ndarray:
    """The image as RGB, with fewer full-size copies: ``exif_transpose`` copied every image without an
    orientation, and a palette or alpha image went through RGBA (4 bytes a pixel) and a copy without its
    alpha. An image of one byte a pixel (a GIF's palette indices, or grey) becomes RGB in NumPy:
    PIL's ``convert("RGB")`` holds RGB at 4 bytes a pixel, and NumPy gets a copy of it from ``tobytes``.
    A GIF at the service's pixel limit grew a process by 421 MB that way, now by 193 (``python -m benchmarks.decode_cost``).
    A caller's image (not ``owned``) is turned upright in a copy: in place, ``predict`` rotated it."""
    if owned:
        ImageOps.exif_transpose(img, in_place=True)
    elif img.getexif().get(ExifTags.Base.Orientation, 1) != 1:
        img = ImageOps.exif_transpose(img)
    if img.mode == "F":  # float samples: converting to RGB would clip 0-1 to black
        return _array_to_rgb(np.asarray(img))
    if img.mode.startswith("I;16") or img.mode == "I":  # I;16*: 16-bit in either byte order, scaled as a 16-bit file is
        return _array_to_rgb(_to_8_bits(np.asarray(img), sixteen_bit=img.mode != "I"))
    if img.mode in ("L", "P"):
        rgb = cv2.cvtColor(np.asarray(img), cv2.COLOR_GRAY2RGB)
        return rgb if img.mode == "L" else cv2.LUT(rgb, _palette_colours(img)[None], dst=rgb)  # each index to its colour, in place
    if img.mode != "RGB":
        with warnings.catch_warnings():  # the colours are the palette's, as through RGBA: transparency is dropped either way
            warnings.filterwarnings("ignore", message="Palette images with Transparency", category=UserWarning)
            img = img.convert("RGB")
    return _array_to_rgb(np.asarray(img))


def _palette_colours(img: Image.Image) -> np.ndarray:
    """A palette image's 256 colours as RGB rows, black for indices past its palette as PIL converts them."""
    colours = np.zeros((256, 3), np.uint8)
    palette = np.asarray(img.getpalette("RGB") or [], np.uint8).reshape(-1, 3)[:256]
    colours[:len(palette)] = palette
    return colours


def _to_8_bits(arr: np.ndarray, rows: int = 256, *, sixteen_bit: bool = False) -> np.ndarray:
    """PIL's integer samples as 8 bits: ``sixteen_bit`` ones (I;16) scaled by ``_sixteen_to_8_bits``, as a 16-bit
    file or array is (a dark one, no sample above 255, came out bright as a PIL image and black as its file); 32-bit
    ones (mode I, e.g. a TIFF's) scaled alike, or kept as they are when none is above 255: 8-bit samples held in 32
    bits (``convert("I")``). A block of rows at a time: float64 copies of the whole
    image took 25 bytes a pixel: in a probe, 1 GB for a 2.7 MB PNG at the pixel limit that libpng refused."""
    scaled = sixteen_bit or int(arr.max(initial=0)) > 255
    out = np.empty(arr.shape, np.uint8)
    for start in range(0, arr.shape[0], rows):
        block = np.clip(arr[start:start + rows], 0, 65535).astype(np.uint16)
        out[start:start + rows] = _sixteen_to_8_bits(block) if scaled else block
    return out


def _sixteen_to_8_bits(samples: np.ndarray) -> np.ndarray:
    """16-bit samples as 8 bits, their high byte, as libpng gives OpenCV a 16-bit PNG (``png_set_strip_16``):
    the one scaling of 16-bit images, whichever decoder read them. PIL's were rounded, so a PNG that
    only PIL reads (libpng refuses it) decoded a level apart from one libpng reads."""
    return (samples >> 8).astype(np.uint8)


def _array_to_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 2:  # uint16 in either byte order
        arr = _sixteen_to_8_bits(arr)
    elif arr.dtype.kind == "f":
        arr = _float_to_uint8(arr)
    elif arr.dtype != np.uint8:
        raise ImageDecodeError(f"expected a uint8, uint16 or float image array, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    elif not (arr.ndim == 3 and arr.shape[2] == 3):
        raise ImageDecodeError(f"expected an HxW, HxWx1, HxWx3 or HxWx4 image array, got shape {arr.shape}")
    return np.ascontiguousarray(arr)


# A float image is 0-1 (TIFF, scikit-image, torchvision) unless a pixel is above this: then 0-255, an 8-bit image
# saved as floats. Not 1: a 0-1 image a brightness jitter took to 1.001 in one pixel was read as 0-255, so black. A
# 0-255 image whose brightest pixel is 2 or less is black either way.
FLOAT_0_255_ABOVE = 2.0
# A normalised tensor ((x - mean) / std: about -2.1 to 2.6 with ImageNet's) was clipped to 0-1 and answered without
# a word. Its pixels go below NORMALISED_BELOW, which a 0-1 image's resampling overshoot does not reach (-0.12 at a
# hard edge, Lanczos), and none is above NORMALISED_UNDER, which a 0-255 image's are (its overshoot goes to -28).
NORMALISED_BELOW, NORMALISED_UNDER = -0.5, 10.0


def _float_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Float pixels as 8 bits: 0-1, or 0-255 where a pixel is above ``FLOAT_0_255_ABOVE``; out of range ones clipped."""
    if not np.isfinite(arr).all():
        raise ImageDecodeError("float image with NaN or infinite pixels: re-save it as 8-bit")
    lowest, highest = float(arr.min(initial=0.0)), float(arr.max(initial=0.0))
    if lowest < NORMALISED_BELOW and highest < NORMALISED_UNDER:
        raise ImageDecodeError(f"float image whose pixels run from {lowest:.3g} to {highest:.3g}, as a normalised tensor's do "
                               "((x - mean) / std): pass the image itself, 0-1 or 0-255 floats, or 8-bit")
    top = 255.0 if highest > FLOAT_0_255_ABOVE else 1.0
    scaled = np.clip(arr, 0.0, top)  # one copy (the caller's array is left as it is), then in place
    scaled *= 255.0 / top
    return np.rint(scaled, out=scaled).astype(np.uint8)
