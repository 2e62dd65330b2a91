"""Embedded AWS backend: moto's server on 127.0.0.1, one request at a time.

moto's DynamoDB ``UpdateItem`` is an unlocked read-modify-write, so two concurrent
``ADD``s on one item can lose an update. DynamoDB applies single-item writes
atomically; serialising every request restores that guarantee locally.

Run it on its own with ``python -m infrastructure.local.backend --port 4566``, or
in-process with :class:`EmbeddedBackend` (tests). moto keeps its state in
module globals, so every embedded backend in one process shares the same data.
"""

from __future__ import annotations

import argparse
import http.client
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from types import FrameType, TracebackType
from typing import Any, Final
from urllib.parse import urlsplit
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import BaseWSGIServer, make_server

from infrastructure.local import moto_patches

DEFAULT_HOST: Final = "127.0.0.1"
#: LocalStack's edge port, so ``localstack-client`` and ``AWS_ENDPOINT_URL`` work unchanged.
DEFAULT_PORT: Final = 4566
DEFAULT_REGION: Final = "us-east-1"
#: Dummy credentials: the backend accepts any, and real ones must never be needed locally.
LOCAL_ACCESS_KEY_ID: Final = "local"
LOCAL_SECRET_KEY: Final = "local"  # noqa: S105 (a dummy, see above)

logger = logging.getLogger(__name__)


def aws_environment(endpoint_url: str, region_name: str = DEFAULT_REGION) -> dict[str, str]:
    """Environment variables that point boto3 (and the AWS CLI) at a local backend."""
    return {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": LOCAL_ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": LOCAL_SECRET_KEY,
        "AWS_DEFAULT_REGION": region_name,
        "AWS_REGION": region_name,
    }


#: Variables that could drag a developer's real profile or session into a local run.
AWS_VARIABLES_TO_CLEAR: Final = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN")


class BackendNotReadyError(RuntimeError):
    """The backend did not answer HTTP in time (or its process exited)."""


class SerialisedApp:
    """WSGI middleware that runs one request at a time, response body included.

    The body is drained inside the lock: a WSGI app may do its work lazily while
    the server iterates the body, after ``__call__`` has returned. Sending the
    buffered bytes to the client happens outside the lock, so a slow reader does
    not stall everyone else.
    """

    def __init__(self, app: WSGIApplication) -> None:
        self._app = app
        self._lock = threading.Lock()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        with self._lock:
            result = self._app(environ, start_response)
            try:
                body = b"".join(result)
            finally:
                _close(result)
        return [body]


def _close(result: Iterable[bytes]) -> None:
    # PEP 3333: the server must call close() on the iterable if it has one.
    close = getattr(result, "close", None)
    if close is not None:
        close()


class _RequestHandler(MotoRequestHandler):
    # Headers and body leave in separate writes; without TCP_NODELAY a keep-alive
    # client can wait for a delayed ACK between them. Measured: no stall with
    # werkzeug 3.1, but the option costs nothing and keeps it that way.
    disable_nagle_algorithm = True

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # One line per request at several hundred requests a second drowns every
        # other log line; errors still go through log_error.
        return


def create_app() -> SerialisedApp:
    """moto's multi-service WSGI app behind the request lock."""
    return SerialisedApp(DomainDispatcherApplication(create_backend_app))


def wait_until_ready(
    url: str,
    *,
    timeout_seconds: float = 15.0,
    interval_seconds: float = 0.1,
    process: subprocess.Popen[Any] | None = None,
) -> None:
    """Block until something answers HTTP at ``url`` (any status counts).

    Parameters
    ----------
    url:
        Base URL of the backend, e.g. ``http://127.0.0.1:4566``.
    process:
        If given, give up as soon as this process has exited.

    Raises
    ------
    BackendNotReadyError
        Nothing answered within ``timeout_seconds``, or ``process`` exited.
    """
    parts = urlsplit(url)
    host = parts.hostname or DEFAULT_HOST
    port = parts.port or (443 if parts.scheme == "https" else 80)
    connection_class = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    deadline = time.monotonic() + timeout_seconds
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise BackendNotReadyError(
                f"backend process exited with code {process.returncode} before answering {url}"
            )
        connection = connection_class(host, port, timeout=1.0)
        try:
            connection.request("GET", "/")
            connection.getresponse().read()
            return
        except (OSError, http.client.HTTPException) as error:
            last_error = error
        finally:
            connection.close()
        time.sleep(interval_seconds)
    raise BackendNotReadyError(f"no answer from {url} after {timeout_seconds} s: {last_error}")


class EmbeddedBackend:
    """moto's server in a daemon thread of this process.

    ``port=0`` picks a free port; read :attr:`url` after :meth:`start`.
    Usable as a context manager.
    """

    def __init__(
        self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, patch_moto: bool = True
    ) -> None:
        self._host = host
        self._port = port
        # moto copies every touched table on each transaction and serialises stream
        # reads slowly: costs DynamoDB does not have, which stall the local counter.
        self._patch_moto = patch_moto
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL clients use (``AWS_ENDPOINT_URL``)."""
        if self._server is None:
            raise RuntimeError("backend not started")
        return f"http://{self._host}:{self._server.server_port}"

    def start(self, timeout_seconds: float = 15.0) -> str:
        """Bind, serve in a thread, wait until it answers; return the URL."""
        if self._server is not None:
            return self.url
        if self._patch_moto:
            moto_patches.install()
        self._server = make_server(
            self._host, self._port, create_app(), threaded=True, request_handler=_RequestHandler
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="embedded-backend", daemon=True
        )
        self._thread.start()
        try:
            wait_until_ready(self.url, timeout_seconds=timeout_seconds)
        except BackendNotReadyError:
            self.stop()
            raise
        return self.url

    def stop(self, timeout_seconds: float = 5.0) -> None:
        """Stop serving and close the listening socket."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout_seconds)
        self._server = None
        self._thread = None

    def __enter__(self) -> EmbeddedBackend:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """Serve the backend until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m infrastructure.local.backend",
        description="Embedded AWS backend (moto, requests serialised) on 127.0.0.1.",
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="port on 127.0.0.1 (0: any free port)"
    )
    parser.add_argument(
        "--stock-moto",
        action="store_true",
        help="do not apply infrastructure/local/moto_patches.py",
    )
    parser.add_argument(
        "--parent-pid",
        type=int,
        default=None,
        help="stop when this process is gone (an orchestrator that was killed)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s backend %(message)s")

    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    backend = EmbeddedBackend(DEFAULT_HOST, args.port, patch_moto=not args.stock_moto)
    try:
        url = backend.start()
    except OSError as error:
        logger.error("cannot listen on %s:%s: %s", DEFAULT_HOST, args.port, error)
        return 1
    logger.info("moto server (requests serialised) listening on %s", url)
    # Wake once a second to notice an orphaning: a killed orchestrator cannot stop
    # us, and a leftover backend would hold the port for the next run.
    while not stop.wait(1.0):
        if args.parent_pid is not None and os.getppid() != args.parent_pid:
            logger.info("parent %s is gone", args.parent_pid)
            break
    backend.stop()
    logger.info("stopped")
    return 0


if __name__ == "__main__":
    exit_code = main()
    # Tearing down moto's module graph takes about a second (measured) and there
    # is nothing left to release: the data lived in memory by design.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
