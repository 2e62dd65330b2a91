"""The API explorer: Swagger UI's page and assets, served by the Lambda itself.

Swagger UI's dist files are vendored in ``static/`` from the pinned ``swagger-ui-py``
(``scripts/vendor_swagger_ui.py``), so the explorer needs no CDN and works offline,
under ``chalice local`` and from the deployment package. Every file is text (no
``binary_types`` needed behind API Gateway). No chalice import: ``app.py`` serves these.
"""

from __future__ import annotations

import functools
import html
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Final

from chalicelib.errors import NotFoundError

STATIC_DIR: Final = Path(__file__).resolve().parent / "static"
HTML: Final = "text/html; charset=utf-8"
JAVASCRIPT: Final = "text/javascript; charset=utf-8"
CSS: Final = "text/css; charset=utf-8"

#: Route of the page; its assets are at ``<page>/<name>``, its document at ``<page>/json``.
PAGE_ROUTE: Final = "/swagger"
DOCUMENT_NAME: Final = "json"

#: What ``/swagger/{asset}`` serves: name -> content type.
ASSETS: Final[Mapping[str, str]] = {
    "swagger-ui-bundle.js": JAVASCRIPT,
    "swagger-ui.css": CSS,
    "explorer.js": JAVASCRIPT,
}


@dataclass(frozen=True)
class StaticFile:
    """A text file to answer with."""

    content_type: str
    body: str
    cache_control: str


def mount_path(request_path: str | None, route: str) -> str:
    """The prefix in front of the app's routes: ``/api`` behind a stage, ``""`` locally.

    Parameters
    ----------
    request_path:
        The path the client asked for (API Gateway's ``requestContext.path``, which
        carries the stage; chalice local gives the bare route).
    route:
        The route that matched, without parameters (``/swagger``).
    """
    path = (request_path or "").rstrip("/")
    return path[: -len(route)] if path.endswith(route) else ""


@functools.cache
def _read(name: str) -> str:
    return (STATIC_DIR / name).read_text(encoding="utf-8")


def asset(name: str) -> StaticFile:
    """One of :data:`ASSETS`.

    Raises
    ------
    NotFoundError
        For any other name (nothing else in ``static/`` is served).
    """
    content_type = ASSETS.get(name)
    if content_type is None:
        raise NotFoundError("asset", name)
    return StaticFile(content_type, _read(name), "public, max-age=86400")


def page(mount: str) -> StaticFile:
    """Swagger UI's page for an API mounted at ``mount`` (see :func:`mount_path`)."""
    base = html.escape(f"{mount}{PAGE_ROUTE}", quote=True)
    body = Template(_read("explorer.html")).substitute(
        assets=base, spec_url=f"{base}/{DOCUMENT_NAME}"
    )
    return StaticFile(HTML, body, "no-cache")
