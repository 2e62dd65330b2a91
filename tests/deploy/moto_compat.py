"""An embedded backend that ``chalice deploy`` can deploy to (moto 5.2.5 needs one shim).

Chalice imports its REST API as a Swagger 2.0 document without ``info.description``.
API Gateway accepts that; moto's ImportRestApi and PutRestApi reject any document that
is not OpenAPI 3 (``Only OpenAPI 3.x.x are currently supported``), and ImportRestApi
also fails with a ``KeyError`` (HTTP 500) when ``info.description`` is missing.

:class:`RestApiImportShim` relabels such a document as OpenAPI 3.0.1 and adds an empty
description on its way to moto. moto only reads the document's ``paths`` and their
``x-amazon-apigateway-integration`` entries, which are the same in both versions, so
the relabelled document creates the same resources. Everything else passes through.
"""

from __future__ import annotations

import io
import json
import re
import threading
from collections.abc import Iterable
from types import TracebackType
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from werkzeug.serving import BaseWSGIServer, make_server

from infrastructure.local.backend import DEFAULT_HOST, create_app, wait_until_ready

#: POST /restapis?mode=import (ImportRestApi), PUT /restapis/<id> (PutRestApi).
_IMPORT = re.compile(r"^/restapis/?$")
_PUT = re.compile(r"^/restapis/[^/]+/?$")


def _is_rest_api_document(environ: WSGIEnvironment) -> bool:
    method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
    if method == "POST" and _IMPORT.match(path):
        return "mode=import" in environ.get("QUERY_STRING", "")
    return method == "PUT" and bool(_PUT.match(path))


def as_openapi3(document: dict[str, object]) -> dict[str, object]:
    """The same document labelled OpenAPI 3.0.1, with an (empty) description."""
    if "swagger" not in document:
        return document
    relabelled = {k: v for k, v in document.items() if k != "swagger"}
    relabelled["openapi"] = "3.0.1"
    info = relabelled.get("info")
    relabelled["info"] = {"description": "", **(info if isinstance(info, dict) else {})}
    return relabelled


class RestApiImportShim:
    """WSGI middleware in front of moto; see the module docstring."""

    def __init__(self, app: WSGIApplication) -> None:
        self._app = app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if _is_rest_api_document(environ):
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length)
            try:
                document = json.loads(body)
            except ValueError:
                document = None
            if isinstance(document, dict):
                body = json.dumps(as_openapi3(document)).encode()
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
        return self._app(environ, start_response)


class ShimmedBackend:
    """moto's server with :class:`RestApiImportShim`, on a free port, in a thread.

    moto keeps its state in module globals, so this server sees the same data as the
    session's embedded backend.
    """

    def __init__(self) -> None:
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def __enter__(self) -> ShimmedBackend:
        app = RestApiImportShim(create_app())
        self._server = make_server(DEFAULT_HOST, 0, app, threaded=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="shimmed-backend", daemon=True
        )
        self._thread.start()
        self.url = f"http://{DEFAULT_HOST}:{self._server.server_port}"
        wait_until_ready(self.url)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
