"""What decoding costs against what the file weighs: the figures behind the service's pixels-per-byte
limit (``gesture_core.images.SMALL_IMAGE_PIXELS``) and the scan limit on JPEG (``MAX_JPEG_SCANS``).

    .venv/bin/python -m benchmarks.decode_cost

Prints, for flat (black) images of a few sizes, the file's bytes, its pixels per byte and the time and
memory a full decode takes with the limit off, and whether the service's limit refuses it; then, for
progressive JPEGs with extra scans, what decoding them would cost without the scan limit; then the
bytes per pixel of real photos from each shared set, re-encoded as PNG, and of their own JPEGs, and
the most scans any of their JPEG files has and the fewest bits of image data per 8x8 block; what merely opening an ICO file costs in PIL, which
is why only ``gesture_core.images.DECODED_FORMATS`` are ever opened; what PIL takes to open 16 MB
headers of the smallest units (``HEADER_LIMITS``), a JPEG's or a GIF's header followed by megabytes of junk, a PNG's text chunks and a TIFF's strip offsets;
what OpenCV takes for an EXIF block of many entries on one value, and for a PNG whose compressed
data goes on after its image or comes in thousands of chunks; what JPEGs of a few hundred bytes that declare 6000x6000 pixels
(arithmetic-coded, lossless, or cut after the header) cost OpenCV; what PIL's Python decoders take for
PBM, PGM and PPM uploads near the size limit, against the product's decode; how much memory images
of each kind at the service's pixel limit take to decode (``WEBP_CANVAS``, ``COEFFICIENT_BLOCK_BYTES``);
and what the header read before every decode costs beside the decode itself.
"""

from __future__ import annotations

import io
import math
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from benchmarks.common import describe_machine
from benchmarks.hostile_inputs import (
    encode,
    exif_bomb,
    gif_header_then_junk,
    gif_with_noise_rows,
    ico_holding_png,
    jpeg_cut_after_its_header,
    jpeg_without_image_data,
    many_header_units,
    netpbm,
    noise_jpeg,
    padded_webp,
    png_of_rows,
    png_with_noise_rows,
    png_with_text_chunks,
    progressive_jpeg,
    sparse_jpeg,
    tiff_of_strips,
    with_exif,
)
from benchmarks.recipes import SHARED_DATA
from benchmarks.serve_latency import load_images
from gesture_core import DataConfig, ImageDecodeError, read_rgb
from gesture_core.cli import CommandParser, command
from gesture_core.images import PNG_CHUNKS_WALKED, decode_flag, jpeg_layout, jpeg_scale, probe_image
from gesture_core.native_output import native_stream_to
from service.settings import Settings
from training.cli import int_at_least

FLAT_SIZES = [(2000, 1500), (4000, 3000), (6000, 6000), (6324, 6324)]
SCAN_CASES = [(2000, 1000, 0), (2000, 1000, 90), (2000, 1000, 1000), (4000, 4000, 1000), (8000, 8000, 1000)]
MODEL_RESIZE = DataConfig().resize_size  # the default model's: what Preprocess.read asks JPEG decoding for


def flat(fmt: str, width: int, height: int) -> bytes:
    ok, encoded = cv2.imencode(fmt, np.zeros((height, width, 3), np.uint8))
    assert ok
    return encoded.tobytes()


def decode_seconds(data: bytes, **read_kwargs) -> float:
    started = time.perf_counter()
    read_rgb(data, max_pixels=None, **read_kwargs)
    return time.perf_counter() - started


def refused(data: bytes) -> str:
    try:
        read_rgb(data, **Settings().decode_limits(), min_side=MODEL_RESIZE)
    except ImageDecodeError:
        return "refused"
    return "decoded"


