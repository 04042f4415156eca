"""A refused request is one WARNING line in the server's log, not an ERROR with a traceback, and an
upload's oddities write nothing there.

BentoML 1.4.39 logs every exception an endpoint ends with as an ERROR with its traceback, the
client's mistakes included: a validation error (``top_k`` of 0, bad base64) and a ``BadInput`` (an
image that does not decode) each wrote a traceback of some 30 lines (``api_endpoint_wrapper`` calls
``log_exception`` for every one). Any client could fill the log, and bury real errors in it, by
sending bad requests. This filter turns those of a 4xx into one line with the reason the client
got; a server error (5xx) keeps its traceback. It sits on the handlers of BentoML's public
``bentoml`` logger, through which every ``bentoml.*`` record of a server is written (a filter on a
logger sees only that logger's own records, and the one BentoML writes these to is private).
(An upload's decoder warnings are kept out by ``gesture_core.images.keep_decoder_warnings_quiet``.)
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from bentoml.exceptions import BentoMLException
from pydantic import ValidationError

# BentoML's server logging writes every record of its package through this logger's handlers.
BENTOML_LOGGER = "bentoml"


class RefusedRequestsInOneLine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        refused = client_error(record.exc_info[1] if record.exc_info else None)
        if refused is not None:
            status, reason = refused
            record.msg, record.args = f"{record.getMessage().replace('Exception on', 'Refused', 1)} ({status}): {reason}", ()
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = record.exc_text = None
        return True


def client_error(error: BaseException | None) -> tuple[int, str] | None:
    """(the status, the reason) a client was given, for an exception that is the client's mistake; else None."""
    if isinstance(error, ValidationError):  # BentoML answers these with a 400
        return 400, "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in error.errors(include_url=False))
    if isinstance(error, BentoMLException) and error.error_code < HTTPStatus.INTERNAL_SERVER_ERROR:
        return int(error.error_code), str(error)
    return None


def log_refused_requests_in_one_line() -> None:
    """On each handler of the ``bentoml`` logger, ahead of BentoML's own filter, which copies the level
    into the bracketed name its format prints. A server worker configures its logging before it loads
    the service module, which calls this, so the handlers are there."""
    for handler in logging.getLogger(BENTOML_LOGGER).handlers:
        if not any(isinstance(f, RefusedRequestsInOneLine) for f in handler.filters):
            handler.filters.insert(0, RefusedRequestsInOneLine())

