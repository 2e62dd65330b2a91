"""Serve a Chalice app over HTTP locally: a WSGI adapter on ``LocalGateway`` under waitress.

``chalice local`` writes a response's headers and body in separate small writes
without ``TCP_NODELAY``; a keep-alive client then waits for a delayed ACK (~40 ms)
on every request. Here ``chalice.local.LocalGateway`` still does what API Gateway
does (route matching, Lambda proxy event, authorizers, CORS preflight), and waitress,
which sets ``TCP_NODELAY`` and sends each response in one write, does the HTTP.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import threading
from collections.abc import Mapping
from http import HTTPStatus
from types import TracebackType
from typing import Any, Final
from urllib.parse import quote
from wsgiref.types import StartResponse, WSGIEnvironment
from wsgiref.util import is_hop_by_hop

import waitress
from chalice.app import Chalice
from chalice.config import Config
from chalice.local import LocalChalice, LocalGateway, LocalGatewayException
from waitress import wasyncore

from infrastructure.local.backend import DEFAULT_HOST, BackendNotReadyError, wait_until_ready

DEFAULT_PORT: Final = 8000
DEFAULT_THREADS: Final = 8

logger = logging.getLogger(__name__)

Headers = list[tuple[str, str]]


def make_current_request_thread_local(app: Chalice) -> None:
    """Give each server thread its own ``app.current_request``.

    Chalice stores the request on the app object, which is right for Lambda (one
    request per container at a time) but mixes requests up under a threaded
    server. ``chalice local`` fixes this by swapping in ``LocalChalice``, whose
    ``current_request`` is thread-local; we do the same. Idempotent.
    """
    if isinstance(app, LocalChalice):
        return
    app_class = type(app)
    app.__class__ = type(f"ThreadLocal{app_class.__name__}", (LocalChalice, app_class), {})


class ChaliceWSGIApp:
    """WSGI application that answers through ``chalice.local.LocalGateway``.

    Parameters
    ----------
    app:
        The Chalice app. Its class is switched to a thread-local-request variant.
    config:
        Chalice config for the Lambda context (timeout, memory); defaults to the
        ``local`` stage with Chalice's defaults.
    """

    def __init__(self, app: Chalice, config: Config | None = None) -> None:
        make_current_request_thread_local(app)
        self._gateway = LocalGateway(app, config or Config.create(chalice_stage="local"))

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        headers = _request_headers(environ)
        try:
            response = self._gateway.handle_request(
                method=environ["REQUEST_METHOD"],
                path=_request_target(environ),
                headers=headers,
                body=_request_body(environ),
            )
        except LocalGatewayException as error:
            # What API Gateway answers itself: unknown route (403), failed authorizer.
            status, response_headers, body = error.CODE, _pairs(error.headers), error.body
        else:
            status = int(response["statusCode"])
            response_headers = _pairs(response.get("headers") or {})
            multi = response.get("multiValueHeaders") or {}
            # A name in multiValueHeaders replaces the single value, as chalice local does.
            response_headers = [(k, v) for k, v in response_headers if k not in multi]
            response_headers += _pairs(multi)
            body = _response_body(response)
        payload = b"" if body is None else body
        start_response(_status_line(status), _finish_headers(response_headers, len(payload)))
        return [payload]


def _request_target(environ: WSGIEnvironment) -> str:
    """Path plus query string, as sent (LocalGateway parses the query itself)."""
    raw = environ.get("REQUEST_URI") or environ.get("RAW_URI")
    if isinstance(raw, str) and raw.startswith("/"):
        return raw
    # PEP 3333 servers that do not keep the raw target: rebuild it from the
    # decoded path (latin-1 per PEP 3333) and the still-encoded query string.
    path = (environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")) or "/"
    target = quote(path.encode("latin-1"), safe="/;=,@:!$&'()*+~")
    query = environ.get("QUERY_STRING", "")
    return f"{target}?{query}" if query else target


def _request_headers(environ: WSGIEnvironment) -> dict[str, str]:
    # Lower-case names: LocalGateway looks up "content-type" (binary bodies) and
    # "authorization" in lower case, and API Gateway events carry them so anyway.
    headers = {
        key[5:].replace("_", "-").lower(): value
        for key, value in environ.items()
        if key.startswith("HTTP_")
    }
    for key, name in (("CONTENT_TYPE", "content-type"), ("CONTENT_LENGTH", "content-length")):
        if environ.get(key):
            headers[name] = environ[key]
    return headers


def _request_body(environ: WSGIEnvironment) -> bytes | None:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length <= 0:
        return None
    body: bytes = environ["wsgi.input"].read(length)
    return body


def _response_body(response: Mapping[str, Any]) -> bytes | None:
    body = response.get("body")
    if body is None:
        return None
    if response.get("isBase64Encoded"):
        return base64.b64decode(body)
    return body if isinstance(body, bytes) else str(body).encode("utf-8")


def _pairs(headers: Mapping[str, Any]) -> Headers:
    pairs: Headers = []
    for name, value in headers.items():
        values = value if isinstance(value, list) else [value]
        pairs.extend((str(name), str(item)) for item in values)
    return pairs


def _finish_headers(headers: Headers, content_length: int) -> Headers:
    # WSGI forbids hop-by-hop headers from the app; the length is ours to state.
    kept = [
        (name, value)
        for name, value in headers
        if not is_hop_by_hop(name) and name.lower() != "content-length"
    ]
    if not any(name.lower() == "content-type" for name, _ in kept):
        # chalice local's default, so clients see the same thing from both servers.
        kept.append(("Content-Type", "application/json"))
    kept.append(("Content-Length", str(content_length)))
    return kept


def _status_line(code: int) -> str:
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return f"{code} Unknown"


class ApiServer:
    """A Chalice app served by waitress on 127.0.0.1, in a background thread.

    ``port=0`` picks a free port; read :attr:`url` after :meth:`start`.
    Usable as a context manager.
    """

    def __init__(
        self,
        app: Chalice,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        threads: int = DEFAULT_THREADS,
        config: Config | None = None,
    ) -> None:
        self._wsgi_app = ChaliceWSGIApp(app, config)
        self._host = host
        self._port = port
        self._threads = threads
        self._map: dict[int, Any] = {}
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def url(self) -> str:
        """Base URL of the API."""
        if self._server is None:
            raise RuntimeError("server not started")
        return f"http://{self._host}:{self._server.effective_port}"

    def start(self, timeout_seconds: float = 10.0) -> str:
        """Bind, serve in a thread, wait until it answers; return the URL."""
        if self._server is not None:
            return self.url
        self._stopping.clear()
        self._server = waitress.create_server(
            self._wsgi_app,
            map=self._map,
            host=self._host,
            port=self._port,
            threads=self._threads,
            # Load tests hold one keep-alive connection per virtual user; the
            # default limit (100) and select()'s 1024 descriptors are too few.
            connection_limit=1000,
            asyncore_use_poll=True,
            ident="distributed-counter-local",
        )
        self._thread = threading.Thread(
            target=self._serve, args=(self._server,), name="api-server", daemon=True
        )
        self._thread.start()
        try:
            wait_until_ready(self.url, timeout_seconds=timeout_seconds)
        except BackendNotReadyError:
            self.stop()
            raise
        return self.url

    def _serve(self, server: Any) -> None:
        # Our own loop instead of server.run(): it lets stop() end it, and closes
        # every socket from this thread, the only one that polls them.
        try:
            while not self._stopping.is_set():
                wasyncore.loop(timeout=1.0, map=self._map, use_poll=True, count=1)
        finally:
            wasyncore.close_all(self._map, ignore_all=True)
            server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)

    def stop(self, timeout_seconds: float = 10.0) -> None:
        """Stop accepting, close every connection, stop the worker threads."""
        if self._server is None:
            return
        self._stopping.set()
        with contextlib.suppress(OSError):  # the loop may have closed the trigger already
            self._server.pull_trigger()  # wake the poll now rather than within a second
        if self._thread is not None:
            self._thread.join(timeout_seconds)
            if self._thread.is_alive():
                logger.warning("API server thread still running after %s s", timeout_seconds)
        self._server = None
        self._thread = None

    def __enter__(self) -> ApiServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
