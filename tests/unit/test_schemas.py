"""Request parsing: malformed (400) vs invalid (422), strict types, bounds, ids."""

from __future__ import annotations

import contextlib
import json
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from chalicelib.entities import Account, Service
from chalicelib.errors import MalformedRequestError, ValidationFailedError
from chalicelib.schemas import (
    MAX_SERVICE_LIMIT,
    AccountOut,
    CreateAccountRequest,
    CreateServiceRequest,
    OwnerQuery,
    PageQuery,
    RenameServiceRequest,
    ServiceOut,
    UpdateAccountRequest,
    parse_body,
    parse_id,
    parse_query,
)

ACCOUNT_ID = "01234567-89ab-cdef-0123-456789abcdef"


def locations(error: ValidationFailedError) -> list[str]:
    return [e.location for e in error.errors]


# -- 400: not JSON ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [None, b"", "", b"{", b"not json", b'{"username": "a"} trailing', b"\xff\xfe\xfa"],
    ids=["none", "empty-bytes", "empty-str", "truncated", "text", "trailing", "binary"],
)
def test_body_that_is_not_json_is_malformed(raw: bytes | str | None) -> None:
    with pytest.raises(MalformedRequestError):
        parse_body(CreateAccountRequest, raw)


# -- 422: JSON, but not what the schema says --------------------------------------------


@pytest.mark.parametrize("raw", [b"null", b"[]", b'"text"', b"42", b"true"])
def test_body_that_is_json_but_not_an_object_is_invalid(raw: bytes) -> None:
    with pytest.raises(ValidationFailedError) as raised:
        parse_body(CreateAccountRequest, raw)
    assert locations(raised.value) == ["body"]


@pytest.mark.parametrize(
    ("body", "location"),
    [
        pytest.param({}, "body.username", id="missing-username"),
        pytest.param({"username": ""}, "body.username", id="empty-username"),
        pytest.param({"username": "x" * 51}, "body.username", id="oversize-username"),
        pytest.param({"username": 5}, "body.username", id="number-as-username"),
        pytest.param({"username": "a", "extra": 1}, "body.extra", id="unknown-field"),
        pytest.param(
            {"username": "a", "max_number_of_services": "5"},
            "body.max_number_of_services",
            id="string-as-int",
        ),
        pytest.param(
            {"username": "a", "max_number_of_services": True},
            "body.max_number_of_services",
            id="bool-as-int",
        ),
        pytest.param(
            {"username": "a", "max_number_of_services": 5.0},
            "body.max_number_of_services",
            id="float-as-int",
        ),
        pytest.param(
            {"username": "a", "max_number_of_services": -1},
            "body.max_number_of_services",
            id="negative-limit",
        ),
        pytest.param(
            {"username": "a", "max_number_of_services": MAX_SERVICE_LIMIT + 1},
            "body.max_number_of_services",
            id="limit-above-max",
        ),
        pytest.param(
            {"username": "a", "max_number_of_services": 10**40},
            "body.max_number_of_services",
            id="huge-limit",
        ),
    ],
)
def test_create_account_schema_violations_are_invalid(body: dict[str, Any], location: str) -> None:
    with pytest.raises(ValidationFailedError) as raised:
        parse_body(CreateAccountRequest, json.dumps(body))
    assert location in locations(raised.value)


@pytest.mark.parametrize("raw", [b'{"username": "a", "max_number_of_services": NaN}'])
def test_non_finite_numbers_are_invalid(raw: bytes) -> None:
    with pytest.raises(ValidationFailedError):
        parse_body(CreateAccountRequest, raw)


def test_create_account_accepts_bounds_and_unicode() -> None:
    # GIVEN the largest limit and a 50-character non-ASCII name
    name = "é" * 50
    body = json.dumps({"username": name, "max_number_of_services": MAX_SERVICE_LIMIT})

    # WHEN parsed (as bytes, the way the request arrives)
    request = parse_body(CreateAccountRequest, body.encode())

    # THEN it is accepted unchanged
    assert (request.username, request.max_number_of_services) == (name, MAX_SERVICE_LIMIT)


def test_limit_may_be_omitted_or_null() -> None:
    assert parse_body(CreateAccountRequest, b'{"username": "a"}').max_number_of_services is None
    raw = b'{"username": "a", "max_number_of_services": null}'
    assert parse_body(CreateAccountRequest, raw).max_number_of_services is None


def test_update_account_accepts_empty_object() -> None:
    request = parse_body(UpdateAccountRequest, b"{}")
    assert (request.username, request.max_number_of_services) == (None, None)


@pytest.mark.parametrize(
    ("body", "location"),
    [
        pytest.param({"name": "x"}, "body.account_id", id="missing-account"),
        pytest.param({"account_id": "nope", "name": "x"}, "body.account_id", id="bad-uuid"),
        pytest.param({"account_id": 12, "name": "x"}, "body.account_id", id="number-uuid"),
        pytest.param({"account_id": ACCOUNT_ID}, "body.name", id="missing-name"),
        pytest.param({"account_id": ACCOUNT_ID, "name": ""}, "body.name", id="empty-name"),
        pytest.param({"account_id": ACCOUNT_ID, "name": "n" * 101}, "body.name", id="long-name"),
        pytest.param({"account_id": ACCOUNT_ID, "name": ["x"]}, "body.name", id="list-name"),
    ],
)
def test_create_service_schema_violations_are_invalid(body: dict[str, Any], location: str) -> None:
    with pytest.raises(ValidationFailedError) as raised:
        parse_body(CreateServiceRequest, json.dumps(body))
    assert location in locations(raised.value)


