"""The API contract over real HTTP, against the app served on ``api_url``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from tests.fixtures_api import ApiContract, Caller, Reply, assert_problem

pytestmark = pytest.mark.stack


class TestApiOverHttp(ApiContract):
    @pytest.fixture
    def call(self, api: Any) -> Caller:
        def send(method: str, path: str, headers: Mapping[str, str], body: bytes) -> Reply:
            response = api.request(method, path, headers=dict(headers), data=body)
            return Reply(response.status_code, dict(response.headers), response.content)

        return Caller(send)

    def test_oversize_body_is_rejected_without_500(self, call: Caller) -> None:
        # GIVEN a 1 MiB username
        body = b'{"username": "' + b"x" * (1 << 20) + b'"}'

        # WHEN posted THEN a validation problem (the limit is 50 characters)
        assert_problem(call("POST", "/accounts", raw=body), 422, None)

    def test_unknown_route_is_not_a_server_error(self, call: Caller) -> None:
        reply = call.send("GET", "/no/such/route", {}, b"")
        assert 400 <= reply.status < 500
