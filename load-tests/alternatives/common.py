"""What both alternatives share: request parsing, problem responses, item shapes."""

from __future__ import annotations

import json
import random
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Final

from chalice.app import Chalice, Response

PROBLEM_JSON: Final = "application/problem+json"
DEFAULT_LIMIT: Final = 5000


class ProblemError(Exception):
    def __init__(self, status: int, title: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(title)
        self.status = status
        self.title = title
        self.headers = headers or {}

    def response(self) -> Response:
        body = {
            "type": "about:blank",
            "title": self.title,
            "status": self.status,
            "detail": self.title,
        }
        return Response(
            json.dumps(body),
            status_code=self.status,
            headers={"Content-Type": PROBLEM_JSON, **self.headers},
        )


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_id() -> str:
    return str(uuid.uuid4())


def body(app: Chalice) -> dict[str, Any]:
    request = app.current_request
    try:
        data = json.loads(request.raw_body or b"")
    except ValueError as error:
        raise ProblemError(400, "Malformed request") from error
    if not isinstance(data, dict):
        raise ProblemError(422, "Validation failed")
    return data


def required(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise ProblemError(422, f"{name} is required")
    return value


def owner(app: Chalice) -> str:
    params = app.current_request.query_params or {}
    if "ownerAccountId" not in params:
        raise ProblemError(422, "ownerAccountId is required")
    return str(params["ownerAccountId"])


def s(value: str) -> dict[str, str]:
    return {"S": value}


def n(value: int) -> dict[str, str]:
    return {"N": str(value)}


def key(pk: str, sk: str) -> dict[str, Any]:
    return {"PK": s(pk), "SK": s(sk)}


def account_key(account_id: str) -> dict[str, Any]:
    return key(f"ACCOUNT#{account_id}", "METADATA")


def count_key(account_id: str) -> dict[str, Any]:
    return key(f"ACCOUNT#{account_id}", "COUNT#SERVICES")


def service_key(account_id: str, service_id: str) -> dict[str, Any]:
    return key(f"ACCOUNT#{account_id}", f"SERVICE#{service_id}")


def service_item(account_id: str, name: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    service_id, stamp = new_id(), now()
    item = service_key(account_id, service_id) | {
        "id": s(service_id),
        "account_id": s(account_id),
        "name": s(name),
        "created_at": s(stamp),
        "updated_at": s(stamp),
        "deleted": {"BOOL": False},
        "counter_processed": {"BOOL": False},
    }
    out = {
        "id": service_id,
        "account_id": account_id,
        "name": name,
        "created_at": stamp,
        "updated_at": stamp,
    }
    return service_id, item, out


def account_item(username: str, limit: int) -> tuple[dict[str, Any], dict[str, Any]]:
    account_id, stamp = new_id(), now()
    item = account_key(account_id) | {
        "id": s(account_id),
        "username": s(username),
        "max_number_of_services": n(limit),
        "number_of_services": n(0),
        "created_at": s(stamp),
        "updated_at": s(stamp),
    }
    out = {
        "id": account_id,
        "username": username,
        "max_number_of_services": limit,
        "number_of_services": 0,
        "created_at": stamp,
        "updated_at": stamp,
    }
    return item, out


def services_page(client: Any, table: str, account_id: str, limit: int) -> dict[str, Any]:
    page = client.query(
        TableName=table,
        KeyConditionExpression="PK = :pk AND begins_with(SK, :prefix)",
        FilterExpression="deleted = :false",
        ExpressionAttributeValues={
            ":pk": s(f"ACCOUNT#{account_id}"),
            ":prefix": s("SERVICE#"),
            ":false": {"BOOL": False},
        },
        Limit=limit,
    )
    items = [
        {
            "id": i["id"]["S"],
            "account_id": account_id,
            "name": i["name"]["S"],
            "created_at": i["created_at"]["S"],
            "updated_at": i["updated_at"]["S"],
        }
        for i in page.get("Items", [])
    ]
    return {"items": items, "next_cursor": None}


def page_limit(app: Chalice) -> int:
    params = app.current_request.query_params or {}
    try:
        return max(1, min(100, int(params.get("limit", 50))))
    except ValueError as error:
        raise ProblemError(422, "limit must be an integer") from error


def backoff(attempt: int, base: float = 0.02, cap: float = 1.0) -> None:
    time.sleep(random.uniform(0, min(cap, base * 2**attempt)))
