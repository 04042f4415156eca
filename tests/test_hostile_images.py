"""Images built to cost far more than their size: refused from the header, before any allocation,
by the shared core that training, evaluation, the service and the webcam all decode through."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from benchmarks.decode_cost import growth_of_a_decode
from benchmarks.hostile_inputs import (
    encode,
    exif_bomb,
    flat_png,
    float_bigtiff,
    gif_header_then_junk,
    ico_holding_png,
    jpeg_cut_after_its_header,
    jpeg_hiding_its_frame,
    jpeg_without_image_data,
    many_header_units,
    netpbm,
    png_of_rows,
    png_strip,
    png_with_text_chunks,
    progressive_jpeg,
    sparse_jpeg,
    tiff_listing_again,
    tiff_listing_its_size_twice,
    tiff_of_strips,
    webp_animation_of_one_frame,
    with_exif,
)
from benchmarks.server_process import REPO
from gesture_core import DataConfig, ImageDecodeError, Preprocess, read_rgb
from gesture_core import images as images_module
from gesture_core.images import (
    DECODED_FORMATS,
    HEADER_LIMITS,
    MAX_ASPECT_RATIO,
    MAX_EXIF_BYTES,
    MAX_JPEG_SCANS,
    PNG_CHUNKS_WALKED,
    SMALL_IMAGE_PIXELS,
    TRUNCATED_JPEG,
    check_file_size,
    decode_rgb,
    jpeg_layout,
    probe_image,
)
from service.settings import Settings
from tests.service_inputs import jpeg


@pytest.fixture(scope="module")
def preprocess() -> Preprocess:
    return Preprocess(DataConfig())


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, **env})


@pytest.mark.parametrize(("width", "height"), [(39_000, 1), (1_000_000, 1), (12_000, 1), (1, 5_000), (2_100, 100)])
def test_extreme_aspect_ratios_are_refused_before_any_allocation(preprocess, width, height):
    data = png_strip(width, height)  # unguarded, the resize of a 39000x1 strip allocates 7.7 GB
    with pytest.raises(ImageDecodeError, match=rf"extreme aspect ratio: {width}x{height} .* limit of {MAX_ASPECT_RATIO}:1"):
        preprocess.load(data)


def test_elongated_images_within_the_limit_still_classify(preprocess):
    tensor = preprocess.load(png_strip(MAX_ASPECT_RATIO * 10, 10))
    assert tensor.shape == (3, 224, 224)


def test_arrays_and_frames_are_bounded_too(preprocess):
    with pytest.raises(ImageDecodeError, match="extreme aspect ratio"):
        preprocess(np.zeros((1, 4_000, 3), np.uint8))  # what a webcam frame or a caller's array reaches
    with pytest.raises(ImageDecodeError, match="no pixels"):
        read_rgb(np.zeros((0, 4, 3), np.uint8))


def test_a_named_pipe_or_a_device_named_as_an_image_is_refused_without_opening_it(tmp_path):
    """A split.json naming a named pipe hung evaluate for ever (opening one waits for a writer), and /dev/zero
    gave the decoder a gigabyte of zeros."""
    from gesture_core.images import ImageDecodeError, read_image_file

    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(ImageDecodeError, match="^not a regular file but a named pipe, so no image$"):
        read_image_file(tmp_path / "pipe.png")
    with pytest.raises(ImageDecodeError, match="^not a regular file but a device or socket"):
        read_image_file("/dev/zero")
    with pytest.raises(IsADirectoryError):  # open's own error, which callers report as "unreadable"
        read_image_file(tmp_path)


def test_an_opencv_failure_is_a_decode_error_not_a_crash(tmp_path):
    """OpenCV's own pixel limit, set low, makes its decoder raise cv2.error on a small PNG."""
    path = tmp_path / "small.png"
    cv2.imwrite(str(path), np.zeros((20, 20, 3), np.uint8))
    code = ("import sys; from gesture_core import ImageDecodeError, read_rgb\n"
            f"try: read_rgb({str(path)!r})\n"
            "except ImageDecodeError as err: print(err); sys.exit(3)\n")
    done = run_python(code, OPENCV_IO_MAX_IMAGE_PIXELS="100")
    assert done.returncode == 3, done.stderr
    assert "corrupt or undecodable PNG (pixels <= CV_IO_MAX_IMAGE_PIXELS)" in done.stdout


@pytest.mark.parametrize("cut", [3, 10, 100, 1000])
def test_a_jpeg_cut_anywhere_gets_the_truncated_jpeg_message(cut):
    with pytest.raises(ImageDecodeError, match=rf"^{TRUNCATED_JPEG.replace('(', '[(]').replace(')', '[)]')}$"):
        read_rgb(jpeg(0, 160)[:cut])


@pytest.mark.parametrize("after_the_end", [b"\x00" * 16, b"\r\n", b"\x00" * 4096, b"camera trailer:0042"])
def test_a_jpeg_with_padding_or_a_trailer_after_its_end_decodes_as_the_jpeg(after_the_end):
    """Cameras and uploaders pad a JPEG or append a short trailer after its end-of-image marker: such a photo is
    whole, and was taken for a cut one when only a file ending in the marker passed (a mutation the suite passed)."""
    photo = jpeg(3, 160)
    np.testing.assert_array_equal(read_rgb(photo + after_the_end), read_rgb(photo))


def test_a_png_cut_before_its_header_names_the_format():
    with pytest.raises(ImageDecodeError, match="truncated or corrupt PNG"):
        read_rgb(png_strip(50, 50)[:12])


def test_a_large_png_costs_at_most_twice_its_decoded_size(tmp_path):
    """OpenCV's PNG decoder peaks at about twice the decoded image (46 MB here), and the conversion to
    RGB adds nothing: so a pixel limit of 40,000,000 (the service's) bounds a request near 240 MB."""
    path = tmp_path / "large.png"
    cv2.imwrite(str(path), np.zeros((4000, 4000, 3), np.uint8))
    grew = growth_of_a_decode(path, min_side=None)  # in a fresh process
    assert grew < 2.2 * 4000 * 4000 * 3 / 2**20, f"peak grew {grew:.0f} MB"


@pytest.mark.parametrize("mode", ["P", "L"])
def test_a_large_gif_costs_at_most_twice_its_decoded_size_too(tmp_path, mode):
    """PIL decodes a GIF to one byte a pixel (palette indices, or grey); its ``convert("RGB")`` holds
    RGB at 4 bytes a pixel, and NumPy got a copy of that: 421 MB at the service's pixel limit, where a
    PNG takes 231 (python -m benchmarks.decode_cost). The bytes a pixel become RGB in NumPy and OpenCV instead."""
    rows = np.zeros((4000, 4000), np.uint8)
    rows[::64] = np.arange(4000) % 200  # a structured image, quick to encode
    path = tmp_path / "large.gif"
    gif = Image.fromarray(rows, "L").convert("P")  # a palette of greys, which PIL opens as L
    if mode == "P":
        gif.putpalette(np.arange(768, dtype=np.uint16).astype(np.uint8).tolist())
    gif.save(path, "GIF")
    assert Image.open(path).mode == mode
    grew = growth_of_a_decode(path, min_side=None)
    assert grew < 2.2 * 4000 * 4000 * 3 / 2**20, f"peak grew {grew:.0f} MB"


