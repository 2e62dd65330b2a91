"""The backend's own capacity, measured in the same run as the scenarios.

Eight threads (the API's worker count) call one operation as fast as the backend
answers, for a few seconds each, on a table provisioned from the same template
(same indexes and stream), with the item shapes the app writes.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import boto3
from botocore.config import Config

from harness.k6 import percentile
from infrastructure.local.provision import StackOutputs

THREADS: Final = 8
MAX_CALLS_PER_THREAD: Final = 200_000


@dataclass(frozen=True)
class Capacity:
    operation: str
    per_second: float
    p50_ms: float
    calls: int


def _s(v: str) -> dict[str, str]:
    return {"S": v}


def _service_item(pk: str) -> dict[str, Any]:
    service_id = str(uuid.uuid4())
    stamp = "2026-01-01T00:00:00.000000Z"
    return {
        "PK": _s(pk),
        "SK": _s(f"SERVICE#{service_id}"),
        "id": _s(service_id),
        "account_id": _s(pk[8:]),
        "name": _s("svc-capacity"),
        "created_at": _s(stamp),
        "updated_at": _s(stamp),
        "deleted": {"BOOL": False},
        "counter_processed": {"BOOL": False},
        "pending_since": _s(stamp),
    }


def measure(outputs: StackOutputs, seconds: float) -> list[Capacity]:
    config = Config(
        retries={"mode": "standard", "total_max_attempts": 5}, max_pool_connections=THREADS * 2
    )
    client = boto3.client("dynamodb", config=config)
    table = outputs.table_name
    pk = f"ACCOUNT#{uuid.uuid4()}"
    account_key = {"PK": _s(pk), "SK": _s("METADATA")}
    client.put_item(
        TableName=table,
        Item=account_key
        | {
            "id": _s(pk[8:]),
            "username": _s("capacity"),
            "max_number_of_services": {"N": "1000000000"},
            "number_of_services": {"N": "0"},
            "ec_hint": {"N": "0"},
            "created_at": _s("x"),
            "updated_at": _s("x"),
        },
    )
    increment = {
        "TableName": table,
        "Key": account_key,
        "UpdateExpression": "SET number_of_services = number_of_services + :delta",
        "ConditionExpression": (
            "number_of_services < max_number_of_services AND ec_hint < max_number_of_services"
        ),
        "ExpressionAttributeValues": {":delta": {"N": "1"}},
    }
    operations: dict[str, Callable[[], Any]] = {
        "GetItem": lambda: client.get_item(TableName=table, Key=account_key),
        "PutItem": lambda: client.put_item(
            TableName=table, Item=_service_item(pk), ConditionExpression="attribute_not_exists(PK)"
        ),
        "UpdateItem": lambda: client.update_item(**increment),
        "TransactWriteItems": lambda: client.transact_write_items(
            TransactItems=[
                {"Put": {"TableName": table, "Item": _service_item(pk)}},
                {"Update": {k: v for k, v in increment.items()}},
            ]
        ),
    }
    return [_run(name, call, seconds) for name, call in operations.items()]


def _run(name: str, call: Callable[[], Any], seconds: float) -> Capacity:
    latencies: list[list[float]] = [[] for _ in range(THREADS)]
    start = time.monotonic()
    deadline = start + seconds

    def worker(mine: list[float]) -> None:
        for _ in range(MAX_CALLS_PER_THREAD):
            began = time.monotonic()
            if began >= deadline:
                return
            call()
            mine.append((time.monotonic() - began) * 1000)

    threads = [
        threading.Thread(target=worker, args=(latencies[i],), daemon=True) for i in range(THREADS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 30)
    elapsed = time.monotonic() - start
    every = [v for per in latencies for v in per]
    return Capacity(name, len(every) / elapsed, percentile(every, 50), len(every))
