"""Spec-driven fuzzing: the running local stack against its own OpenAPI document.

schemathesis reads ``/openapi.json`` from the server started by ``api_url`` and, per
operation, sends the document's examples, its coverage cases (boundaries, missing and
wrong-typed fields) and a bounded number of generated requests, valid and invalid.
Every response must: not be a 5xx, use a status and content type the operation lists,
and match that response's schema (problem bodies included).

The explicit cases below pin the contract's answer to the bad inputs it names
(malformed JSON, wrong types, oversize strings, unknown fields, invalid UUIDs, huge
limits). The number of generated cases is written to ``artifacts/fuzz-summary.json``.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    ensure_resource_availability,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
    use_after_free,
)

from chalicelib import openapi
from chalicelib.problems import PROBLEM_JSON

pytestmark = pytest.mark.stack

#: Generated requests per operation in the normal suite (plus examples and coverage cases).
MAX_EXAMPLES = 20
#: Linked scenarios (create an account, then use it...) and steps per scenario.
SCENARIOS = 10
STEPS = 6
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
    unsupported_method,
    allow_header_conformance,
]
#: Scenarios also check that what was created can be read, and what was deleted cannot.
STATEFUL_CHECKS = [*CHECKS, ensure_resource_availability, use_after_free]
SUMMARY = Path(__file__).resolve().parents[2] / "artifacts" / "fuzz-summary.json"


@pytest.fixture(scope="module")
def fuzz_tally(request: pytest.FixtureRequest) -> Iterator[Counter[tuple[str, int]]]:
    """(operation, status) -> cases; reported and saved when the module ends."""
    tally: Counter[tuple[str, int]] = Counter()
    yield tally
    total = sum(tally.values())
    per_operation: Counter[str] = Counter()
    for (label, _status), count in tally.items():
        per_operation[label] += count
    SUMMARY.parent.mkdir(exist_ok=True)
    SUMMARY.write_text(
        json.dumps(
            {
                "cases": total,
                "max_examples": MAX_EXAMPLES,
                "per_operation": dict(sorted(per_operation.items())),
                "per_status": {
                    str(s): n for s, n in sorted(Counter(s for _, s in tally.elements()).items())
                },
            },
            indent=2,
        )
    )
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None and total:
        with capture.global_and_fixture_disabled():  # into the CI log, not the capture
            reporter.write_line(f"\nfuzz: {total} cases over {len(per_operation)} operations")


def load_contract() -> Any:
    """The document the server serves (``test_openapi`` holds the two equal), loaded at
    import so each operation is its own test; requests go to ``api_url`` at run time.

    (``schemathesis.pytest.from_fixture`` would load it from the server instead, but
    schemathesis 4.32 touches a private pytest attribute that pytest 9 removed.)
    """
    schema = schemathesis.openapi.from_dict(openapi.document())
    schema.config.update(request_timeout=30)
    schema.config.generation.update(modes=["positive", "negative"], max_examples=MAX_EXAMPLES)
    return schema


contract = load_contract()


@contract.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    database=None,
)
def test_every_response_honours_the_contract(
    case: Any, api_url: str, fuzz_tally: Counter[tuple[str, int]]
) -> None:
    response = case.call(base_url=api_url)
    fuzz_tally[(case.operation.label, response.status_code)] += 1
    case.validate_response(response, checks=CHECKS)


def test_linked_scenarios_honour_the_contract(
    api_url: str, fuzz_tally: Counter[tuple[str, int]]
) -> None:
    # GIVEN the document's links (createAccount -> getAccount, createService, ...)
    base = contract.as_state_machine()

    class Scenarios(base):  # type: ignore[valid-type,misc]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": api_url}

        def validate_response(self, response: Any, case: Any, *args: Any, **kwargs: Any) -> None:
            fuzz_tally[(f"linked {case.operation.label}", response.status_code)] += 1
            recorder = getattr(self, "recorder", None)
            case.validate_response(response, checks=STATEFUL_CHECKS, recorder=recorder)

    # WHEN bounded scenarios follow them THEN every step honours the contract
    Scenarios.run(
        settings=settings(
            max_examples=SCENARIOS,
            stateful_step_count=STEPS,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
    )


# -- the named bad inputs, one by one ------------------------------------------------


@pytest.fixture(scope="module")
def account_id(api_url: str) -> str:
    response = requests.post(
        f"{api_url}/accounts", json={"username": "fuzz-target", "max_number_of_services": 2}
    )
    assert response.status_code == 200
    return str(response.json()["id"])


def assert_problem(
    response: requests.Response, status: int, slug: str, operation: str
) -> dict[str, Any]:
    """A problem of that kind, and a response the document lists for ``operation``."""
    assert response.status_code == status, response.text
    method, path = operation.split(" ", 1)
    contract[path][method].validate_response(response)  # status, media type and schema
    assert response.headers["Content-Type"] == PROBLEM_JSON
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"].endswith(f"/{slug}")
    assert body["title"]
    assert body["detail"]
    return body


def error_locations(body: dict[str, Any]) -> set[str]:
    return {error["location"] for error in body["errors"]}


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b'{"username": "a",}',
        b"\xff\xfe{",
        b"",
        b"null-ish",
        # Found by these tests: 500 (json's RecursionError), then 422 (pydantic's limit).
        b"[" * 100_000 + b"]" * 100_000,
        b'{"username": ' + b"[" * 300 + b"]" * 300 + b"}",
        # Found by these tests: json.loads takes it, pydantic cannot read it (was 422).
        b'{"username": "\\ud800"}',
    ],
    ids=[
        "truncated",
        "trailing-comma",
        "not-utf8",
        "empty",
        "bare-word",
        "nested-100000-deep",
        "nested-300-deep",
        "lone-surrogate",
    ],
)
def test_malformed_json_is_a_400(api_url: str, raw: bytes) -> None:
    response = requests.post(
        f"{api_url}/accounts", data=raw, headers={"Content-Type": "application/json"}
    )
    assert_problem(response, 400, "malformed-request", "POST /accounts")


@pytest.mark.parametrize(
    ("body", "location"),
    [
        ({"username": 7}, "body.username"),
        ({"username": "a", "max_number_of_services": "10"}, "body.max_number_of_services"),
        ({"username": "a", "max_number_of_services": 1.5}, "body.max_number_of_services"),
        ({"username": "a", "max_number_of_services": True}, "body.max_number_of_services"),
        ({"username": ["a"]}, "body.username"),
    ],
    ids=["int-for-string", "string-for-int", "float-for-int", "bool-for-int", "list-for-string"],
)
def test_wrong_types_are_a_422(api_url: str, body: dict[str, Any], location: str) -> None:
    response = requests.post(f"{api_url}/accounts", json=body)
    problem = assert_problem(response, 422, "validation-failed", "POST /accounts")
    assert location in error_locations(problem)


def test_a_json_value_that_is_not_an_object_is_a_422(api_url: str) -> None:
    response = requests.post(f"{api_url}/accounts", json=["alice"])
    problem = assert_problem(response, 422, "validation-failed", "POST /accounts")
    assert error_locations(problem) == {"body"}


def test_oversize_strings_are_a_422(api_url: str, account_id: str) -> None:
    too_long_username = requests.post(f"{api_url}/accounts", json={"username": "u" * 51})
    too_long_name = requests.post(
        f"{api_url}/services", json={"account_id": account_id, "name": "n" * 101}
    )
    huge_cursor = requests.get(f"{api_url}/accounts", params={"cursor": "c" * 5000})
    for response, operation, location in (
        (too_long_username, "POST /accounts", "body.username"),
        (too_long_name, "POST /services", "body.name"),
        (huge_cursor, "GET /accounts", "query.cursor"),
    ):
        problem = assert_problem(response, 422, "validation-failed", operation)
        assert location in error_locations(problem)


def test_unknown_fields_are_a_422(api_url: str, account_id: str) -> None:
    body_field = requests.put(
        f"{api_url}/accounts/{account_id}", json={"username": "b", "number_of_services": 0}
    )
    query_field = requests.get(f"{api_url}/accounts", params={"limit": "5", "sort": "name"})
    body_problem = assert_problem(
        body_field, 422, "validation-failed", "PUT /accounts/{account_id}"
    )
    query_problem = assert_problem(query_field, 422, "validation-failed", "GET /accounts")
    assert error_locations(body_problem) == {"body.number_of_services"}
    assert error_locations(query_problem) == {"query.sort"}


@pytest.mark.parametrize(
    ("operation", "path", "kwargs", "location"),
    [
        ("GET /accounts/{account_id}", "/accounts/not-a-uuid", {}, "path.account_id"),
        ("GET /counts/{account_id}", "/counts/123", {}, "path.account_id"),
        (
            "POST /services",
            "/services",
            {"json": {"account_id": "nope", "name": "x"}},
            "body.account_id",
        ),
        (
            "GET /services/{service_id}",
            f"/services/{uuid.uuid4()}",
            {"params": {"ownerAccountId": "zz"}},
            "query.ownerAccountId",
        ),
    ],
    ids=["path", "path-number", "body", "query"],
)
def test_invalid_uuids_are_a_422(
    api_url: str, operation: str, path: str, kwargs: dict[str, Any], location: str
) -> None:
    response = requests.request(operation.split()[0], f"{api_url}{path}", **kwargs)
    problem = assert_problem(response, 422, "validation-failed", operation)
    assert location in error_locations(problem)


@pytest.mark.parametrize(
    ("operation", "kwargs", "location"),
    [
        ("GET /accounts", {"params": {"limit": "1000000"}}, "query.limit"),
        ("GET /accounts", {"params": {"limit": "0"}}, "query.limit"),
        ("GET /accounts", {"params": {"limit": "9" * 400}}, "query.limit"),
        (
            "POST /accounts",
            {"json": {"username": "a", "max_number_of_services": 10**30}},
            "body.max_number_of_services",
        ),
        (
            "POST /accounts",
            {"json": {"username": "a", "max_number_of_services": -1}},
            "body.max_number_of_services",
        ),
    ],
    ids=["page-limit", "page-limit-zero", "page-limit-400-digits", "service-limit", "negative"],
)
def test_huge_and_out_of_range_limits_are_a_422(
    api_url: str, operation: str, kwargs: dict[str, Any], location: str
) -> None:
    method, path = operation.split()
    response = requests.request(method, f"{api_url}{path}", **kwargs)
    problem = assert_problem(response, 422, "validation-failed", operation)
    assert location in error_locations(problem)


def test_the_service_limit_is_a_409_with_the_limit(api_url: str, account_id: str) -> None:
    for name in ("one", "two"):
        created = requests.post(
            f"{api_url}/services", json={"account_id": account_id, "name": name}
        )
        assert created.status_code == 200, created.text
    third = requests.post(f"{api_url}/services", json={"account_id": account_id, "name": "three"})
    assert assert_problem(third, 409, "service-limit-reached", "POST /services")["limit"] == 2


def test_a_missing_account_is_a_404(api_url: str) -> None:
    response = requests.get(f"{api_url}/accounts/{uuid.uuid4()}/usage")
    assert_problem(response, 404, "account-not-found", "GET /accounts/{account_id}/usage")


def forged_cursor(key: dict[str, Any]) -> str:
    """A cursor in the server's own encoding (base64url JSON of a DynamoDB key)."""
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


def test_a_forged_cursor_is_a_422_not_a_503(api_url: str) -> None:
    keys = ("PK", "SK", "listing", "created_at")
    cursor = forged_cursor({name: {"S": 5} for name in keys})
    response = requests.get(f"{api_url}/accounts", params={"cursor": cursor})
    problem = assert_problem(response, 422, "validation-failed", "GET /accounts")
    assert "query.cursor" in error_locations(problem)