@pytest.mark.parametrize("kind", ["alpha", "animation"])
def test_a_webp_whose_decoder_holds_a_canvas_has_half_the_pixel_limit(kind):
    """OpenCV decodes a WebP with alpha to 4 bytes a pixel and then copies it without the alpha, and
    holds an animation's canvas besides: 273 and 426 MB at the service's pixel limit, where a PNG or a
    JPEG takes 231 (python -m benchmarks.decode_cost)."""
    frames = [Image.new("RGBA" if kind == "alpha" else "RGB", (100, 80), (60 * i, 90, 0, 128)) for i in range(1 if kind == "alpha" else 2)]
    webp = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    with pytest.raises(ImageDecodeError, match=r"^image too large: a WebP with alpha or animation, 100x80 = 8,000 pixels, "
                                               r"above the limit of 5,000 for such images: re-save it as JPEG or PNG$"):
        read_rgb(webp, max_pixels=10_000)
    assert read_rgb(webp, max_pixels=16_000).shape == (80, 100, 3)
    assert read_rgb(encode(frames[0].convert("RGB"), "WEBP"), max_pixels=8_000).shape == (80, 100, 3)  # one frame, no alpha: the whole limit


def test_a_webp_marked_an_animation_has_half_the_pixel_limit_whatever_its_frames():
    """PIL reads a WebP whose header marks an animation but which holds one frame as RGB of one frame,
    and OpenCV decodes it through the animation's canvas all the same: 426 MB at the pixel limit."""
    webp = webp_animation_of_one_frame(100, 80)
    assert Image.open(io.BytesIO(webp)).mode == "RGB"
    with pytest.raises(ImageDecodeError, match=r"^image too large: a WebP with alpha or animation, 100x80 = 8,000 pixels, above the limit of 5,000"):
        read_rgb(webp, max_pixels=10_000)
    assert read_rgb(webp, max_pixels=16_000).shape == (80, 100, 3)


def test_training_reports_the_real_reason_of_a_file_that_fails_in_the_loader(tmp_path):
    """A PNG whose header is fine passes the scan; its corrupt pixel data fails only inside the loader,
    and the run's report keeps the decoder's reason instead of a generic 'failed to decode'."""
    import json

    import training.finetune as finetune
    from tests.helpers import make_image_folder
    from tests.test_finetune import tiny_config

    root = make_image_folder(tmp_path / "gestures", per_class=6, size=40)
    good = png_strip(40, 40)
    at = good.index(b"IDAT") + 8
    (root / "palm" / "corrupt-pixels.png").write_bytes(good[:at] + b"\xde\xad" * 40 + good[at + 80:])
    out = finetune.train(tiny_config(root, tmp_path / "run", epochs=1, val_split=0.0, test_split=0.0))
    skipped = {s["path"].rsplit("/", 1)[-1]: s["reason"] for s in json.loads((out / "metrics.json").read_text())["skipped"]}
    assert skipped["corrupt-pixels.png"].startswith("corrupt or truncated image ("), skipped


def test_training_skips_and_reports_an_extreme_aspect_ratio(tmp_path):
    from tests.helpers import make_image_folder
    from training.check import build_report
    from training.data import load_splits

    root = make_image_folder(tmp_path / "gestures", per_class=4, size=40)
    (root / "fist" / "strip.png").write_bytes(png_strip(39_000, 1))
    splits = load_splits(root, val_split=0.0, test_split=0.0)
    assert [(s["path"].rsplit("/", 1)[-1], s["reason"]) for s in splits.skipped] == [
        ("strip.png", "extreme aspect ratio: 39000x1 is 39,000:1, above the limit of 20:1")]
    assert all(not s.path.endswith("strip.png") for s in splits.train)
    assert build_report(root, workers=1)["skipped_by_reason"] == {"extreme aspect ratio": 1}


@pytest.mark.parametrize(("width", "height", "size_bytes", "refused"), [
    (2000, 1000, 1, False),            # SMALL_IMAGE_PIXELS: any file may be this large
    (2000, 1001, 1, True),
    (4000, 4000, 1_000_000, False),    # 16 pixels a byte, the service's limit
    (4000, 4000, 999_999, True),
])
def test_a_file_may_declare_only_so_many_pixels_per_byte(width, height, size_bytes, refused):
    assert SMALL_IMAGE_PIXELS == 2_000_000
    if refused:
        with pytest.raises(ImageDecodeError, match="too large for its file size"):
            check_file_size(width, height, size_bytes, max_pixels_per_byte=16)
    else:
        check_file_size(width, height, size_bytes, max_pixels_per_byte=16)


def test_a_tiny_flat_png_is_refused_from_its_header_where_uploads_are_limited():
    data = flat_png()
    assert len(data) < 200_000
    with pytest.raises(ImageDecodeError, match=r"6000x6000 = 36,000,000 pixels in [\d,]+ bytes"):
        read_rgb(data, max_pixels_per_byte=16)
    assert decode_rgb(data, max_pixels_per_byte=None).shape == (6000, 6000, 3)  # training reads the user's own files as they are


def test_photos_and_jpegs_pass_the_pixels_per_byte_limit():
    noise = np.random.default_rng(0).integers(0, 256, (1500, 2000, 3), np.uint8)  # 3 MP: above the floor, like a photo
    ok, png = cv2.imencode(".png", noise)
    assert read_rgb(png.tobytes(), max_pixels_per_byte=16).shape == (1500, 2000, 3)
    ok, flat_jpeg = cv2.imencode(".jpg", np.zeros((4000, 4000, 3), np.uint8))  # JPEG decodes at reduced scale instead
    assert read_rgb(flat_jpeg.tobytes(), max_pixels_per_byte=16, min_side=256).shape == (1000, 1000, 3)


def test_a_jpeg_scan_bomb_is_refused_from_its_markers_everywhere():
    """1000 repeated scans of a 1000x1000 image: 18 KB of file, under every size limit. Counted from
    the markers before decoding, for uploads and for training's own files alike."""
    data = progressive_jpeg(1000, 1000, repeated_scans=1000)
    assert len(data) < 20_000
    with pytest.raises(ImageDecodeError, match=r"^JPEG with 1,010 scans, above the limit of 100 "):
        read_rgb(data, max_pixels=None)


def test_the_scan_limit_is_inclusive():
    assert MAX_JPEG_SCANS == 100
    assert read_rgb(progressive_jpeg(64, 64, repeated_scans=90)).shape == (64, 64, 3)
    with pytest.raises(ImageDecodeError, match="101 scans"):
        read_rgb(progressive_jpeg(64, 64, repeated_scans=91))


def pil_header(data: bytes) -> tuple[str, tuple[int, int]]:
    with Image.open(io.BytesIO(data), formats=DECODED_FORMATS) as img:
        return ("JPEG" if img.format == "MPO" else img.format), img.size  # a phone's MPO is a JPEG with more pictures after it


