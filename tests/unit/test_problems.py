"""Every domain error maps to its status, type, title and problem body; 503 says when."""

from __future__ import annotations

import pytest

from chalicelib.errors import (
    AccountNotEmptyError,
    BackendUnavailableError,
    CounterError,
    FieldError,
    MalformedRequestError,
    NotFoundError,
    ServiceLimitReachedError,
    ValidationFailedError,
)
from chalicelib.problems import Problem, internal_error, problem_for

BASE = "https://distributed-counter.dev/problems/"


@pytest.mark.parametrize(
    ("error", "status", "slug", "title"),
    [
        pytest.param(MalformedRequestError("bad json"), 400, "malformed-request", None, id="400"),
        pytest.param(
            ValidationFailedError([FieldError("body.name", "too long")]),
            422,
            "validation-failed",
            "Validation failed",
            id="422",
        ),
        pytest.param(
            NotFoundError("account", "a1"), 404, "account-not-found", "Account not found", id="404a"
        ),
        pytest.param(
            NotFoundError("service", "s1"), 404, "service-not-found", "Service not found", id="404s"
        ),
        pytest.param(
            ServiceLimitReachedError("a1", 10),
            409,
            "service-limit-reached",
            "Service limit reached",
            id="409-limit",
        ),
        pytest.param(
            AccountNotEmptyError("a1"), 409, "account-not-empty", None, id="409-not-empty"
        ),
        pytest.param(
            BackendUnavailableError("read account"),
            503,
            "backend-unavailable",
            "Service unavailable",
            id="503",
        ),
    ],
)
def test_each_domain_error_has_its_problem(
    error: CounterError, status: int, slug: str, title: str | None
) -> None:
    # WHEN the error is mapped
    problem = problem_for(error)

    # THEN status, type and the RFC 9457 members are right; detail is the message
    body = problem.body()
    assert problem.status == status == body["status"]
    assert body["type"] == BASE + slug
    assert body["detail"] == str(error)
    assert isinstance(body["title"], str)
    assert body["title"]
    if title is not None:
        assert body["title"] == title


def test_validation_problem_lists_field_errors() -> None:
    error = ValidationFailedError([FieldError("body.a", "x"), FieldError("query.limit", "y")])
    body = problem_for(error).body()
    assert body["errors"] == [
        {"location": "body.a", "message": "x"},
        {"location": "query.limit", "message": "y"},
    ]


def test_limit_problem_carries_the_limit() -> None:
    assert problem_for(ServiceLimitReachedError("a1", 10)).body()["limit"] == 10


@pytest.mark.parametrize("seconds", [1, 7])
def test_unavailable_problem_says_when_to_retry(seconds: int) -> None:
    problem = problem_for(BackendUnavailableError("x", retry_after_seconds=seconds))
    assert problem.headers == {"Retry-After": str(seconds)}


def test_only_503_sets_headers() -> None:
    errors: list[CounterError] = [
        MalformedRequestError("m"),
        ValidationFailedError([]),
        NotFoundError("account", "a"),
        ServiceLimitReachedError("a", 1),
        AccountNotEmptyError("a"),
    ]
    assert all(problem_for(e).headers == {} for e in errors)


def test_unlisted_domain_error_is_an_internal_error() -> None:
    # GIVEN a CounterError subclass the mapping does not know
    class UnlistedError(CounterError):
        pass

    # WHEN mapped THEN 500, without leaking the message
    problem = problem_for(UnlistedError("secret detail"))
    assert problem == internal_error()
    assert problem.status == 500
    assert "secret" not in problem.body()["detail"]


def test_problem_body_has_exactly_the_standard_members_plus_extensions() -> None:
    problem = Problem(418, "about:blank", "t", "d", extensions={"x": 1})
    assert problem.body() == {
        "type": "about:blank",
        "title": "t",
        "status": 418,
        "detail": "d",
        "x": 1,
    }
