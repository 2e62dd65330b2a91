"""The Chalice app: every entry point, each a few lines (parse -> service -> respond)."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from typing import Any, ParamSpec

from chalice.app import (
    Chalice,
    CloudWatchEvent,
    DynamoDBEvent,
    Rate,
    Request,
    Response,
    SQSEvent,
)

from chalicelib import event_sources, openapi, swagger
from chalicelib.bootstrap import container
from chalicelib.errors import CounterError
from chalicelib.problems import PROBLEM_JSON, Problem, internal_error, problem_for
from chalicelib.schemas import (
    AccountOut,
    AccountPage,
    CountList,
    CountOut,
    CreateAccountRequest,
    CreateServiceRequest,
    Health,
    OwnerQuery,
    PageQuery,
    RenameServiceRequest,
    ServiceOut,
    ServicePage,
    UpdateAccountRequest,
    dump,
    parse_body,
    parse_id,
    parse_query,
)
from chalicelib.settings import get_settings

settings = get_settings()
app = Chalice(app_name="distributed-counter")
app.log.setLevel(logging.INFO)
P = ParamSpec("P")


def _problem_response(problem: Problem) -> Response:
    headers: dict[str, str | list[str]] = {"Content-Type": PROBLEM_JSON, **problem.headers}
    return Response(body=json.dumps(problem.body()), status_code=problem.status, headers=headers)


def api(view: Callable[P, Any]) -> Callable[P, Response]:
    """Route wrapper: domain errors -> their problem; anything else -> logged 500.

    A view returns its JSON body, or a whole ``Response`` (other content types).
    """

    @functools.wraps(view)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Response:
        try:
            result = view(*args, **kwargs)
            if isinstance(result, Response):
                return result
            return Response(body=result, status_code=200)
        except CounterError as error:
            return _problem_response(problem_for(error))
        except Exception:
            app.log.exception("unhandled error in %s", view.__name__)
            return _problem_response(internal_error())

    return wrapper


@app.middleware("http")
def framework_errors_as_problems(
    event: Request, get_response: Callable[[Request], Response]
) -> Response:
    """Chalice's own errors (405, 415, bad JSON) get the contract's problem shape."""
    response = get_response(event)
    body = response.body
    if response.status_code >= 400 and isinstance(body, dict) and set(body) == {"Code", "Message"}:
        return _problem_response(
            Problem(
                response.status_code,
                "about:blank",
                str(body["Code"]),
                str(body["Message"]),
                headers={k: str(v) for k, v in response.headers.items() if k.lower() == "allow"},
            )
        )
    return response


def _request() -> Request:
    request = app.current_request
    assert request is not None
    return request


def _body() -> bytes | str | None:
    raw: bytes | str | None = _request().raw_body
    return raw


# -- health -------------------------------------------------------------------------


@app.route("/health", methods=["GET"])
@api
def health() -> dict[str, Any]:
    return dump(Health(status="ok"))


# -- accounts -----------------------------------------------------------------------


@app.route("/accounts", methods=["POST"])
@api
def create_account() -> dict[str, Any]:
    request = parse_body(CreateAccountRequest, _body())
    account = container().account_service.create(request.username, request.max_number_of_services)
    return dump(AccountOut.of(account))


@app.route("/accounts", methods=["GET"])
@api
def list_accounts() -> dict[str, Any]:
    query = parse_query(PageQuery, _request().query_params)
    accounts, cursor = container().account_service.page(query.limit, query.cursor)
    return dump(AccountPage(items=[AccountOut.of(a) for a in accounts], next_cursor=cursor))


@app.route("/accounts/{account_id}", methods=["GET"])
@api
def get_account(account_id: str) -> dict[str, Any]:
    return dump(AccountOut.of(container().account_service.get(parse_id("account_id", account_id))))


@app.route("/accounts/{account_id}", methods=["PUT"])
@api
def update_account(account_id: str) -> dict[str, Any]:
    account_id = parse_id("account_id", account_id)
    request = parse_body(UpdateAccountRequest, _body())
    account = container().account_service.update(
        account_id,
        username=request.username,
        max_number_of_services=request.max_number_of_services,
    )
    return dump(AccountOut.of(account))


@app.route("/accounts/{account_id}", methods=["DELETE"])
@api
def delete_account(account_id: str) -> dict[str, Any]:
    container().account_service.delete(parse_id("account_id", account_id))
    return {"deleted": True}


@app.route("/accounts/{account_id}/services", methods=["GET"])
@api
def list_account_services(account_id: str) -> dict[str, Any]:
    account_id = parse_id("account_id", account_id)
    query = parse_query(PageQuery, _request().query_params)
    services, cursor = container().service_service.page(account_id, query.limit, query.cursor)
    return dump(ServicePage(items=[ServiceOut.of(s) for s in services], next_cursor=cursor))


@app.route("/accounts/{account_id}/usage", methods=["GET"])
@api
def get_usage(account_id: str) -> dict[str, Any]:
    return dump(container().account_service.usage(parse_id("account_id", account_id)))


@app.route("/counts/{account_id}", methods=["GET"])
@api
def get_counts(account_id: str) -> dict[str, Any]:
    counts = container().account_service.counts(parse_id("account_id", account_id))
    return dump(CountList(items=[CountOut.of(c) for c in counts]))


# -- services -----------------------------------------------------------------------


@app.route("/services", methods=["POST"])
@api
def create_service() -> dict[str, Any]:
    request = parse_body(CreateServiceRequest, _body())
    service = container().service_service.create(str(request.account_id), request.name)
    return dump(ServiceOut.of(service))


def _owner() -> str:
    return str(parse_query(OwnerQuery, _request().query_params).ownerAccountId)


@app.route("/services/{service_id}", methods=["GET"])
@api
def get_service(service_id: str) -> dict[str, Any]:
    service_id = parse_id("service_id", service_id)
    return dump(ServiceOut.of(container().service_service.get(_owner(), service_id)))


@app.route("/services/{service_id}", methods=["PUT"])
@api
def rename_service(service_id: str) -> dict[str, Any]:
    service_id = parse_id("service_id", service_id)
    owner = _owner()
    request = parse_body(RenameServiceRequest, _body())
    return dump(ServiceOut.of(container().service_service.rename(owner, service_id, request.name)))


@app.route("/services/{service_id}", methods=["DELETE"])
@api
def delete_service(service_id: str) -> dict[str, Any]:
    service_id = parse_id("service_id", service_id)
    container().service_service.delete(_owner(), service_id)
    return {"deleted": True}


# -- API explorer: the OpenAPI document and Swagger UI -------------------------------


def _mount(route: str) -> str:
    """The stage prefix this request came through (``/api`` on API Gateway, else ``""``)."""
    return swagger.mount_path(_request().context.get("path"), route)


def _document(route: str) -> Response:
    body = openapi.document_json(_mount(route) or "/")
    return Response(body=body, status_code=200, headers={"Content-Type": "application/json"})


def _static(file: swagger.StaticFile) -> Response:
    headers: dict[str, str | list[str]] = {
        "Content-Type": file.content_type,
        "Cache-Control": file.cache_control,
    }
    return Response(body=file.body, status_code=200, headers=headers)


@app.route("/openapi.json", methods=["GET"])
@api
def openapi_document() -> Response:
    return _document("/openapi.json")


@app.route("/swagger/json", methods=["GET"])
@api
def swagger_document() -> Response:
    return _document("/swagger/json")


@app.route("/swagger", methods=["GET"])
@api
def swagger_ui() -> Response:
    return _static(swagger.page(_mount("/swagger")))


@app.route("/swagger/{asset}", methods=["GET"])
@api
def swagger_asset(asset: str) -> Response:
    return _static(swagger.asset(asset))


# -- counting engine ----------------------------------------------------------------


@app.on_dynamodb_record(
    stream_arn=settings.stream_arn,
    batch_size=event_sources.STREAM_BATCH_SIZE,
    starting_position=event_sources.STREAM_STARTING_POSITION,
    maximum_batching_window_in_seconds=event_sources.STREAM_BATCHING_WINDOW_SECONDS,
)
def handle_stream_records(event: DynamoDBEvent) -> dict[str, Any]:
    """Stream batch -> eventual counter; partial failures resume at the first failed record."""
    return container().processor.process(event.to_dict()["Records"]).response()


@app.on_sqs_message(queue=settings.tier1_queue_name, batch_size=event_sources.TIER1_BATCH_SIZE)
def handle_dead_letters(event: SQSEvent) -> None:
    """Tier 1: replay a failed stream range (raising keeps the message for a retry)."""
    for record in event:
        container().replayer.replay(record.body)


@app.schedule(Rate(settings.heal_every_minutes, unit=Rate.MINUTES))
def heal_counters(event: CloudWatchEvent) -> dict[str, int]:
    """Reconcile the best-effort counter of quiet accounts with the eventual count."""
    return container().healer.run().tally()