def test_the_jpeg_probe_reads_the_size_pil_reads(sign_digits, flowers):
    """probe_image reads a JPEG's size from its own markers (PIL's reader parses the EXIF block too):
    the same answer as PIL's on every photo of the shared sets and on JPEGs of every kind an encoder writes."""
    real = [p.read_bytes() for p in sorted(sign_digits.parent.rglob("*")) if p.suffix.lower() in (".jpg", ".jpeg")]
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 61, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the stored size is still the one the frame header gives
    kinds = [encode(image, "JPEG"), encode(image, "JPEG", progressive=True), encode(image.convert("L"), "JPEG"),
             encode(image.convert("CMYK"), "JPEG"), encode(image, "JPEG", exif=exif.tobytes()),
             encode(image, "JPEG", comment=b"\xff\xc0\x00\x11\x08\x7f\xff\x7f\xff"),  # a frame header's bytes inside a comment
             encode(image, "JPEG", restart_marker_blocks=1, subsampling=0), encode(image.resize((1, 1)), "JPEG")]
    assert len(real) > 5000
    for data in real + kinds:
        assert probe_image(data) == pil_header(data)
    assert jpeg_layout(kinds[5]).size == (61, 37)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "PPM", "TIFF"])
def test_a_header_of_more_units_than_any_photo_is_refused_before_pil_parses_it(fmt, monkeypatch):
    """PIL parses a header unit by unit in Python (a 16 MB one: 2.5-5.4 s); the walk that counts them
    stops at the limit, so a header of 16 MB costs what one just over the limit does."""
    what, limit = HEADER_LIMITS[fmt]
    assert decode_rgb(many_header_units(fmt, limit - 20)).shape == (32, 32, 3)  # under the limit: an image like any other
    opened = []
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(1))
    for units in (limit + 20, 65535 if fmt == "TIFF" else 4 * 1024 * 1024):  # the most a TIFF directory can hold
        with pytest.raises(ImageDecodeError, match=f"^{fmt} with more than {limit:,} {what}, far more than any photo"):
            decode_rgb(many_header_units(fmt, units))
    assert opened == []  # refused before PIL saw it


def test_jpeg_fill_bytes_count_as_units_and_a_bigtiff_directory_is_counted_too():
    """0xFF fill bytes may pad a JPEG's markers: 16 MB of them would be 16 million steps of any walk."""
    data = jpeg(0)
    assert decode_rgb(data[:2] + b"\xff" * 10 + data[2:]).ndim == 3  # a few, as encoders may write: fine
    with pytest.raises(ImageDecodeError, match="^JPEG with more than 1,000 segments before its pixels"):
        decode_rgb(data[:2] + b"\xff" * (16 * 1024 * 1024) + data[2:])
    bigtiff = b"II+\x00" + (8).to_bytes(2, "little") + bytes(2) + (16).to_bytes(8, "little") + (50_000).to_bytes(8, "little")
    with pytest.raises(ImageDecodeError, match="^TIFF with more than 1,000 directory entries"):
        decode_rgb(bigtiff + bytes(20 * 50_000))


def test_a_png_is_held_to_its_chunk_limit_after_its_pixels_too():
    """libpng (OpenCV's decoder) reads the chunks after the image data as well: 1.4 million empty text
    chunks there took 3.1 s and wrote 1.4 million warning lines. Image data may come in many chunks."""
    png = encode(Image.fromarray(np.zeros((32, 32, 3), np.uint8)), "PNG")
    end = png.index(b"IEND") - 4

    def chunks(kind: bytes, count: int) -> bytes:
        return (b"\x00\x00\x00\x00" + kind + zlib.crc32(kind).to_bytes(4, "big")) * count

    with pytest.raises(ImageDecodeError, match="^PNG with more than 100 chunks besides its pixels"):
        decode_rgb(png[:end] + chunks(b"tEXt", 200) + png[end:])
    assert decode_rgb(png[:end] + chunks(b"IDAT", 5000) + png[end:]).shape == (32, 32, 3)
    with pytest.raises(ImageDecodeError, match="^PNG in more than 20,000 chunks"):
        decode_rgb(png[:end] + chunks(b"IDAT", PNG_CHUNKS_WALKED + 10) + png[end:])


def test_a_png_is_read_without_pils_reader_so_its_text_chunks_are_never_decompressed(monkeypatch):
    """PIL's PNG reader decompresses every text chunk and colour profile before the pixels as it opens
    a file: 95 text chunks of 1 MB each (a 108 KB PNG, under the chunk limit) took it 144 ms, and past
    its 64 MB of them it called the file "truncated or corrupt". The size comes from the IHDR chunk;
    the decoder never sees the text."""
    pixels = np.random.default_rng(0).integers(0, 256, (30, 40, 3), np.uint8)
    kinds = [encode(Image.fromarray(pixels).convert(mode), "PNG", **options)
             for mode, options in [("RGB", {}), ("RGBA", {}), ("L", {}), ("P", {"transparency": 0}), ("1", {}), ("I;16", {}), ("RGB", {"optimize": True})]]
    kinds.append(cv2.imencode(".png", pixels.astype(np.uint16) * 257)[1].tobytes())
    with_text = png_with_text_chunks(95, 1_000_000)
    expected = [decode_rgb(data) for data in [*kinds, with_text]]
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("PIL opened a PNG"))
    assert [probe_image(data) for data in kinds] == [("PNG", (40, 30))] * len(kinds)
    assert probe_image(with_text) == ("PNG", (64, 64))
    assert all(np.array_equal(decode_rgb(data), rgb) for data, rgb in zip([*kinds, with_text], expected, strict=True))


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_an_exif_block_larger_than_a_jpeg_can_hold_is_refused_and_a_real_one_still_turns_the_image(fmt):
    """OpenCV copies every EXIF entry's value as it reads the orientation: 65,535 entries on one 200 KB
    value (a 1 MB file) took it 475-494 ms. A JPEG's EXIF fits in 64 KB, a PNG's or a WebP's did not have to."""
    with pytest.raises(ImageDecodeError, match=f"^{'PNG' if fmt == 'PNG' else 'WebP'} with an EXIF block of {len(exif_bomb()):,} bytes, above the limit of 65,535"):
        decode_rgb(with_exif(fmt, exif_bomb()))
    assert MAX_EXIF_BYTES == 65_535
    turned = Image.Exif()
    turned[0x0112] = 6  # rotate 90 degrees clockwise to view
    plain = decode_rgb(with_exif(fmt, b""))
    assert np.array_equal(decode_rgb(with_exif(fmt, turned.tobytes())), np.rot90(plain, k=-1))
    assert decode_rgb(with_exif(fmt, exif_bomb(5_000, 10))).shape == (64, 64, 3)  # 60 KB: under the limit


def test_a_png_whose_compressed_data_holds_more_than_its_image_is_refused_where_uploads_are_read():
    """libpng inflates all of a PNG's compressed data, past the image's end too: a 64x64 image followed
    by 1 GB of zeros, a 1 MB file, took 2.1 s to decode. The service inflates it first, 1 MB at a time,
    and stops past the image's size, which it reads from IHDR for every kind of PNG."""
    pixels = np.random.default_rng(0).integers(0, 256, (37, 45, 3), np.uint8)
    image = Image.fromarray(pixels)
    kinds = [encode(image.convert(mode), "PNG", **options) for mode, options in
             [("RGB", {}), ("RGBA", {}), ("L", {}), ("LA", {}), ("1", {}), ("I;16", {}), ("P", {}), ("P", {"bits": 4}), ("P", {"bits": 2}), ("P", {"bits": 1})]]
    kinds += [cv2.imencode(".png", pixels.astype(np.uint16) * 257)[1].tobytes(), png_of_rows(pixels), png_of_rows(pixels, interlaced=True)]
    for data in kinds:
        inflated = zlib.decompress(b"".join(data[i:i + n] for kind, i, n in images_module.png_chunks(data) if kind == b"IDAT"))
        assert images_module.png_image_bytes(data) == len(inflated)
        assert decode_rgb(data, check_png_data=True).shape == (37, 45, 3)
    assert np.array_equal(decode_rgb(png_of_rows(pixels, interlaced=True), check_png_data=True), pixels)
    bomb = png_of_rows(pixels, extra_zeros=1 << 30)
    assert len(bomb) < 1_100_000
    with pytest.raises(ImageDecodeError, match="^PNG whose compressed image data holds more than its 45x37 image: re-save it$"):
        decode_rgb(bomb, check_png_data=True)
    assert decode_rgb(png_of_rows(pixels, extra_zeros=100), check_png_data=False).shape == (37, 45, 3)  # the user's own files: not checked
    assert Settings().decode_limits()["check_png_data"] is True


