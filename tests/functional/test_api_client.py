"""The API contract through ``chalice.test.Client``: the real app, in process, no sockets."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from chalice.test import Client

from tests.fixtures_api import ApiContract, Caller, Reply

if TYPE_CHECKING:
    from infrastructure.local.provision import StackOutputs

REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def chalice_client(stack_outputs: StackOutputs) -> Iterator[Client]:
    from app import app

    with Client(app, project_dir=str(REPO_ROOT)) as client:
        yield client


class TestApiThroughChaliceClient(ApiContract):
    @pytest.fixture
    def call(self, chalice_client: Client) -> Caller:
        def send(method: str, path: str, headers: Mapping[str, str], body: bytes) -> Reply:
            response = chalice_client.http.request(method, path, headers=dict(headers), body=body)
            return Reply(response.status_code, dict(response.headers), response.body)

        return Caller(send, content_type_defaulted=False)