def flat_rows() -> None:
    print("| image | file bytes | pixels per byte | full decode | decode at the default model's scale | decoded MB (full) | the service |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for fmt in (".png", ".jpg"):
        for width, height in FLAT_SIZES:
            data = flat(fmt, width, height)
            full = min(decode_seconds(data) for _ in range(3))
            reduced = min(decode_seconds(data, min_side=MODEL_RESIZE) for _ in range(3))
            print(f"| flat {width}x{height} {fmt[1:].upper()} | {len(data):,} | {width * height / len(data):.1f} | "
                  f"{full * 1000:.0f} ms | {reduced * 1000:.0f} ms | {width * height * 3 / 1e6:.0f} | {refused(data)} |")


def scan_rows() -> None:
    """Progressive JPEGs with one scan repeated: the decoder's time at the model's scale without the
    scan limit (OpenCV called directly, as read_rgb would call it), and what read_rgb says now."""
    print("\n| progressive JPEG, black | scans | file bytes | decode at the model's scale, no scan limit | the service |\n"
          "| --- | ---: | ---: | ---: | --- |")
    for width, height, repeated in SCAN_CASES:
        data = progressive_jpeg(width, height, repeated)
        flag = decode_flag(jpeg_scale(width, height, MODEL_RESIZE))
        seconds = timed(lambda d=data, f=flag: opencv_decode(d, f))
        print(f"| {width}x{height} | {jpeg_layout(data).scans} | {len(data):,} | {seconds * 1000:,.0f} ms | {refused(data)} |")


def format_rows() -> None:
    """An ICO whose icon is a large flat PNG: its directory claims 256x256, and PIL's ICO reader decodes
    the PNG inside while it opens the file. Timed: PIL's own open, as a probe of any format would run it."""
    print("\n| ICO holding a black PNG | file bytes | PIL's Image.open alone (any format allowed) | size it reports | the service |\n"
          "| --- | ---: | ---: | --- | --- |")
    for side in (4000, 8000):
        data = ico_holding_png(side, side)
        started = time.perf_counter()
        with Image.open(io.BytesIO(data)) as img:
            size = img.size
        seconds = time.perf_counter() - started
        print(f"| {side}x{side} | {len(data):,} | {seconds * 1000:,.0f} ms | {size[0]}x{size[1]} | {refused(data)} |")


def header_rows() -> None:
    """16 MB files whose header is padded with the smallest units of their format: what PIL's own
    open takes to parse them (any probe through PIL ran it), and what read_rgb says now; and a PNG
    whose padding follows its pixels, which libpng (OpenCV's decoder) reads, warning for each chunk."""
    print("\n| 16 MB header of (TIFF: the largest directory) | units | PIL's Image.open alone (OpenCV's decode for the last row) | the service |\n"
          "| --- | ---: | ---: | --- |")
    cases = [("JPEG", 4 * 1024 * 1024), ("PNG", 1398101), ("GIF", 6710886), ("PPM", 16 * 1024 * 1024), ("PFM", 16 * 1024 * 1024),
             ("TIFF", 65535)]
    for fmt, units in [*cases, ("PNG, after its pixels", 1398101)]:
        data = many_header_units(fmt.split(",")[0], units)
        if fmt.endswith("pixels"):
            start = data.index(b"tEXt") - 4
            end = data.index(b"IDAT") - 4
            data = data[:start] + data[end:data.index(b"IEND") - 4] + data[start:end] + data[data.index(b"IEND") - 4:]
        started, warnings = time.perf_counter(), ""
        if fmt.endswith("pixels"):
            lines = stderr_lines(lambda d=data: opencv_decode(d))
            warnings = f", {lines:,} lines on stderr"
        else:
            with Image.open(io.BytesIO(data)) as img:
                img.size  # noqa: B018 - opening is the work measured
        spent_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        answer = refused(data)
        print(f"| {fmt} | {units:,} | {spent_ms:,.0f} ms{warnings} | {answer} in {(time.perf_counter() - started) * 1000:.1f} ms |")


def junk_rows() -> None:
    """16 MB of bytes that start no marker or block after a JPEG's or a GIF's header: PIL's readers
    skip them one at a time, in Python, looking for the next one; the service's walk of the markers
    skips them with one search (JPEG) or refuses them (GIF, as giflib does)."""
    print("\n| 16 MB file | PIL's Image.open alone | the service |\n| --- | ---: | --- |")
    app0 = noise_jpeg(3, 160)[:20]
    cases = {"JPEG: its APP0 segment, then zeros and an end marker": app0 + bytes(16 << 20) + b"\xff\xd9",
             "JPEG: an APP0 segment of length 0, then zeros": b"\xff\xd8\xff\xe0\x00\x00" + bytes(16 << 20),
             "GIF: its screen descriptor and colour table, then zeros and its trailer": gif_header_then_junk(16 << 20)}
    for name, data in cases.items():
        def pil_open(d=data) -> None:
            try:
                with Image.open(io.BytesIO(d)) as img:
                    img.size  # noqa: B018 - opening is the work measured
            except Exception:  # noqa: BLE001 - it fails on both; what it costs is measured
                pass
        spent = timed(pil_open)
        answer, seconds = answered(data)
        print(f"| {name} | {spent * 1000:,.0f} ms | {answer} in {seconds * 1000:.1f} ms |")


def png_text_rows() -> None:
    """A PNG of 95 text chunks of 1 MB each: PIL's open (what probe_image ran for a PNG before it read
    the IHDR chunk itself), and read_rgb now, best of 3."""
    data = png_with_text_chunks()
    pil, answer = float("inf"), "opened"
    for _ in range(3):
        started = time.perf_counter()
        try:
            with Image.open(io.BytesIO(data)):
                pass
        except Exception as err:  # noqa: BLE001 - what PIL says is the row's point
            answer = f"{type(err).__name__}: {err}"
        pil = min(pil, time.perf_counter() - started)
    print("\n| PNG, 64x64, 95 text chunks of 1 MB | file bytes | PIL's Image.open alone | PIL says | read_rgb | the service |\n"
          "| --- | ---: | ---: | --- | ---: | --- |")
    print(f"| zTXt before the pixels | {len(data):,} | {pil * 1000:,.0f} ms | {answer} | "
          f"{min(decode_seconds(data) for _ in range(3)) * 1000:.1f} ms | {refused(data)} |")


def tiff_strip_rows() -> None:
    """TIFFs whose directory lists 2,000,000 strip offsets (16 MB): PIL's open (what probe_image ran
    for a TIFF before it read the directory itself), and what read_rgb says now."""
    print("\n| TIFF of 2,000,000 strip offsets | file bytes | PIL's Image.open alone | read_rgb | the service |\n"
          "| --- | ---: | ---: | ---: | --- |")
    for width, height in ((2, 2_000_000), (2000, 2000)):
        data = tiff_of_strips(width, height, 2_000_000)
        pil = timed(lambda d=data: Image.open(io.BytesIO(d)).close())
        answer, seconds = answered(data)
        print(f"| {width}x{height} | {len(data):,} | {pil * 1000:,.0f} ms | {seconds * 1000:.1f} ms | {answer} |")


def exif_rows() -> None:
    """PNG and WebP files whose EXIF block lists 65,535 entries that all point at one 200 KB value:
    OpenCV's decode (which parses the block for the orientation), and what read_rgb says now."""
    print("\n| EXIF of 65,535 entries on one 200 KB value | file bytes | OpenCV's decode | read_rgb | the service |\n"
          "| --- | ---: | ---: | ---: | --- |")
    for fmt in ("PNG", "WEBP"):
        data = with_exif(fmt, exif_bomb())
        opencv = timed(lambda d=data: opencv_decode(d))
        answer, seconds = answered(data)
        print(f"| {fmt} | {len(data):,} | {opencv * 1000:,.0f} ms | {seconds * 1000:.1f} ms | {answer} |")


def png_tail_rows() -> None:
    """A 64x64 PNG whose compressed data goes on with zeros after the image: OpenCV's decode (libpng
    inflates all of it) against read_rgb with the service's limits, which inflates it first and stops;
    the same image with its compressed data split into many chunks, which every check walks (best of 5);
    then what that check costs on a photo-sized PNG (a flowers photo resized to 2000x1500), best of 5."""
    print("\n| PNG of a 64x64 image, then zeros in its compressed data | file bytes | OpenCV's decode | read_rgb, service limits | the service |\n"
          "| --- | ---: | ---: | ---: | --- |")
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)
    for extra in (100 << 20, 1 << 30):
        data = png_of_rows(pixels, extra_zeros=extra)
        opencv = timed(lambda d=data: opencv_decode(d))
        answer, seconds = answered(data)
        print(f"| {extra >> 20:,} MB of zeros | {len(data):,} | {opencv * 1000:,.0f} ms | {seconds * 1000:.1f} ms | {answer} |")
    print("\n| PNG of a 64x64 image: its image-data chunks | file bytes | OpenCV's decode | read_rgb, service limits | the service |\n"
          "| ---: | ---: | ---: | ---: | --- |")
    for chunks in (1, 2_000, PNG_CHUNKS_WALKED - 2):  # with IHDR and IEND, the most chunks a PNG may have
        data = png_of_rows(pixels, idat_chunks=chunks)
        opencv = min(timed(lambda d=data: opencv_decode(d)) for _ in range(5))
        answer, seconds = min(answered(data) for _ in range(5))
        print(f"| {chunks:,} | {len(data):,} | {opencv * 1000:.2f} ms | {seconds * 1000:.2f} ms | {answer} |")
    photos = sorted((SHARED_DATA / "flowers").rglob("*.jpg"))[:1]
    if photos:
        data = cv2.imencode(".png", cv2.resize(cv2.imread(str(photos[0])), (2000, 1500)))[1].tobytes()
        plain, checked = (min(timed(lambda c=check: read_rgb(data, check_png_data=c)) for _ in range(5)) for check in (False, True))
        print(f"\n{photos[0].name} as a 2000x1500 PNG ({len(data):,} bytes): read_rgb {plain * 1000:.0f} ms, "
              f"{checked * 1000:.0f} ms with check_png_data (the service's)")


