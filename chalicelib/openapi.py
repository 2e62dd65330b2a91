"""The API's OpenAPI 3.1 contract, generated: it cannot drift from the code it describes.

* Request, response and problem schemas come from the pydantic models in
  :mod:`chalicelib.schemas` (``model_json_schema`` through ``models_json_schema``).
* Problem examples are what :func:`chalicelib.problems.problem_for` answers for real
  domain errors, and 422 examples are what the real parsers raise for bad input.
* :data:`OPERATIONS` lists every route with its models; a test holds it equal to the
  app's route table, and the fuzz test holds the running API to the document.

No chalice import: ``app.py`` serves :func:`document_json`.
"""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from chalicelib import swagger
from chalicelib.errors import (
    AccountNotEmptyError,
    BackendUnavailableError,
    CounterError,
    NotFoundError,
    ServiceLimitReachedError,
)
from chalicelib.problems import PROBLEM_JSON, Problem, problem_for
from chalicelib.schemas import (
    AccountOut,
    AccountPage,
    CountList,
    CountOut,
    CreateAccountRequest,
    CreateServiceRequest,
    Deleted,
    Health,
    OwnerQuery,
    PageQuery,
    ProblemOut,
    RenameServiceRequest,
    ServiceOut,
    ServicePage,
    UpdateAccountRequest,
    Usage,
    parse_body,
    parse_id,
    parse_query,
)

OPENAPI_VERSION: Final = "3.1.0"
#: The contract's version: bump it with every change to the document.
API_VERSION: Final = "0.1.0"
REF_TEMPLATE: Final = "#/components/schemas/{model}"
JSON: Final = "application/json"

Schema = dict[str, Any]
Location = Literal["path", "query"]

# -- how an operation is described ---------------------------------------------------


@dataclass(frozen=True)
class PathParam:
    """A ``{name}`` segment of a route."""

    name: str
    description: str
    schema: Schema = field(default_factory=lambda: {"type": "string", "format": "uuid"})
    example: str | None = None
    #: A value the route rejects with 422 (the example of that problem); None: no 422.
    invalid: str | None = None


@dataclass(frozen=True)
class Link:
    """An OpenAPI link from a 200 answer to another operation (Swagger UI shows them;
    stateful tests follow them). Values are runtime expressions such as
    ``$response.body#/id``."""

    name: str
    operation_id: str
    parameters: Mapping[str, str] = field(default_factory=dict)
    request_body: Mapping[str, Any] | None = None

    def document(self) -> dict[str, Any]:
        link: dict[str, Any] = {"operationId": self.operation_id}
        if self.parameters:
            link["parameters"] = dict(self.parameters)
        if self.request_body is not None:
            link["requestBody"] = dict(self.request_body)
        return link


@dataclass(frozen=True)
class Operation:
    """One route and method: what it takes, what it answers, which problems it can return.

    Problems from the request's shape are added from what the operation takes: a body
    brings 400 (malformed JSON), 415 (not JSON) and 422; a UUID path parameter or a
    query model brings 422. ``backend`` brings 503 with ``Retry-After``. ``problems``
    lists the domain errors the service can raise (404, 409), as example instances.
    """

    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    description: str = ""
    path_params: tuple[PathParam, ...] = ()
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    body_example: BaseModel | None = None
    response: type[BaseModel] | None = None
    response_example: BaseModel | None = None
    #: Non-JSON 200 answers: content type -> schema (HTML, scripts, the document itself).
    content: Mapping[str, Schema] | None = None
    problems: tuple[CounterError, ...] = ()
    backend: bool = True
    links: tuple[Link, ...] = ()

    def __post_init__(self) -> None:
        declared = {p.name for p in self.path_params}
        if declared != set(_segments(self.path)):
            raise ValueError(f"{self.path}: path parameters {sorted(declared)} do not match")
        for model, example in (
            (self.body, self.body_example),
            (self.response, self.response_example),
        ):
            if example is not None and type(example) is not model:
                raise TypeError(f"{self.operation_id}: example is not a {model}")
        if (self.response is None) == (self.content is None):
            raise ValueError(f"{self.operation_id}: give a response model or a content map")


def _segments(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]


# -- building the document -----------------------------------------------------------


