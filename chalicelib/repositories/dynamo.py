"""Shared DynamoDB plumbing: (de)serialisation, error classification, retries."""

from __future__ import annotations

import base64
import binascii
import json
import random
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, TypeVar

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ParamValidationError,
)

from chalicelib.errors import BackendUnavailableError, FieldError, ValidationFailedError

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.type_defs import AttributeValueTypeDef

Item = dict[str, "AttributeValueTypeDef"]
T = TypeVar("T")

#: Errors that prove the request was not applied: safe to retry any write.
NOT_APPLIED_CODES: Final = frozenset(
    {
        "ThrottlingException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
    }
)
CONDITION_FAILED: Final = "ConditionalCheckFailedException"
TRANSACTION_CONFLICT: Final = "TransactionConflictException"

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def to_item(values: Mapping[str, Any]) -> Item:
    """Python values -> DynamoDB attribute values (``None`` values are dropped)."""
    return {k: _serializer.serialize(v) for k, v in values.items() if v is not None}


def to_values(values: Mapping[str, Any]) -> Item:
    """Expression attribute values; keys keep their ``:name`` form."""
    return {k: _serializer.serialize(v) for k, v in values.items()}


def from_item(item: Mapping[str, Any]) -> dict[str, Any]:
    """DynamoDB attribute values -> Python values, numbers as ``int`` where whole."""
    return {k: _plain(_deserializer.deserialize(v)) for k, v in item.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def proves_not_applied(error: Exception) -> bool:
    """True when the failed request certainly did not change the table."""
    if isinstance(error, ClientError):
        return error_code(error) in NOT_APPLIED_CODES
    # The connection was never made, so nothing was sent.
    return isinstance(error, ConnectTimeoutError | EndpointConnectionError)


def backoff(attempt: int, base: float = 0.02, cap: float = 1.0) -> float:
    """Full-jitter exponential backoff for ``attempt`` (0-based)."""
    return random.uniform(0, min(cap, base * (2**attempt)))


def retry(
    call: Callable[[], T],
    *,
    retryable: Callable[[Exception], bool],
    attempts: int,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``call``, retrying errors ``retryable`` accepts, at most ``attempts`` times."""
    for attempt in range(attempts):
        try:
            return call()
        except (ClientError, BotoCoreError) as error:
            if attempt + 1 >= attempts or not retryable(error):
                raise
            sleep(backoff(attempt))
    raise AssertionError("unreachable: attempts must be >= 1")


def is_conflict(error: Exception) -> bool:
    return isinstance(error, ClientError) and error_code(error) == TRANSACTION_CONFLICT


#: Nothing was applied, only contention or throttling stopped it: a 503, not a bug.
_CONTENTION_CODES: Final = frozenset({TRANSACTION_CONFLICT, "TransactionCanceledException"})


def domain_error(operation: str, error: Exception) -> Exception:
    """The error to raise for ``error``: a 503 when the backend is not answering."""
    if isinstance(error, ParamValidationError):
        return error  # a bug in the request we built, not an outage
    if isinstance(error, ClientError):
        code = error_code(error)
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        if code in NOT_APPLIED_CODES or code in _CONTENTION_CODES or status >= 500:
            return BackendUnavailableError(operation)
        return error
    if isinstance(error, BotoCoreError):
        return BackendUnavailableError(operation)
    return error


@contextmanager
def unavailable_as_domain_error(operation: str) -> Iterator[None]:
    """Map errors that mean "the backend is not answering" to the domain's 503.

    Callers that expect a conditional failure catch it outside this block.
    """
    try:
        yield
    except (ClientError, BotoCoreError) as error:
        mapped = domain_error(operation, error)
        if mapped is error:
            raise
        raise mapped from error


def encode_cursor(key: Mapping[str, Any] | None) -> str | None:
    """An opaque pagination cursor from a ``LastEvaluatedKey``."""
    if not key:
        return None
    raw = json.dumps(key, sort_keys=True, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(
    cursor: str | None,
    allowed_keys: frozenset[str],
    belongs: Callable[[Mapping[str, str]], bool] = lambda _: True,
) -> Item | None:
    """Inverse of :func:`encode_cursor`; rejects anything it did not produce.

    ``belongs`` checks the decoded key (plain strings) points into the queried range.
    """
    if cursor is None:
        return None
    invalid = ValidationFailedError([FieldError("query.cursor", "invalid cursor")])
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        key = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, binascii.Error) as error:
        raise invalid from error
    if not isinstance(key, dict) or set(key) != allowed_keys:
        raise invalid
    if not all(
        isinstance(v, dict) and set(v) == {"S"} and isinstance(v["S"], str) and v["S"]
        for v in key.values()
    ):
        raise invalid
    if not belongs({name: value["S"] for name, value in key.items()}):
        raise invalid
    return key
