"""(a) The original project's flow, rebuilt for comparison only.

* Create: read the Account, read the Count item (two reads), check the limit against
  the larger counter, put the Service, then an *unconditional* increment of the
  Account's counter. Concurrent creates can all pass the check: the limit can be
  overshot.
* Delete: read the Service, delete it, unconditional decrement.
* Stream: one ``TransactWriteItems`` per stream record (the Count item's ``ADD``), made
  idempotent with ``ClientRequestToken`` (which lasts 10 minutes on DynamoDB).
* Errors: limit 409, not found 404; anything the backend raises is a 500.
"""

from __future__ import annotations

import hashlib
from typing import Any

from chalice.app import Chalice, DynamoDBEvent, Response

from alternatives.common import (
    DEFAULT_LIMIT,
    ProblemError,
    account_item,
    account_key,
    body,
    count_key,
    n,
    owner,
    page_limit,
    required,
    s,
    service_item,
    service_key,
    services_page,
)

#: The stream records this flow counts (Lambda filter criteria).
STREAM_FILTER_PATTERNS = (
    {
        "eventName": ["INSERT", "REMOVE"],
        "dynamodb": {"Keys": {"SK": {"S": [{"prefix": "SERVICE#"}]}}},
    },
)


def create_app(client: Any, table: str) -> Chalice:
    app = Chalice(app_name="original-counter")

    def answer(view: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Response:
            try:
                return Response(view(*args, **kwargs), status_code=200)
            except ProblemError as problem:
                return problem.response()
            # Anything else propagates: Chalice answers 500, as the original did.

        wrapper.__name__ = view.__name__
        return wrapper

    @app.route("/accounts", methods=["POST"])
    @answer
    def create_account() -> dict[str, Any]:
        data = body(app)
        item, out = account_item(
            required(data, "username"), int(data.get("max_number_of_services") or DEFAULT_LIMIT)
        )
        client.put_item(TableName=table, Item=item)
        client.put_item(
            TableName=table, Item=count_key(out["id"]) | {"count_value": n(0), "version": n(0)}
        )
        return out

    @app.route("/services", methods=["POST"])
    @answer
    def create_service() -> dict[str, Any]:
        data = body(app)
        account_id, name = required(data, "account_id"), required(data, "name")
        account = client.get_item(TableName=table, Key=account_key(account_id)).get("Item")
        if account is None:
            raise ProblemError(404, "Account not found")
        count = client.get_item(TableName=table, Key=count_key(account_id)).get("Item") or {}
        counted = max(
            int(account["number_of_services"]["N"]), int(count.get("count_value", n(0))["N"])
        )
        if counted >= int(account["max_number_of_services"]["N"]):
            raise ProblemError(409, "Service limit reached")
        _, item, out = service_item(account_id, name)
        client.put_item(TableName=table, Item=item)
        client.update_item(
            TableName=table,
            Key=account_key(account_id),
            UpdateExpression="SET number_of_services = number_of_services + :delta",
            ExpressionAttributeValues={":delta": n(1)},
        )
        return out

    @app.route("/services/{service_id}", methods=["DELETE"])
    @answer
    def delete_service(service_id: str) -> dict[str, Any]:
        account_id = owner(app)
        found = client.get_item(TableName=table, Key=service_key(account_id, service_id)).get(
            "Item"
        )
        if found is None:
            raise ProblemError(404, "Service not found")
        client.delete_item(TableName=table, Key=service_key(account_id, service_id))
        client.update_item(
            TableName=table,
            Key=account_key(account_id),
            UpdateExpression="SET number_of_services = number_of_services + :delta",
            ExpressionAttributeValues={":delta": n(-1)},
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
        count = (
            client.get_item(TableName=table, Key=count_key(account_id), ConsistentRead=True).get(
                "Item"
            )
            or {}
        )
        be, ec = int(account["number_of_services"]["N"]), int(count.get("count_value", n(0))["N"])
        limit = int(account["max_number_of_services"]["N"])
        return {
            "account_id": account_id,
            "max_number_of_services": limit,
            "number_of_services": be,
            "count_value": ec,
            "effective": max(be, ec),
            "remaining": max(0, limit - max(be, ec)),
        }

    @app.route("/accounts/{account_id}/services", methods=["GET"])
    @answer
    def list_services(account_id: str) -> dict[str, Any]:
        return services_page(client, table, account_id, page_limit(app))

    @app.on_dynamodb_record(
        stream_arn="arn:aws:dynamodb:us-east-1:000000000000:table/original/stream/x"
    )
    def count_changes(event: DynamoDBEvent) -> None:
        for record in event:
            keys = record.keys or {}
            if not str(keys.get("SK", {}).get("S", "")).startswith("SERVICE#"):
                continue
            delta = {"INSERT": 1, "REMOVE": -1}.get(record.event_name)
            if delta is None:
                continue
            account_id = str(keys["PK"]["S"]).removeprefix("ACCOUNT#")
            token = hashlib.sha256(record.event_id.encode()).hexdigest()[:36]
            client.transact_write_items(
                TransactItems=[
                    {
                        "Update": {
                            "TableName": table,
                            "Key": count_key(account_id),
                            "UpdateExpression": "ADD count_value :delta, version :one",
                            "ExpressionAttributeValues": {":delta": n(delta), ":one": n(1)},
                        }
                    }
                ],
                ClientRequestToken=token,
            )

    return app


__all__ = ["STREAM_FILTER_PATTERNS", "create_app", "s"]
