"""ASGI middleware in front of every route of the service.

* Refuses request bodies above the upload limit with 413 before BentoML parses them (BentoML 1.4
  has no request size limit of its own: ``api_server.max_request_size`` was removed).
* Checks the field names of form uploads against the endpoint: BentoML 1.4.39 answers a file in an
  unknown field with a 500 (it JSON-decodes the file's bytes), and text in a file field with an
  attempt to download it as a URL.
* Gives every 4xx the same JSON object ``{"error": reason, ...}``: BentoML 1.4.39 wraps the message
  of its own 4xx exceptions in a one-element list (bentoml/BentoML#4232), which clients would have
  to special-case.
* Offers the body it has read to a route's shortcut, which may answer the request itself (see
  ``service.service.predict_shortcut``); otherwise the request goes on to BentoML.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

from python_multipart.multipart import parse_options_header

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
# (the parts of a multipart body, send) -> whether it answered the request
Shortcut = Callable[[list["FormPart"], Send], Awaitable[bool]]

# A client that declares a body above the limit still gets to send it (and then read the 413)
# as long as it is at most this many times the limit; beyond that we answer at once and the
# connection is closed while the client may still be uploading.
DRAIN_FACTOR = 8


class RequestGuard:
    def __init__(self, app: ASGIApp, max_body_bytes: int, file_fields: Mapping[str, frozenset[str]] | None = None,
                 shortcuts: Mapping[str, Shortcut] | None = None) -> None:
        """``file_fields``: route -> names of its file-upload fields (routes not listed take no files).
        ``shortcuts``: route -> a function offered the parts of each accepted multipart body of that route first."""
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.file_fields = dict(file_fields or {})
        self.shortcuts = dict(shortcuts or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        send = reshape_client_errors(send)
        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        declared = declared_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            if declared <= DRAIN_FACTOR * self.max_body_bytes:
                await drain(receive)
            return await send_json(send, 413, {"error": self.too_large(declared)})
        body, size = await read_body(receive, self.max_body_bytes)
        if body is None:
            return await send_json(send, 413, {"error": self.too_large(size, at_least=True)})
        media_type, parts = form_parts(scope, body)
        problem = form_problem(media_type, body, parts, self.file_fields.get(scope["path"], frozenset()))
        if problem:
            return await send_json(send, 400, {"error": problem})
        shortcut = self.shortcuts.get(scope["path"])
        if shortcut is not None and parts and await shortcut(parts, send):
            return None
        await self.app(scope, replay(body, receive), send)

    def too_large(self, size: int, at_least: bool = False) -> str:
        return (f"request body is {'more than ' if at_least else ''}{size:,} bytes; the limit is "
                f"{self.max_body_bytes:,} bytes (server setting GESTURE_MAX_UPLOAD_MB)")


def header(scope: Scope, wanted: bytes) -> bytes | None:
    for name, value in scope.get("headers", []):
        if name.lower() == wanted:
            return value
    return None


def declared_length(scope: Scope) -> int | None:
    value = header(scope, b"content-length")
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


def form_parts(scope: Scope, body: bytes) -> tuple[bytes, list[FormPart] | None]:
    """(the body's media type, its parts when it is well-formed multipart/form-data, else None)"""
    media_type, options = parse_options_header(header(scope, b"content-type") or b"")
    if media_type != b"multipart/form-data":
        return media_type, None
    return media_type, multipart_parts(body, options.get(b"boundary", b""))


def form_problem(media_type: bytes, body: bytes, parts: list[FormPart] | None, file_fields: frozenset[str]) -> str | None:
    """Why a form body does not fit the endpoint's file fields, or None (also for non-form bodies)."""
    expected = ", ".join(f"'{f}'" for f in sorted(file_fields)) or "none"
    if media_type == b"application/x-www-form-urlencoded":
        sent = {name for name, _ in parse_qsl(body.decode("latin-1"), keep_blank_values=True)}
        clash = sorted(sent & file_fields)
        return f"field '{clash[0]}' must be a file in a multipart/form-data upload (e.g. curl -F {clash[0]}=@photo.jpg)" if clash else None
    if media_type != b"multipart/form-data":
        return None
    if parts is None:
        return "malformed multipart/form-data body (missing or wrong boundary)"
    for name, is_file, _ in parts:
        if is_file and name not in file_fields:
            return f"unexpected file field '{name}'; this endpoint takes files in: {expected}"
        if not is_file and name in file_fields:
            return f"field '{name}' must be a file upload (e.g. curl -F {name}=@photo.jpg), not text"
    return None


class FormPart(NamedTuple):
    name: str
    is_file: bool
    content: bytes | None  # None when the part does not end with the CRLF that precedes a delimiter


def multipart_parts(body: bytes, boundary: bytes) -> list[FormPart] | None:
    """The parts of a multipart body, or None when it is not one. Splitting on the boundary is exact:
    by definition it never occurs inside a part."""
    if not boundary:
        return None
    segments = body.split(b"--" + boundary)
    if len(segments) < 2:
        return None
    parts = []
    for segment in segments[1:]:
        if segment.startswith(b"--"):  # closing delimiter
            break
        head, found, content = segment.partition(b"\r\n\r\n")
        if not found:
            return None
        disposition = next((line.split(b":", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-disposition:")), None)
        if disposition is None:
            return None
        _, params = parse_options_header(disposition.strip())
        # the CRLF before the next delimiter belongs to the delimiter (RFC 2046)
        data = content[:-2] if content.endswith(b"\r\n") else None
        parts.append(FormPart(params.get(b"name", b"").decode("utf-8", "replace"), b"filename" in params, data))
    return parts


async def drain(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


async def read_body(receive: Receive, limit: int) -> tuple[bytes | None, int]:
    """(body, size), or (None, bytes seen) as soon as the body passes ``limit``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # client went away; let the app see the disconnect
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None, size
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks), size


def replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def receive_again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # later calls only wait for the disconnect

    return receive_again


async def send_json(send: Send, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def reshape_client_errors(send: Send) -> Send:
    """Rewrite a 4xx JSON body ``[{"error": ...}]`` to ``{"error": ...}``; everything else passes through."""
    held: Message | None = None
    chunks: list[bytes] = []

    async def send_reshaped(message: Message) -> None:
        nonlocal held
        if message["type"] == "http.response.start":
            if 400 <= message["status"] < 500 and is_json(message.get("headers", [])):
                held = message
                return
            return await send(message)
        if held is None or message["type"] != "http.response.body":
            return await send(message)
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = unwrap_error_list(b"".join(chunks))
        headers = [(k, v) for k, v in held.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({**held, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return send_reshaped


def is_json(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(k.lower() == b"content-type" and v.startswith(b"application/json") for k, v in headers)


def unwrap_error_list(body: bytes) -> bytes:
    try:
        payload = json.loads(body)
    except ValueError:
        return body
    if isinstance(payload, list) and len(payload) == 1 and isinstance(payload[0], dict) and "error" in payload[0]:
        return json.dumps(payload[0]).encode()
    return body
