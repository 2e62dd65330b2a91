"""The API's request and response models (the contract's source of truth)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from pydantic.json_schema import SkipJsonSchema

from chalicelib.entities import Account, Count, Service
from chalicelib.errors import FieldError, MalformedRequestError, ValidationFailedError

#: Upper bound for a limit: beyond any single account's sensible size.
MAX_SERVICE_LIMIT = 1_000_000_000

Username = Annotated[str, StringConstraints(min_length=1, max_length=50)]
ServiceName = Annotated[str, StringConstraints(min_length=1, max_length=100)]
ServiceLimit = Annotated[int, Field(ge=0, le=MAX_SERVICE_LIMIT)]
PageLimit = Annotated[int, Field(ge=1, le=100)]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class CreateAccountRequest(_Input):
    username: Username
    max_number_of_services: ServiceLimit | None = None


class UpdateAccountRequest(_Input):
    username: Username | None = None
    max_number_of_services: ServiceLimit | None = None


class CreateServiceRequest(_Input):
    account_id: uuid.UUID
    name: ServiceName


class RenameServiceRequest(_Input):
    name: ServiceName


class PageQuery(BaseModel):
    """``?limit=&cursor=`` (query strings arrive as text, so not strict)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: PageLimit = 50
    cursor: Annotated[str, StringConstraints(min_length=1, max_length=2048)] | None = None


class OwnerQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ownerAccountId: uuid.UUID  # noqa: N815 - the original API's parameter name


class AccountOut(BaseModel):
    id: str
    username: str
    max_number_of_services: int
    number_of_services: int
    created_at: str
    updated_at: str

    @classmethod
    def of(cls, account: Account) -> AccountOut:
        return cls.model_validate(account.model_dump())


class ServiceOut(BaseModel):
    id: str
    account_id: str
    name: str
    created_at: str
    updated_at: str

    @classmethod
    def of(cls, service: Service) -> ServiceOut:
        return cls.model_validate(service.model_dump())


class CountOut(BaseModel):
    account_id: str
    count_type: str
    count_value: int
    version: int
    created_at: str
    updated_at: str | None = None

    @classmethod
    def of(cls, count: Count) -> CountOut:
        return cls.model_validate(count.model_dump())


class AccountPage(BaseModel):
    items: list[AccountOut]
    next_cursor: str | None


class ServicePage(BaseModel):
    items: list[ServiceOut]
    next_cursor: str | None


class CountList(BaseModel):
    items: list[CountOut]


class Usage(BaseModel):
    account_id: str
    max_number_of_services: int
    #: Best-effort counter: immediate, may undercount.
    number_of_services: int
    #: Eventual counter: exact once the stream is processed.
    count_value: int
    #: What limit checks use: the larger of both.
    effective: int
    remaining: int
    #: Services whose creation or deletion the stream processor has not applied yet.
    pending: int


class Health(BaseModel):
    status: str


class Deleted(BaseModel):
    """What a successful DELETE answers."""

    deleted: Literal[True]


def _no_default(schema: dict[str, Any]) -> None:
    # Absent, never null: a ``default: null`` would document a value that never appears.
    schema.pop("default", None)


class FieldErrorOut(BaseModel):
    """One invalid input: where (``body.name``, ``query.limit``, ``path.account_id``) and why."""

    location: str
    message: str


class ProblemOut(BaseModel):
    """Every error body: RFC 9457 problem details, as ``application/problem+json``.

    Closed on purpose: an extension member that is not listed here is a contract change.
    """

    model_config = ConfigDict(extra="forbid")

    type: str = Field(description="URI naming the problem kind (``about:blank`` for HTTP ones)")
    title: str
    status: int = Field(ge=400, le=599, description="The HTTP status code, repeated")
    detail: str
    errors: list[FieldErrorOut] | SkipJsonSchema[None] = Field(
        default=None, description="422 only: every invalid input", json_schema_extra=_no_default
    )
    limit: int | SkipJsonSchema[None] = Field(
        default=None,
        description="``service-limit-reached`` only: the account's limit",
        json_schema_extra=_no_default,
    )


M = TypeVar("M", bound=BaseModel)


def _field_errors(error: ValidationError, where: str) -> list[FieldError]:
    return [
        FieldError(".".join([where, *map(str, e["loc"])]) if e["loc"] else where, e["msg"])
        for e in error.errors()
    ]


def parse_body(model: type[M], raw: bytes | str | None) -> M:
    """Validate a JSON request body: malformed -> 400, schema violations -> 422."""
    if raw is None or raw in (b"", ""):
        raise MalformedRequestError("the request body must be a JSON object")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise MalformedRequestError(f"the request body is not valid JSON: {error}") from error
    except RecursionError as error:
        # json's scanner recurses once per nesting level; without this, a 500.
        raise MalformedRequestError("the request body is nested too deeply") from error
    if not isinstance(data, dict):
        raise ValidationFailedError([FieldError("body", "must be a JSON object")])
    try:
        # JSON mode: strict types, yet UUIDs arrive as strings.
        return model.model_validate_json(raw)
    except ValidationError as error:
        unparsable = [e for e in error.errors() if e["type"] == "json_invalid"]
        if unparsable:
            # What json.loads lets through but pydantic cannot read (a lone surrogate
            # escape, nesting past pydantic's limit) is still malformed JSON: 400, not 422.
            detail = (unparsable[0].get("ctx") or {}).get("error", unparsable[0]["msg"])
            raise MalformedRequestError(f"the request body is not valid JSON: {detail}") from error
        raise ValidationFailedError(_field_errors(error, "body")) from error


def parse_query(model: type[M], params: Mapping[str, str] | None) -> M:
    try:
        return model.model_validate(dict(params or {}))
    except ValidationError as error:
        raise ValidationFailedError(_field_errors(error, "query")) from error


def parse_id(name: str, value: str) -> str:
    """A path UUID in canonical form, or 422."""
    try:
        return str(uuid.UUID(value))
    except ValueError as error:
        raise ValidationFailedError([FieldError(f"path.{name}", "must be a UUID")]) from error


def dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")