def jpeg_kind_rows() -> None:
    """JPEGs declaring 6000x6000 black pixels: a real baseline one, then files of a few hundred bytes that
    libjpeg decodes all the same (arithmetic-coded or lossless with no image data, a baseline one cut
    after its header), decoded by OpenCV at the default model's scale and in full (what the hand-crop
    models ask for), best of 3; and what the service makes of each."""
    print("\n| JPEG, 6000x6000 | file bytes | OpenCV's decode at the model's scale | in full | the service |\n"
          "| --- | ---: | ---: | ---: | --- |")
    cases = [("baseline, Huffman-coded (a real encoder's)", flat(".jpg", 6000, 6000)),
             ("arithmetic-coded, no image data", jpeg_without_image_data(6000, 6000, "arithmetic")),
             ("lossless, no image data", jpeg_without_image_data(6000, 6000, "lossless")),
             ("baseline, cut after its header", jpeg_cut_after_its_header(6000, 6000))]
    reduced = decode_flag(jpeg_scale(6000, 6000, MODEL_RESIZE))
    for name, data in cases:
        scaled, full = (min(timed(lambda d=data, f=flag: opencv_decode(d, f)) for _ in range(3))
                        for flag in (reduced, cv2.IMREAD_COLOR))
        print(f"| {name} | {len(data):,} | {scaled * 1000:,.0f} ms | {full * 1000:,.0f} ms | {refused(data)} |")


