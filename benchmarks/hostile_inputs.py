"""Hostile uploads, made as real encoded files: ``benchmarks.hostile`` sends them to a real service,
``benchmarks.decode_cost`` measures what decoding them costs, and the service tests check that each
is refused as the README documents."""

from __future__ import annotations

import base64
import functools
import gzip
import io
import math
import re
import struct
import zlib
from collections.abc import Callable

import cv2
import numpy as np
from PIL import Image

from gesture_core.images import ADAM7_PASSES


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def noise_jpeg(seed: int = 1, size: int = 96) -> bytes:
    """A valid JPEG of noise: what the bad requests below cut, pad or send in the wrong field."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), np.uint8)
    return encode(Image.fromarray(pixels), "JPEG", quality=90)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    """One PNG chunk: length, type, data and CRC."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A ~100-byte PNG whose header declares ``width`` x ``height`` RGB pixels (7.5 GB decoded)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + png_chunk(b"IEND", b"")


def png_strip(width: int, height: int) -> bytes:
    """A real black PNG of ``width`` x ``height`` (a 39000x1 strip is under 200 bytes)."""
    return encode(Image.new("RGB", (width, height)), "PNG")


def png_with_noise_rows(width: int, height: int, every: int = 32) -> bytes:
    """A black PNG with a row of random pixels every ``every`` rows: as many pixels per byte (about 10
    at 6320x6320) as a structured image, so it passes the service's file-size check and is decoded whole."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[::every] = np.random.default_rng(0).integers(0, 256, pixels[::every].shape, np.uint8)
    ok, encoded = cv2.imencode(".png", pixels)
    assert ok
    return encoded.tobytes()


def small_png_of_many_pixels(side: int = 1800, noise_rows: int = 42) -> bytes:
    """A black PNG with a band of ``noise_rows`` random rows: 3.2 MP in 235 KB, under the service's small-upload
    size (service.service.SMALL_UPLOAD_BYTES) and within its 16 pixels a byte. A batch decoded such uploads on a
    model thread (31 ms each on the Intel Xeon) until BATCH_DECODE_PIXELS sent them to a worker thread first."""
    pixels = np.zeros((side, side, 3), np.uint8)
    pixels[:noise_rows] = np.random.default_rng(0).integers(0, 256, (noise_rows, side, 3), np.uint8)
    ok, encoded = cv2.imencode(".png", pixels)
    assert ok
    return encoded.tobytes()


@functools.cache
def gif_with_noise_rows(width: int, height: int, every: int = 8) -> bytes:
    """A palette GIF (colours, so PIL opens it as P) with a row of random pixels every ``every`` rows:
    about 8 pixels a byte, so the service's file-size check lets it through to the decoder."""
    indices = np.zeros((height, width), np.uint8)
    indices[::every] = np.random.default_rng(0).integers(0, 256, indices[::every].shape, np.uint8)
    image = Image.fromarray(indices, "P")
    image.putpalette(np.random.default_rng(1).integers(0, 256, 768, np.uint8).tolist())
    return encode(image, "GIF")


@functools.cache
def padded_webp(side: int, *, alpha: bool = False, frames: int = 1, size_bytes: int = 0) -> bytes:
    """A flat lossless WebP of ``side`` x ``side``, with alpha or as an animation of ``frames``, padded
    to ``size_bytes`` with a chunk no decoder reads: as many pixels a byte as a photo, for the service's
    file-size check."""
    images = [Image.new("RGBA" if alpha else "RGB", (side, side), (40 * i, 90, 0, 128)) for i in range(frames)]
    data = encode(images[0], "WEBP", save_all=frames > 1, append_images=images[1:], lossless=True)
    padding = max(0, size_bytes - len(data) - 8)
    chunks = data[12:] + b"PADD" + struct.pack("<I", padding) + bytes(padding)
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WEBP" + chunks


def riff_chunk(kind: bytes, body: bytes) -> bytes:
    """One RIFF chunk of a WebP: its kind, its size, its body, and a pad byte after an odd one."""
    return kind + struct.pack("<I", len(body)) + body + b"\x00" * (len(body) % 2)


@functools.cache
def webp_animation_of_one_frame(width: int, height: int) -> bytes:
    """A WebP whose extended header (VP8X) marks it an animation, holding one flat lossless frame:
    PIL reads it as RGB of one frame, and OpenCV decodes it through an animation's canvas."""
    still = encode(Image.new("RGB", (width, height), (90, 40, 0)), "WEBP", lossless=True)
    frame = riff_chunk(b"VP8L", still[20:20 + int.from_bytes(still[16:20], "little")])
    size = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    chunks = (riff_chunk(b"VP8X", bytes([0x02, 0, 0, 0]) + size) + riff_chunk(b"ANIM", bytes(6))
              + riff_chunk(b"ANMF", bytes(6) + size + (100).to_bytes(3, "little") + b"\x00" + frame))
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WEBP" + chunks