def test_a_pngs_chunks_are_walked_once_for_all_its_checks(monkeypatch):
    """Counting, the EXIF check, leaving out the other chunks and the data check each walked all of
    them: 20,000 tiny image-data chunks (a 240 KB upload) cost 47 ms of Python, and one walk costs 7."""
    pixels = np.random.default_rng(0).integers(0, 256, (37, 45, 3), np.uint8)
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "left out before decoding")  # so the chunks are walked in a new file too
    data = encode(Image.fromarray(pixels), "PNG", pnginfo=info)
    walks = []
    real = images_module.png_chunks
    monkeypatch.setattr(images_module, "png_chunks", lambda data: walks.append(len(data)) or real(data))
    assert np.array_equal(decode_rgb(data, check_png_data=True), pixels)
    assert walks == [len(data)]
    walks.clear()
    split = png_of_rows(pixels, idat_chunks=images_module.PNG_CHUNKS_WALKED - 2)  # with IHDR and IEND: the most a PNG may have
    assert np.array_equal(decode_rgb(split, check_png_data=True), pixels) and walks == [len(split)]
    with pytest.raises(ImageDecodeError, match="^PNG in more than 20,000 chunks, far more than any photo: re-save it$"):
        decode_rgb(png_of_rows(pixels, idat_chunks=images_module.PNG_CHUNKS_WALKED - 1))  # it said "more than 100 chunks besides its pixels"
    with pytest.raises(ImageDecodeError, match="holds more than its 45x37 image"):
        decode_rgb(png_of_rows(pixels, extra_zeros=1 << 20, idat_chunks=500), check_png_data=True)


def test_a_pngs_malformed_chunks_write_nothing_to_the_servers_stderr(capfd):
    """libpng wrote one warning line per malformed chunk, under the limit too: 95 empty text chunks,
    before and after the pixels, were 95 lines on stderr for each upload."""
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)
    png = encode(Image.fromarray(pixels), "PNG")
    end = png.index(b"IEND") - 4
    empty_text = b"\x00\x00\x00\x00tEXt" + zlib.crc32(b"tEXt").to_bytes(4, "big")
    noisy = png[:33] + empty_text * 50 + png[33:end] + empty_text * 45 + png[end:]  # 33: after the signature and IHDR
    capfd.readouterr()
    assert np.array_equal(decode_rgb(noisy), pixels)
    assert capfd.readouterr().err == ""
    assert "libpng warning: tEXt: too short" in run_python(  # what libpng itself says of them
        f"import cv2, numpy as np; cv2.imdecode(np.frombuffer(bytes.fromhex('{noisy.hex()}'), np.uint8), cv2.IMREAD_COLOR)").stderr


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "LA", "I;16"])
def test_png_chunks_left_out_before_decoding_change_no_pixel(mode, monkeypatch):
    """Text, colour profile, resolution, transparency and an EXIF orientation: the pixels (and the
    orientation) are those of the whole file, by either decoder (RGBA, LA and 16-bit go through PIL)."""
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (24, 40, 3), np.uint8)).convert(mode if mode != "I;16" else "RGB")
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (24, 40), np.uint16))
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "made by a test")
    info.add_itxt("Description", "ünïcode", zip=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    extra = {"transparency": 3} if mode == "P" else {}
    data = encode(img, "PNG", pnginfo=info, dpi=(300, 300), icc_profile=b"\0" * 128, exif=exif, **extra)
    assert {b"tEXt", b"iTXt", b"pHYs", b"iCCP", b"eXIf"} <= {data[i + 4:i + 8] for i in range(8, len(data) - 8)}
    decoded = decode_rgb(data)
    monkeypatch.setattr(images_module, "png_pixel_chunks_only", lambda data, chunks: (data, chunks))
    assert np.array_equal(decoded, decode_rgb(data)) and decoded.shape == (40, 24, 3)


def test_scans_are_counted_from_the_first_scan_on():
    """Start-of-scan bytes inside a segment before the image data (a comment here; an EXIF thumbnail's
    own markers in a camera file) are not scans of the image."""
    image = Image.fromarray(np.zeros((48, 64, 3), np.uint8))
    baseline = encode(image, "JPEG", comment=b"\xff\xda" * 500)
    assert jpeg_layout(baseline)[:3] == ((64, 48), 0xC0, 1)
    assert jpeg_layout(encode(image, "JPEG", progressive=True))[:3] == ((64, 48), 0xC2, 10)
    assert jpeg_layout(b"\xff\xd8\xff\xd9")[:3] == (None, None, 0)  # no scan at all: left to the decoder's error
    assert jpeg_layout(jpeg(0)[:30])[:3] == (None, None, 0)


def test_bytes_between_jpeg_segments_are_skipped_as_libjpeg_skips_them_and_pil_never_crawls_them(monkeypatch):
    """libjpeg and PIL skip bytes between two segments that are no marker; PIL one at a time, in
    Python, with the GIL held: about 1 s for 16 MB of zeros after a JPEG header, which the walk of
    the markers left to it. The walk now skips them itself, at C speed."""
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), np.uint8))
    clean = encode(image, "JPEG")
    app0_end = 4 + int.from_bytes(clean[4:6], "big")
    padded = clean[:app0_end] + bytes(100) + clean[app0_end:]  # as some cameras pad their headers
    assert jpeg_layout(padded)[:3] == ((64, 48), 0xC0, 1)
    assert np.array_equal(decode_rgb(padded), decode_rgb(clean))
    monkeypatch.setattr(images_module.Image, "open", lambda *a, **k: pytest.fail("PIL was asked to parse the header"))
    junk_then_end = clean[:app0_end] + bytes(3 << 20) + b"\xff\xd9"  # no frame header: nothing to decode
    with pytest.raises(ImageDecodeError, match=r"truncated or corrupt JPEG \(its image header cannot be read\)"):
        decode_rgb(junk_then_end)
    zero_length = b"\xff\xd8\xff\xe0\x00\x00" + bytes(3 << 20)  # a segment shorter than its own length field
    assert jpeg_layout(zero_length).corrupt
    with pytest.raises(ImageDecodeError, match="truncated JPEG"):
        decode_rgb(zero_length)


