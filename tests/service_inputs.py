"""Uploads the service tests send, and what the README says each bad one gets (the hostile uploads
themselves are made in ``benchmarks.hostile_inputs``, which the benchmarks also send)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from benchmarks.hostile_inputs import b64, encode
from tests.helpers import SHARED_DATA, synthetic_image

LARGE_SIGN_DIGIT = "7/IMG_5874.JPG"  # one of the three 3024x3024 photos in sign-digits


def jpeg(seed: int = 0, size: int = 96) -> bytes:
    return encode(Image.fromarray(synthetic_image(seed % 6, seed, size)), "JPEG", quality=90)


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


def ambiguous_requests() -> dict[str, tuple[dict, int, str]]:
    """name -> (keyword arguments for httpx/TestClient ``request``, the status, a phrase of the JSON reason)."""
    image = jpeg(1)
    return {
        "two_image_files": ({"method": "POST", "url": "/predict", "files": [("image", ("a.jpg", image)), ("image", ("b.jpg", image))]},
                            400, "field 'image' was sent more than once; it takes one value (several images: repeat 'images' on /predict_batch)"),
        "top_k_twice": ({"method": "POST", "url": "/predict", "files": {"image": ("a.jpg", image)}, "data": {"top_k": ["1", "3"]}},
                        400, "field 'top_k' was sent more than once"),
        "top_k_twice_in_json": ({"method": "POST", "url": "/predict", "content": b'{"image_b64": "%s", "top_k": 1, "top_k": 3}' % b64(image).encode(),
                                 "headers": {"content-type": "application/json"}}, 400, "field 'top_k' was sent more than once"),
        "top_k_true": ({"method": "POST", "url": "/predict", "json": {"image_b64": b64(image), "top_k": True}}, 400, "top_k: Input should be a valid integer"),
        "top_k_true_in_a_form": ({"method": "POST", "url": "/predict", "files": {"image": ("a.jpg", image)}, "data": {"top_k": "true"}}, 400, "top_k: Input should be a valid integer"),
        "top_k_twice_in_json_as_xml": ({"method": "POST", "url": "/predict", "content": b'{"image_b64": "%s", "top_k": 1, "top_k": 3}' % b64(image).encode(),
                                        "headers": {"content-type": "application/xml"}}, 400, "field 'top_k' was sent more than once"),
        "unknown_field_in_json_as_text": ({"method": "POST", "url": "/predict", "content": b'{"image_b64": "%s", "topk": 3}' % b64(image).encode(),
                                           "headers": {"content-type": "text/plain;charset=UTF-8"}},
                                          400, "unexpected field 'topk'; this endpoint takes: image, image_b64, threshold, top_k"),
        "unknown_field": ({"method": "POST", "url": "/predict", "files": {"image": ("a.jpg", image)}, "data": {"topk": "3"}},
                          400, "unexpected field 'topk'; this endpoint takes: image, image_b64, threshold, top_k"),
        "raw_bytes_to_the_batch": ({"method": "POST", "url": "/predict_batch", "content": image, "headers": {"content-type": "application/octet-stream"}},
                                   400, "this endpoint takes: images, images_b64, threshold, top_k"),
        "images_and_images_b64": ({"method": "POST", "url": "/predict_batch", "files": [("images", ("a.jpg", image))],
                                   "data": {"images_b64": f'["{b64(image)}"]'}}, 400, "send the images one way"),
        "images_b64_twice_in_json": ({"method": "POST", "url": "/predict_batch", "content": b'{"images_b64": ["%s"], "images_b64": ["%s"]}' % (
                                      b64(b"not an image").encode(), b64(image).encode()), "headers": {"content-type": "application/json"}},
                                     400, "field 'images_b64' was sent more than once; send it once, with every image in its one list"),
        "images_b64_twice_in_a_form": ({"method": "POST", "url": "/predict_batch", "data": {"images_b64": [f'["{b64(image)}"]'] * 2}},
                                       400, "field 'images_b64' was sent more than once; send it once, with every image in its one list"),
        "raw_image_to_info": ({"method": "POST", "url": "/info", "content": image, "headers": {"content-type": "image/jpeg"}},
                              400, "a raw image/jpeg body is not taken: this endpoint takes no fields; send an empty body or {}"),
        "images_b64_not_a_list_in_a_form": ({"method": "POST", "url": "/predict_batch", "data": {"images_b64": b64(image)}},
                                            400, 'send a JSON array of base64 strings, ["<base64>", ...], in a form field too'),
        "images_b64_not_a_list": ({"method": "POST", "url": "/predict_batch", "json": {"images_b64": b64(image)}},
                                  400, 'send a JSON array of base64 strings, ["<base64>", ...], in a form field too'),
        "image_b64_a_number": ({"method": "POST", "url": "/predict", "json": {"image_b64": 5}},
                               400, "image_b64: Input should be a valid bytes: send the image as a base64 string (or a data: URL)"),
        "images_b64_of_numbers": ({"method": "POST", "url": "/predict_batch", "json": {"images_b64": [5]}},
                                  400, "images_b64[0]: Input should be a valid bytes: each image is a base64 string (or a data: URL)"),
        "images_b64_of_forty_numbers": ({"method": "POST", "url": "/predict_batch", "json": {"images_b64": [5] * 40}},
                                        400, "images_b64[4]: Input should be a valid bytes: each image is a base64 string (or a data: URL); and 35 more"),
        "images_and_an_empty_images_b64": ({"method": "POST", "url": "/predict_batch", "files": [("images", ("a.jpg", image))],
                                            "data": {"images_b64": "[]"}}, 400, "send the images one way"),
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
        "file_three_bytes": (400, "image: not a recognised image format", None),
        "file_truncated_jpeg": (400, "image: truncated JPEG (no end-of-image marker)", None),
        "file_garbage_after_jpeg_header": (400, "image: truncated JPEG (no end-of-image marker)", None),
        "file_jpeg_cut_before_its_header": (400, "image: truncated JPEG (no end-of-image marker)", None),
        "file_jpeg_header_then_3_mb_of_junk": (400, "image: truncated or corrupt JPEG (its image header cannot be read)", None),
        "file_gif_header_then_3_mb_of_junk": (400, "image: truncated or corrupt GIF (its image header cannot be read)", None),
        "file_strip_39000x1": (400, "image: extreme aspect ratio: 39000x1 is 39,000:1, above the limit of 20:1", None),
        "file_strip_1000000x1": (400, "image: extreme aspect ratio: 1000000x1 is 1,000,000:1, above the limit of 20:1", None),
        "file_strip_1x12000": (400, "image: extreme aspect ratio: 1x12000 is 12,000:1, above the limit of 20:1", None),
        "file_decompression_bomb": (400, "image: image too large: 50000x50000 = 2,500,000,000 pixels, above the limit of 40,000,000", None),
        "file_flat_png_6000x6000": (400, "image: image too large for its file size: 6000x6000 = 36,000,000 pixels in", None),
        "empty_body": (400, "send exactly one image: a multipart file field named 'image', or JSON {\"image_b64\"", None),
        "wrong_field_name": (400, "'file'; this endpoint takes", None),
        "text_in_file_field": (400, NOT_A_FILE, None),
        "urlencoded": (400, NOT_A_FILE, None),
        "multipart_without_boundary": (400, "malformed multipart/form-data body (missing or wrong boundary)", None),
        "multipart_cut_short": (400, "malformed multipart/form-data body: no closing boundary (was the upload cut short?)", None),
        "raw_jpeg_body": (400, "a raw image/jpeg body is not taken: send the image as a multipart file field", None),
        "not_json": (400, "Invalid JSON", ([], "json_invalid")),
        "json_with_byte_order_mark": (400, "the JSON body starts with a UTF-8 byte-order mark (EF BB BF), which JSON does not allow", None),
        "bad_base64": (400, "not valid base64", (["image_b64"], "value_error")),
        "path_instead_of_file": (400, NOT_A_FILE, None),
        "top_k_zero": (400, "Input should be greater than or equal to 1", (["top_k"], "greater_than_equal")),
        "threshold_above_one": (400, "Input should be less than or equal to 1", (["threshold"], "less_than_equal")),
        "threshold_nan": (400, "Input should be a finite number", (["threshold"], "finite_number")),
        "upload_over_limit": (413, f"the limit is {upload_limit_bytes:,} bytes (server setting GESTURE_MAX_UPLOAD_MB)", None),
        "file_flat_progressive_jpeg_4000x4000": (400, "image: image too large for its file size: 4000x4000 = 16,000,000 pixels in", None),
        "file_jpeg_scan_bomb": (400, "image: JPEG with 1,010 scans, above the limit of 100", None),
        "file_arithmetic_coded_jpeg_6000x6000": (400, "image: image too large for its file size: 6000x6000 = 36,000,000 pixels in 106 bytes", None),
        "file_lossless_jpeg_6000x6000": (400, "image: image too large for its file size: 6000x6000 = 36,000,000 pixels in 67 bytes", None),
        "file_jpeg_cut_after_its_header_6000x6000": (400, "image: truncated JPEG: its 6000x6000 image needs at least 210,938 bytes of image data, "
                                                          "and the file holds 2: re-save it", None),
        "file_jpeg_hiding_its_12000x12000_frame_behind_a_stuffed_zero": (400, "image: image too large: 12000x12000 = 144,000,000 pixels, "
                                                                              "above the limit of 40,000,000", None),
        "file_tiff_listing_its_4000x4000_size_twice": (400, "image: TIFF whose directory lists its tag 256 twice, which decoders read differently: "
                                                            "re-save it", None),
        "file_ico_holding_an_8000x8000_png": (400, "image: unsupported image format ICO: send JPEG, PNG, WebP, BMP, TIFF, GIF or PPM/PGM", None),
        "file_eps": (400, "image: unsupported image format EPS: send JPEG, PNG, WebP, BMP, TIFF, GIF or PPM/PGM", None),
        "file_jpeg_of_2000_segments": (400, "image: JPEG with more than 1,000 segments before its pixels, far more than any photo", None),
        "file_png_of_2000_chunks": (400, "image: PNG with more than 100 chunks besides its pixels, far more than any photo", None),
        "file_gif_of_2000_blocks": (400, "image: GIF with more than 1,000 blocks before its pixels, far more than any photo", None),
        "file_ppm_with_a_10000_byte_header": (400, "image: PPM with more than 4,096 header bytes, far more than any photo", None),
        "file_tiff_of_2000_directory_entries": (400, "image: TIFF with more than 1,000 directory entries, far more than any photo", None),
        "json_nested_deeper_than_the_parser_allows": (400, "Invalid JSON: recursion limit exceeded", ([], "json_invalid")),
        "json_nested_100000_deep": (400, "JSON body too complex: 100,002 commas, colons and brackets, above the limit of 1,000", None),
        "json_of_200000_keys": (400, "JSON body too complex: 400,000 commas, colons and brackets, above the limit of 1,000", None),
        "json_of_200000_keys_as_text": (400, "JSON body too complex: 400,000 commas, colons and brackets, above the limit of 1,000", None),
        "urlencoded_1001_fields": (400, "1,001 form fields in one request; the limit is 1,000", None),
        "multipart_of_2500_parts": (400, "2,500 parts in one multipart body; the limit is 2,000", None),
        "part_with_too_many_headers": (400, "field 'image' has more than 8 part headers; the limit is 8", None),
        "part_header_line_over_limit": (400, "a part header of field 'image' is over 4,224 bytes; the limit is 4,224", None),
        "file_name_over_limit": (400, "the file name in field 'image' is 300 bytes; the limit is 200 (rename the file)", None),
        "file_name_with_a_nul_byte": (400, "the file name in field 'image' holds a NUL byte (rename the file)", None),
        "file_name_of_150_latin_1_bytes": (400, "the file name in field 'image' is 304 bytes in UTF-8; the limit is 200 (rename the file)", None),
        "text_field_over_limit": (400, "text field 'top_k' is 2,000,001 bytes; the limit is 1,048,576", None),
        "over_a_thousand_files": (400, "1,001 files in one request; the limit is 1,000", None),
        "multipart_with_a_preamble": (400, "malformed multipart/form-data body: Expected boundary character 45, got 104", None),
        "multipart_header_without_a_colon": (400, "malformed multipart/form-data body: Found invalid character 32 in header", None),
        "file_in_base64_transfer_encoding": (400, "field 'image' is sent in Content-Transfer-Encoding base64, which multipart/form-data does "
                                                  "not use (RFC 7578): send the file's bytes as they are", None),
        "part_named_twice": (400, "field 'top_k' must be text, not a file", None),  # the disposition BentoML acts on: the last
        "gzip_encoded_json": (415, "a request body in Content-Encoding gzip is not taken: send it uncompressed", None),
        "top_k_of_a_million_characters": (400, "Input should be a valid integer", (["top_k"], "int_type")),
        "unknown_field_of_a_million_characters": (400, r"unexpected field '\x01\x01", None),
        "form_field_nested_1000_deep": (400, "text field 'top_k' holds 1,000 opening brackets, above the limit of 16", None),
        "form_field_of_300000_values": (400, "text field 'top_k' too complex: 300,000 commas, colons and brackets, above the limit of 1,000", None),
        "form_field_of_a_5000_digit_number": (400, "text field 'threshold' holds a number of more than 4,300 digits", None),
        "urlencoded_field_over_limit": (400, "text field 'image_b64' is 1,100,009 bytes; the limit is 1,048,576", None),
        "gzip_in_a_second_content_encoding_header": (415, "a request body in Content-Encoding gzip is not taken: send it uncompressed", None),
    }[case]


def assert_refused_as_documented(response, case: str, upload_limit_bytes: int) -> None:
    status, phrase, detail = expected_refusal(case, upload_limit_bytes)
    assert response.status_code == status, (case, response.status_code, response.text)
    body = response.json()
    assert isinstance(body, dict) and body["error"], (case, body)
    assert len(response.content) < 2000, (case, len(response.content))  # what was sent is never quoted back whole
    if detail is None:
        assert phrase in body["error"], (case, body)
    else:
        first = body["detail"][0]
        assert [first["loc"], first["type"]] == list(detail) and phrase in first["msg"], (case, body)
