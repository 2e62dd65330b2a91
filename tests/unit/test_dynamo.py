"""DynamoDB plumbing: which errors prove non-application, bounded retries, 503 mapping, cursors."""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from typing import Any

import pytest
from botocore.exceptions import (
    ClientError as BotoClientError,
)
from botocore.exceptions import (
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from chalicelib.errors import BackendUnavailableError, ValidationFailedError
from chalicelib.repositories.dynamo import (
    decode_cursor,
    encode_cursor,
    from_item,
    proves_not_applied,
    retry,
    to_item,
    unavailable_as_domain_error,
)

URL = "http://127.0.0.1:1"


def client_error(code: str, status: int = 400) -> BotoClientError:
    response: Any = {
        "Error": {"Code": code, "Message": code},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return BotoClientError(response, "UpdateItem")


@pytest.mark.parametrize(
    ("error", "proven"),
    [
        pytest.param(client_error("ThrottlingException"), True, id="throttling"),
        pytest.param(client_error("ProvisionedThroughputExceededException"), True, id="pte"),
        pytest.param(client_error("RequestLimitExceeded"), True, id="request-limit"),
        pytest.param(ConnectTimeoutError(endpoint_url=URL), True, id="connect-timeout"),
        pytest.param(EndpointConnectionError(endpoint_url=URL), True, id="no-connection"),
        pytest.param(client_error("InternalServerError", 500), False, id="500"),
        pytest.param(client_error("ConditionalCheckFailedException"), False, id="condition"),
        pytest.param(client_error("TransactionConflictException"), False, id="conflict"),
        pytest.param(ReadTimeoutError(endpoint_url=URL), False, id="read-timeout"),
        pytest.param(ConnectionClosedError(endpoint_url=URL), False, id="reset"),
    ],
)
def test_only_errors_raised_before_sending_prove_non_application(
    error: Exception, proven: bool
) -> None:
    assert proves_not_applied(error) is proven


class Flaky:
    """Fails with ``errors`` in order, then returns ``"ok"``."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def test_retry_repeats_retryable_errors_then_succeeds() -> None:
    # GIVEN a call throttled twice
    call = Flaky(client_error("ThrottlingException"), client_error("ThrottlingException"))
    sleeps: list[float] = []

    # WHEN retried with 5 attempts
    result = retry(call, retryable=proves_not_applied, attempts=5, sleep=sleeps.append)

    # THEN it succeeded on the third attempt, with a bounded backoff before each retry
    assert (result, call.calls) == ("ok", 3)
    assert len(sleeps) == 2
    assert all(0 <= s <= 1.0 for s in sleeps)


def test_retry_gives_up_after_the_attempts() -> None:
    call = Flaky(*[client_error("ThrottlingException") for _ in range(10)])
    with pytest.raises(BotoClientError):
        retry(call, retryable=proves_not_applied, attempts=3, sleep=lambda _: None)
    assert call.calls == 3


@pytest.mark.parametrize(
    "error",
    [ReadTimeoutError(endpoint_url=URL), client_error("InternalServerError", 500)],
    ids=["timeout", "500"],
)
def test_retry_never_repeats_an_ambiguous_failure(error: Exception) -> None:
    call = Flaky(error)
    with pytest.raises(type(error)):
        retry(call, retryable=proves_not_applied, attempts=5, sleep=lambda _: None)
    assert call.calls == 1


@pytest.mark.parametrize(
    "error",
    [
        client_error("ThrottlingException"),
        client_error("TransactionConflictException"),
        client_error("InternalServerError", 500),
        client_error("ServiceUnavailable", 503),
        ReadTimeoutError(endpoint_url=URL),
        EndpointConnectionError(endpoint_url=URL),
    ],
    ids=["throttled", "conflict", "500", "503", "timeout", "no-connection"],
)
def test_backend_failures_become_503(error: Exception) -> None:
    with pytest.raises(BackendUnavailableError) as raised, unavailable_as_domain_error("op"):
        raise error
    assert raised.value.operation == "op"
    assert raised.value.retry_after_seconds >= 1


@pytest.mark.parametrize(
    "code", ["ConditionalCheckFailedException", "ValidationException", "ResourceNotFoundException"]
)
def test_client_errors_pass_through_for_the_repository_to_decide(code: str) -> None:
    with pytest.raises(BotoClientError) as raised, unavailable_as_domain_error("op"):
        raise client_error(code)
    assert raised.value.response["Error"]["Code"] == code


def test_cursor_round_trips_a_key() -> None:
    key: dict[str, Any] = {"PK": {"S": "ACCOUNT#a"}, "SK": {"S": "SERVICE#b"}}
    cursor = encode_cursor(key)
    assert cursor is not None
    assert "=" not in cursor
    assert decode_cursor(cursor, frozenset({"PK", "SK"})) == key
    assert encode_cursor(None) is None
    assert decode_cursor(None, frozenset({"PK", "SK"})) is None


def _b64(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "%%%",
        "bm90IGpzb24",  # "not json"
        _b64([1, 2]),
        _b64({"PK": {"S": "a"}}),  # missing SK
        _b64({"PK": {"S": "a"}, "SK": {"S": "b"}, "X": {"S": "c"}}),  # extra key
        _b64({"PK": {"N": "1"}, "SK": {"S": "b"}}),  # not a string key
        _b64({"PK": "a", "SK": "b"}),  # not attribute values
    ],
)
def test_tampered_cursors_are_invalid(cursor: str) -> None:
    with pytest.raises(ValidationFailedError) as raised:
        decode_cursor(cursor, frozenset({"PK", "SK"}))
    assert [e.location for e in raised.value.errors] == ["query.cursor"]


def test_items_round_trip_with_whole_numbers_as_int() -> None:
    item = to_item({"a": 3, "b": "x", "c": True, "d": None, "e": Decimal("1.5")})
    assert "d" not in item
    assert from_item(item) == {"a": 3, "b": "x", "c": True, "e": 1.5}
    assert isinstance(from_item(item)["a"], int)
