"""The bench's backend process: the project's embedded backend, instrumented.

``python -m harness.backend --port N --parent-pid P`` (``load-tests`` on the path).
Everything but the two additions below is ``infrastructure.local.backend``:

* :mod:`infrastructure.local.moto_patches` is applied by the backend (unless ``--stock-moto``);
* the serialised WSGI app measures how long each request held the backend (the time
  inside the request lock), by the ``X-Bench-Role`` header the API process's hooks
  add and the operation (``X-Amz-Target`` or the query API's ``Action``).
  ``GET /_bench/busy`` returns ``{"role operation": [requests, seconds]}`` since
  the last read, and starts over.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any, Final
from urllib.parse import parse_qs
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from infrastructure.local import backend

BUSY_PATH: Final = "/_bench/busy"
ROLE_HEADER: Final = "X-Bench-Role"


class BusyTime:
    """Seconds each (role, operation) held the backend."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy: dict[str, list[float]] = {}

    def add(self, key: str, seconds: float) -> None:
        with self._lock:
            entry = self._busy.setdefault(key, [0, 0.0])
            entry[0] += 1
            entry[1] += seconds

    def take(self) -> dict[str, list[float]]:
        with self._lock:
            busy, self._busy = self._busy, {}
        return busy


def _operation(environ: WSGIEnvironment) -> str:
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target:
        return target.rsplit(".", 1)[-1]
    action = parse_qs(environ.get("QUERY_STRING", "")).get("Action")
    return action[0] if action else environ.get("REQUEST_METHOD", "?")


class TimedApp:
    """Inner WSGI app (called inside the request lock): times each request."""

    def __init__(self, app: WSGIApplication, busy: BusyTime) -> None:
        self._app = app
        self._busy = busy

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        began = time.perf_counter()
        result = self._app(environ, start_response)
        body = b"".join(result)  # the work may happen while the body is produced
        close = getattr(result, "close", None)
        if close is not None:
            close()
        role = environ.get("HTTP_" + ROLE_HEADER.upper().replace("-", "_"), "other")
        self._busy.add(f"{role} {_operation(environ)}", time.perf_counter() - began)
        return [body]


class BusyEndpoint:
    """Outer WSGI app: serves ``GET /_bench/busy``, passes everything else on."""

    def __init__(self, app: WSGIApplication, busy: BusyTime) -> None:
        self._app = app
        self._busy = busy

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == BUSY_PATH:
            payload = json.dumps(self._busy.take()).encode()
            start_response(
                "200 OK",
                [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))],
            )
            return [payload]
        return self._app(environ, start_response)


def instrumented_create_app(busy: BusyTime) -> Any:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    def create_app() -> WSGIApplication:
        inner = TimedApp(DomainDispatcherApplication(create_backend_app), busy)
        return BusyEndpoint(backend.SerialisedApp(inner), busy)

    return create_app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--stock-moto", action="store_true")
    own, rest = parser.parse_known_args(argv)
    if own.stock_moto:
        rest.append("--stock-moto")
    # EmbeddedBackend builds its app with the module's create_app: give it ours.
    backend.create_app = instrumented_create_app(BusyTime())  # type: ignore[assignment]
    return backend.main(rest)


if __name__ == "__main__":
    sys.exit(main())
