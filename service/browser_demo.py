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
from starlette.middleware.cors import CORSMiddleware
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
        service.add_asgi_middleware(CORSMiddleware, **cors_options(list(origins)))