def netpbm_rows() -> None:
    """PBM/PGM/PPM files of black pixels, each just under the service's 16 MB upload limit: PIL's
    decode (open, load and convert to RGB; what read_rgb ran before) and read_rgb's now, best of 3."""
    print("\n| PBM, PGM or PPM, black, under 16 MB | file bytes | PIL's decode | read_rgb | the service |\n"
          "| --- | ---: | ---: | ---: | --- |")
    cases = [("plain PPM (P3), 1630x1630", 3, (1630, 1630, 3), 255), ("plain PGM (P2), 2800x2800", 2, (2800, 2800), 255),
             ("binary PPM (P6) of maxval 1, 2300x2300", 6, (2300, 2300, 3), 1),
             ("binary PGM (P5) of maxval 1000, 2800x2800", 5, (2800, 2800), 1000),
             ("binary PPM (P6) of maxval 255, 2300x2300", 6, (2300, 2300, 3), 255)]
    for name, kind, shape, maxval in cases:
        data = netpbm(kind, np.zeros(shape, np.uint16), maxval)
        pil = min(timed(lambda d=data: Image.open(io.BytesIO(d)).convert("RGB")) for _ in range(3))
        ours = min(decode_seconds(data) for _ in range(3))
        print(f"| {name} | {len(data):,} | {pil * 1000:,.0f} ms | {ours * 1000:,.1f} ms | {refused(data)} |")


