"""Shared fixtures: the embedded backend, the provisioned stack and the local API server.

Importing this module (pytest does it first) points boto3 at a local endpoint for the
whole session: ``AWS_ENDPOINT_URL`` on a free port of 127.0.0.1, dummy credentials,
``us-east-1``, and the app's ``COUNTER_*`` settings for the template's defaults. So
``from app import app`` works in any test with no shell setup, and nothing can reach
real AWS. The backend itself starts only when a test asks for ``backend_url`` (or a
fixture built on it), so unit tests pay nothing.

Fixtures
--------
``backend_url`` (session)
    Base URL of moto's server (requests serialised), in a thread of this process.
``stack_outputs`` (session)
    :class:`StackOutputs` of ``infrastructure/template.yaml``, provisioned once.
``dynamodb_client`` (session)
    A plain DynamoDB client for the backend.
``clean_table`` (function)
    The table name; after the test every item of the table is deleted. Cheaper
    still: give each test fresh ids (``uuid4``) and skip this.
``api_url`` (session)
    Base URL of the real app served by :class:`ApiServer` (waitress) in a thread.
``api`` (function)
    A keep-alive HTTP client for ``api_url`` taking paths (``api.get("/health")``).
    HTTP tests go through it, so headers (credentials, later) are set in one place.

moto keeps its data in module globals: do not use ``moto.mock_aws`` in the same
session as these fixtures, its reset would wipe the provisioned stack.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    # `app`, `chalicelib` and `infrastructure` are imported from the repo root.
    sys.path.insert(0, str(REPO_ROOT))

from infrastructure.local.backend import (  # noqa: E402
    AWS_VARIABLES_TO_CLEAR,
    DEFAULT_HOST,
    EmbeddedBackend,
    aws_environment,
)
from infrastructure.local.provision import (  # noqa: E402
    DEFAULT_PARAMETERS,
    StackOutputs,
    cloudformation_client,
    provision,
)
from infrastructure.local.wsgi import ApiServer  # noqa: E402

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((DEFAULT_HOST, 0))
        port: int = probe.getsockname()[1]
        return port


# Chosen now, bound later by `backend_url`: the environment must name the endpoint
# before any test module imports `app`, long before a fixture runs.
BACKEND_PORT = _free_port()
BACKEND_URL = f"http://{DEFAULT_HOST}:{BACKEND_PORT}"


def _point_boto3_at_the_backend() -> None:
    for name in AWS_VARIABLES_TO_CLEAR:
        os.environ.pop(name, None)
    os.environ.update(aws_environment(BACKEND_URL))
    # What the stack will output for the template's default parameters; the stream
    # ARN is only known once provisioned (`stack_outputs` exports it then).
    table = DEFAULT_PARAMETERS["TableName"]
    os.environ["COUNTER_TABLE_NAME"] = table
    os.environ["COUNTER_TIER1_QUEUE_NAME"] = f"{table}-dlq-tier1"
    os.environ["COUNTER_TIER2_QUEUE_NAME"] = f"{table}-dlq-tier2"


_point_boto3_at_the_backend()


@pytest.fixture(scope="session")
def backend_url() -> Iterator[str]:
    """moto's server on 127.0.0.1 (the port in ``AWS_ENDPOINT_URL``), for the session."""
    backend = EmbeddedBackend(DEFAULT_HOST, BACKEND_PORT)
    url = backend.start()
    yield url
    backend.stop()


@pytest.fixture(scope="session")
def stack_outputs(backend_url: str) -> StackOutputs:
    """The data template provisioned once per session (table, stream, queues)."""
    outputs = provision(cloudformation_client(backend_url))
    os.environ.update(outputs.app_environment())
    return outputs


@pytest.fixture(scope="session")
def dynamodb_client(backend_url: str) -> DynamoDBClient:
    """A DynamoDB client for the embedded backend."""
    import boto3

    client: DynamoDBClient = boto3.client("dynamodb", endpoint_url=backend_url)
    return client


@pytest.fixture
def clean_table(stack_outputs: StackOutputs, dynamodb_client: DynamoDBClient) -> Iterator[str]:
    """The table name; every item is deleted after the test."""
    yield stack_outputs.table_name
    delete_all_items(dynamodb_client, stack_outputs.table_name)


def delete_all_items(client: DynamoDBClient, table_name: str, max_rounds: int = 10) -> None:
    """Empty ``table_name`` with scans and batch deletes (bounded)."""
    for _ in range(max_rounds):
        keys: list[dict[str, Any]] = []
        for page in client.get_paginator("scan").paginate(
            TableName=table_name, ProjectionExpression="PK, SK"
        ):
            keys.extend(page.get("Items", []))
        if not keys:
            return
        for start in range(0, len(keys), 25):
            deletes = [{"DeleteRequest": {"Key": key}} for key in keys[start : start + 25]]
            unprocessed: Any = {table_name: deletes}
            for _attempt in range(5):
                unprocessed = client.batch_write_item(RequestItems=unprocessed).get(
                    "UnprocessedItems"
                )
                if not unprocessed:
                    break
    raise AssertionError(f"{table_name} still has items after {max_rounds} rounds")


@pytest.fixture(scope="session")
def api_url(stack_outputs: StackOutputs) -> Iterator[str]:
    """The real app under waitress on a free port of 127.0.0.1, for the session."""
    from app import app

    server = ApiServer(app, port=0)
    url = server.start()
    yield url
    server.stop()


class ApiClient(requests.Session):
    """A keep-alive session that takes paths relative to the API's base URL."""

    def __init__(self, base_url: str) -> None:
        super().__init__()
        self.base_url = base_url.rstrip("/")

    def request(
        self, method: str, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:
        if isinstance(url, str) and url.startswith("/"):
            url = self.base_url + url
        kwargs.setdefault("timeout", 30)
        return super().request(method, url, *args, **kwargs)


@pytest.fixture
def api(api_url: str) -> Iterator[ApiClient]:
    """HTTP client for the running app: ``api.post("/accounts", json={...})``."""
    with ApiClient(api_url) as client:
        yield client
