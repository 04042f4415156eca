"""A refused request is one WARNING line in the server's log, not an ERROR with a traceback, an
upload's oddities write nothing there, and no line is longer than MAX_LINE_CHARS.

BentoML 1.4.39 logs every exception an endpoint ends with as an ERROR with its traceback, the
client's mistakes included: a validation error (``top_k`` of 0, bad base64) and a ``BadInput`` (an
image that does not decode) each wrote a traceback of some 30 lines (``api_endpoint_wrapper`` calls
``log_exception`` for every one). Any client could fill the log, and bury real errors in it, by
sending bad requests. This filter turns those of a 4xx into one line with the reason the client
got; a server error (5xx) keeps its traceback. It sits on the handlers of BentoML's public
``bentoml`` logger, through which every ``bentoml.*`` record of a server is written (a filter on a
logger sees only that logger's own records, and the one BentoML writes these to is private).
(An upload's decoder warnings are kept out by ``gesture_core.images.keep_decoder_warnings_quiet``.)

A client also chooses part of what some lines hold: BentoML's access line quotes the request's
Content-Type whole, so one request with a Content-Type of 8 MB wrote 8 MB to the log (the request
guard now refuses headers that large, but the access line is written outside it). Every line of the
``bentoml`` loggers is cut at MAX_LINE_CHARS, its length said. The access line also writes the
request's path decoded, so a path of ``%0D%0A`` and a date wrote a line of the client's making, that
read as the server's own ERROR; control characters and marks that reverse the text are written
escaped (``\r\n``), as reports write a file name.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from bentoml.exceptions import BentoMLException
from pydantic import ValidationError

from gesture_core.class_names import escape_unshown
from service.http_guard import field_path

# BentoML's server logging writes every record of its package through this logger's handlers.
BENTOML_LOGGER = "bentoml"
# A log line's message, before the handler's prefix; a traceback below it is not counted. The longest
# lines a server writes otherwise are access lines of about 200 characters.
MAX_LINE_CHARS = 2000


class RefusedRequestsInOneLine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        refused = client_error(record.exc_info[1] if record.exc_info else None)
        if refused is not None:
            status, reason = refused
            record.msg, record.args = f"{record.getMessage().replace('Exception on', 'Refused', 1)} ({status}): {reason}", ()
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = record.exc_text = None
        return True


class OneShortLine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = escape_unshown(record.getMessage())
        if len(message) > MAX_LINE_CHARS:
            message = f"{message[:MAX_LINE_CHARS]}... (cut: {len(message):,} characters)"
        record.msg, record.args = message, ()  # formatted once: the handler's getMessage has nothing left to fill in
        return True


def client_error(error: BaseException | None) -> tuple[int, str] | None:
    """(the status, the reason) a client was given, for an exception that is the client's mistake; else None."""
    if isinstance(error, ValidationError):  # BentoML answers these with a 400
        return 400, "; ".join(f"{field_path(e['loc'])}: {e['msg']}" for e in error.errors(include_url=False))
    if isinstance(error, BentoMLException) and error.error_code < HTTPStatus.INTERNAL_SERVER_ERROR:
        return int(error.error_code), str(error)
    return None


def keep_the_log_short() -> None:
    """Both filters on each handler of the ``bentoml`` logger, ahead of BentoML's own filter, which copies
    the level into the bracketed name its format prints. A server worker configures its logging before
    it loads the service module, which calls this, so the handlers are there."""
    for handler in logging.getLogger(BENTOML_LOGGER).handlers:
        for kind in (OneShortLine, RefusedRequestsInOneLine):  # each inserted first: the refusal's line is then cut too
            if not any(isinstance(f, kind) for f in handler.filters):
                handler.filters.insert(0, kind())