def test_a_gif_with_junk_where_its_image_should_begin_never_reaches_pil(monkeypatch):
    """giflib refuses bytes that start no block; PIL skips them one at a time, in Python, with the GIL
    held: about 1.5 s for 16 MB of zeros after a GIF header (python -m benchmarks.decode_cost)."""
    frames = [Image.fromarray(np.full((20, 30, 3), value, np.uint8)) for value in (0, 128, 255)]
    animated = io.BytesIO()
    frames[0].save(animated, "GIF", save_all=True, append_images=frames[1:], duration=100, comment=b"an extension before the image")
    assert decode_rgb(animated.getvalue()).shape == (20, 30, 3)
    monkeypatch.setattr(images_module.Image, "open", lambda *a, **k: pytest.fail("PIL was asked to parse the header"))
    with pytest.raises(ImageDecodeError, match=r"truncated or corrupt GIF \(its image header cannot be read\)"):
        decode_rgb(gif_header_then_junk(3 << 20))


def test_a_file_larger_than_any_image_is_refused_before_it_is_read(tmp_path):
    """A 6 GB video named .jpg was read whole into memory by training.check and by each data-loading
    worker, then parsed by PIL at 60 ms a megabyte: check ran for over 5 minutes at 7 GB of RSS."""
    huge = tmp_path / "clip.jpg"
    with huge.open("wb") as f:  # sparse: no disk space taken
        f.write(b"\xff\xd8\xff\xe0")
        f.truncate(images_module.MAX_IMAGE_FILE_BYTES + 1)
    with pytest.raises(ImageDecodeError, match=r"clip.jpg: file too large for an image: 1\.0 GB, above the limit of 1 GB"):
        read_rgb(huge)


def test_a_progressive_jpeg_is_held_to_the_pixels_per_byte_limit_and_photos_pass_it():
    flat = progressive_jpeg(4000, 4000)  # 94 KB; its decoder keeps 16 MP of coefficients at any scale
    with pytest.raises(ImageDecodeError, match="too large for its file size"):
        read_rgb(flat, max_pixels_per_byte=16, min_side=256)
    assert read_rgb(flat, min_side=256).shape == (1000, 1000, 3)  # a user's own file: no such limit
    noise = np.random.default_rng(0).integers(0, 256, (1500, 2000, 3), np.uint8)  # 3 MP, like a photo
    photo = encode(Image.fromarray(noise), "JPEG", progressive=True, quality=75)
    assert read_rgb(photo, max_pixels_per_byte=16, min_side=256).shape[:2] == (750, 1000)



def test_a_baseline_jpeg_is_held_to_the_pixels_per_byte_limit_at_the_scale_it_is_decoded_at():
    """Two bits a block, the fewest a JPEG can have: a 20460x1023 one of 123 KB was exempt, and decoded
    in full (its shorter side leaves no reduced scale), about 100 ms each, 32 of them in one 3.9 MB
    /predict_batch (a probe). Its pixels count at the scale it is decoded at, twice as many a byte as other
    formats may have: a JPEG's pixel decodes in under half a PNG's time (python -m benchmarks.decode_cost)."""
    limits = Settings().decode_limits()
    long = sparse_jpeg(20460, 1023)
    with pytest.raises(ImageDecodeError, match=r"^image too large for its file size: 20460x1023 = 20,930,580 pixels in 122,934 bytes; "
                                               r"above 2,000,000 pixels the limit is 32 pixels per byte"):
        read_rgb(long, **limits, min_side=256)
    assert read_rgb(long, min_side=256).shape == (1023, 20460, 3)  # a user's own file: no such limit
    with pytest.raises(ImageDecodeError, match=r"20480x1024 decoded at 1/2 scale, 10240x512 = 5,242,880 pixels in"):
        read_rgb(sparse_jpeg(20480, 1024), **limits, min_side=256)
    square = sparse_jpeg(6000, 6000)
    assert read_rgb(square, **limits, min_side=256).shape == (750, 750, 3)  # at 1/8 scale, however few its bytes
    with pytest.raises(ImageDecodeError, match=r"6000x6000 = 36,000,000 pixels in"):
        read_rgb(square, **limits)  # in full, as the hand-crop models decode
    noise = np.random.default_rng(0).integers(0, 256, (1500, 2000, 3), np.uint8)  # 3 MP, like a photo
    assert read_rgb(encode(Image.fromarray(noise), "JPEG", quality=75), **limits).shape == (1500, 2000, 3)


def test_a_12_bit_jpeg_is_refused_by_name_before_any_decoder_runs(monkeypatch):
    """Neither decoder reads one (OpenCV's JPEG decoder calls no 12-bit interface, and PIL has no mode for
    it): OpenCV spent 115 MB on a 6320x6320 one before it failed, and PIL's reason quoted a Python object."""
    eight_bits = sparse_jpeg(64, 48)
    frame = eight_bits.index(b"\xff\xc0")
    twelve_bits = eight_bits[:frame + 1] + b"\xc1" + eight_bits[frame + 2:frame + 4] + bytes([12]) + eight_bits[frame + 5:]
    monkeypatch.setattr(images_module.cv2, "imdecode", lambda *_: pytest.fail("decoded"))
    with pytest.raises(ImageDecodeError, match=r"^unsupported image format: a JPEG of 12 bits a sample .*: re-save it as an 8-bit JPEG$"):
        read_rgb(twelve_bits)


@pytest.mark.parametrize(("colour_type", "bit_depth"), [(5, 8), (2, 7)])
def test_an_image_neither_decoder_reads_gets_a_reason_without_pythons_object_text(colour_type, bit_depth):
    """A PNG whose header names no valid colour type or bit depth: PIL's reason quoted its file object,
    "cannot identify image file <_io.BytesIO object at 0x7f...>", a different text for every request."""
    png = bytearray(cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    png[24:26] = bytes([bit_depth, colour_type])
    png[29:33] = zlib.crc32(bytes(png[12:29])).to_bytes(4, "big")
    with pytest.raises(ImageDecodeError, match=r"^corrupt or undecodable image: neither OpenCV nor PIL reads its header$"):
        read_rgb(bytes(png))


def test_the_png_data_check_holds_no_second_copy_of_the_stream():
    """zlib's unconsumed tail is a copy of the input not yet read: fed the whole stream, the check copied
    what was left of it for every 1 MB it inflated (a 15.6 MB PNG took 0.74 s of CPU, 0.60 s now, in a probe)."""
    import tracemalloc

    pixels = np.random.default_rng(0).integers(0, 256, (2000, 2000, 3), np.uint8)
    png = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, 0])[1].tobytes()  # stored: 12 MB of stream
    chunks = images_module.png_chunks(png)
    tracemalloc.start()
    assert not images_module.png_data_past_its_image(png, chunks)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1.3 * len(png), f"{peak:,} bytes for a {len(png):,}-byte PNG"  # the stream joined once, and 1 MB inflated


def progressive_of(subsampled: bool) -> bytes:
    return encode(Image.new("RGB", (2000, 2000)), "JPEG", progressive=True, subsampling=2 if subsampled else 0)


def one_scan_per_colour(subsampled: bool) -> bytes:
    return sparse_jpeg(2000, 2000, subsampled=subsampled, interleaved=False)


