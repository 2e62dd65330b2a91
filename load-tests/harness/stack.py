"""The local stack the bench runs on, from the project's own local runtime modules.

* the embedded backend (``infrastructure.local.backend``), in its own process, with
  :mod:`infrastructure.local.moto_patches` applied (unless ``--stock-moto``);
* one CloudFormation stack per run, provisioned from ``infrastructure/template.yaml``
  (``infrastructure.local.provision``), so every strategy and scenario starts on a
  fresh table with the real indexes and stream;
* the API served by ``infrastructure.local.wsgi.ApiServer`` (waitress over Chalice's
  ``LocalGateway``), one server per run on a free port.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Final

import boto3

from infrastructure.local import backend
from infrastructure.local.provision import (
    DEFAULT_PARAMETERS,
    StackOutputs,
    cloudformation_client,
    provision,
)

LOAD_TESTS: Final = Path(__file__).resolve().parents[1]
REPO_ROOT: Final = LOAD_TESTS.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((backend.DEFAULT_HOST, 0))
        return int(probe.getsockname()[1])


class BenchBackend:
    """The embedded backend in a child process on a free port of 127.0.0.1."""

    def __init__(self, *, stock_moto: bool = False, log_path: Path | None = None) -> None:
        self._stock = stock_moto
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> str:
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "harness.backend",
            "--port",
            str(port),
            "--parent-pid",
            str(os.getpid()),
        ]
        if self._stock:
            command.append("--stock-moto")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(LOAD_TESTS), str(REPO_ROOT)]))
        log = open(self._log_path, "wb") if self._log_path else subprocess.DEVNULL  # noqa: SIM115
        self._process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=log, stderr=log, start_new_session=True
        )
        self.url = f"http://{backend.DEFAULT_HOST}:{port}"
        backend.wait_until_ready(self.url, timeout_seconds=30, process=self._process)
        return self.url

    def busy(self) -> dict[str, tuple[int, float]]:
        """Per "role operation": requests and seconds they held the backend, since the last call."""
        import json
        import urllib.request

        with urllib.request.urlopen(f"{self.url}/_bench/busy", timeout=10) as response:
            return {k: (int(v[0]), float(v[1])) for k, v in json.loads(response.read()).items()}

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(10)


def point_boto3_at(url: str) -> None:
    """This process's boto3 clients (and the app's settings defaults) use the backend."""
    for name in backend.AWS_VARIABLES_TO_CLEAR:
        os.environ.pop(name, None)
    os.environ.update(backend.aws_environment(url))


def provision_table(url: str, name: str) -> StackOutputs:
    return provision(
        cloudformation_client(url),
        stack_name=name,
        parameters={**DEFAULT_PARAMETERS, "TableName": name},
    )


def drop_table(url: str, outputs: StackOutputs) -> None:
    """Free the backend's memory (the table is retained by the template's policy)."""
    dynamodb = boto3.client("dynamodb", endpoint_url=url)
    dynamodb.delete_table(TableName=outputs.table_name)
    cloudformation_client(url).delete_stack(StackName=outputs.stack_name)
