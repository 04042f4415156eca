"""Uploads that the HTTP service must survive, made as real encoded files (shared by the service tests)."""

from __future__ import annotations

import base64
import functools
import io
import re
import struct
import zlib

import cv2
import numpy as np
from PIL import Image

from tests.helpers import SHARED_DATA, synthetic_image

LARGE_SIGN_DIGIT = "7/IMG_5874.JPG"  # one of the three 3024x3024 photos in sign-digits


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def jpeg(seed: int = 0, size: int = 96) -> bytes:
    return encode(Image.fromarray(synthetic_image(seed % 6, seed, size)), "JPEG", quality=90)


def png_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A ~100-byte PNG whose header declares ``width`` x ``height`` RGB pixels (7.5 GB decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + chunk(b"IEND", b"")


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


def odd_formats() -> dict[str, bytes]:
    """Valid images in modes a webcam never produces: the service must decode them like read_rgb does."""
    rgb = Image.fromarray(synthetic_image(1, 7, 96))
    sixteen = (np.asarray(rgb.convert("L"), np.uint16) * 257).astype(np.uint16)
    return {
        "grayscale.png": encode(rgb.convert("L"), "PNG"),
        "rgba.png": encode(rgb.convert("RGBA"), "PNG"),
        "cmyk.jpg": encode(rgb.convert("CMYK"), "JPEG"),
        "16bit.png": encode(Image.fromarray(sixteen), "PNG"),
        "palette.gif": encode(rgb.convert("P"), "GIF"),
    }


def bad_uploads() -> dict[str, tuple[bytes, str]]:
    """name -> (file bytes, a phrase the 4xx reason must contain)."""
    whole = jpeg(3, 160)
    return {
        "text": (b"this is not an image\n" * 20, "not a recognised image format"),
        "empty": (b"", "empty"),
        "truncated_jpeg": (whole[: len(whole) * 2 // 3], "truncated"),
        "decompression_bomb": (png_bomb(), "too large"),
        "garbage_after_jpeg_header": (whole[:200] + bytes(range(256)) * 8, "truncated"),
        "jpeg_cut_before_its_header": (whole[:40], "truncated JPEG"),
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
    }


def sample_images(include_large: bool = True) -> list[tuple[str, bytes]]:
    """Real sign-digit photos (one per class, plus a 3024x3024 one) when ../shared/data is there,
    else generated JPEGs."""
    root = SHARED_DATA / "sign-digits"
    if not root.is_dir():
        return [(f"synthetic{i}.jpg", jpeg(i)) for i in range(6)]
    paths = [sorted((root / str(d)).glob("*.JPG"))[0] for d in range(10)]
    if include_large and (root / LARGE_SIGN_DIGIT).is_file():
        paths.append(root / LARGE_SIGN_DIGIT)
    return [(p.name, p.read_bytes()) for p in paths]


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


def http_bad_requests(upload_limit_bytes: int) -> dict[str, dict]:
    """name -> keyword arguments for httpx/TestClient ``post``: each must get a 4xx with a JSON reason."""
    image = jpeg(1)
    cases = {f"file_{name}": {"files": {"image": (f"{name}.bin", data)}} for name, (data, _) in bad_uploads().items()}
    cases.update({
        "empty_body": {},
        "wrong_field_name": {"files": {"file": ("hand.jpg", image)}},
        "text_in_file_field": {"data": {"image": "http://127.0.0.1:1/x.jpg"}},
        "urlencoded": {"content": b"image=hello", "headers": {"content-type": "application/x-www-form-urlencoded"}},
        "raw_jpeg_body": {"content": image, "headers": {"content-type": "image/jpeg"}},
        "not_json": {"content": b"{not json", "headers": {"content-type": "application/json"}},
        "bad_base64": {"json": {"image_b64": "!!!"}},
        "path_instead_of_file": {"json": {"image": "/etc/passwd"}},
        "top_k_zero": {"files": {"image": ("a.jpg", image)}, "data": {"top_k": "0"}},
        "threshold_above_one": {"json": {"image_b64": b64(image), "threshold": 1.5}},
        "multipart_without_boundary": {"content": b"xx", "headers": {"content-type": "multipart/form-data"}},
        "upload_over_limit": {"files": {"image": ("big.jpg", b"\xff" * (upload_limit_bytes + 1))}},
        # Bodies that BentoML's own parsing answered with a 500 (service/http_guard.py says why).
        "json_nested_deeper_than_the_parser_allows": {"content": b'{"image_b64": ' + b"[" * 990 + b"]" * 990 + b"}",
                                                      "headers": {"content-type": "application/json"}},
        # Bodies that take Python seconds to parse at 16 MB (of the event loop's time), refused after a count.
        "json_nested_100000_deep": {"content": b'{"image_b64": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                                    "headers": {"content-type": "application/json"}},
        "json_of_200000_keys": {"content": ("{" + ",".join(f'"k{i}": 0' for i in range(200_000)) + "}").encode(),
                                "headers": {"content-type": "application/json"}},
        "urlencoded_1001_fields": {"content": b"&".join([b"top_k=1"] * 1_001), "headers": {"content-type": "application/x-www-form-urlencoded"}},
        "multipart_of_2500_parts": multipart(*[form_part("top_k", b"1")] * 2_500),
        "part_with_too_many_headers": multipart(form_part("image", image, "a.jpg", headers=tuple(f"X-Note-{i}: x" for i in range(9)))),
        "part_header_line_over_limit": multipart(form_part("image", image, "a.jpg", headers=("X-Note: " + "x" * 5_000,))),
        "file_name_over_limit": multipart(form_part("image", image, "a" * 296 + ".jpg")),
        "text_field_over_limit": multipart(form_part("image", image, "a.jpg"), form_part("top_k", b" " * 2_000_000 + b"3")),
        "over_a_thousand_files": multipart(*[form_part("image", b"x", "a.jpg")] * 1_001),
    })
    return cases


def ambiguous_requests() -> dict[str, tuple[dict, int, str]]:
    """name -> (keyword arguments for httpx/TestClient ``request``, the status, a phrase of the JSON reason)."""
    image = jpeg(1)
    return {
        "two_image_files": ({"method": "POST", "url": "/predict", "files": [("image", ("a.jpg", image)), ("image", ("b.jpg", image))]},
                            400, "field 'image' was sent more than once"),
        "top_k_twice": ({"method": "POST", "url": "/predict", "files": {"image": ("a.jpg", image)}, "data": {"top_k": ["1", "3"]}},
                        400, "field 'top_k' was sent more than once"),
        "top_k_twice_in_json": ({"method": "POST", "url": "/predict", "content": b'{"image_b64": "%s", "top_k": 1, "top_k": 3}' % b64(image).encode(),
                                 "headers": {"content-type": "application/json"}}, 400, "field 'top_k' was sent more than once"),
        "top_k_true": ({"method": "POST", "url": "/predict", "json": {"image_b64": b64(image), "top_k": True}}, 400, "top_k: Input should be a valid integer"),
        "top_k_true_in_a_form": ({"method": "POST", "url": "/predict", "files": {"image": ("a.jpg", image)}, "data": {"top_k": "true"}}, 400, "top_k: Input should be a valid integer"),
        "unknown_field": ({"method": "POST", "url": "/predict", "files": {"image": ("a.jpg", image)}, "data": {"topk": "3"}},
                          400, "unexpected field 'topk'; this endpoint takes: image, image_b64, threshold, top_k"),
        "put_predict": ({"method": "PUT", "url": "/predict", "files": {"image": ("a.jpg", image)}}, 405, "PUT /predict: method not allowed; use POST"),
        "get_predict": ({"method": "GET", "url": "/predict"}, 405, "GET /predict: method not allowed; use POST"),
        "file_to_unknown_route": ({"method": "POST", "url": "/classify", "files": {"image": ("a.jpg", image)}}, 404, "no such endpoint: POST /classify"),
    }


NOT_A_FILE = "field 'image' must be a file"  # README: "must be a file upload (e.g. curl -F image=@photo.jpg)"


def expected_refusal(case: str, upload_limit_bytes: int) -> tuple[int, str, tuple[list[str], str] | None]:
    """(status, a phrase of the reason, and for validation errors the (loc, type) of the first "detail"
    entry, whose "msg" then holds the phrase) for each case of ``http_bad_requests``: the README's table
    of bad input, case by case."""
    return {
        "file_text": (400, "image: not a recognised image format", None),
        "file_empty": (400, "image: empty file (0 bytes)", None),
        "file_truncated_jpeg": (400, "image: truncated JPEG (no end-of-image marker)", None),
        "file_garbage_after_jpeg_header": (400, "image: truncated JPEG (no end-of-image marker)", None),
        "file_jpeg_cut_before_its_header": (400, "image: truncated JPEG (no end-of-image marker)", None),
        "file_strip_39000x1": (400, "image: extreme aspect ratio: 39000x1 is 39,000:1, above the limit of 20:1", None),
        "file_strip_1000000x1": (400, "image: extreme aspect ratio: 1000000x1 is 1,000,000:1, above the limit of 20:1", None),
        "file_strip_1x12000": (400, "image: extreme aspect ratio: 1x12000 is 12,000:1, above the limit of 20:1", None),
        "file_decompression_bomb": (400, "image: image too large (Image size (2500000000 pixels)", None),
        "file_flat_png_6000x6000": (400, "image: image too large for its file size: 6000x6000 = 36,000,000 pixels in", None),
        "empty_body": (400, "send exactly one image: a multipart file field named 'image', or JSON {\"image_b64\"", None),
        "wrong_field_name": (400, "'file'; this endpoint takes", None),
        "text_in_file_field": (400, NOT_A_FILE, None),
        "urlencoded": (400, NOT_A_FILE, None),
        "multipart_without_boundary": (400, "malformed multipart/form-data body (missing or wrong boundary)", None),
        "raw_jpeg_body": (400, "Invalid JSON", ([], "json_invalid")),
        "not_json": (400, "Invalid JSON", ([], "json_invalid")),
        "bad_base64": (400, "not valid base64", (["image_b64"], "value_error")),
        "path_instead_of_file": (400, NOT_A_FILE, None),
        "top_k_zero": (400, "Input should be greater than or equal to 1", (["top_k"], "greater_than_equal")),
        "threshold_above_one": (400, "Input should be less than or equal to 1", (["threshold"], "less_than_equal")),
        "upload_over_limit": (413, f"the limit is {upload_limit_bytes:,} bytes (server setting GESTURE_MAX_UPLOAD_MB)", None),
        "file_flat_progressive_jpeg_4000x4000": (400, "image: image too large for its file size: 4000x4000 = 16,000,000 pixels in", None),
        "file_jpeg_scan_bomb": (400, "image: JPEG with 1,010 scans, above the limit of 100", None),
        "json_nested_deeper_than_the_parser_allows": (400, "Invalid JSON: recursion limit exceeded", ([], "json_invalid")),
        "json_nested_100000_deep": (400, "JSON body too complex: 100,002 commas, colons and brackets, above the limit of 1,000", None),
        "json_of_200000_keys": (400, "JSON body too complex: 400,000 commas, colons and brackets, above the limit of 1,000", None),
        "urlencoded_1001_fields": (400, "1,001 form fields in one request; the limit is 1,000", None),
        "multipart_of_2500_parts": (400, "2,500 parts in one multipart body; the limit is 2,000", None),
        "part_with_too_many_headers": (400, "field 'image' has 11 part headers; the limit is 8", None),
        "part_header_line_over_limit": (400, "a part header of field 'image' is 5,008 bytes; the limit is 4,224", None),
        "file_name_over_limit": (400, "the file name in field 'image' is 300 bytes; the limit is 200 (rename the file)", None),
        "text_field_over_limit": (400, "text field 'top_k' is 2,000,001 bytes; the limit is 1,048,576", None),
        "over_a_thousand_files": (400, "1,001 files in one request; the limit is 1,000", None),
    }[case]


def assert_refused_as_documented(response, case: str, upload_limit_bytes: int) -> None:
    status, phrase, detail = expected_refusal(case, upload_limit_bytes)
    assert response.status_code == status, (case, response.status_code, response.text)
    body = response.json()
    assert isinstance(body, dict) and body["error"], (case, body)
    if detail is None:
        assert phrase in body["error"], (case, body)
    else:
        first = body["detail"][0]
        assert [first["loc"], first["type"]] == list(detail) and phrase in first["msg"], (case, body)
