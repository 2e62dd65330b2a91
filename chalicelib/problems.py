"""The one place domain errors become HTTP problem details (RFC 9457)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from chalicelib.errors import (
    AccountNotEmptyError,
    BackendUnavailableError,
    CounterError,
    MalformedRequestError,
    NotFoundError,
    ServiceLimitReachedError,
    ValidationFailedError,
)

PROBLEM_JSON: Final = "application/problem+json"
_TYPE_BASE: Final = "https://distributed-counter.dev/problems/"


@dataclass(frozen=True)
class Problem:
    status: int
    type: str
    title: str
    detail: str
    extensions: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        } | self.extensions


def _problem(status: int, slug: str, title: str, detail: str, **extra: Any) -> Problem:
    return Problem(status, _TYPE_BASE + slug, title, detail, **extra)


def problem_for(error: CounterError) -> Problem:
    """Map a domain error to its problem; anything unlisted is a bug (500)."""
    match error:
        case MalformedRequestError():
            return _problem(400, "malformed-request", "Malformed request", str(error))
        case ValidationFailedError(errors=errors):
            return _problem(
                422,
                "validation-failed",
                "Validation failed",
                str(error),
                extensions={
                    "errors": [{"location": e.location, "message": e.message} for e in errors]
                },
            )
        case NotFoundError(kind=kind):
            return _problem(404, f"{kind}-not-found", f"{kind.capitalize()} not found", str(error))
        case ServiceLimitReachedError(limit=limit):
            return _problem(
                409,
                "service-limit-reached",
                "Service limit reached",
                str(error),
                extensions={"limit": limit},
            )
        case AccountNotEmptyError():
            return _problem(409, "account-not-empty", "Account has services", str(error))
        case BackendUnavailableError(retry_after_seconds=seconds):
            return _problem(
                503,
                "backend-unavailable",
                "Service unavailable",
                str(error),
                headers={"Retry-After": str(seconds)},
            )
    return internal_error()


def internal_error() -> Problem:
    return _problem(500, "internal-error", "Internal error", "an unexpected error occurred")
