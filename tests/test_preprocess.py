"""One Preprocess and one decoder for every entry point: files, PIL images, webcam BGR frames, bytes."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from gesture_core import DataConfig, ImageDecodeError, Preprocess, get_backbone, read_rgb
from gesture_core.images import bgr_to_rgb, probe_image, upright_size
from tests.helpers import synthetic_image, write_rgb


@pytest.fixture
def preprocess() -> Preprocess:
    return Preprocess(get_backbone("efficientnet_lite0").data_config.with_input_size(96))


def test_file_pil_and_bgr_frame_give_identical_tensors(tmp_path, preprocess):
    rgb = synthetic_image(2, seed=5, size=150)
    path = write_rgb(tmp_path / "img.png", rgb)
    from_file = preprocess.load(path)
    from_bytes = preprocess.load(path.read_bytes())
    from_pil = preprocess.load(Image.open(path))
    from_frame = preprocess.from_bgr(cv2.imread(str(path)))
    assert from_file.shape == (3, 96, 96)
    for other in (from_bytes, from_pil, from_frame):
        assert torch.equal(from_file, other)


def test_normalisation_uses_the_data_config():
    config = DataConfig(input_size=8, resize_size=8, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    white = np.full((8, 8, 3), 255, np.uint8)
    out = Preprocess(config)(white)
    assert torch.allclose(out[:, 0, 0], torch.tensor([1.0, 3.0, 1.0]))


def test_an_input_size_no_image_should_take_is_refused_by_the_data_config_itself():
    """The limit lives with the data config, so the CLIs, load_classifier(input_size=...) and a
    checkpoint all get it; a 100,000 px input once asked OpenCV for 30 GB."""
    from gesture_core.preprocess import MAX_INPUT_SIZE

    assert DataConfig().with_input_size(MAX_INPUT_SIZE).input_size == MAX_INPUT_SIZE
    with pytest.raises(ValueError, match=f"input size 100000 px: at most {MAX_INPUT_SIZE}"):
        DataConfig().with_input_size(100_000)
    with pytest.raises(ValueError, match="at most"):
        DataConfig(input_size=MAX_INPUT_SIZE + 1, resize_size=MAX_INPUT_SIZE + 1)


def test_resize_shorter_side_then_centre_crop():
    config = DataConfig(input_size=4, resize_size=8)
    img = np.zeros((16, 32, 3), np.uint8)
    img[:, 14:18] = 255  # a vertical bar in the centre must survive the crop
    crop = Preprocess(config).crop(img)
    assert crop.shape == (4, 4, 3)
    assert crop[:, 1:3].mean() > 100 and crop[:, 0].mean() < 50


@pytest.mark.parametrize(("height", "width"), [(4, 5), (5, 4), (7, 9), (6, 6)])
def test_the_centre_crop_leaves_equal_margins_the_odd_pixel_on_the_far_side(height, width):
    """The crop every caller shares: a margin one pixel wider on the near side shifted every served image
    and passed the suite (a mutation)."""
    from gesture_core.preprocess import center_crop

    image = np.arange(height * width).reshape(height, width)
    top, left = (height - 2) // 2, (width - 2) // 2
    np.testing.assert_array_equal(center_crop(image, 2), image[top : top + 2, left : left + 2])
    assert top <= height - 2 - top <= top + 1 and left <= width - 2 - left <= left + 1


def test_exif_rotation_is_applied(tmp_path):
    img = Image.fromarray(synthetic_image(0, seed=1, size=64)[:40])  # 64 wide, 40 tall
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    assert read_rgb(buf.getvalue()).shape == (64, 40, 3)
    assert read_rgb(Image.open(io.BytesIO(buf.getvalue()))).shape == (64, 40, 3)
    # the size training reads from headers (a whole-frame model's frame shape) is the one decoding gives
    assert upright_size(buf.getvalue()) == (40, 64) and probe_image(buf.getvalue())[1] == (64, 40)


def test_an_image_pil_cannot_open_keeps_its_header_size(monkeypatch):
    """--crop auto sampled a dataset PIL did not open (OpenCV decodes it) as having no image at all."""
    from PIL import Image

    ok, encoded = cv2.imencode(".jpg", synthetic_image(0, seed=1, size=64)[:40])
    data = encoded.tobytes()

    def refuses(*args, **kwargs):
        raise Image.UnidentifiedImageError("cannot identify image file")

    monkeypatch.setattr(Image, "open", refuses)
    assert upright_size(data) == (64, 40)


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "I;16", "P", "LA"])
def test_any_pil_mode_becomes_rgb_uint8(mode, tmp_path):
    rgb = Image.fromarray(synthetic_image(1, seed=2, size=32))
    img = rgb.convert(mode) if mode != "I;16" else Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    out = read_rgb(buf.getvalue())
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    grey = np.repeat(np.asarray(rgb.convert("L"))[..., None], 3, axis=2)
    exact = {"L": grey, "LA": grey, "I;16": grey, "RGBA": np.asarray(rgb), "P": np.asarray(img.convert("RGB"))}  # P: its palette's colours
    if mode in exact:
        np.testing.assert_array_equal(out, exact[mode])
    else:  # a lossy JPEG: close to the original colours per channel (inverted CMYK or swapped channels are far off)
        error = np.abs(out.astype(int) - np.asarray(rgb, int)).mean(axis=(0, 1))
        assert error.max() < 12, error


def test_sixteen_bit_png_keeps_its_range(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 32, dtype=np.uint16), (32, 1))
    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), np.dstack([ramp] * 3))
    out = read_rgb(path)
    assert out.dtype == np.uint8 and out[0, 0, 0] == 0 and out[0, -1, 0] == 255


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"this is not an image at all", "not a recognised image"),
    ],
)
def test_garbage_is_a_clear_decode_error(data, reason):
    with pytest.raises(ImageDecodeError, match=reason):
        read_rgb(data)


def test_truncated_jpeg_is_refused():
    buf = io.BytesIO()
    Image.fromarray(synthetic_image(0, seed=3, size=64)).save(buf, format="JPEG")
    with pytest.raises(ImageDecodeError, match="truncated"):
        read_rgb(buf.getvalue()[: len(buf.getvalue()) // 2])


def test_decompression_bomb_is_refused_from_the_header_alone():
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 50000, 50000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    with pytest.raises(ImageDecodeError, match="image too large: 50000x50000 = 2,500,000,000 pixels, above the limit of 40,000,000"):
        read_rgb(bomb, max_pixels=40_000_000)


def test_pixel_limit_is_configurable():
    buf = io.BytesIO()
    Image.fromarray(synthetic_image(0, seed=3, size=64)).save(buf, format="PNG")
    with pytest.raises(ImageDecodeError, match="64x64 = 4,096 pixels, above the limit of 4,000"):
        read_rgb(buf.getvalue(), max_pixels=4000)
    assert read_rgb(buf.getvalue(), max_pixels=None).shape == (64, 64, 3)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(ImageDecodeError, match="no such file"):
        read_rgb(tmp_path / "nope.jpg")


def test_large_jpeg_decodes_at_reduced_size_but_never_below_what_is_needed(tmp_path):
    big = cv2.resize(synthetic_image(3, seed=4, size=64), (2048, 1536))
    path = tmp_path / "big.jpg"
    cv2.imwrite(str(path), big)
    out = read_rgb(path, min_side=256)
    assert 512 <= min(out.shape[:2]) < 1536
    assert read_rgb(path).shape[:2] == (1536, 2048)


def test_denormalize_inverts_normalize(preprocess):
    crop = preprocess.crop(synthetic_image(4, seed=9, size=120))
    assert np.abs(preprocess.denormalize(preprocess.normalize(crop)).astype(int) - crop).max() <= 1


def test_single_channel_config_outputs_one_channel():
    config = get_backbone("lenet5").data_config.with_channels(1)
    out = Preprocess(config)(synthetic_image(0, seed=0, size=48))
    assert out.shape == (1, 32, 32)


@pytest.mark.parametrize("in_chans", [3, 1])
def test_batch_normalisation_equals_the_reference_formula_per_crop(in_chans):
    config = DataConfig(input_size=24, resize_size=28).with_channels(in_chans)
    preprocess = Preprocess(config)
    images = [synthetic_image(i, seed=i, size=40 + 7 * i) for i in range(4)]
    crops = [preprocess.crop(img) for img in images]  # views into the resized images, as in the service
    batch = preprocess.normalize_batch(crops)
    mean, std = np.asarray(config.mean, np.float32) * 255, np.asarray(config.std, np.float32) * 255
    for crop, out in zip(crops, batch, strict=True):
        pixels = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)[:, :, None] if in_chans == 1 else crop
        reference = (pixels.astype(np.float32) - mean) / std
        assert np.abs(out.numpy().transpose(1, 2, 0) - reference).max() < 1e-5
        assert torch.equal(out, preprocess.normalize(crop))
    assert batch.shape == (4, in_chans, 24, 24) and batch.dtype == torch.float32 and batch.is_contiguous()
    assert torch.equal(preprocess.load_batch(images), batch)


def test_batch_normalisation_refuses_mixed_sizes_and_empty_batches(preprocess):
    small, large = np.zeros((96, 96, 3), np.uint8), np.zeros((97, 96, 3), np.uint8)
    with pytest.raises(ValueError, match="share a size"):
        preprocess.normalize_batch([small, large])
    with pytest.raises(ValueError, match="at least one"):
        preprocess.normalize_batch([])


def test_a_large_photo_is_reduced_alike_whether_a_file_bytes_a_pil_image_or_an_array(tmp_path):
    """A JPEG is decoded at 1/2-1/8 of its size where the model's resize allows; arrays and PIL images
    (a 1080p webcam frame) were kept whole, and scored up to 0.33 apart from the same photo as a file."""
    big = cv2.resize(synthetic_image(3, seed=4, size=64), (1600, 1200), interpolation=cv2.INTER_CUBIC)
    jpeg = tmp_path / "big.jpg"
    write_rgb(jpeg, big)
    decoded = read_rgb(jpeg)  # in full
    from_file = read_rgb(jpeg, min_side=146)
    assert from_file.shape == (300, 400, 3)  # 1/4: the shorter side stays at least twice 146
    for other in (read_rgb(decoded, min_side=146), read_rgb(Image.fromarray(decoded), min_side=146),
                  read_rgb(cv2.cvtColor(decoded, cv2.COLOR_RGB2BGR)[:, :, ::-1], min_side=146)):
        assert other.shape == from_file.shape
        assert np.abs(other.astype(int) - from_file).mean() < 2  # area averaging against the decoder's scaled IDCT
    png = write_rgb(tmp_path / "big.png", decoded)  # a lossless file is reduced exactly as its array is
    np.testing.assert_array_equal(read_rgb(png, min_side=146), read_rgb(decoded, min_side=146))
    assert read_rgb(decoded, min_side=300).shape == (600, 800, 3) and read_rgb(decoded, min_side=301).shape == decoded.shape


def test_a_sixteen_bit_image_reads_alike_as_a_file_a_pil_image_and_an_array():
    """16-bit samples are scaled to 8 bits one way: a dark 16-bit image (no sample above 255) read as a PIL
    image was taken for an 8-bit one and came out bright, while its PNG came out black."""
    dark = (synthetic_image(1, seed=2, size=32)[:, :, 0].astype(np.uint16) * 3 // 4)  # all samples <= 255 of 65535
    img = Image.frombytes("I;16", (32, 32), dark.astype("<u2").tobytes())
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    expected = np.repeat((dark >> 8).astype(np.uint8)[..., None], 3, axis=2)  # black
    for source in (buf.getvalue(), Image.open(io.BytesIO(buf.getvalue())), img, dark, dark.astype(">u2")):
        np.testing.assert_array_equal(read_rgb(source), expected)


def test_reading_a_pil_image_leaves_the_callers_image_as_it_was():
    img = Image.fromarray(synthetic_image(0, seed=1, size=64)[:40])  # 64 wide, 40 tall
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    photo = Image.open(io.BytesIO(buf.getvalue()))
    assert read_rgb(photo).shape == (64, 40, 3)  # upright
    assert photo.size == (64, 40) and photo.getexif()[0x0112] == 6  # predict rotated the caller's own image


@pytest.mark.parametrize("source", [None, 3, [b"\xff\xd8"], torch.zeros(3, 8, 8)], ids=["None", "int", "list", "tensor"])
def test_something_that_is_no_image_is_a_type_error_naming_what_an_image_may_be(source):
    with pytest.raises(TypeError, match="an image is a path, encoded bytes, a PIL image or a numpy array"):
        read_rgb(source)


def test_a_bgr_frame_must_be_an_array_and_gets_the_arrays_own_checks(preprocess):
    with pytest.raises(TypeError, match=r"a BGR frame \(bgr=True\) is a numpy array as OpenCV gives it, not str"):
        preprocess.from_bgr("frame.jpg")
    with pytest.raises(ImageDecodeError, match="expected a uint8, uint16 or float image array, got dtype int64"):
        preprocess.from_bgr(np.zeros((8, 8, 3), np.int64))  # OpenCV's own error, from cvtColor
    with pytest.raises(ImageDecodeError, match=r"image has no pixels \(0x0\)"):
        preprocess.from_bgr(np.zeros((0, 0, 3), np.uint8))
    frame = np.zeros((8, 8, 3), np.float64)
    frame[..., 0] = 1.0  # blue, in BGR: a dtype cvtColor does not take is swapped all the same
    assert bgr_to_rgb(frame)[0, 0].tolist() == [0, 0, 255]