def timed(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def answered(data: bytes) -> tuple[str, float]:
    """What the service's limits make of ``data`` (``refused``), and the seconds it took to say."""
    started = time.perf_counter()
    answer = refused(data)
    return answer, time.perf_counter() - started


def opencv_decode(data: bytes, flag: int = cv2.IMREAD_COLOR) -> None:
    cv2.imdecode(np.frombuffer(data, np.uint8), flag)


def stderr_lines(work) -> int:
    """Lines a native library writes to the process's stderr (file descriptor 2) while ``work`` runs."""
    with tempfile.TemporaryFile() as sink:
        with native_stream_to(2, sink.fileno()):
            work()
        sink.seek(0)
        return sink.read().count(b"\n")


def probe_rows() -> None:
    """The header read that comes before every decode, on the HTTP benchmark's photos (sign-digits,
    mostly 100x100 JPEGs with EXIF): PIL's own open (what probe_image ran for a JPEG before it read the
    markers itself), probe_image now, and OpenCV's decode of the whole image, per photo."""
    photos = load_images()
    rows = [("PIL's Image.open and size", lambda d: Image.open(io.BytesIO(d)).size), ("probe_image", probe_image),
            ("OpenCV's decode of the whole photo", opencv_decode),
            ("read_rgb: probe, checks and decode", read_rgb)]
    print(f"\n| on {len(photos)} sign-digit photos | ms per photo, best of 5 rounds |\n| --- | ---: |")
    for name, work in rows:
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            for data in photos:
                work(data)
            best = min(best, (time.perf_counter() - started) / len(photos))
        print(f"| {name} | {best * 1000:.3f} |")


GROWTH_OF_A_DECODE = """
import os
from pathlib import Path
from benchmarks.common import PeakRss
from gesture_core.images import read_rgb
data = Path({path!r}).read_bytes()
print(PeakRss(os.getpid()).measure(lambda: read_rgb(data, max_pixels=None, min_side={min_side}))[1])
"""


def memory_rows() -> None:
    """Images at the service's pixel limit, each decoded in a fresh process with the limits off, at the
    default model's scale and in full (what the hand-crop models ask for): how much the process grew,
    against the 256 MB a request may take (benchmarks.hostile), and what the service makes of each."""
    side = math.isqrt(Settings().max_pixels)
    cases = {"PNG, a row of noise every 32": png_with_noise_rows(side, side),
             "baseline JPEG, one scan, full colour (4:4:4)": sparse_jpeg(side, side, subsampled=False),
             "JPEG, one scan per colour, 4:2:0": sparse_jpeg(side, side, interleaved=False),
             "JPEG, one scan per colour, 4:4:4": sparse_jpeg(side, side, subsampled=False, interleaved=False),
             "progressive JPEG, 4:4:4": encode(Image.new("RGB", (side, side)), "JPEG", progressive=True, subsampling=0),
             "GIF, a row of noise every 8": gif_with_noise_rows(side, side),
             "WebP, lossless": padded_webp(side, size_bytes=2_600_000),
             "WebP with alpha": padded_webp(side, alpha=True, size_bytes=2_600_000),
             "WebP, animation of 2 frames": padded_webp(side, frames=2, size_bytes=2_600_000),
             f"WebP, animation of 2 frames, {math.isqrt(side * side // 2)}² (half the limit)":
                 padded_webp(math.isqrt(side * side // 2), frames=2, size_bytes=1_300_000)}
    print(f"\n| at the pixel limit ({side}x{side}) | file bytes | process growth, limits off: model's scale | in full | the service |\n"
          "| --- | ---: | ---: | ---: | --- |")
    with tempfile.TemporaryDirectory() as folder:
        for name, data in cases.items():
            path = Path(folder) / "image"
            path.write_bytes(data)
            grew = [growth_of_a_decode(path, min_side) for min_side in (MODEL_RESIZE, None)]
            print(f"| {name} | {len(data):,} | {grew[0]:,.0f} MB | {grew[1]:,.0f} MB | {service_answer(data)} |")


def growth_of_a_decode(path: Path, min_side: int | None) -> float:
    done = subprocess.run([sys.executable, "-c", GROWTH_OF_A_DECODE.format(path=str(path), min_side=min_side)],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, check=True)  # for benchmarks.common
    return float(done.stdout)


def service_answer(data: bytes) -> str:
    try:
        read_rgb(data, **Settings().decode_limits(), min_side=MODEL_RESIZE)
    except ImageDecodeError as err:
        return f"refused: {str(err).split(':')[0]}"
    return "decoded"


def photo_rows(per_set: int) -> None:
    print(f"\n| shared set ({per_set} photos each) | as PNG: bytes per pixel, min-median-max | their own JPEG files: min-median-max | "
          "most scans of any of its JPEG files (all files) | fewest bits of image data per 8x8 block (all files; a complete baseline JPEG has at least 2) |\n"
          "| --- | --- | --- | ---: | ---: |")
    rng = random.Random(0)
    for name in ("sign-digits", "flowers", "asl-alphabet"):
        files = sorted(p for p in (SHARED_DATA / name).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
        if not files:
            print(f"| {name} | (not found in {SHARED_DATA}) | | | |")
            continue
        png, jpeg = [], []
        for path in rng.sample(files, min(per_set, len(files))):
            image = cv2.imread(str(path))
            pixels = image.shape[0] * image.shape[1]
            png.append(len(cv2.imencode(".png", image)[1]) / pixels)
            jpeg.append(path.stat().st_size / pixels)
        spread = lambda v: f"{min(v):.2f} - {np.median(v):.2f} - {max(v):.2f}"  # noqa: E731
        layouts = [jpeg_layout(path.read_bytes()) for path in files]
        fewest_bits = min(layout.scan_bytes * 8 / layout.blocks for layout in layouts)
        print(f"| {name} | {spread(png)} | {spread(jpeg)} | {max(layout.scans for layout in layouts)} | {fewest_bits:.1f} |")


@command
def main(argv: list[str] | None = None) -> int:
    p = CommandParser(prog="python -m benchmarks.decode_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--photos", type=int_at_least(1), default=20, help="photos sampled from each shared set")
    args = p.parse_args(argv)
    print(describe_machine(), "\n")
    flat_rows()
    scan_rows()
    format_rows()
    header_rows()
    junk_rows()
    png_text_rows()
    tiff_strip_rows()
    exif_rows()
    png_tail_rows()
    jpeg_kind_rows()
    netpbm_rows()
    memory_rows()
    probe_rows()
    photo_rows(args.photos)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