@functools.cache
def flat_png(width: int = 6000, height: int = 6000) -> bytes:
    """A real, valid black PNG: 105 KB that takes about 0.4 s and 108 MB to decode at 6000x6000 (benchmarks.decode_cost)."""
    ok, encoded = cv2.imencode(".png", np.zeros((height, width, 3), np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert ok
    return encoded.tobytes()


@functools.cache
def progressive_jpeg(width: int, height: int, repeated_scans: int = 0) -> bytes:
    """A real black progressive JPEG (libjpeg's ten scans), with its first luma AC scan repeated
    ``repeated_scans`` more times before the end. libjpeg decodes it, with a warning, and every repeat
    costs a pass over every block of the image for under 100 bytes of file: the JPEG scan bomb
    (libjpeg-turbo's LJT-01-003)."""
    data = encode(Image.new("RGB", (width, height)), "JPEG", progressive=True, quality=90)
    if not repeated_scans:
        return data
    markers = [m.start() for m in re.finditer(rb"\xff(?=[^\x00\xd0-\xd7\xff])", data)] + [len(data)]
    scans = [data[start:end] for start, end in zip(markers, markers[1:], strict=False) if data[start + 1] == 0xDA]
    # A scan: marker, length (2 bytes), component count, (component, tables) for each, then Ss, Se, Ah|Al.
    luma_ac = next(s for s in scans if s[4] == 1 and s[5] == 1 and s[7] > 0 and s[9] >> 4 == 0)
    end = data.rindex(b"\xff\xd9")
    return data[:end] + luma_ac * repeated_scans + data[end:]


def jpeg_segment(marker: int, body: bytes) -> bytes:
    """One JPEG marker segment: 0xFF, the marker, the length and the body."""
    return struct.pack(">BBH", 0xFF, marker, len(body) + 2) + body


def jpeg_without_image_data(width: int, height: int, kind: str) -> bytes:
    """A colour JPEG of ``width`` x ``height`` (three components, no subsampling) whose one scan holds no
    image data, which libjpeg decodes anyway as if zeros followed: ``"arithmetic"`` (arithmetic-coded
    sequential, SOF9, 106 bytes; the standard lets an encoder drop the trailing zero bytes of such data,
    and libjpeg says nothing) or ``"lossless"`` (SOF3 with one 1-bit Huffman code, 67 bytes; a warning)."""
    frame, tables, scan_tail = {"arithmetic": (0xC9, jpeg_segment(0xDB, b"\x00" + bytes([1] * 64)), b"\x00\x3f\x00"),
                                "lossless": (0xC3, jpeg_segment(0xC4, b"\x00" + bytes([1] + [0] * 15) + b"\x00"), b"\x01\x00\x00")}[kind]
    components = b"".join(bytes([c, 0x11, 0]) for c in (1, 2, 3))
    scan = jpeg_segment(0xDA, b"\x03" + b"".join(bytes([c, 0]) for c in (1, 2, 3)) + scan_tail)
    padding = b"\x00" * 8 if kind == "lossless" else b""
    return b"\xff\xd8" + tables + jpeg_segment(frame, struct.pack(">BHHB", 8, height, width, 3) + components) + scan + padding + b"\xff\xd9"


@functools.cache
def sparse_jpeg(width: int, height: int, subsampled: bool = True, interleaved: bool = True) -> bytes:
    """A flat colour baseline JPEG in the fewest bytes one can have: each 8x8 block two bits, a 1-bit
    code for "no change of colour" and one for "end of block". Its colour is subsampled 4:2:0 or
    kept in full (4:4:4); ``interleaved`` has all three components in one scan, as encoders write them,
    else one scan each, which libjpeg decodes from all the image's coefficients held at once."""
    sampling = [(2, 2), (1, 1), (1, 1)] if subsampled else [(1, 1)] * 3
    most = max(h for h, _ in sampling)
    components = b"".join(bytes([c + 1, h << 4 | v, 0]) for c, (h, v) in enumerate(sampling))
    code_of_zero = bytes([1] + [0] * 15) + b"\x00"  # one code of one bit, for symbol 0: a category-0 DC, or an end of block
    header = (b"\xff\xd8" + jpeg_segment(0xDB, b"\x00" + bytes([1] * 64))
              + jpeg_segment(0xC0, struct.pack(">BHHB", 8, height, width, 3) + components)
              + jpeg_segment(0xC4, b"\x00" + code_of_zero) + jpeg_segment(0xC4, b"\x10" + code_of_zero))

    def scan(ids: list[int], blocks: int) -> bytes:
        return jpeg_segment(0xDA, bytes([len(ids)]) + b"".join(bytes([c + 1, 0]) for c in ids) + b"\x00\x3f\x00") + bytes(-(-2 * blocks // 8))

    def blocks_of(h: int, v: int) -> int:
        return math.ceil(math.ceil(width * h / most) / 8) * math.ceil(math.ceil(height * v / most) / 8)

    if interleaved:
        units = math.ceil(width / (8 * most)) * math.ceil(height / (8 * most))  # each holds every component's blocks
        scans = scan([0, 1, 2], units * sum(h * v for h, v in sampling))
    else:
        scans = b"".join(scan([c], blocks_of(h, v)) for c, (h, v) in enumerate(sampling))
    return header + scans + b"\xff\xd9"


@functools.cache
def jpeg_cut_after_its_header(width: int, height: int) -> bytes:
    """A real black baseline JPEG of ``width`` x ``height`` with its image data cut out and its end marker
    kept: about 600 bytes, which libjpeg decodes whole, with a warning, as if zeros followed."""
    data = encode(Image.new("RGB", (width, height)), "JPEG")
    scan = data.index(b"\xff\xda")
    return data[:scan + 2 + int.from_bytes(data[scan + 2:scan + 4], "big")] + b"\xff\xd9"


@functools.cache
def jpeg_hiding_its_frame(jpeg: bytes, decoy: tuple[int, int] = (100, 100)) -> bytes:
    """``jpeg`` with a stuffed zero (0xFF 0x00) right after its start marker and a frame header of
    ``decoy`` (width, height) inside an APP1 segment after its own. libjpeg and PIL skip the stuffed
    zero and the bytes after it as junk and read the real frame header; a walk that takes the zero for
    a segment with a length jumps over it to the decoy."""
    i = 2
    while jpeg[i + 1] not in (0xC0, 0xC1, 0xC2):  # the segments up to and including the frame header
        i += 2 + int.from_bytes(jpeg[i + 2:i + 4], "big")
    frame_end = i + 2 + int.from_bytes(jpeg[i + 2:i + 4], "big")
    app1 = jpeg_segment(0xE1, b"pad!" + jpeg_segment(0xC0, struct.pack(">BHHB", 8, decoy[1], decoy[0], 1) + b"\x01\x11\x00"))
    # From the length field of the stuffed zero over the real segments, APP1's marker and length and its 4 bytes of padding.
    length = struct.pack(">H", frame_end - 2 + 10)
    assert 0xFF not in length, "a 0xFF in the length would end libjpeg's junk early"
    return b"\xff\xd8\xff\x00" + length + jpeg[2:frame_end] + app1 + jpeg[frame_end:]


def tiff_listing_its_size_twice(width: int, height: int, decoy: tuple[int, int] = (100, 100)) -> bytes:
    """A black deflate-compressed grey TIFF of ``width`` x ``height`` whose directory lists its size
    again, as ``decoy``, after the real one: libtiff reads the first of a repeated tag, PIL the last."""
    return tiff_listing_again(width, height, {256: decoy[0], 257: decoy[1]})


def tiff_listing_again(width: int, height: int, again: dict[int, int]) -> bytes:
    """A black deflate-compressed grey TIFF of ``width`` x ``height`` whose directory lists the tags of
    ``again`` a second time, with those values (as LONGs), after its size."""
    pixels = zlib.compress(bytes(width * height), 9)
    entries = [(256, 4, 1, width), (257, 4, 1, height), *((tag, 4, 1, value) for tag, value in again.items()), (258, 3, 1, 8),
               (259, 3, 1, 8), (262, 3, 1, 1), (273, 4, 1, 0), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, len(pixels))]
    return little_endian_tiff(entries, {273: tiff_data_offset(entries)}, pixels)


def gif_header_then_junk(junk_bytes: int) -> bytes:
    """A GIF's screen descriptor and colour table, then zeros where its first image should begin, and
    its trailer."""
    gif = encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), np.uint8)), "GIF")
    table = 3 << ((gif[10] & 7) + 1) if gif[10] & 0x80 else 0
    return gif[:13 + table] + bytes(junk_bytes) + b";"


