"""The live demo in a browser: a static page at /demo that sends camera frames to /predict.

    bentoml serve service.service:GestureClassifier --port 3000    # then open http://localhost:3000/demo/

The page (service/demo/: plain HTML, JavaScript and CSS, no build step, nothing loaded from
elsewhere) is mounted on the service, so it is served from the same origin as the API and needs no
CORS. A deployer who hosts the page elsewhere allows its origin with one setting,
GESTURE_CORS_ORIGINS (service/settings.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

DEMO_PATH = "/demo"
PAGE_DIR = Path(__file__).with_name("demo")


def demo_app() -> Starlette:
    """The page's files; /demo/ answers with index.html."""
    return Starlette(routes=[Mount("/", app=StaticFiles(directory=PAGE_DIR, html=True))])


def cors_options(origins: list[str]) -> dict[str, Any]:
    # The page sends multipart POSTs without credentials: a "simple" request that needs no more than these.
    return {"allow_origins": origins, "allow_methods": ["GET", "POST"], "allow_headers": ["content-type"], "max_age": 600}


def allow_cors_origins(service: Any, origins: tuple[str, ...]) -> None:
    """Let browsers on the configured origins call the API (nothing when none is set).

    Added as the service's first (outermost) ASGI middleware rather than through BentoML's own
    ``http.cors`` config: BentoML puts its CORS middleware inside the service's middlewares, so the
    answers of the request guard (413, 408, 400, service/http_guard.py) would go
    out without the CORS headers, and a page on another origin could read neither predictions nor errors."""
    if origins:
        service.add_asgi_middleware(JsonCORSMiddleware, **cors_options(list(origins)))


class JsonCORSMiddleware(CORSMiddleware):
    """Starlette's CORS middleware, whose refused preflight ("Disallowed CORS origin", text/plain) is
    answered in the JSON shape of every other error: it sits outside the request guard that gives them
    that shape, so that the guard's own answers carry CORS headers."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        refused = bytes(response.body).decode()  # "Disallowed CORS origin, headers"
        reason = f"{refused}: see the server setting GESTURE_CORS_ORIGINS; a page may send {', '.join(cors_options([])['allow_methods'])} with the content-type header"
        headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}
        return JSONResponse({"error": reason}, status_code=response.status_code, headers=headers)
