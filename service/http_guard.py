"""ASGI middleware in front of the service's routes, for what BentoML 1.4.39 cannot do itself.

* **Body size:** refuses request bodies above the upload limit with 413 before anything parses them
  (BentoML 1.4 has no request size limit of its own: ``api_server.max_request_size`` was removed).
* **Slow clients:** a client has ``body_timeout_s`` to send its whole body, else 408; and the
  concurrency limit counts a request only once its body is complete. BentoML's own limit
  (``traffic.max_concurrency``) counts from the headers, and user middlewares run inside it, so
  clients that trickle their bodies one byte a second would hold every slot (issue #17).
* **Bodies held in memory:** the bodies of the requests a worker is reading or serving hold at most
  ``body_memory_bytes`` in all (``Settings.body_memory_bytes``: 1 GB at the default upload limit); past
  that, the bodies that have been arriving the longest are dropped with 503 (``BodyMemory``). uvicorn reads a body as fast as it comes,
  and BentoML bounds neither a body nor the bodies held, so a thousand clients that each sent 16 MB
  and then waited would have held 16 GB for their body timeout.
* **Ambiguous or misplaced fields:** an endpoint's fields against its BentoML input model. BentoML
  keeps the first of two ``image`` files and the last of two ``top_k`` values, ignores unknown
  fields, answers a file in an unknown field with a 500 (it JSON-decodes the bytes) and text in a
  file field with an attempt to download it as a URL. An image sent as the raw body it reads as JSON,
  answering "Invalid JSON"; here the answer says how to send it.
* **Multipart bodies BentoML's form parsing chokes on:** Starlette's ``Request.form`` (python-multipart
  inside) raises on more headers per part, or longer header lines, than python-multipart allows, and
  on more parts, or a longer text field, than ``Request.form``'s defaults allow; BentoML 1.4.39 answers
  those with a 500. It also names each upload's temporary file after the upload's file name, so a
  name longer than the file system allows is a 500 as well. These get a 400 with the limit here, and
  so does any body python-multipart refuses (text before the first boundary, a header line without a
  colon, ...): the guard runs the same parser with the same limits, which also makes the part headers
  it checks the ones BentoML acts on (of two Content-Disposition headers, Starlette keeps the last).
* **Bodies that cost seconds to parse:** 16 MB of tiny form fields, multipart parts or JSON values
  take Python seconds to parse, on the event loop, so every other request waits. Their count is taken
  first, at C speed (a count of bytes, or of a multipart body's boundaries): more parts or
  fields than ``Request.form`` allows, or more JSON punctuation than a flat object needs, get a 400
  before any parsing in Python. BentoML parses every body but a form as JSON, whatever its
  Content-Type (``text/plain`` included), so the JSON checks apply under each of those types.
* **Form text fields read as JSON:** BentoML reads each text field of a form with ``json.loads`` and
  keeps the text only where that raises "not JSON": a field nested past Python's recursion limit, or a
  number of more digits than Python converts, was a 500, and a long list took seconds to validate.
  Each text field is checked as BentoML will read it (``text_field_problem``).
* **Media types in any case:** BentoML picks a body's parser by the Content-Type's exact text, so
  ``Multipart/Form-Data`` is lowered before BentoML reads it.
* **Compressed bodies:** a body with a ``Content-Encoding`` gets 415 (RFC 7694) from its headers,
  before it is read: neither BentoML nor Starlette decompresses requests, so it failed as invalid
  JSON or a malformed form.
* **Header size:** request headers over ``MAX_HEADER_BYTES`` in all get 431 before anything reads
  them. uvicorn's HTTP parser (httptools) has no limit and BentoML passes it none, and header values
  are parsed again in Python, parameter by parameter, by every layer that reads a media type.
* **Idle connections:** not middleware, as they never reach it: each open connection holds one of
  the worker's file descriptors until the client closes it. uvicorn times out only the wait between
  two requests (``timeout_keep_alive``), not a connection that has yet to send its headers
  (encode/uvicorn#157), and BentoML builds uvicorn's config itself, with no way to add one. Under
  Linux's usual soft limit of 1,024 open files, 1,100 connections that sent nothing or half a
  request locked every other client out: their connections were reset.
  ``use_the_open_file_hard_limit`` raises the worker's soft limit to its hard one; a timeout for
  clients that never finish is the ingress's.
* **JSON errors:** every error response is ``{"error": reason, ...}``. BentoML 1.4.39 wraps its own
  4xx messages in a one-element list (bentoml/BentoML#4232), and Starlette answers unknown routes
  (404) and wrong methods (405) in plain text.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import (
    DEFAULT_MAX_HEADER_COUNT,
    DEFAULT_MAX_HEADER_SIZE,
    MAX_BOUNDARY_LENGTH,
    MultipartParser,
    parse_options_header,
)
from starlette.requests import Request

from gesture_core.images import signature_format

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# A client that declares a body above the limit still gets to send it (and then read the 413)
# as long as it is at most this many times the limit; beyond that we answer at once and the
# connection is closed while the client may still be uploading.
DRAIN_FACTOR = 8
# What BentoML's form parsing allows (module docstring): Request.form's own defaults, which BentoML uses.
FORM_LIMITS = {name: p.default for name, p in inspect.signature(Request.form).parameters.items() if p.default is not p.empty}
# The endpoints take flat JSON objects: a base64 string (or a list of them) and two numbers. Base64 has no
# JSON punctuation, so a real body holds a few dozen of these bytes (about 40 for 32 images).
JSON_PUNCTUATION = (b",", b":", b"{", b"[")
JSON_PUNCTUATION_TEXT = tuple(mark.decode() for mark in JSON_PUNCTUATION)
MAX_JSON_PUNCTUATION = 1000
# A form's text field holds a number, a base64 string or one list of them: one bracket at most.
MAX_FIELD_BRACKETS = 16
# Under the 255 bytes a file name may have, less the temporary file's own prefix ("tmp" and 8 characters).
MAX_FILENAME_BYTES = 200
# Request headers, all together: each name and value and the 4 bytes of ": " and CRLF. A Content-Type
# of 1,600,000 parameters (8 MB) took the service 5.2 s to answer, as each layer that reads the media
# type parsed them in Python (``python -m benchmarks.hostile``, docs/reliability.md). Browsers send a
# few KB; nginx allows 32 KB by default.
MAX_HEADER_BYTES = 64 * 1024
# Where the hard limit is unlimited (macOS): one client host's ports to one server port, at most.
OPEN_FILES_WITHOUT_A_HARD_LIMIT = 65536
# BentoML parses a body that is not multipart (JSON, or a urlencoded form) in memory and keeps what it
# parsed beside the body until the answer: a JSON body's base64 image decoded, where a multipart body's
# files go to temporary files. 32 requests sent at once grew the worker by 34-40 MB each with a 16 MB
# JSON body (2.1-2.5 times its bytes), by 19-24 MB with the same image as a 12 MB multipart body (1.6-2.0
# times) (``python -m benchmarks.body_memory``, two runs): such a body counts twice its bytes.
PARSED_IN_MEMORY_WEIGHT = 2
BYTE_ORDER_MARK = b"\xef\xbb\xbf"  # what Windows editors and PowerShell 5's -Encoding utf8 put before a JSON file


class NoRoomForBody(Exception):
    """A request body that would take this worker's bodies past their budget (``BodyMemory``)."""