def ico_holding_png(width: int = 8000, height: int = 8000) -> bytes:
    """An ICO file whose one icon is a flat PNG of ``width`` x ``height`` (186 KB at 8000x8000). Its
    directory says 256x256, and PIL's ICO reader decodes the PNG as it opens the file, so reading
    "the header" with PIL costs the whole decode."""
    png = encode(Image.new("RGB", (width, height)), "PNG", optimize=True)
    directory = struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 22)
    return directory + png


def empty_frames() -> dict[str, np.ndarray]:
    """RGB frames with nothing in them, as a webcam shows when nobody is there: a covered lens, blank
    walls, a dark room's sensor noise. Each decodes and classifies; only "no gesture" is right."""
    rng = np.random.default_rng(0)
    frames = {f"uniform {level}": np.full((240, 320, 3), level, np.uint8) for level in (0, 16, 128, 255)}
    frames["skin-coloured wall"] = np.full((240, 320, 3), (224, 172, 105), np.uint8)
    frames["dark sensor noise"] = rng.integers(0, 20, (240, 320, 3), dtype=np.uint8)
    frames["bright noise"] = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    frames["gradient"] = np.tile(np.linspace(0, 255, 320, dtype=np.uint8)[None, :, None], (240, 1, 3))
    return frames


def many_header_units(fmt: str, units: int) -> bytes:
    """A valid 32x32 image of ``fmt`` (JPEG, PNG, GIF, PPM, PFM, TIFF) whose header is padded with ``units`` of
    the smallest unit its format allows, all before the pixels: empty comment segments (JPEG), empty
    text chunks (PNG), one-byte comment extensions (GIF: two units each, the extension and its
    sub-block), comment lines (PPM, PFM: one unit a byte), or private tags in its directory (TIFF)."""
    pixels = Image.fromarray(np.zeros((32, 32, 3), np.uint8))
    if fmt == "JPEG":
        data = encode(pixels, "JPEG")
        return data[:2] + b"\xff\xfe\x00\x02" * units + data[2:]
    if fmt == "PNG":
        data = encode(pixels, "PNG")
        empty_text = b"\x00\x00\x00\x00tEXt" + zlib.crc32(b"tEXt").to_bytes(4, "big")
        return data[:33] + empty_text * units + data[33:]  # after the signature and IHDR
    if fmt == "GIF":
        data = encode(pixels, "GIF")
        table = 3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0
        return data[:13 + table] + b"\x21\xfe\x01x\x00" * (units // 2) + data[13 + table:]  # after the global colour table
    if fmt == "PPM":
        return b"P6\n" + b"#\n" * (units // 2) + b"32 32\n255\n" + bytes(32 * 32 * 3)
    if fmt == "PFM":  # the grey float map PIL's PPM reader also opens
        return b"Pf\n" + b"#\n" * (units // 2) + b"32 32\n-1.0\n" + bytes(32 * 32 * 4)
    if fmt == "TIFF":  # the directory's own 9 entries, then private tags, one SHORT each
        tags = [(256, 32), (257, 32), (258, 8), (259, 1), (262, 2), (273, 0), (277, 3), (278, 32), (279, 32 * 32 * 3)]
        if units > 65535:
            raise ValueError(f"a TIFF directory holds at most 65,535 entries, not {units:,}")
        tags = sorted(tags + [(1000 + i % 30000, 0) for i in range(max(0, units - len(tags)))])  # unassigned tag numbers
        pixels_at = 8 + 2 + 12 * len(tags) + 4
        directory = b"".join(struct.pack("<HHII", tag, 4 if tag in (273, 279) else 3, 1, pixels_at if tag == 273 else value)
                             for tag, value in tags)
        return b"II*\x00" + struct.pack("<IH", 8, len(tags)) + directory + bytes(4) + bytes(32 * 32 * 3)
    raise ValueError(f"fmt {fmt!r}: choose JPEG, PNG, GIF, PPM, PFM or TIFF")


def float_bigtiff(pixels: np.ndarray) -> bytes:
    """An uncompressed one-strip little-endian BigTIFF of float32 samples, (H, W) or (H, W, 3): neither
    OpenCV nor PIL writes one, and PIL cannot open the colour kind."""
    pixels = np.ascontiguousarray(pixels, "<f4")
    height, width, channels = *pixels.shape[:2], 1 if pixels.ndim == 2 else pixels.shape[2]
    fields = [(256, 4, [width]), (257, 4, [height]), (258, 3, [32] * channels), (259, 3, [1]), (262, 3, [2 if channels == 3 else 1]),
              (273, 16, [0]), (277, 3, [channels]), (278, 4, [height]), (279, 16, [pixels.nbytes]), (284, 3, [1]), (339, 3, [3] * channels)]
    pixels_at = 16 + 8 + 20 * len(fields) + 8  # header, entry count, entries, next-directory offset
    sizes = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8: up to 8 bytes of values sit in the entry
    directory = b"".join(struct.pack("<HHQ", tag, kind, len(values)) + struct.pack(f"<{len(values)}{sizes[kind]}", *([pixels_at] if tag == 273 else values)).ljust(8, b"\0")
                         for tag, kind, values in fields)
    return b"II+\x00" + struct.pack("<HHQQ", 8, 0, 16, len(fields)) + directory + bytes(8) + pixels.tobytes()


def png_with_text_chunks(count: int = 95, text_bytes: int = 1_000_000) -> bytes:
    """A 64x64 noise PNG with ``count`` compressed text chunks (zTXt) of ``text_bytes`` each before its
    pixels: under the chunk limit, and about 1 KB a chunk, but PIL's reader inflates every one to open it."""
    chunk = png_chunk(b"zTXt", b"k\x00\x00" + zlib.compress(b"a" * text_bytes, 9))
    png = encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)), "PNG")
    return png[:33] + chunk * count + png[33:]  # after the signature and IHDR