def build_document(
    operations: Sequence[Operation], *, server_url: str, info: Mapping[str, Any]
) -> dict[str, Any]:
    """The OpenAPI 3.1 document for ``operations``, served under ``server_url``."""
    refs, schemas = _component_schemas(operations)
    paths: dict[str, dict[str, Any]] = defaultdict(dict)
    for operation in operations:
        paths[operation.path][operation.method.lower()] = _operation(operation, refs)
    tags = sorted({operation.tag for operation in operations})
    return {
        "openapi": OPENAPI_VERSION,
        "info": dict(info),
        "servers": [{"url": server_url}],
        "tags": [{"name": tag} for tag in tags],
        "paths": dict(paths),
        "components": {"schemas": schemas},
    }


ModelKey = tuple[type[BaseModel], Literal["validation", "serialization"]]


def _component_schemas(
    operations: Iterable[Operation],
) -> tuple[dict[ModelKey, Schema], dict[str, Schema]]:
    keys: dict[ModelKey, None] = {(ProblemOut, "serialization"): None}
    for operation in operations:
        for model in (operation.body, operation.query):
            if model is not None:
                keys[(model, "validation")] = None
        if operation.response is not None:
            keys[(operation.response, "serialization")] = None
    refs, definitions = models_json_schema(list(keys), ref_template=REF_TEMPLATE)
    return {key: refs[key] for key in keys}, dict(definitions.get("$defs", {}))


def _operation(operation: Operation, refs: Mapping[ModelKey, Schema]) -> dict[str, Any]:
    document: dict[str, Any] = {
        "operationId": operation.operation_id,
        "summary": operation.summary,
        "tags": [operation.tag],
    }
    if operation.description:
        document["description"] = operation.description
    parameters = [_path_parameter(p) for p in operation.path_params]
    if operation.query is not None:
        parameters += _query_parameters(operation.query)
    if parameters:
        document["parameters"] = parameters
    if operation.body is not None:
        media: dict[str, Any] = {"schema": refs[(operation.body, "validation")]}
        if operation.body_example is not None:
            media["example"] = operation.body_example.model_dump(mode="json", exclude_unset=True)
        document["requestBody"] = {"required": True, "content": {JSON: media}}
    document["responses"] = {"200": _success(operation, refs)} | _problem_responses(operation)
    return document


def _path_parameter(param: PathParam) -> dict[str, Any]:
    document: dict[str, Any] = {
        "name": param.name,
        "in": "path",
        "required": True,
        "description": param.description,
        "schema": param.schema,
    }
    if param.example is not None:
        document["example"] = param.example
    return document


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """One parameter per field of a query model (a query string has no ``null``)."""
    schema = model.model_json_schema(ref_template=REF_TEMPLATE)
    required = set(schema.get("required", ()))
    parameters = []
    for name, prop in schema["properties"].items():
        prop = _without_null(prop)
        parameter: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": prop,
        }
        if "description" in prop:
            parameter["description"] = prop["description"]
        parameters.append(parameter)
    return parameters


def _without_null(schema: Schema) -> Schema:
    branches = schema.get("anyOf")
    if branches is None:
        return schema
    kept = [branch for branch in branches if branch != {"type": "null"}]
    rest = {k: v for k, v in schema.items() if k != "anyOf" and not (k == "default" and v is None)}
    return {**kept[0], **rest} if len(kept) == 1 else {**rest, "anyOf": kept}


def _success(operation: Operation, refs: Mapping[ModelKey, Schema]) -> dict[str, Any]:
    if operation.content is not None:
        content = {media: {"schema": schema} for media, schema in operation.content.items()}
        return {"description": "OK", "content": content}
    assert operation.response is not None
    media: dict[str, Any] = {"schema": refs[(operation.response, "serialization")]}
    if operation.response_example is not None:
        media["example"] = operation.response_example.model_dump(mode="json")
    response: dict[str, Any] = {"description": "OK", "content": {JSON: media}}
    if operation.links:
        response["links"] = {link.name: link.document() for link in operation.links}
    return response


_DESCRIPTIONS: Final[Mapping[int, str]] = {
    400: "Malformed request: the body is not JSON",
    404: "Not found",
    409: "Conflict with the resource's state",
    415: "Unsupported media type: send `Content-Type: application/json`",
    422: "Validation failed: `errors` lists every invalid input",
    503: "The database stayed unavailable after retries: retry after `Retry-After` seconds",
}


def _problem_responses(operation: Operation) -> dict[str, Any]:
    by_status: dict[int, dict[str, Problem]] = defaultdict(dict)
    for name, problem in _problems(operation):
        by_status[problem.status][name] = problem
    return {
        str(status): _problem_response(status, examples)
        for status, examples in sorted(by_status.items())
    }