def test_create_service_accepts_a_uuid_string() -> None:
    request = parse_body(CreateServiceRequest, json.dumps({"account_id": ACCOUNT_ID, "name": "n"}))
    assert str(request.account_id) == ACCOUNT_ID


def test_every_field_error_is_reported() -> None:
    # GIVEN a body with two bad fields and one unknown
    body = json.dumps({"account_id": "x", "name": "", "colour": "red"})

    # WHEN parsed THEN all three are named
    with pytest.raises(ValidationFailedError) as raised:
        parse_body(CreateServiceRequest, body)
    assert sorted(locations(raised.value)) == ["body.account_id", "body.colour", "body.name"]


# -- query and path -------------------------------------------------------------------


def test_page_query_defaults() -> None:
    query = parse_query(PageQuery, None)
    assert (query.limit, query.cursor) == (50, None)


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "101"},
        {"limit": "abc"},
        {"limit": "-1"},
        {"cursor": ""},
        {"cursor": "c" * 2049},
        {"unknown": "1"},
    ],
)
def test_page_query_violations_are_invalid(params: dict[str, str]) -> None:
    with pytest.raises(ValidationFailedError) as raised:
        parse_query(PageQuery, params)
    assert all(loc.startswith("query") for loc in locations(raised.value))


def test_owner_query_requires_a_uuid() -> None:
    with pytest.raises(ValidationFailedError) as raised:
        parse_query(OwnerQuery, {})
    assert locations(raised.value) == ["query.ownerAccountId"]
    with pytest.raises(ValidationFailedError):
        parse_query(OwnerQuery, {"ownerAccountId": "not-a-uuid"})
    assert str(parse_query(OwnerQuery, {"ownerAccountId": ACCOUNT_ID}).ownerAccountId) == ACCOUNT_ID


@pytest.mark.parametrize(
    "value",
    [ACCOUNT_ID, ACCOUNT_ID.upper(), ACCOUNT_ID.replace("-", ""), f"urn:uuid:{ACCOUNT_ID}"],
)
def test_path_ids_are_canonicalised(value: str) -> None:
    # Stored keys use the canonical form, so every spelling addresses one item.
    assert parse_id("account_id", value) == ACCOUNT_ID


@pytest.mark.parametrize("value", ["", "x", "1234", ACCOUNT_ID + "0", "../" + ACCOUNT_ID])
def test_path_ids_that_are_not_uuids_are_invalid(value: str) -> None:
    with pytest.raises(ValidationFailedError) as raised:
        parse_id("service_id", value)
    assert locations(raised.value) == ["path.service_id"]


# -- output models --------------------------------------------------------------------


def test_account_out_hides_internal_counters() -> None:
    account = Account(
        id=ACCOUNT_ID,
        username="a",
        max_number_of_services=3,
        number_of_services=1,
        ec_hint=2,
        ec_version=4,
        created_at="t",
        updated_at="t",
    )
    assert set(AccountOut.of(account).model_dump()) == {
        "id",
        "username",
        "max_number_of_services",
        "number_of_services",
        "created_at",
        "updated_at",
    }


def test_service_out_hides_flags() -> None:
    service = Service(
        id=str(uuid.uuid4()),
        account_id=ACCOUNT_ID,
        name="n",
        created_at="t",
        updated_at="t",
        counter_processed=True,
    )
    assert "counter_processed" not in ServiceOut.of(service).model_dump()
    assert "deleted" not in ServiceOut.of(service).model_dump()


# -- properties: parsing never fails any other way ------------------------------------

MODELS: list[type[BaseModel]] = [
    CreateAccountRequest,
    UpdateAccountRequest,
    CreateServiceRequest,
    RenameServiceRequest,
]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=120),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=30), inner),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None)
@given(model=st.sampled_from(MODELS), raw=st.binary(max_size=200))
def test_any_bytes_parse_or_fail_with_a_domain_error(model: type[BaseModel], raw: bytes) -> None:
    # Anything else (TypeError, UnicodeError, ...) would surface as a 500.
    with contextlib.suppress(MalformedRequestError, ValidationFailedError):
        parse_body(model, raw)


@settings(max_examples=150, deadline=None)
@given(
    model=st.sampled_from(MODELS),
    body=st.dictionaries(
        st.sampled_from(["username", "max_number_of_services", "account_id", "name", "x"]),
        json_values,
    ),
)
def test_any_json_object_parses_or_is_invalid(model: type[BaseModel], body: dict[str, Any]) -> None:
    error: ValidationFailedError | None = None
    try:
        parse_body(model, json.dumps(body))
    except ValidationFailedError as raised:
        error = raised
    assert error is None or error.errors, "a 422 must name at least one field"
