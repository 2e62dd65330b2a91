"""(b) A transactional counter, for comparison only.

* Create: one ``TransactWriteItems``: put the Service and increment the Account's
  counter on condition that it is below the limit. Exact and immediate, 2 WCU per item.
* Delete: one ``TransactWriteItems``: delete the Service, decrement the counter.
* Under contention transactions are cancelled (``TransactionConflict``); botocore does
  not retry that, so the handler retries up to ``ATTEMPTS`` times with jittered
  backoff, then answers 503 with ``Retry-After`` (the kindest mapping the contract
  allows; the caller still sees an error).
"""

from __future__ import annotations

from typing import Any, Final

from botocore.exceptions import ClientError
from chalice.app import Chalice, Response

from alternatives.common import (
    DEFAULT_LIMIT,
    ProblemError,
    account_item,
    account_key,
    backoff,
    body,
    n,
    owner,
    page_limit,
    required,
    service_item,
    service_key,
    services_page,
)

ATTEMPTS: Final = 3
_BE_UPDATE: Final = "SET number_of_services = number_of_services + :delta"


def _reasons(error: ClientError) -> list[str]:
    return [str(r.get("Code", "None")) for r in error.response.get("CancellationReasons", [])]


def create_app(client: Any, table: str) -> Chalice:
    app = Chalice(app_name="transactional-counter")

    def answer(view: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Response:
            try:
                return Response(view(*args, **kwargs), status_code=200)
            except ProblemError as problem:
                return problem.response()

        wrapper.__name__ = view.__name__
        return wrapper

    def transact(items: list[dict[str, Any]], on_condition: Any) -> None:
        for attempt in range(ATTEMPTS):
            try:
                client.transact_write_items(TransactItems=items)
                return
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") != "TransactionCanceledException":
                    raise
                reasons = _reasons(error)
                if "ConditionalCheckFailed" in reasons:
                    on_condition(reasons, error)
                if attempt + 1 < ATTEMPTS:
                    backoff(attempt)
        raise ProblemError(503, "Too much contention; retry later", {"Retry-After": "1"})

    @app.route("/accounts", methods=["POST"])
    @answer
    def create_account() -> dict[str, Any]:
        data = body(app)
        item, out = account_item(
            required(data, "username"), int(data.get("max_number_of_services") or DEFAULT_LIMIT)
        )
        client.put_item(TableName=table, Item=item)
        return out

    @app.route("/services", methods=["POST"])
    @answer
    def create_service() -> dict[str, Any]:
        data = body(app)
        account_id, name = required(data, "account_id"), required(data, "name")
        _, item, out = service_item(account_id, name)

        def refused(reasons: list[str], error: ClientError) -> None:
            counter = error.response["CancellationReasons"][1]
            if counter.get("Item"):
                raise ProblemError(409, "Service limit reached")
            raise ProblemError(404, "Account not found")

        transact(
            [
                {
                    "Put": {
                        "TableName": table,
                        "Item": item,
                        "ConditionExpression": "attribute_not_exists(PK)",
                    }
                },
                {
                    "Update": {
                        "TableName": table,
                        "Key": account_key(account_id),
                        "UpdateExpression": _BE_UPDATE,
                        "ConditionExpression": (
                            "attribute_exists(PK) AND number_of_services < max_number_of_services"
                        ),
                        "ExpressionAttributeValues": {":delta": n(1)},
                        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                    }
                },
            ],
            refused,
        )
        return out

    @app.route("/services/{service_id}", methods=["DELETE"])
    @answer
    def delete_service(service_id: str) -> dict[str, Any]:
        account_id = owner(app)

        def refused(reasons: list[str], error: ClientError) -> None:
            raise ProblemError(404, "Service not found")

        transact(
            [
                {
                    "Delete": {
                        "TableName": table,
                        "Key": service_key(account_id, service_id),
                        "ConditionExpression": "attribute_exists(PK)",
                    }
                },
                {
                    "Update": {
                        "TableName": table,
                        "Key": account_key(account_id),
                        "UpdateExpression": _BE_UPDATE,
                        "ConditionExpression": "number_of_services > :zero",
                        "ExpressionAttributeValues": {":delta": n(-1), ":zero": n(0)},
                    }
                },
            ],
            refused,
        )
        return {"deleted": True}

    @app.route("/accounts/{account_id}/usage", methods=["GET"])
    @answer
    def usage(account_id: str) -> dict[str, Any]:
        account = client.get_item(
            TableName=table, Key=account_key(account_id), ConsistentRead=True
        ).get("Item")
        if account is None:
            raise ProblemError(404, "Account not found")
        count, limit = (
            int(account["number_of_services"]["N"]),
            int(account["max_number_of_services"]["N"]),
        )
        return {
            "account_id": account_id,
            "max_number_of_services": limit,
            "number_of_services": count,
            "count_value": count,
            "effective": count,
            "remaining": max(0, limit - count),
        }

    @app.route("/accounts/{account_id}/services", methods=["GET"])
    @answer
    def list_services(account_id: str) -> dict[str, Any]:
        return services_page(client, table, account_id, page_limit(app))

    return app