def _problem_response(status: int, examples: Mapping[str, Problem]) -> dict[str, Any]:
    """A problem+json response whose ``status`` and ``type`` are pinned to the examples."""
    pinned: Schema = {
        "properties": {
            "status": {"const": status},
            "type": {"enum": sorted({p.type for p in examples.values()})},
        }
    }
    if status == 422:
        pinned["required"] = ["errors"]
    response: dict[str, Any] = {
        "description": _DESCRIPTIONS[status],
        "content": {
            PROBLEM_JSON: {
                "schema": {"allOf": [{"$ref": REF_TEMPLATE.format(model="ProblemOut")}, pinned]},
                "examples": {name: {"value": p.body()} for name, p in examples.items()},
            }
        },
    }
    headers = {name for problem in examples.values() for name in problem.headers}
    if "Retry-After" in headers:
        response["headers"] = {
            "Retry-After": {
                "description": "Seconds to wait before retrying",
                "required": True,
                "schema": {"type": "integer", "minimum": 0},
            }
        }
    return response


def _problems(operation: Operation) -> Iterable[tuple[str, Problem]]:
    """Every problem the operation can answer, named, with a real example body."""
    if operation.body is not None:
        yield "malformed-json", problem_for(_raised(parse_body, operation.body, b"{"))
        yield "not-json", UNSUPPORTED_MEDIA_TYPE
        yield "invalid-body", problem_for(_raised(parse_body, operation.body, b'{"x": 1}'))
    for param in operation.path_params:
        if param.invalid is not None:
            error = _raised(parse_id, param.name, param.invalid)
            yield f"invalid-{param.name}", problem_for(error)
    if operation.query is not None:
        yield "invalid-query", problem_for(_raised(parse_query, operation.query, {"x": ""}))
    for domain_error in operation.problems:
        problem = problem_for(domain_error)
        yield problem.type.rsplit("/", 1)[-1], problem
    if operation.backend:
        yield "backend-unavailable", problem_for(BackendUnavailableError("GetItem"))


def _raised(parse: Callable[..., object], *args: Any) -> CounterError:
    """The domain error a real parser raises for an example of bad input."""
    try:
        parse(*args)
    except CounterError as error:
        return error
    raise AssertionError(f"{parse.__name__}{args} accepted its bad example")


#: What the app's middleware makes of Chalice's own 415 (see ``app.py``).
UNSUPPORTED_MEDIA_TYPE: Final = Problem(
    415, "about:blank", "UnsupportedMediaType", "Unsupported media type: text/plain"
)

# -- this API ------------------------------------------------------------------------

EXAMPLE_ACCOUNT_ID: Final = "6f1c2b1e-8d3a-4c55-9f0e-2a7b5c4d3e21"
EXAMPLE_SERVICE_ID: Final = "0b9e4f7a-3c2d-4e1f-8a6b-5d4c3b2a1f09"
_CREATED: Final = "2026-01-15T09:30:00.000000Z"
_UPDATED: Final = "2026-01-15T10:45:12.345678Z"

_ACCOUNT_ID = PathParam(
    "account_id", "The account's id", example=EXAMPLE_ACCOUNT_ID, invalid="not-a-uuid"
)
_SERVICE_ID = PathParam(
    "service_id", "The service's id", example=EXAMPLE_SERVICE_ID, invalid="not-a-uuid"
)
_ACCOUNT_NOT_FOUND = NotFoundError("account", EXAMPLE_ACCOUNT_ID)
_SERVICE_NOT_FOUND = NotFoundError("service", EXAMPLE_SERVICE_ID)

_ACCOUNT = AccountOut(
    id=EXAMPLE_ACCOUNT_ID,
    username="alice",
    max_number_of_services=5000,
    number_of_services=42,
    created_at=_CREATED,
    updated_at=_UPDATED,
)
_SERVICE = ServiceOut(
    id=EXAMPLE_SERVICE_ID,
    account_id=EXAMPLE_ACCOUNT_ID,
    name="checkout",
    created_at=_CREATED,
    updated_at=_CREATED,
)
_DELETED = Deleted(deleted=True)

