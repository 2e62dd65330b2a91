"""Run the whole app locally: ``python -m infrastructure.local`` (``make run``).

1. Start the embedded backend as a subprocess on 127.0.0.1:4566, or use an external
   one (``--backend-url``, ``--localstack``, or ``AWS_ENDPOINT_URL`` already set).
2. Provision ``infrastructure/template.yaml`` there (idempotent).
3. Export what boto3 and the app's settings read, *then* import ``app``.
4. Start the local event sources (stream, queue, schedule), if that module exists.
5. Serve the API on 127.0.0.1:8000 until SIGINT / SIGTERM, then stop everything
   this process started, in reverse order, and exit 0.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from types import FrameType, ModuleType
from typing import Final, Protocol

from infrastructure.local import backend
from infrastructure.local.backend import BackendNotReadyError
from infrastructure.local.provision import (
    DEFAULT_PARAMETERS,
    DEFAULT_STACK_NAME,
    ProvisioningError,
    StackOutputs,
    cloudformation_client,
    provision,
)
from infrastructure.local.wsgi import DEFAULT_PORT, DEFAULT_THREADS, ApiServer

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
EVENT_SOURCES_MODULE: Final = "infrastructure.local.event_sources"
#: Upper bounds for each shutdown step, so Ctrl-C always returns the prompt.
STOP_TIMEOUT_SECONDS: Final = 10.0

logger = logging.getLogger("infrastructure.local")


class StartupError(RuntimeError):
    """The local runtime cannot start as asked (the message says why and what to do)."""


class StartEventSources(Protocol):
    """``event_sources.start_event_sources``: the seam to the local event sources."""

    def __call__(
        self, app_module: ModuleType, outputs: StackOutputs, stop_event: threading.Event
    ) -> list[threading.Thread]: ...


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line of the orchestrator."""
    parser = argparse.ArgumentParser(
        prog="python -m infrastructure.local",
        description="Run the distributed counter locally (no Docker, no AWS account).",
    )
    external = parser.add_mutually_exclusive_group()
    external.add_argument(
        "--backend-url",
        help="use this running backend instead of starting one (default: $AWS_ENDPOINT_URL)",
    )
    external.add_argument(
        "--localstack",
        action="store_true",
        help="use a running LocalStack, found like localstack-client does ($LOCALSTACK_HOST)",
    )
    parser.add_argument(
        "--backend-port",
        type=int,
        default=backend.DEFAULT_PORT,
        help="port of the embedded backend on 127.0.0.1",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="API port on 127.0.0.1")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="API worker threads")
    parser.add_argument("--stack-name", default=DEFAULT_STACK_NAME)
    parser.add_argument("--table-name", default=DEFAULT_PARAMETERS["TableName"])
    parser.add_argument(
        "--no-event-sources",
        action="store_true",
        help="do not run stream, queue and schedule handlers",
    )
    return parser.parse_args(argv)


def external_backend_url(args: argparse.Namespace) -> str | None:
    """The URL of a backend someone else runs, or None to start our own."""
    if args.backend_url:
        return str(args.backend_url)
    if args.localstack:
        # Imported here: only LocalStack users need it.
        from localstack_client.config import get_service_endpoint

        return str(get_service_endpoint("cloudformation"))
    return os.environ.get("AWS_ENDPOINT_URL") or None