@pytest.mark.parametrize("jpeg_of", [progressive_of, one_scan_per_colour])
def test_a_jpeg_of_several_scans_holds_no_more_coefficients_than_the_pixel_limits_image_takes_as_rgb(jpeg_of):
    """libjpeg decodes such a JPEG from all its blocks of coefficients, held at once at 128 bytes a block
    whatever the scale: a 6320x6320 one of full colour resolution in one scan per colour (468 KB) grew a
    process by 231 MB at the model's scale and 344 MB in full. A 4:2:0 one at the pixel limit fits."""
    at_the_limit = 2000 * 2000
    assert read_rgb(jpeg_of(True), max_pixels=at_the_limit).shape == (2000, 2000, 3)  # 93,750 blocks: 12,000,000 bytes
    with pytest.raises(ImageDecodeError, match=r"^image too large: a 2000x2000 JPEG of \d+ scans is decoded from all its 187,500 blocks at once, "
                                               r"above the limit of 93,750 for a progressive or multi-scan JPEG: re-save it as a baseline JPEG$"):
        read_rgb(jpeg_of(False), max_pixels=at_the_limit)
    assert read_rgb(sparse_jpeg(2000, 2000, subsampled=False), max_pixels=at_the_limit).shape == (2000, 2000, 3)  # one scan: row by row


@pytest.mark.parametrize("kind", ["arithmetic", "lossless"])
def test_arithmetic_coded_and_lossless_jpegs_are_held_to_the_pixels_per_byte_limit(kind):
    """Only Huffman-coded sequential JPEG is exempt: an arithmetic-coded flat image takes a few bytes, and
    a lossless one decodes at full size whatever the model's scale (106 and 67 bytes decoded as
    6000x6000, 0.1-0.35 s each, before)."""
    bomb = jpeg_without_image_data(6000, 6000, kind)
    assert len(bomb) < 200 and cv2.imdecode(np.frombuffer(bomb, np.uint8), cv2.IMREAD_REDUCED_COLOR_8) is not None
    with pytest.raises(ImageDecodeError, match="too large for its file size: 6000x6000"):
        read_rgb(bomb, **Settings().decode_limits(), min_side=256)
    small = jpeg_without_image_data(640, 480, kind)  # below SMALL_IMAGE_PIXELS any file may be that small
    assert read_rgb(small, **Settings().decode_limits(), min_side=256).shape == (480, 640, 3)


def test_a_header_that_reads_two_ways_is_read_as_the_decoder_reads_it_or_refused():
    """A stuffed zero that the walk of a JPEG's markers took for a segment hid the frame header libjpeg
    decodes behind a small one (563 KB decoded as 144 megapixels, answered 200); a TIFF that lists its
    size twice passed as the second, and libtiff decoded the first."""
    photo = encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 96, 3), np.uint8)), "JPEG")
    hidden = jpeg_hiding_its_frame(photo, decoy=(8, 8))
    assert probe_image(hidden) == pil_header(hidden) == ("JPEG", (96, 64))
    assert np.array_equal(decode_rgb(hidden), decode_rgb(photo))
    with pytest.raises(ImageDecodeError, match=r"^image too large for its file size: 6000x6000 = 36,000,000 pixels"):
        decode_rgb(jpeg_hiding_its_frame(sparse_jpeg(6000, 6000)), max_pixels_per_byte=16)
    with pytest.raises(ImageDecodeError, match=r"^TIFF whose directory lists its tag 256 twice, which decoders read differently"):
        decode_rgb(tiff_listing_its_size_twice(4000, 4000))
    assert decode_rgb(tiff_listing_again(64, 48, {305: 0})).shape == (48, 64, 3)  # a tag no check reads: decoded, as libtiff reads it


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF"])
def test_an_image_decoded_at_another_size_than_its_header_gave_the_checks_is_refused(monkeypatch, fmt):
    """The last guard against a header read two ways that no check knows yet: the decode is paid, but
    the image is never answered as the small one the checks passed."""
    data = encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 96, 3), np.uint8)), fmt)
    probe = images_module.probe_layout
    monkeypatch.setattr(images_module, "probe_layout", lambda data: probe(data)._replace(size=(8, 8)))
    with pytest.raises(ImageDecodeError, match=f"^{fmt} whose image data is 96x64 where its header says 8x8: re-save it"):
        decode_rgb(data)


def test_a_jpeg_whose_image_data_is_cut_short_is_refused_everywhere():
    """libjpeg decodes a scan that ends early as if zeros followed (a warning, not an error), so a
    6000x6000 baseline JPEG cut to 600 bytes decoded as a whole one; every block needs two bits."""
    for width, height in ((6000, 6000), (640, 480)):
        cut = jpeg_cut_after_its_header(width, height)
        with pytest.raises(ImageDecodeError, match=rf"^truncated JPEG: its {width}x{height} image needs at least [\d,]+ bytes of image data, and the file holds 2: re-save it$"):
            read_rgb(cut)  # a user's own file, as training reads it, as well as an upload


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_the_smallest_complete_jpegs_pass_the_image_data_check(mode):
    """A flat image with optimised Huffman tables is the least data a baseline JPEG can hold (one 1-bit
    code for its DC and one for its end of block), and it is not taken for a cut one."""
    data = encode(Image.new(mode, (2000, 1000)), "JPEG", optimize=True, subsampling=2)
    layout = jpeg_layout(data)
    assert layout.blocks == {"L": 250 * 125, "RGB": 250 * 125 + 2 * 125 * 63}[mode]  # 4:2:0 chroma: 1000x500, 63 block rows
    assert layout.scan_bytes * 4 < layout.blocks * 1.1  # within 10% of the two-bit floor
    assert read_rgb(data).shape == (1000, 2000, 3)


OTHER_FORMATS = {  # formats PIL reads: each is refused by name, without its reader ever running
    "ICO": lambda: ico_holding_png(),  # PIL's ICO reader decodes the 8000x8000 PNG inside as it opens the file
    "EPS": lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 640 480\n%%EndComments\nshowpage\n",  # PIL runs Ghostscript on it
    "PCX": lambda: encode(Image.new("RGB", (64, 48)), "PCX"),
    "SGI": lambda: encode(Image.new("RGB", (64, 48)), "SGI"),
    "QOI": lambda: encode(Image.new("RGB", (64, 48)), "QOI"),
    "JPEG2000": lambda: encode(Image.new("RGB", (64, 48)), "JPEG2000"),
    "DDS": lambda: encode(Image.new("RGB", (64, 48)), "DDS"),
    "CUR or TGA": lambda: encode(Image.new("RGB", (64, 48)), "TGA"),  # TGA has no signature; its first bytes are a CUR's
}


@pytest.mark.parametrize("fmt", sorted(OTHER_FORMATS))
def test_formats_the_product_does_not_decode_are_refused_by_name_unopened(fmt, monkeypatch):
    data = OTHER_FORMATS[fmt]()
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda fp, mode="r", formats=None: opened.append(formats) or real_open(fp, mode, formats))
    with pytest.raises(ImageDecodeError, match=f"^unsupported image format {fmt}: send JPEG, PNG, WebP, BMP, TIFF, GIF or PPM/PGM$"):
        decode_rgb(data, max_pixels_per_byte=16.0)
    assert opened and all(formats == DECODED_FORMATS for formats in opened)  # PIL was only ever asked for the decoded formats


@pytest.mark.parametrize(("fmt", "mode"), [("JPEG", "RGB"), ("PNG", "RGBA"), ("WEBP", "RGB"), ("BMP", "RGB"), ("TIFF", "I;16"), ("TIFF", "I"), ("TIFF", "F"),
                                           ("GIF", "P"), ("PPM", "RGB"), ("PPM", "L"), ("PPM", "1"), ("PPM", "F")])  # fmt: skip