@dataclass(eq=False)
class Arrival:
    """One request's body, from its first byte until its request is answered."""

    deadline: asyncio.Timeout | None = None  # the body's timeout while it arrives
    size: int = 0  # bytes held
    dropped: bool = False


class BodyMemory:
    """The bytes of request bodies a worker holds, within ``budget``; a body parsed in memory counts
    twice (``body_weight``). Bodies are held in memory while they
    arrive and until their request is answered: 150 clients that each sent all but the last byte of
    16 MB and then waited grew the worker by 2,394 MB until their body timeout, and a thousand of them
    would hold 16 GB (``python -m benchmarks.hostile``, docs/reliability.md). uvicorn reads a body as fast as it comes, and BentoML sets no bound.
    A piece that would pass the budget first drops the bodies that have been arriving the longest,
    where a client that sent much and then waits sits, so that a normal upload, which arrives in
    milliseconds, still gets through; a body that has arrived is never dropped: its request is served."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.held = 0
        self.arriving: dict[int, Arrival] = {}  # oldest first

    def take(self, arrival: Arrival, size: int, weight: int = 1) -> None:
        """Hold ``size`` more bytes for ``arrival``, counted ``weight`` times (``body_weight``), making room
        if need be; NoRoomForBody if it is itself the oldest, or was dropped (a piece can come in before the
        drop ends its task)."""
        if arrival.dropped:
            raise NoRoomForBody
        size *= weight
        self.arriving.setdefault(id(arrival), arrival)
        while self.held + size > self.budget:
            oldest = next(iter(self.arriving.values()))
            if oldest is arrival:
                raise NoRoomForBody
            self.drop(oldest)
        arrival.size += size
        self.held += size

    def drop(self, arrival: Arrival) -> None:
        """End an arriving body now: its body timeout fires on the loop's next turn, and its bytes go with its task."""
        del self.arriving[id(arrival)]
        arrival.dropped = True
        self.held -= arrival.size
        arrival.size = 0
        arrival.deadline.reschedule(asyncio.get_running_loop().time())

    def arrived(self, arrival: Arrival) -> None:
        self.arriving.pop(id(arrival), None)

    def release(self, arrival: Arrival) -> None:
        self.arrived(arrival)
        self.held -= arrival.size
        arrival.size = 0

    def busy(self, arrival: Arrival) -> str:
        which = "this one had been arriving the longest" if arrival.dropped else "this one did not fit"
        return f"server busy: request bodies fill the {self.budget:,} bytes this worker holds for them, and {which}; retry shortly"


class BadMultipart(ValueError):
    """A multipart body that BentoML's form parsing would fail on with a 500; ``str(err)`` is the reason."""