class LocalRuntime:
    """Everything ``make run`` starts, and stops again in reverse order."""

    def __init__(self, args: argparse.Namespace) -> None:
        self._args = args
        self._backend_process: subprocess.Popen[bytes] | None = None
        self._api: ApiServer | None = None
        self._stop_event_sources = threading.Event()
        self._event_source_threads: list[threading.Thread] = []

    def start(self) -> None:
        """Backend, stack, environment, app, event sources, API: in that order."""
        url = external_backend_url(self._args)
        if url is None:
            url = self._start_backend(self._args.backend_port)
        else:
            backend.wait_until_ready(url)
            logger.info("using the backend at %s", url)

        outputs = provision(
            cloudformation_client(url),
            stack_name=self._args.stack_name,
            parameters={**DEFAULT_PARAMETERS, "TableName": self._args.table_name},
        )
        logger.info(
            "stack %s ready: table %s, stream %s, queues %s and %s",
            outputs.stack_name,
            outputs.table_name,
            outputs.stream_arn,
            outputs.tier1_queue_name,
            outputs.tier2_queue_name,
        )

        export_environment(url, outputs)
        # Only now: the app builds its settings and clients from the environment.
        if str(REPO_ROOT) not in sys.path:
            sys.path.insert(0, str(REPO_ROOT))
        app_module = importlib.import_module("app")

        if not self._args.no_event_sources:
            self._start_event_sources(app_module, outputs)

        self._api = ApiServer(app_module.app, port=self._args.port, threads=self._args.threads)
        api_url = self._api.start()
        logger.info("API (waitress, %d threads) on %s", self._args.threads, api_url)
        logger.info("ready: try  curl %s/health   (Ctrl-C stops everything)", api_url)

    def _start_backend(self, port: int) -> str:
        url = f"http://{backend.DEFAULT_HOST}:{port}"
        if _is_listening(backend.DEFAULT_HOST, port):
            # Otherwise our backend would fail to bind while the health check
            # happily talks to whatever holds the port.
            raise StartupError(
                f"something already listens on {url} (LocalStack? a leftover backend?): "
                f"stop it, or use it with --backend-url {url}"
            )
        command = [
            sys.executable,
            "-m",
            "infrastructure.local.backend",
            "--port",
            str(port),
            "--parent-pid",
            str(os.getpid()),
        ]
        # Own session: a terminal's Ctrl-C reaches only us, so the backend stops
        # last, after the API and the pollers that still talk to it.
        # The command is this interpreter, a module of ours and two integers.
        self._backend_process = subprocess.Popen(  # noqa: S603
            command, cwd=REPO_ROOT, start_new_session=True
        )
        backend.wait_until_ready(url, process=self._backend_process)
        logger.info("embedded backend (pid %d) on %s", self._backend_process.pid, url)
        return url

    def _start_event_sources(self, app_module: ModuleType, outputs: StackOutputs) -> None:
        if importlib.util.find_spec(EVENT_SOURCES_MODULE) is None:
            logger.warning("no %s: stream and queue handlers will not run", EVENT_SOURCES_MODULE)
            return
        module = importlib.import_module(EVENT_SOURCES_MODULE)
        start_event_sources: StartEventSources = module.start_event_sources
        self._event_source_threads = start_event_sources(
            app_module, outputs, self._stop_event_sources
        )
        names = ", ".join(thread.name for thread in self._event_source_threads) or "none"
        logger.info("event sources running: %s", names)

    def backend_exit_code(self) -> int | None:
        """The embedded backend's exit code if it has died, else None."""
        if self._backend_process is None:
            return None
        return self._backend_process.poll()

    def stop(self) -> None:
        """Stop what was started, newest first; each step bounded in time."""
        if self._api is not None:
            self._api.stop(STOP_TIMEOUT_SECONDS)
            self._api = None
            logger.info("API stopped")
        self._stop_event_sources.set()
        for thread in self._event_source_threads:
            thread.join(STOP_TIMEOUT_SECONDS)
            if thread.is_alive():
                logger.warning("event source %s did not stop in time", thread.name)
        if self._event_source_threads:
            logger.info("event sources stopped")
        self._event_source_threads = []
        if self._backend_process is not None:
            stop_process(self._backend_process)
            logger.info("embedded backend stopped")
            self._backend_process = None


def _is_listening(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        return probe.connect_ex((host, port)) == 0


def export_environment(endpoint_url: str, outputs: StackOutputs) -> None:
    """Point boto3 at the backend and the app's settings at the stack (this process)."""
    for name in backend.AWS_VARIABLES_TO_CLEAR:
        os.environ.pop(name, None)
    os.environ.update(backend.aws_environment(endpoint_url))
    os.environ.update(outputs.app_environment())


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, wait, then SIGKILL if it would not go."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        logger.warning("pid %d ignored SIGTERM; killing it", process.pid)
        process.kill()
        process.wait(STOP_TIMEOUT_SECONDS)


def main(argv: list[str] | None = None) -> int:
    """Start everything, serve until SIGINT/SIGTERM, stop everything. Exit code."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # botocore announces every credential and endpoint lookup at INFO.
    logging.getLogger("botocore").setLevel(logging.WARNING)
    shutdown = threading.Event()

    def request_shutdown(signum: int, frame: FrameType | None) -> None:
        logger.info("%s received, stopping", signal.Signals(signum).name)
        shutdown.set()

    signal.signal(signal.SIGINT, request_shutdown)
    signal.signal(signal.SIGTERM, request_shutdown)

    runtime = LocalRuntime(args)
    exit_code = 0
    try:
        runtime.start()
        # Wake once a second to notice a dead backend; otherwise wait for a signal.
        while not shutdown.wait(1.0):
            code = runtime.backend_exit_code()
            if code is not None:
                logger.error("embedded backend exited with code %s", code)
                exit_code = 1
                break
    except (StartupError, BackendNotReadyError, ProvisioningError, OSError) as error:
        # Expected failures (busy port, no backend, broken stack): the message is enough.
        logger.error("cannot start: %s", error)
        exit_code = 1
    except Exception:
        logger.exception("local runtime failed")
        exit_code = 1
    finally:
        runtime.stop()
    logger.info("stopped (exit %d)", exit_code)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