def test_every_supported_format_decodes(fmt, mode):
    pixels = np.random.default_rng(0).integers(0, 256, (48, 64, 3), np.uint8)
    assert decode_rgb(encode(Image.fromarray(pixels).convert(mode), fmt)).shape == (48, 64, 3)


@pytest.fixture
def pil_netpbm_decoders_fail(monkeypatch):
    """PIL's decoders for the plain kinds and for binary ones of any maxval but 255 run in Python: a
    16 MB binary PPM of maxval 1 took 6.1-6.3 s (``python -m benchmarks.decode_cost``). None may run."""
    from PIL import PpmImagePlugin

    def fail(*_):
        raise AssertionError("PIL's Python PPM decoder ran")

    monkeypatch.setattr(PpmImagePlugin.PpmDecoder, "decode", fail)
    monkeypatch.setattr(PpmImagePlugin.PpmPlainDecoder, "decode", fail)


@pytest.mark.parametrize(("kind", "maxval"), [(1, 1), (4, 1), *((k, m) for k in (2, 3, 5, 6) for m in (1, 15, 255, 1000, 65535))])
def test_pbm_pgm_and_ppm_are_scaled_from_their_maxval_without_pils_python_decoders(kind, maxval, pil_netpbm_decoders_fail):
    shape = (5, 11) if kind in (1, 2, 4, 5) else (5, 11, 3)
    samples = np.random.default_rng(kind).integers(0, maxval + 1, shape)
    samples.flat[0] = maxval  # the brightest sample, and for the bitmaps (1 is black) the darkest
    rgb = decode_rgb(netpbm(kind, samples, maxval))
    expected = 255 * (1 - samples) if kind in (1, 4) else np.rint(samples * (255 / maxval))
    assert rgb.shape == (5, 11, 3) and rgb.dtype == np.uint8 and rgb.flags.writeable
    assert np.array_equal(rgb, np.broadcast_to(expected[..., None] if samples.ndim == 2 else expected, rgb.shape))


def test_pils_own_ppm_variants_are_refused_by_name_and_every_ppm_header_is_held_to_the_limit(monkeypatch):
    """PIL's PPM reader also opens a grey float map (Pf, decoded) and variants of its own (P0CMYK, and
    Py* "for test purposes only", refused), and parses any of their headers in Python: the walk that
    limits a header's bytes knew only P1-P6, and 16 MB of comment lines after "Pf" took PIL 3.1 s
    (``python -m benchmarks.decode_cost``)."""
    for magic in (b"P0CMYK", b"PyP", b"PyRGBA", b"PyCMYK"):
        with pytest.raises(ImageDecodeError, match=f"^unsupported image format {magic.decode()} \\(a PPM variant of PIL's own\\): send JPEG"):
            decode_rgb(magic + b"\n4 4\n255\n" + bytes(64))
    with pytest.raises(ImageDecodeError, match="^not a recognised image format$"):  # text that starts with "Py"
        decode_rgb(b"Pyramid of text, not an image\n" * 10)
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("PIL opened the file"))
    for data in (many_header_units("PFM", 16 * 1024 * 1024), b"P0CMYK\n" + many_header_units("PPM", 16 * 1024 * 1024)[3:]):
        with pytest.raises(ImageDecodeError, match="^PPM with more than 4,096 header bytes"):
            decode_rgb(data)


def test_a_ppm_with_a_sample_above_its_maxval_missing_or_not_a_number_is_a_decode_error(pil_netpbm_decoders_fail):
    assert decode_rgb(b"P6\n2 1\n15\n" + bytes([15, 200, 0, 1, 2, 3])).ravel()[:2].tolist() == [255, 255]  # clipped to maxval
    assert decode_rgb(b"P2\n2 1\n255\n7 9").ravel()[::3].tolist() == [7, 9]  # no separator after the last sample
    for data, reason in [(b"P3\n2 1\n255\n1 2 3 4 x 6\n", "a sample is missing or not a number"),
                         (b"P3\n2 1\n255\n1 2 3 4 5\n", "a sample is missing or not a number"),
                         (b"P2\n2 1\n255\n-1 2\n", "a sample is missing or not a number"),
                         (b"P2\n2 1\n255\n" + b"9" * 100_000 + b" 2\n", "a sample is missing or not a number"),
                         (b"P6\n20 20\n255\n" + bytes(100), "truncated PPM: 100 of the 1,200 raster bytes its header declares"),
                         (b"P5\n20 20\n1000\n" + bytes(799), "truncated PPM: 799 of the 800 raster bytes"),
                         (b"P4\n20 2\n" + bytes(5), "truncated PPM: 5 of the 6 raster bytes")]:
        with pytest.raises(ImageDecodeError, match=reason):
            decode_rgb(data)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP", "PPM", "ICO", "PSD"])