def tiff_of_strips(width: int, height: int, strips: int) -> bytes:
    """A black 8-bit grey TIFF whose directory lists ``strips`` strip offsets, one row a strip, all at
    the same row of pixels: 8 bytes of file a strip, each an object in Python for PIL's reader."""
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1), (273, 4, strips, 0),
               (277, 3, 1, 1), (278, 4, 1, 1), (279, 4, strips, 0), (284, 3, 1, 1)]
    offsets_at = tiff_data_offset(entries)
    counts_at, pixels_at = offsets_at + 4 * strips, offsets_at + 8 * strips
    values = {273: offsets_at if strips > 1 else pixels_at, 279: counts_at if strips > 1 else width}
    offsets, counts = struct.pack(f"<{strips}I", *[pixels_at] * strips), struct.pack(f"<{strips}I", *[width] * strips)
    return little_endian_tiff(entries, values, offsets + counts + bytes(width))


def little_endian_tiff(entries: list[tuple[int, int, int, int]], values: dict[int, int], data: bytes) -> bytes:
    """A TIFF of one directory of ``entries`` (tag, type, count, value; ``values`` replaces the value of
    the tags it names), then ``data``, which starts at ``tiff_data_offset(entries)``."""
    directory = b"".join(struct.pack("<HHII", tag, kind, count, values.get(tag, value)) for tag, kind, count, value in entries)
    return b"II*\x00" + struct.pack("<IH", 8, len(entries)) + directory + bytes(4) + data


