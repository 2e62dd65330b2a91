"""Domain errors. Services raise these; one place (``problems.py``) maps them to HTTP."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class CounterError(Exception):
    """Base of every error the domain raises on purpose."""


class NotFoundError(CounterError):
    """The addressed resource does not exist (or is already deleted)."""

    def __init__(self, kind: str, identifier: str) -> None:
        super().__init__(f"{kind} {identifier} not found")
        self.kind = kind
        self.identifier = identifier


class ServiceLimitReachedError(CounterError):
    """The account already has as many services as its limit allows."""

    def __init__(self, account_id: str, limit: int) -> None:
        super().__init__(f"account {account_id} has reached its limit of {limit} services")
        self.account_id = account_id
        self.limit = limit


class AccountNotEmptyError(CounterError):
    """An account cannot be deleted while it has services, live or pending."""

    def __init__(self, account_id: str) -> None:
        super().__init__(
            f"account {account_id} still has services; delete them and retry once "
            "their deletion has been processed"
        )
        self.account_id = account_id


@dataclass(frozen=True)
class FieldError:
    """One invalid input field."""

    location: str
    message: str


class MalformedRequestError(CounterError):
    """The request body is not JSON (or not a JSON object)."""


class ValidationFailedError(CounterError):
    """The request is well-formed but violates the schema."""

    def __init__(self, errors: Sequence[FieldError]) -> None:
        super().__init__("; ".join(f"{e.location}: {e.message}" for e in errors))
        self.errors = tuple(errors)


class BackendUnavailableError(CounterError):
    """DynamoDB kept failing after the retries allowed for this call."""

    def __init__(self, operation: str, retry_after_seconds: int = 1) -> None:
        super().__init__(f"the database is unavailable ({operation}); retry later")
        self.operation = operation
        self.retry_after_seconds = retry_after_seconds