def test_any_prefix_of_any_file_is_a_decode_error_and_nothing_else(fmt):
    """The first bytes of a file, cut anywhere: each gets ImageDecodeError (a 400 with its reason in the
    service, a skipped file in training), never another exception (a 500, a traceback)."""
    if fmt in ("ICO", "PSD"):  # formats refused by name: the ICO's first 4000 bytes, a PSD's header
        whole = ico_holding_png()[:4000] if fmt == "ICO" else b"8BPS\x00\x01" + bytes(40)
    else:
        whole = encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 32, 3), np.uint8)), fmt)
    for cut in [*range(1, 64), len(whole) // 2]:
        with pytest.raises(ImageDecodeError):
            decode_rgb(whole[:cut], max_pixels_per_byte=16.0)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("top", [1.0, 255.0])
def test_a_float_tiff_is_scaled_not_cast_to_black(channels, top):
    """Float samples are 0-1 by convention (0-255 when an 8-bit image was saved as floats): OpenCV's
    colour decode cast them to 8 bits unscaled, a black image; PIL has no mode for 3-channel floats."""
    ramp = np.linspace(0.0, 1.0, 48 * 64, dtype=np.float32).reshape(48, 64)
    pixels = np.dstack([ramp] * channels).squeeze() * np.float32(top)
    rgb = decode_rgb(cv2.imencode(".tiff", pixels)[1].tobytes())
    assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8
    assert rgb.min() == 0 and rgb.max() == 255 and abs(float(rgb.mean()) - 127.5) < 1


def test_a_float_tiff_is_held_to_an_eighth_of_the_pixel_limit_as_it_decodes_at_4_bytes_a_sample():
    pixels = np.random.default_rng(0).random((40, 50, 3), dtype=np.float32)
    with pytest.raises(ImageDecodeError, match=r"a TIFF of 32-bit samples, 50x40 = 2,000 pixels, above the limit of 1,000 for such"):
        decode_rgb(cv2.imencode(".tiff", pixels)[1].tobytes(), max_pixels=8_000)
    assert decode_rgb(cv2.imencode(".tiff", (pixels * 255).astype(np.uint8))[1].tobytes(), max_pixels=8_000).shape == (40, 50, 3)
    assert decode_rgb(cv2.imencode(".tiff", pixels)[1].tobytes(), max_pixels=16_000).shape == (40, 50, 3)


@pytest.mark.parametrize("channels", [1, 3])
def test_a_float_bigtiff_is_scaled_and_held_to_the_same_limit(channels):
    """Colour floats in a BigTIFF were "not a recognised image format": PIL cannot open them, and only
    classic TIFF directories were read for their size."""
    ramp = np.linspace(0.0, 1.0, 48 * 64, dtype=np.float32).reshape(48, 64)
    data = float_bigtiff(np.dstack([ramp] * channels).squeeze())
    rgb = decode_rgb(data)
    assert rgb.shape == (48, 64, 3) and rgb.min() == 0 and rgb.max() == 255 and abs(float(rgb.mean()) - 127.5) < 1
    with pytest.raises(ImageDecodeError, match=r"64x48 = 3,072 pixels, above the limit of 1,000"):
        decode_rgb(data, max_pixels=8_000)


def test_a_float_tiff_with_nan_pixels_is_refused_by_reason():
    with pytest.raises(ImageDecodeError, match="NaN or infinite"):
        decode_rgb(cv2.imencode(".tiff", np.full((8, 8, 3), np.nan, np.float32))[1].tobytes())


def test_a_tiffs_size_is_read_from_its_directory_and_its_strips_and_tiles_are_held_to_that_size(monkeypatch):
    """PIL's reader makes an object for every strip or tile offset in Python, whatever the image's size:
    2,000,000 of them (16 MB) took it 4.4 s to open before the size could be checked."""
    pixels = np.random.default_rng(0).integers(0, 256, (30, 40, 3), np.uint8)
    kinds = [encode(Image.fromarray(pixels).convert(mode), "TIFF", **options) for mode, options in
             [("RGB", {}), ("L", {}), ("1", {}), ("CMYK", {}), ("I;16", {}), ("RGB", {"compression": "tiff_lzw"}),
              ("RGB", {"compression": "jpeg"}), ("RGB", {"save_all": True, "append_images": [Image.new("RGB", (9, 9))]})]]
    assert [probe_image(data)[1] for data in kinds] == [pil_header(data)[1] for data in kinds] == [(40, 30)] * len(kinds)
    expected = [decode_rgb(data) for data in kinds]
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("PIL opened a TIFF"))
    assert all(np.array_equal(decode_rgb(data), rgb) for data, rgb in zip(kinds, expected, strict=True))
    assert decode_rgb(tiff_of_strips(64, 48, 48)).shape == (48, 64, 3)  # one strip a row, as scanners write
    with pytest.raises(ImageDecodeError, match="^TIFF with 2,000,000 strip offsets, more than the 2,000 strips of its 2000x2000 image"):
        decode_rgb(tiff_of_strips(2000, 2000, 2_000_000))
    with pytest.raises(ImageDecodeError, match="^extreme aspect ratio: 2x2000000"):
        decode_rgb(tiff_of_strips(2, 2_000_000, 2_000_000))
    tiled = tiff_of_strips(64, 48, 48).replace(struct.pack("<HHII", 278, 4, 1, 1), struct.pack("<HHII", 322, 4, 1, 1))
    with pytest.raises(ImageDecodeError, match="^TIFF tiles of 1x0, under the 16x16 the format requires"):
        decode_rgb(tiled)


def test_a_tiff_cut_inside_its_header_is_called_truncated():
    """Its directory offset, read from missing bytes, pointed at the file's own first bytes, whose
    "entry count" (the byte-order mark) was refused as a header of thousands of units."""
    whole = encode(Image.new("RGB", (32, 24)), "TIFF")
    for cut in range(4, 8):
        with pytest.raises(ImageDecodeError, match="^truncated or corrupt TIFF"):
            decode_rgb(whole[:cut])


def test_a_16_bit_png_that_only_pil_reads_costs_integers_not_float_copies():
    """libpng refuses a PNG whose image data's CRC is wrong, and PIL reads it: its 16-bit samples went
    through float64 copies of the whole image, 25 bytes a pixel (1 GB for a 2.7 MB upload at the pixel
    limit). The 8-bit values are each sample's high byte, as libpng gives them (below)."""
    import tracemalloc

    rng = np.random.default_rng(0)
    samples = rng.integers(0, 65536, (1000, 1000), dtype=np.uint16)
    png = bytearray(cv2.imencode(".png", samples)[1].tobytes())
    idat = png.index(b"IDAT")
    crc_at = idat + 4 + int.from_bytes(png[idat - 4:idat], "big")
    png[crc_at] ^= 0xFF
    tracemalloc.start()
    rgb = read_rgb(bytes(png))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    expected = (samples >> 8).astype(np.uint8)
    assert (rgb == expected[:, :, None]).all()
    assert peak < 10 * samples.size, peak  # the copies of 8 bytes a pixel took 24


def test_sixteen_bit_samples_get_the_same_8_bit_levels_whichever_decoder_reads_them():
    """libpng gives OpenCV a 16-bit PNG's high bytes, and PIL's samples were rounded: the same PNG
    decoded a level apart by libpng and by PIL (which reads the PNGs libpng refuses). Arrays and
    16-bit webcam frames take the high byte as well."""
    samples = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    high_bytes = (samples >> 8).astype(np.uint8)[:, :, None]
    png = cv2.imencode(".png", samples)[1].tobytes()
    assert (decode_rgb(png) == high_bytes).all() and (images_module._decode_with_pil(png) == high_bytes).all()
    assert (read_rgb(np.dstack([samples] * 3)) == high_bytes).all()
    assert (images_module.bgr_to_rgb(np.dstack([samples] * 4)) == high_bytes).all()


@pytest.mark.parametrize("fmt, transparency", [("GIF", 0), ("PNG", bytes([0, 128, 255]))])
def test_a_palette_image_with_transparency_is_its_palette_colours_without_a_detour_or_a_warning(fmt, transparency):
    """It went through RGBA (4 bytes a pixel) and a copy without the alpha, and exif_transpose copied
    the whole image first; the colours are the palette's either way, and PIL's warning about
    transparency in bytes stays out of the output."""
    import warnings

    indices = np.arange(64 * 48, dtype=np.uint8).reshape(48, 64) % 7
    palette = np.arange(768, dtype=np.uint16).astype(np.uint8)
    img = Image.fromarray(indices, mode="P")
    img.putpalette(palette.tolist())
    buf = io.BytesIO()
    img.save(buf, fmt, transparency=transparency)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rgb = images_module._decode_with_pil(buf.getvalue())
    assert (rgb == palette.reshape(256, 3)[indices]).all()


@pytest.mark.parametrize("fourcc, suffix, container", [("mp4v", ".mp4", "MP4/MOV"), ("MJPG", ".avi", "AVI")])
def test_a_video_sent_or_named_as_a_photo_is_named_as_a_video(tmp_path, fourcc, suffix, container):
    """A phone clip renamed IMG_0042.jpg, or uploaded for a photo, was "not a recognised image format"."""
    from gesture_core.images import decode_rgb

    path = tmp_path / f"clip{suffix}"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 15.0, (64, 48))
    for _ in range(3):
        writer.write(np.zeros((48, 64, 3), np.uint8))
    writer.release()
    with pytest.raises(ImageDecodeError, match=f"^a video \\({container}\\), not an image: send one of its frames as JPEG"):
        decode_rgb(path.read_bytes())
    renamed = tmp_path / "IMG_0042.jpg"
    renamed.write_bytes(path.read_bytes())
    with pytest.raises(ImageDecodeError, match=f"IMG_0042.jpg: a video \\({container}\\), not an image"):
        read_rgb(renamed)
    with pytest.raises(ImageDecodeError, match="^not a recognised image format$"):  # what is none of them
        decode_rgb(b"\x00" * 400)