_NEW_ACCOUNT = {"account_id": "$response.body#/id"}
_ACCOUNT_LINKS = (
    Link("GetAccount", "getAccount", _NEW_ACCOUNT),
    Link("UpdateAccount", "updateAccount", _NEW_ACCOUNT),
    Link("DeleteAccount", "deleteAccount", _NEW_ACCOUNT),
    Link("GetUsage", "getUsage", _NEW_ACCOUNT),
    Link("GetCounts", "getCounts", _NEW_ACCOUNT),
    Link("ListServices", "listAccountServices", _NEW_ACCOUNT),
    Link("CreateService", "createService", request_body={"account_id": "$response.body#/id"}),
)
_SAME_SERVICE = {"service_id": "$response.body#/id", "ownerAccountId": "$response.body#/account_id"}
_SERVICE_LINKS = (
    Link("GetService", "getService", _SAME_SERVICE),
    Link("RenameService", "renameService", _SAME_SERVICE),
    Link("DeleteService", "deleteService", _SAME_SERVICE),
)
_DOCUMENT: Final[Mapping[str, Schema]] = {JSON: {"type": "object"}}

OPERATIONS: Final[tuple[Operation, ...]] = (
    Operation(
        "GET",
        "/health",
        "getHealth",
        "Health check",
        "health",
        description="Answers without touching the database.",
        response=Health,
        response_example=Health(status="ok"),
        backend=False,
    ),
    Operation(
        "POST",
        "/accounts",
        "createAccount",
        "Create account",
        "accounts",
        description=(
            "Creates an account with a service limit (`max_number_of_services`, "
            "default 5,000 when absent or null)."
        ),
        body=CreateAccountRequest,
        body_example=CreateAccountRequest(username="alice", max_number_of_services=5000),
        response=AccountOut,
        response_example=_ACCOUNT.model_copy(update={"number_of_services": 0}),
        links=_ACCOUNT_LINKS,
    ),
    Operation(
        "GET",
        "/accounts",
        "listAccounts",
        "List accounts",
        "accounts",
        description="One page of accounts; pass `next_cursor` back as `cursor` for the next.",
        query=PageQuery,
        response=AccountPage,
        response_example=AccountPage(items=[_ACCOUNT], next_cursor=None),
    ),
    Operation(
        "GET",
        "/accounts/{account_id}",
        "getAccount",
        "Get account",
        "accounts",
        path_params=(_ACCOUNT_ID,),
        response=AccountOut,
        response_example=_ACCOUNT,
        problems=(_ACCOUNT_NOT_FOUND,),
    ),
    Operation(
        "PUT",
        "/accounts/{account_id}",
        "updateAccount",
        "Update account",
        "accounts",
        description="Changes the username and/or the limit; absent or null fields are kept.",
        path_params=(_ACCOUNT_ID,),
        body=UpdateAccountRequest,
        body_example=UpdateAccountRequest(max_number_of_services=10000),
        response=AccountOut,
        response_example=_ACCOUNT.model_copy(update={"max_number_of_services": 10000}),
        problems=(_ACCOUNT_NOT_FOUND,),
    ),
    Operation(
        "DELETE",
        "/accounts/{account_id}",
        "deleteAccount",
        "Delete account",
        "accounts",
        description=(
            "Only an account without services, live or awaiting processing, can be deleted."
        ),
        path_params=(_ACCOUNT_ID,),
        response=Deleted,
        response_example=_DELETED,
        problems=(_ACCOUNT_NOT_FOUND, AccountNotEmptyError(EXAMPLE_ACCOUNT_ID)),
    ),
    Operation(
        "GET",
        "/accounts/{account_id}/services",
        "listAccountServices",
        "List an account's services",
        "services",
        path_params=(_ACCOUNT_ID,),
        query=PageQuery,
        response=ServicePage,
        response_example=ServicePage(items=[_SERVICE], next_cursor=None),
        problems=(_ACCOUNT_NOT_FOUND,),
    ),
    Operation(
        "GET",
        "/accounts/{account_id}/usage",
        "getUsage",
        "Get usage",
        "accounts",
        description=(
            "Both counters: `number_of_services` (best effort, immediate, may undercount) and "
            "`count_value` (eventual, exact once the stream is processed); limit checks use "
            "the larger, `effective`."
        ),
        path_params=(_ACCOUNT_ID,),
        response=Usage,
        response_example=Usage(
            account_id=EXAMPLE_ACCOUNT_ID,
            max_number_of_services=5000,
            number_of_services=42,
            count_value=41,
            effective=42,
            remaining=4958,
            pending=1,
        ),
        problems=(_ACCOUNT_NOT_FOUND,),
    ),
    Operation(
        "GET",
        "/counts/{account_id}",
        "getCounts",
        "Get eventual counts",
        "counts",
        description="The stream processor's exact counts (empty until it has counted once).",
        path_params=(_ACCOUNT_ID,),
        response=CountList,
        response_example=CountList(
            items=[
                CountOut(
                    account_id=EXAMPLE_ACCOUNT_ID,
                    count_type="SERVICES",
                    count_value=41,
                    version=17,
                    created_at=_CREATED,
                    updated_at=_UPDATED,
                )
            ]
        ),
        problems=(_ACCOUNT_NOT_FOUND,),
    ),
    Operation(
        "POST",
        "/services",
        "createService",
        "Create service",
        "services",
        description="Creates a service in an account, within the account's limit (else 409).",
        body=CreateServiceRequest,
        body_example=CreateServiceRequest.model_validate_json(
            json.dumps({"account_id": EXAMPLE_ACCOUNT_ID, "name": "checkout"})
        ),
        response=ServiceOut,
        response_example=_SERVICE,
        problems=(_ACCOUNT_NOT_FOUND, ServiceLimitReachedError(EXAMPLE_ACCOUNT_ID, 5000)),
        links=_SERVICE_LINKS,
    ),
    Operation(
        "GET",
        "/services/{service_id}",
        "getService",
        "Get service",
        "services",
        path_params=(_SERVICE_ID,),
        query=OwnerQuery,
        response=ServiceOut,
        response_example=_SERVICE,
        problems=(_SERVICE_NOT_FOUND,),
    ),
    Operation(
        "PUT",
        "/services/{service_id}",
        "renameService",
        "Rename service",
        "services",
        path_params=(_SERVICE_ID,),
        query=OwnerQuery,
        body=RenameServiceRequest,
        body_example=RenameServiceRequest(name="payments"),
        response=ServiceOut,
        response_example=_SERVICE.model_copy(update={"name": "payments", "updated_at": _UPDATED}),
        problems=(_SERVICE_NOT_FOUND,),
    ),
    Operation(
        "DELETE",
        "/services/{service_id}",
        "deleteService",
        "Delete service",
        "services",
        description="Frees a slot of the account's limit at once.",
        path_params=(_SERVICE_ID,),
        query=OwnerQuery,
        response=Deleted,
        response_example=_DELETED,
        problems=(_SERVICE_NOT_FOUND,),
    ),
    Operation(
        "GET",
        "/openapi.json",
        "getOpenApiDocument",
        "This document",
        "explorer",
        content=_DOCUMENT,
        backend=False,
    ),
    Operation(
        "GET",
        f"{swagger.PAGE_ROUTE}/{swagger.DOCUMENT_NAME}",
        "getSwaggerDocument",
        "This document, where the original API served it",
        "explorer",
        content=_DOCUMENT,
        backend=False,
    ),
    Operation(
        "GET",
        swagger.PAGE_ROUTE,
        "getApiExplorer",
        "API explorer (Swagger UI)",
        "explorer",
        content={"text/html": {"type": "string"}},
        backend=False,
    ),
    Operation(
        "GET",
        f"{swagger.PAGE_ROUTE}/{{asset}}",
        "getApiExplorerAsset",
        "A file of the API explorer",
        "explorer",
        path_params=(
            PathParam(
                "asset",
                "The file's name",
                schema={"type": "string", "enum": sorted(swagger.ASSETS)},
                example="swagger-ui.css",
            ),
        ),
        content={"text/javascript": {"type": "string"}, "text/css": {"type": "string"}},
        problems=(NotFoundError("asset", "missing.js"),),
        backend=False,
    ),
)

INFO: Final[Mapping[str, Any]] = {
    "title": "distributed-counter",
    "version": API_VERSION,
    "summary": "Services per account, within a limit that holds under heavy concurrency.",
    "description": (
        "Every error is `application/problem+json` (RFC 9457) with `type`, `title`, "
        "`status` and `detail`; 422 adds `errors`, the service limit's 409 adds `limit`. "
        "A 500 would be a bug: it is not part of the contract. Unknown methods on a known "
        "path answer 405 with `Allow`."
    ),
}


def document(server_url: str = "/") -> dict[str, Any]:
    """This API's OpenAPI document for an API mounted at ``server_url``."""
    return build_document(OPERATIONS, server_url=server_url, info=INFO)


@functools.lru_cache(maxsize=8)
def document_json(server_url: str = "/") -> str:
    """:func:`document` serialised once per mount point."""
    return json.dumps(document(server_url), separators=(",", ":"))