def tiff_data_offset(entries: list[tuple[int, int, int, int]]) -> int:
    """Where ``little_endian_tiff``'s data starts: after the header, the entry count, the entries and the next directory's offset."""
    return 8 + 2 + 12 * len(entries) + 4


def exif_bomb(entries: int = 65_535, value_bytes: int = 200_000) -> bytes:
    """An EXIF block (a little-endian TIFF directory) of ``entries`` ImageDescription entries that all
    point at one ``value_bytes`` string: a decoder that copies each entry's value copies it that often."""
    value_at = 8 + 2 + 12 * entries + 4
    return (b"II*\x00" + struct.pack("<IH", 8, entries) + struct.pack("<HHII", 0x010E, 2, value_bytes, value_at) * entries
            + bytes(4) + b"A" * value_bytes)


def with_exif(fmt: str, exif: bytes) -> bytes:
    """A 64x64 noise image of ``fmt`` (PNG: an eXIf chunk, WEBP: an EXIF chunk) carrying ``exif``."""
    pixels = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8))
    return encode(pixels, fmt, exif=exif, **({"lossless": True} if fmt == "WEBP" else {}))


def png_of_rows(pixels: np.ndarray, interlaced: bool = False, extra_zeros: int = 0, idat_chunks: int = 1) -> bytes:
    """An 8-bit RGB PNG of ``pixels`` written by hand, so that it can be interlaced (Adam7, which
    neither OpenCV nor PIL writes), carry ``extra_zeros`` bytes of zeros after the image inside its
    compressed data, which inflate for nothing (1 GB from about 1 MB of file), or split that data into
    ``idat_chunks`` chunks (libpng writes one per 8 KB; thousands of a few bytes each cost a reader a
    step each)."""
    height, width = pixels.shape[:2]
    passes = ADAM7_PASSES if interlaced else ((0, 0, 1, 1),)
    rows = b"".join(b"\x00" + row.tobytes() for x0, y0, dx, dy in passes for row in pixels[y0::dy, x0::dx] if row.size)
    deflate = zlib.compressobj(9)
    stream = deflate.compress(rows) + b"".join(deflate.compress(bytes(1 << 20)) for _ in range(extra_zeros >> 20))
    stream += deflate.compress(bytes(extra_zeros & ((1 << 20) - 1))) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, int(interlaced))
    pieces = (stream[len(stream) * n // idat_chunks:len(stream) * (n + 1) // idat_chunks] for n in range(idat_chunks))
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + b"".join(png_chunk(b"IDAT", piece) for piece in pieces) + png_chunk(b"IEND", b"")


def netpbm(kind: int, samples: np.ndarray, maxval: int = 255) -> bytes:
    """A PBM, PGM or PPM (``kind`` 1-6) of ``samples``: (H, W) for P1, P2, P4 and P5 (0/1 for the
    bitmaps, 1 black), (H, W, 3) for P3 and P6; 2-byte samples in the binary kinds above maxval 255.
    The plain (text) kinds and the binary ones of any maxval but 255 are what PIL decodes in Python."""
    height, width = samples.shape[:2]
    header = f"P{kind}\n{width} {height}\n" + ("" if kind in (1, 4) else f"{maxval}\n")
    if kind in (1, 2, 3):
        return header.encode() + " ".join(map(str, samples.ravel().tolist())).encode() + b"\n"
    if kind == 4:
        return header.encode() + np.packbits(samples.astype(np.uint8), axis=1).tobytes()
    return header.encode() + samples.astype(">u2" if maxval > 255 else np.uint8).tobytes()


def bad_uploads() -> dict[str, tuple[bytes, str]]:
    """name -> (file bytes, a phrase the 4xx reason must contain)."""
    whole = noise_jpeg(3, 160)
    return {
        "text": (b"this is not an image\n" * 20, "not a recognised image format"),
        "empty": (b"", "empty"),
        "three_bytes": (b"hi\n", "not a recognised image format"),  # shorter than some of PIL's format tests read
        "truncated_jpeg": (whole[: len(whole) * 2 // 3], "truncated"),
        "decompression_bomb": (png_bomb(), "too large"),
        "garbage_after_jpeg_header": (whole[:200] + bytes(range(256)) * 8, "truncated"),
        "jpeg_cut_before_its_header": (whole[:40], "truncated JPEG"),
        # A JPEG's or a GIF's header, then 3 MB of zeros: PIL skipped them one byte at a time (benchmarks/decode_cost.py).
        "jpeg_header_then_3_mb_of_junk": (whole[:20] + bytes(3 << 20) + b"\xff\xd9", "truncated or corrupt JPEG"),
        "gif_header_then_3_mb_of_junk": (gif_header_then_junk(3 << 20), "truncated or corrupt GIF"),
        # Tiny files that resizing the shorter side to the model's size would make huge (+1.7 GB for 39000x1).
        "strip_39000x1": (png_strip(39_000, 1), "extreme aspect ratio"),
        "strip_1000000x1": (png_strip(1_000_000, 1), "extreme aspect ratio"),
        "strip_1x12000": (png_strip(1, 12_000), "extreme aspect ratio"),
        # Valid, under the pixel limit, and tiny: refused from the header, as too many pixels for its bytes.
        "flat_png_6000x6000": (flat_png(), "too large for its file size"),
        # Progressive JPEG keeps the full-size coefficients at any decoding scale, so it is held to the same limit.
        "flat_progressive_jpeg_4000x4000": (progressive_jpeg(4000, 4000), "too large for its file size"),
        # Small and under every size limit, but 1000 extra passes over the image (a second at 4000x4000).
        "jpeg_scan_bomb": (progressive_jpeg(1000, 1000, repeated_scans=1000), "scans, above the limit"),
        # JPEGs of a few hundred bytes that libjpeg decodes as 6000x6000 images: arithmetic-coded or lossless
        # ones are held to the pixels-per-byte limit, and a baseline one needs two bits per 8x8 block.
        "arithmetic_coded_jpeg_6000x6000": (jpeg_without_image_data(6000, 6000, "arithmetic"), "too large for its file size"),
        "lossless_jpeg_6000x6000": (jpeg_without_image_data(6000, 6000, "lossless"), "too large for its file size"),
        "jpeg_cut_after_its_header_6000x6000": (jpeg_cut_after_its_header(6000, 6000), "truncated JPEG: its 6000x6000 image needs"),
        # Headers that read two ways: a checker that read the small one let the decoder make the large one.
        "jpeg_hiding_its_12000x12000_frame_behind_a_stuffed_zero": (jpeg_hiding_its_frame(sparse_jpeg(12000, 12000)), "image too large: 12000x12000"),
        "tiff_listing_its_4000x4000_size_twice": (tiff_listing_its_size_twice(4000, 4000), "TIFF whose directory lists its tag 256 twice"),
        # Formats PIL reads and the product does not: refused by name from their first bytes, unparsed.
        "ico_holding_an_8000x8000_png": (ico_holding_png(), "unsupported image format ICO"),
        "eps": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 640 480\n%%EndComments\nshowpage\n", "unsupported image format EPS"),
        # Headers of a few KB that PIL would parse unit by unit in Python (16 MB of them: 2.5-5.4 s).
        "jpeg_of_2000_segments": (many_header_units("JPEG", 2000), "JPEG with more than 1,000 segments before its pixels"),
        "png_of_2000_chunks": (many_header_units("PNG", 2000), "PNG with more than 100 chunks besides its pixels"),
        "gif_of_2000_blocks": (many_header_units("GIF", 2000), "GIF with more than 1,000 blocks before its pixels"),
        "ppm_with_a_10000_byte_header": (many_header_units("PPM", 10_000), "PPM with more than 4,096 header bytes, far more than any photo"),
        "tiff_of_2000_directory_entries": (many_header_units("TIFF", 2000), "TIFF with more than 1,000 directory entries, far more than any photo"),
    }


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


BOUNDARY = "gesture-test-boundary"


def form_part(name: str, content: bytes, filename: str | None = None, headers: tuple[str, ...] = ()) -> bytes:
    """One part of a multipart/form-data body, written by hand so that it can break the rules."""
    disposition = f'Content-Disposition: form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    lines = [disposition, *headers, *(["Content-Type: image/jpeg"] if filename is not None else [])]
    return f"--{BOUNDARY}\r\n".encode() + "\r\n".join(lines).encode() + b"\r\n\r\n" + content + b"\r\n"


def multipart(*parts: bytes) -> dict:
    """``post`` keyword arguments for a multipart body made of ``parts`` (``form_part``)."""
    return {"content": b"".join(parts) + f"--{BOUNDARY}--\r\n".encode(), "headers": {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}}


def with_content(request: dict, change: Callable[[bytes], bytes]) -> dict:
    return {**request, "content": change(request["content"])}


def http_bad_requests(upload_limit_bytes: int) -> dict[str, dict]:
    """name -> keyword arguments for httpx/TestClient ``post``: each must get a 4xx with a JSON reason."""
    image = noise_jpeg(1)
    cases = {f"file_{name}": {"files": {"image": (f"{name}.bin", data)}} for name, (data, _) in bad_uploads().items()}
    cases.update({
        "empty_body": {},
        "wrong_field_name": {"files": {"file": ("hand.jpg", image)}},
        "text_in_file_field": {"data": {"image": "http://127.0.0.1:1/x.jpg"}},
        "urlencoded": {"content": b"image=hello", "headers": {"content-type": "application/x-www-form-urlencoded"}},
        "raw_jpeg_body": {"content": image, "headers": {"content-type": "image/jpeg"}},
        "not_json": {"content": b"{not json", "headers": {"content-type": "application/json"}},
        "json_with_byte_order_mark": {"content": b'\xef\xbb\xbf{"image_b64": "%s"}' % b64(image).encode(), "headers": {"content-type": "application/json"}},
        "bad_base64": {"json": {"image_b64": "!!!"}},
        "path_instead_of_file": {"json": {"image": "/etc/passwd"}},
        "top_k_zero": {"files": {"image": ("a.jpg", image)}, "data": {"top_k": "0"}},
        "threshold_above_one": {"json": {"image_b64": b64(image), "threshold": 1.5}},
        "threshold_nan": {"content": b'{"image_b64": "%s", "threshold": NaN}' % b64(image).encode(), "headers": {"content-type": "application/json"}},
        "multipart_without_boundary": {"content": b"xx", "headers": {"content-type": "multipart/form-data"}},
        "multipart_cut_short": {"content": form_part("image", image, "a.jpg")[:-200], "headers": multipart()["headers"]},
        "upload_over_limit": {"files": {"image": ("big.jpg", b"\xff" * (upload_limit_bytes + 1))}},
        # Bodies that BentoML's own parsing answered with a 500 (service/http_guard.py says why).
        "json_nested_deeper_than_the_parser_allows": {"content": b'{"image_b64": ' + b"[" * 990 + b"]" * 990 + b"}",
                                                      "headers": {"content-type": "application/json"}},
        # Bodies that take Python seconds to parse at 16 MB (of the event loop's time), refused after a count.
        "json_nested_100000_deep": {"content": b'{"image_b64": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                                    "headers": {"content-type": "application/json"}},
        "json_of_200000_keys": {"content": ("{" + ",".join(f'"k{i}": 0' for i in range(200_000)) + "}").encode(),
                                "headers": {"content-type": "application/json"}},
        # As BentoML parses it, JSON under any type but a form's or a file's: a browser's fetch() sends text/plain.
        "json_of_200000_keys_as_text": {"content": ("{" + ",".join(f'"k{i}": 0' for i in range(200_000)) + "}").encode(),
                                        "headers": {"content-type": "text/plain;charset=UTF-8"}},
        "urlencoded_1001_fields": {"content": b"&".join([b"top_k=1"] * 1_001), "headers": {"content-type": "application/x-www-form-urlencoded"}},
        "multipart_of_2500_parts": multipart(*[form_part("top_k", b"1")] * 2_500),
        "part_with_too_many_headers": multipart(form_part("image", image, "a.jpg", headers=tuple(f"X-Note-{i}: x" for i in range(9)))),
        "part_header_line_over_limit": multipart(form_part("image", image, "a.jpg", headers=("X-Note: " + "x" * 5_000,))),
        "file_name_over_limit": multipart(form_part("image", image, "a" * 296 + ".jpg")),
        "file_name_with_a_nul_byte": multipart(form_part("image", image, "a\x00.jpg")),
        "file_name_of_150_latin_1_bytes": with_content(multipart(form_part("image", image, "NAME.jpg")), lambda body: body.replace(b"NAME", b"\xe9" * 150)),
        "text_field_over_limit": multipart(form_part("image", image, "a.jpg"), form_part("top_k", b" " * 2_000_000 + b"3")),
        "over_a_thousand_files": multipart(*[form_part("image", b"x", "a.jpg")] * 1_001),
        # Bodies python-multipart refuses (BentoML answered a 500), or reads otherwise than a split would.
        "multipart_with_a_preamble": with_content(multipart(form_part("image", image, "a.jpg")), lambda body: b"hello\r\n" + body),
        "multipart_header_without_a_colon": multipart(form_part("image", image, "a.jpg", headers=("X-Note x",))),
        "file_in_base64_transfer_encoding": multipart(form_part("image", b64(image).encode(), "a.jpg", headers=("Content-Transfer-Encoding: base64",))),
        "part_named_twice": multipart(form_part("image", image, "a.jpg", headers=('Content-Disposition: form-data; name="top_k"; filename="x"',))),
        # An answer that quoted the field's name whole was six times the size of the request.
        # Neither BentoML nor Starlette decompresses a request body: it was "Invalid JSON".
        "gzip_encoded_json": {"content": gzip.compress(b'{"image_b64": "%s"}' % b64(image).encode()),
                              "headers": {"content-type": "application/json", "content-encoding": "gzip"}},
        "top_k_of_a_million_characters": {"json": {"image_b64": b64(image), "top_k": "x" * 1_000_000}},
        # BentoML reads a form's text fields as JSON, and answered what its parser raised besides
        # "not JSON" with a 500; a long list took seconds to validate, and its answer listed every item.
        "form_field_nested_1000_deep": multipart(form_part("image", image, "a.jpg"), form_part("top_k", b"[" * 1000 + b"]" * 1000)),
        "form_field_of_300000_values": multipart(form_part("image", image, "a.jpg"), form_part("top_k", b"[" + b"0," * 299_999 + b"0]")),
        "form_field_of_a_5000_digit_number": multipart(form_part("image", image, "a.jpg"), form_part("threshold", b"1" * 5_000)),
        "urlencoded_field_over_limit": {"content": b"image_b64=" + b"A" * 1_100_000, "headers": {"content-type": "application/x-www-form-urlencoded"}},
        "gzip_in_a_second_content_encoding_header": {"content": gzip.compress(b'{"image_b64": "%s"}' % b64(image).encode()),
                                                     "headers": [("content-type", "application/json"), ("content-encoding", "identity"),
                                                                 ("content-encoding", "gzip")]},
        "unknown_field_of_a_million_characters": {"content": b"\x01" * 1_000_000 + b"=1", "headers": {"content-type": "application/x-www-form-urlencoded"}},
    })
    return cases