@dataclass(frozen=True)
class EndpointFields:
    """The fields one endpoint takes: its file fields, and the fields that may repeat (lists)."""

    names: frozenset[str]
    files: frozenset[str] = frozenset()
    repeatable: frozenset[str] = frozenset()
    # The most files one request may send. BentoML writes each upload to a temporary file before the
    # endpoint can count them: 1,000 one-byte files took the server 0.33 s before /predict_batch
    # refused them (a normal request takes about 12 ms of CPU in all).
    most_files: int | None = None


class RequestGuard:
    def __init__(self, app: ASGIApp, endpoints: Mapping[str, EndpointFields], *, max_body_bytes: int,
                 body_timeout_s: float, max_concurrency: int, body_memory_bytes: int) -> None:
        """``endpoints``: route -> its fields; only POSTs to these routes are read and counted, and their
        bodies held within ``body_memory_bytes`` in all (``BodyMemory``)."""
        self.app = app
        self.endpoints = dict(endpoints)
        # A file field sent twice where one is taken: the answer names where several files go instead.
        self.several_files = " or ".join(f"{quoted(f.repeatable & f.files)} on {route}" for route, f in endpoints.items() if f.repeatable & f.files)
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.max_concurrency = max_concurrency
        self.in_progress = 0
        self.bodies = BodyMemory(body_memory_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        send = json_errors(send, scope)
        if header_bytes(scope) > MAX_HEADER_BYTES:
            return await send_json(send, 431, f"request headers over {MAX_HEADER_BYTES:,} bytes in all; a browser sends a few KB "
                                   "(is a header, a cookie or the Content-Type repeated or padded?)", close=True)
        fields = self.endpoints.get(scope["path"])
        if fields is None or scope["method"] != "POST":  # Starlette answers 404/405, made JSON above
            return await self.app(scope, receive, send)
        declared = declared_length(scope)
        # A client that sent "Expect: 100-continue" waits for the go-ahead before its body, and uvicorn
        # gives it at the first read: a body refused from its headers is then answered unread, where
        # draining it had the client upload all of it (20 MB) before its 413.
        may_drain = not expects_continue(scope)
        if declared is not None and declared > self.max_body_bytes:
            drained = may_drain and declared <= DRAIN_FACTOR * self.max_body_bytes and await drain(receive, self.body_timeout_s)
            return await send_json(send, 413, self.too_large(declared), close=not drained)
        if coding := encoded_body(scope):  # refused from its headers: the body is dropped unread
            drained = may_drain and declared is not None and await drain(receive, self.body_timeout_s)
            return await send_json(send, 415, f"a request body in {shown(coding)} is not taken: send it uncompressed",
                                   close=not drained)
        arrival = Arrival()
        try:
            return await self.read_and_serve(scope, receive, send, fields, arrival)
        finally:
            self.bodies.release(arrival)

    async def read_and_serve(self, scope: Scope, receive: Receive, send: Send, fields: EndpointFields, arrival: Arrival) -> None:
        try:
            async with asyncio.timeout(self.body_timeout_s) as arrival.deadline:
                body, size = await read_body(receive, self.max_body_bytes, partial(self.bodies.take, arrival, weight=body_weight(scope)))
        except (TimeoutError, NoRoomForBody) as err:
            if isinstance(err, NoRoomForBody) or arrival.dropped:
                return await send_json(send, 503, self.bodies.busy(arrival), close=True, retry_after=1)
            return await send_json(send, 408, f"the request body did not arrive within {self.body_timeout_s:g} s "
                                   "(server setting GESTURE_BODY_TIMEOUT_S)", close=True)
        self.bodies.arrived(arrival)
        if body is None:
            return await send_json(send, 413, self.too_large(size, at_least=True))
        problem = query_problem(scope) or fields_problem(scope, body, fields, self.several_files)
        if problem:
            return await send_json(send, 400, problem)
        if self.in_progress >= self.max_concurrency:
            requests = f"{self.in_progress} request{'' if self.in_progress == 1 else 's'}"
            return await send_json(send, 429, f"server busy: {requests} in progress, the limit of this "
                                   "worker (server setting GESTURE_MAX_CONCURRENCY); retry shortly", retry_after=1)
        self.in_progress += 1
        try:
            await self.app(with_lowercase_media_type(scope), replay(body, receive), send)
        finally:
            self.in_progress -= 1

    def too_large(self, size: int, at_least: bool = False) -> str:
        return (f"request body is {'more than ' if at_least else ''}{size:,} bytes; the limit is "
                f"{self.max_body_bytes:,} bytes (server setting GESTURE_MAX_UPLOAD_MB)")


# --- the fields of a body ----------------------------------------------------------------------------


class FormPart(NamedTuple):
    name: str
    is_file: bool
    text: str | None = None  # a form's text field as BentoML reads it; None for files and JSON keys (parsed already)


def fields_problem(scope: Scope, body: bytes, fields: EndpointFields, several_files: str = "") -> str | None:
    """Why a body's fields do not fit the endpoint, or None (also for bodies BentoML words errors for).
    ``several_files``: where several files go instead ("'images' on /predict_batch"), for the answer."""
    media_type, options = parse_options_header(header(scope, b"content-type") or b"")
    if media_type != b"multipart/form-data" and signature_format(body):
        # An image sent as the body itself, whatever the Content-Type says (curl --data-binary sends
        # it as a urlencoded form): BentoML answered "Invalid JSON", or quoted the bytes as a field name.
        return raw_body_problem(media_type, body, fields)
    if problem := too_many_to_parse(media_type, body):
        return problem
    if media_type.startswith(b"multipart/") and media_type != b"multipart/form-data":  # BentoML read it as JSON: "Invalid JSON"
        return f"a {shown(media_type.decode('latin-1'))} body is not taken: send multipart/form-data (curl -F image=@photo.jpg) or JSON"
    if media_type == b"multipart/form-data":
        try:
            parts = multipart_parts(body, options.get(b"boundary", b""))
        except BadMultipart as err:
            return str(err)
        if parts is None:
            return "malformed multipart/form-data body (missing or wrong boundary)"
    elif media_type == b"application/x-www-form-urlencoded":
        if problem := urlencoded_field_too_long(body):
            return problem
        parts = [FormPart(name, False, value) for name, value in parse_qsl(body.decode("latin-1"), keep_blank_values=True)]
    elif is_raw_media(media_type):
        # BentoML reads such a body as JSON and answers "Invalid JSON", which does not say what to send.
        return raw_body_problem(media_type, body, fields)
    else:  # JSON, as BentoML parses it: its serde falls back to JSON for every other type (fetch()'s text/plain)
        if body.startswith(BYTE_ORDER_MARK):  # BentoML's parser says only "expected value at line 1 column 1"
            return ("the JSON body starts with a UTF-8 byte-order mark (EF BB BF), which JSON does not allow: "
                    "save the file as UTF-8 without BOM (PowerShell: -Encoding utf8NoBOM)")
        parts = json_keys(body)
    return parts_problem(parts or [], fields, several_files)


def is_raw_media(media_type: bytes) -> bool:
    """An image, video or bytes Content-Type: a file sent as the body itself, not the JSON BentoML reads it as."""
    return media_type.startswith((b"image/", b"video/")) or media_type == b"application/octet-stream"


def is_parsed_as_json(media_type: bytes) -> bool:
    """BentoML parses every body as JSON but a form's, whatever its Content-Type says (text/plain,
    application/xml): the guard's JSON checks apply to each of them, or a body sent so skipped them."""
    return not (media_type.startswith(b"multipart/") or media_type == b"application/x-www-form-urlencoded" or is_raw_media(media_type))


def query_problem(scope: Scope) -> str | None:
    """A query string on an endpoint that reads only its body: ``/predict?top_k=1`` was answered with
    the default top_k, as if the parameter had been heard."""
    if query := scope.get("query_string", b""):
        return (f"query parameters are not read ({shown(query.decode('latin-1'))}): send them in the body, "
                "as form fields or JSON keys (e.g. -F top_k=1)")
    return None


def raw_body_problem(media_type: bytes, body: bytes, fields: EndpointFields) -> str:
    sent_as = media_type.decode("latin-1") or "no Content-Type"
    image = signature_format(body)
    what = f"a raw {sent_as} body" if image is None or media_type.startswith(b"image/") else f"a raw {image} body (sent as {sent_as})"
    if not fields.names:  # /info: "send the image as ..." would send a client the wrong way
        return f"{what} is not taken: this endpoint takes no fields; send an empty body or {{}}"
    return (f"{what} is not taken: send the image as a multipart file field (curl -F image=@photo.jpg) "
            f'or as JSON {{"image_b64": "<base64>"}}; this endpoint takes: {", ".join(sorted(fields.names))}')


def too_many_to_parse(media_type: bytes, body: bytes) -> str | None:
    """Why a form or JSON body holds too many fields or values to be worth parsing, counted without
    parsing it (multipart parts are counted by ``multipart_parts``, from its boundaries)."""
    if media_type == b"application/x-www-form-urlencoded" and (fields := body.count(b"&") + 1) > FORM_LIMITS["max_fields"]:
        return f"{fields:,} form fields in one request; the limit is {FORM_LIMITS['max_fields']:,}"
    looks_like_json = is_parsed_as_json(media_type) and body.lstrip()[:1] in (b"{", b"[")  # not an image sent raw
    if looks_like_json and (marks := sum(map(body.count, JSON_PUNCTUATION))) > MAX_JSON_PUNCTUATION:
        return (f"JSON body too complex: {marks:,} commas, colons and brackets, above the limit of {MAX_JSON_PUNCTUATION:,} "
                '(the endpoints take a flat object such as {"image_b64": "<base64>", "top_k": 3})')
    return None


def parts_problem(parts: list[FormPart], fields: EndpointFields, several_files: str = "") -> str | None:
    takes = ", ".join(sorted(fields.names)) or "nothing"
    seen: set[str] = set()
    for name, is_file, text in parts:
        if name not in fields.names:
            return f"unexpected field '{shown(name)}'; this endpoint takes: {takes}"
        if is_file and name not in fields.files:
            return f"field '{shown(name)}' must be text, not a file; this endpoint takes files in: {quoted(fields.files)}"
        if not is_file and name in fields.files:
            as_json = f"; a JSON body sends it as base64 in '{name}_b64'" if f"{name}_b64" in fields.names else ""  # {"image": ...} in JSON
            return f"field '{name}' must be a file in a multipart/form-data upload (e.g. curl -F {name}=@photo.jpg), not text{as_json}"
        if name in seen and not (is_file and name in fields.repeatable):
            # Only files repeat: of a list sent twice as text, BentoML kept the last and dropped the rest unseen.
            return f"field '{name}' was sent more than once; " + (
                "send it once, with every image in its one list" if name in fields.repeatable
                else "it takes one value" + (f" (several images: repeat {several_files})" if is_file and several_files else ""))
        if text is not None and (problem := text_field_problem(name, text)):
            return problem
        seen.add(name)
    files = sum(part.is_file for part in parts)
    if fields.most_files is not None and files > fields.most_files:
        return too_many_images(files, fields.most_files)
    return None


def text_field_problem(name: str, text: str) -> str | None:
    """Why BentoML cannot read a form's text field, or None. It reads each one as JSON where it parses
    (``top_k=3`` a number, ``images_b64=[...]`` a list) and as the text itself where it does not, but
    only a JSONDecodeError falls back (``_bentoml_impl.serde``): a value nested past Python's recursion
    limit, or an integer of more digits than Python converts, was a 500, and a list of 300,000 numbers
    took 3.4 s to validate on the event loop, then an answer of 74 MB, one error per item."""
    holds = "a field holds a number, a base64 string or one list of them"
    if (marks := sum(map(text.count, JSON_PUNCTUATION_TEXT))) > MAX_JSON_PUNCTUATION:
        return f"text field '{shown(name)}' too complex: {marks:,} commas, colons and brackets, above the limit of {MAX_JSON_PUNCTUATION:,} ({holds})"
    # Counted, not parsed: how deep json.loads may go before its RecursionError depends on the stack it is called on.
    if (brackets := text.count("[") + text.count("{")) > MAX_FIELD_BRACKETS:
        return f"text field '{shown(name)}' holds {brackets:,} opening brackets, above the limit of {MAX_FIELD_BRACKETS} ({holds})"
    try:
        json.loads(text)
    except json.JSONDecodeError:  # plain text: BentoML passes it on as it is
        return None
    except ValueError:  # the one other ValueError json.loads raises for a str
        return f"text field '{shown(name)}' holds a number of more than {sys.get_int_max_str_digits():,} digits"
    return None


def urlencoded_field_too_long(body: bytes) -> str | None:
    """Starlette refuses a urlencoded field longer than ``Request.form``'s part size, name and value
    together, with an exception BentoML answers with a 500; a multipart text field gets this in ``check_part``."""
    longest = max(body.split(b"&"), key=len)
    size = len(longest) - (b"=" in longest)
    if size > FORM_LIMITS["max_part_size"]:
        name = longest.partition(b"=")[0].decode("latin-1")
        return f"text field '{shown(name)}' is {size:,} bytes; the limit is {FORM_LIMITS['max_part_size']:,}"
    return None


def too_many_images(count: int, limit: int) -> str:
    return f"{count:,} images in one request; the limit is {limit} (GESTURE_BATCH_SIZE)"


def shown(name: str, most: int = 60) -> str:
    """A field name the client chose, as a reason quotes it: cut short, so that an answer never grows
    with what was sent (a 15 MB urlencoded body of one unknown name was quoted back as 90 MB)."""
    visible = "".join(c if c.isprintable() else repr(c)[1:-1] for c in name[:most])  # a control character as \x01
    return visible if len(name) <= most else f"{visible}... ({len(name):,} characters)"


def quoted(names: Iterable[str]) -> str:
    return ", ".join(f"'{n}'" for n in sorted(names)) or "none"


def json_keys(body: bytes) -> list[FormPart] | None:
    """The top-level keys of a JSON object, repeats included; None when it is not one (BentoML words that error)."""
    keys: list[list[FormPart]] = []

    def collect(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys.append([FormPart(k, False) for k, _ in pairs])
        return dict(pairs)

    try:
        top = json.loads(body, object_pairs_hook=collect) if body.strip() else None
    except (ValueError, RecursionError):  # arrays or objects nested past Python's recursion limit: not ours to word either
        return None
    return keys[-1] if isinstance(top, dict) else None  # the outermost object is the last one closed


class PartHeads:
    """MultipartParser callbacks that keep what the guard checks of each part: its Content-Disposition
    (the last one, as Starlette keeps), its size, and a text field's bytes (up to the size Starlette takes)."""

    def __init__(self) -> None:
        self.parts: list[list] = []  # [disposition, size, a text field's bytes or None, its transfer encoding] per part
        self.closed = False
        self._name = self._value = b""

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {"on_part_begin": self.begin, "on_header_field": self.field, "on_header_value": self.value,
                "on_header_end": self.header_end, "on_headers_finished": self.headers_finished,
                "on_part_data": self.data, "on_end": self.end}  # fmt: skip

    def begin(self) -> None:
        self.parts.append([b"", 0, None, b""])

    def field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def header_end(self) -> None:
        if self._name.lower() == b"content-disposition":
            self.parts[-1][0] = self._value
        elif self._name.lower() == b"content-transfer-encoding":
            self.parts[-1][3] = self._value.strip().lower()
        self._name = self._value = b""

    def headers_finished(self) -> None:
        if b"filename" not in parse_options_header(self.parts[-1][0])[1]:
            self.parts[-1][2] = bytearray()

    def data(self, data: bytes, start: int, end: int) -> None:
        part = self.parts[-1]
        part[1] += end - start
        if part[2] is not None and part[1] <= FORM_LIMITS["max_part_size"]:  # a longer one is refused by its size
            part[2] += data[start:end]

    def end(self) -> None:
        self.closed = True

    def field_name(self) -> str:
        """The name of the part being read, as far as its headers have come."""
        name = parse_options_header(self.parts[-1][0])[1].get(b"name") if self.parts else None
        return f"field '{shown(name.decode('utf-8', 'replace'))}'" if name else "a part"


def multipart_parts(body: bytes, boundary: bytes) -> list[FormPart] | None:
    """The parts of a multipart body, or None when it is not one; BadMultipart for a body within the
    upload limit that BentoML's form parsing would fail on. The body is read by python-multipart with
    the limits of Starlette's ``Request.form``, which BentoML calls: whatever that refuses (a 500 from
    BentoML) is refused here with a 400, and the part headers checked are the ones BentoML acts on."""
    if len(boundary) > MAX_BOUNDARY_LENGTH:  # the parser raises outside its parse errors: a 500, 30 s later (RFC 2046 allows 70)
        raise BadMultipart(f"the multipart boundary is {len(boundary):,} bytes; the limit is {MAX_BOUNDARY_LENGTH} (RFC 2046 allows 70)")
    if not boundary or (marks := body.count(b"--" + boundary)) == 0:
        return None
    most = FORM_LIMITS["max_files"] + FORM_LIMITS["max_fields"]
    if marks - 1 > most:  # at C speed (the closing delimiter is a mark too): parsing 16 MB of tiny parts takes Python seconds
        raise BadMultipart(f"{marks - 1:,} parts in one multipart body; the limit is {most:,}")
    heads = PartHeads()
    try:
        MultipartParser(boundary, heads.callbacks()).write(body)
    except MultipartParseError as err:
        raise BadMultipart(parse_error(err, heads.field_name())) from None
    if not heads.closed:  # BentoML would drop the last part and answer as if the image had not been sent
        raise BadMultipart("malformed multipart/form-data body: no closing boundary (was the upload cut short?)")
    parts = []
    for disposition, size, text, encoding in heads.parts:
        _, params = parse_options_header(disposition)
        if b"name" not in params:
            raise BadMultipart('a part of the multipart body has no field name (Content-Disposition: form-data; name="...")')
        is_file = b"filename" in params
        part = FormPart(params[b"name"].decode("utf-8", "replace"), is_file, None if is_file or text is None else as_starlette_decodes(text))
        check_part(part, params.get(b"filename", b""), size, encoding)
        parts.append(part)
    check_part_counts(parts)
    return parts


def as_starlette_decodes(text: bytes) -> str:
    """A multipart text field as Starlette gives it to BentoML: UTF-8 (the charset a browser sends), else Latin-1."""
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError:
        return text.decode("latin-1")


def parse_error(err: MultipartParseError, where: str) -> str:
    if "header count" in str(err):
        return f"{where} has more than {DEFAULT_MAX_HEADER_COUNT} part headers; the limit is {DEFAULT_MAX_HEADER_COUNT}"
    if "header size" in str(err):
        return f"a part header of {where} is over {DEFAULT_MAX_HEADER_SIZE:,} bytes; the limit is {DEFAULT_MAX_HEADER_SIZE:,}"
    return f"malformed multipart/form-data body: {err} (python-multipart, the parser BentoML uses)"


def check_part(part: FormPart, filename: bytes, size: int, encoding: bytes = b"") -> None:
    """BadMultipart if one part breaks a limit of BentoML's form parsing (module docstring), or is encoded as
    a form's parts are not (which BentoML reads as the bytes they are: a base64 image was "not a recognised image format")."""
    if encoding not in (b"", b"binary", b"8bit", b"7bit"):
        raise BadMultipart(f"field '{shown(part.name)}' is sent in Content-Transfer-Encoding {shown(encoding.decode('latin-1'))}, which "
                           "multipart/form-data does not use (RFC 7578): send the file's bytes as they are, or base64 in JSON's image_b64")
    if b"\x00" in filename:  # BentoML names a temporary file after it: "Value error, embedded null byte"
        raise BadMultipart(f"the file name in field '{shown(part.name)}' holds a NUL byte (rename the file)")
    sent = filename.rsplit(b"/", 1)[-1]  # BentoML keeps what os.path.basename keeps
    # Starlette reads a name that is not UTF-8 as Latin-1, and the file system then writes each byte from 0x80 up as
    # two: 150 such bytes made a 300-byte temporary file name, over the file system's 255 ("File name too long": a 500).
    stored_as = len(as_starlette_decodes(sent).encode("utf-8"))
    if stored_as > MAX_FILENAME_BYTES:
        in_utf8 = " in UTF-8" if stored_as != len(sent) else ""
        raise BadMultipart(f"the file name in field '{shown(part.name)}' is {stored_as:,} bytes{in_utf8}; the limit is {MAX_FILENAME_BYTES} "
                           "(rename the file)")
    if not part.is_file and size > FORM_LIMITS["max_part_size"]:
        raise BadMultipart(f"text field '{shown(part.name)}' is {size:,} bytes; the limit is {FORM_LIMITS['max_part_size']:,}")


def check_part_counts(parts: list[FormPart]) -> None:
    files = sum(part.is_file for part in parts)
    for count, what, limit in ((files, "files", FORM_LIMITS["max_files"]), (len(parts) - files, "text fields", FORM_LIMITS["max_fields"])):
        if count > limit:
            raise BadMultipart(f"{count:,} {what} in one request; the limit is {limit:,}")


# --- reading and answering ---------------------------------------------------------------------------


def body_weight(scope: Scope) -> int:
    """How many times a request's body counts against the bodies held: PARSED_IN_MEMORY_WEIGHT but for multipart."""
    media_type, _ = parse_options_header(header(scope, b"content-type") or b"")  # as fields_problem reads it
    return 1 if media_type == b"multipart/form-data" else PARSED_IN_MEMORY_WEIGHT


def with_lowercase_media_type(scope: Scope) -> Scope:
    """The scope, its Content-Type's media type in lower case. Media types are case-insensitive (RFC 9110,
    8.3.1), but BentoML 1.4.39 picks a body's parser by the header's exact text, and parsed a
    "Multipart/Form-Data" body as JSON ("Invalid JSON")."""
    value = header(scope, b"content-type")
    if value is None or value.partition(b";")[0].islower() or not value.partition(b";")[0].strip():  # nearly every request: nothing to copy
        return scope
    headers = [(name, lowercase_media_type(value) if name.lower() == b"content-type" else value) for name, value in scope.get("headers", [])]
    return {**scope, "headers": headers}


def lowercase_media_type(value: bytes) -> bytes:
    media_type, separator, parameters = value.partition(b";")  # the parameters keep their case: a boundary is case-sensitive
    return media_type.lower() + separator + parameters


def encoded_body(scope: Scope) -> str | None:
    """How a compressed request body is coded ("Content-Encoding gzip"), or None. Neither BentoML nor
    Starlette decompresses a request: a gzipped JSON body was "Invalid JSON", a gzipped form "malformed
    multipart". Every header of the kind counts, as a list split over several is one list (RFC 9110, 5.3),
    and so does a Transfer-Encoding besides chunked, which uvicorn undoes and leaves the rest."""
    for wanted, undone in ((b"content-encoding", {"identity"}), (b"transfer-encoding", {"identity", "chunked"})):
        values = b",".join(value for name, value in scope.get("headers", []) if name.lower() == wanted).decode("latin-1")
        if codings := [c.strip() for c in values.split(",") if c.strip() and c.strip().lower() not in undone]:
            return f"{wanted.decode().title()} {', '.join(codings)}"
    return None


def expects_continue(scope: Scope) -> bool:
    return (header(scope, b"expect") or b"").strip().lower() == b"100-continue"


def header(scope: Scope, wanted: bytes) -> bytes | None:
    for name, value in scope.get("headers", []):
        if name.lower() == wanted:
            return value
    return None


def header_bytes(scope: Scope) -> int:
    """The bytes of a request's headers (names, values, ": " and CRLF), counted until past MAX_HEADER_BYTES."""
    total = 0
    for name, value in scope["headers"]:
        total += len(name) + len(value) + 4
        if total > MAX_HEADER_BYTES:
            break
    return total


def declared_length(scope: Scope) -> int | None:
    value = header(scope, b"content-length")
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


async def drain(receive: Receive, timeout_s: float) -> bool:
    """Read and drop a body, for at most ``timeout_s`` (a client that declares a body and never sends
    it held the connection until BentoML's 504); whether it all arrived."""
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return True
    except TimeoutError:
        return False


async def read_body(receive: Receive, limit: int, hold: Callable[[int], None] = lambda size: None) -> tuple[bytes | None, int]:
    """(body, size), or (None, bytes seen) as soon as the body passes ``limit``; ``hold(size)`` is told
    of each piece kept, and may raise ``NoRoomForBody``."""
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
        hold(len(chunk))
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


async def send_json(send: Send, status: int, error: str, *, close: bool = False, retry_after: int | None = None) -> None:
    body = json.dumps({"error": error}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:  # the client may still be sending; uvicorn then closes the connection after the answer
        headers.append((b"connection", b"close"))
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def json_errors(send: Send, scope: Scope) -> Send:
    """Every error response as ``{"error": ...}``: BentoML's ``[{"error": ...}]`` unwrapped, and plain-text
    errors (Starlette's 404 and 405) rewritten; everything else passes through untouched."""
    held: Message | None = None
    chunks: list[bytes] = []

    async def send_reshaped(message: Message) -> None:
        nonlocal held
        if message["type"] == "http.response.start":
            if message["status"] >= 400:
                held = message
                return
            return await send(message)
        if held is None or message["type"] != "http.response.body":
            return await send(message)
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        headers = [(k, v) for k, v in held.get("headers", []) if k.lower() not in (b"content-length", b"content-type")]
        body = error_json(held["status"], b"".join(chunks), dict(held.get("headers", [])), scope)
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({**held, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return send_reshaped


def error_json(status: int, body: bytes, headers: dict[bytes, bytes], scope: Scope) -> bytes:
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    if isinstance(payload, list) and len(payload) == 1 and isinstance(payload[0], dict) and "error" in payload[0]:
        payload = payload[0]
    if isinstance(payload, dict) and "error" in payload:
        detail = payload.get("detail")
        shorter = {"detail": detail[:MOST_ERRORS_SHOWN]} if isinstance(detail, list) else {}
        return json.dumps({**payload, "error": with_field_names(payload), **shorter}).encode()
    return json.dumps({"error": plain_error(status, body, headers, scope)}).encode()


# What pydantic's reason leaves out, by field and error type: images_b64 as one base64 string, in JSON or
# in a form field (which BentoML parses as JSON), read "Input should be a valid list", and a number
# where base64 goes "Input should be a valid bytes"; neither says what to send.
VALIDATION_HINTS = {
    ("images_b64", "list_type"): ': send a JSON array of base64 strings, ["<base64>", ...], in a form field too',
    ("images_b64", "bytes_type"): ": each image is a base64 string (or a data: URL)",
    ("image_b64", "bytes_type"): ": send the image as a base64 string (or a data: URL)",
}


# Validation errors an answer lists: pydantic gives one per list item, and a list of 1,000 numbers was
# answered with 1,000 errors, twice (in the reason and in ``detail``).
MOST_ERRORS_SHOWN = 5


def with_field_names(payload: dict[str, Any]) -> Any:
    """BentoML's validation errors say "1 validation error for Input" and name the fields only in
    ``detail``: the reason gets them, e.g. "top_k: Input should be a valid integer"."""
    detail = payload.get("detail")
    if not isinstance(detail, list) or not all(isinstance(d, dict) and "msg" in d for d in detail):
        return payload["error"]
    more = len(detail) - MOST_ERRORS_SHOWN
    return "; ".join(map(field_reason, detail[:MOST_ERRORS_SHOWN])) + (f"; and {more:,} more" if more > 0 else "")


def field_reason(error: dict[str, Any]) -> str:
    """One of pydantic's errors as "field: reason", with the hint its field and type have, if any."""
    loc = list(error.get("loc", ()))
    hint = VALIDATION_HINTS.get((str(loc[0]) if loc else "", error.get("type")), "")
    return f"{field_path(loc)}: {error['msg']}{hint}"


def field_path(loc: Iterable[Any]) -> str:
    """A field as the answers name it: "images_b64[1]" for a list's second item, as the service names a
    bad image (pydantic's "images_b64.1" named the same item another way)."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".") or "body"


def plain_error(status: int, body: bytes, headers: dict[bytes, bytes], scope: Scope) -> str:
    target = f"{shown(scope['method'], 20)} {shown(scope['path'], 200)}"  # a 60 KB path was answered with a 60 KB reason
    if status == 404:
        return f"no such endpoint: {target} (the API is listed at GET /docs.json)"
    if status == 405:
        return f"{target}: method not allowed; use {headers.get(b'allow', b'POST').decode()}"
    return body.decode("utf-8", "replace").strip() or HTTPStatus(status).phrase


def use_the_open_file_hard_limit() -> tuple[int, int]:
    """Raise this process's soft limit on open files to its hard limit, as Go's runtime and nginx's
    ``worker_rlimit_nofile`` do for servers: the soft one is often Linux's default of 1,024, the hard one
    far higher. Nothing in the worker waits on a file descriptor with ``select()``, the only call that
    breaks above 1,024. Returns (before, after)."""
    try:
        import resource
    except ImportError:  # Windows has no such limit
        return (-1, -1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, OPEN_FILES_WITHOUT_A_HARD_LIMIT)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):  # macOS caps it below an unlimited hard limit (kern.maxfilesperproc)
            return (soft, soft)
        return (soft, wanted)
    return (soft, soft)
