"""``GET /docs``: an interactive API reference that works offline.

Swagger UI renders ``/openapi.json`` in the browser. Its assets come from the
``swagger-ui-py`` package, installed with trimail, and are served from
``/docs/assets/`` by name from a fixed list: no CDN, nothing fetched from
elsewhere. Without JavaScript the page shows a plain reference of the same
document (:func:`trimail.http.openapi.render_reference`).
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

#: The Swagger UI files the page loads, and their content types.
ASSETS = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "favicon-32x32.png": "image/png",
}
ASSETS_PATH = "/docs/assets/"

_START = """
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    docExpansion: "list",
    defaultModelsExpandDepth: 1,
    defaultModelExpandDepth: 3,
    displayRequestDuration: true,
    showExtensions: true,
    showCommonExtensions: true
  });
});
"""


def docs_page(title: str, reference: str) -> str:
    """The page: Swagger UI, with ``reference`` (HTML) for readers without JavaScript."""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{title}</title>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f'<link rel=icon type=image/png href="{ASSETS_PATH}favicon-32x32.png">'
        f'<link rel=stylesheet href="{ASSETS_PATH}swagger-ui.css">'
        "</head><body><div id=swagger-ui></div>"
        f"<noscript>{reference}</noscript>"
        f'<script src="{ASSETS_PATH}swagger-ui-bundle.js"></script>'
        f"<script>{_START}</script></body></html>"
    )


@cache
def _static_dir() -> Path | None:
    spec = importlib.util.find_spec("swagger_ui")  # located, not imported
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def asset(name: str) -> tuple[bytes, str] | None:
    """The bytes and content type of a Swagger UI asset; None for any other name."""
    content_type = ASSETS.get(name)
    static = _static_dir()
    if content_type is None or static is None:
        return None
    return _read(static / name), content_type


@cache
def _read(path: Path) -> bytes:
    return path.read_bytes()
