"""Count the DynamoDB capacity one create and one delete consume (the cost note's numbers).

Runs the real code against the embedded backend with botocore hooks on the app's
clients. For every call it records the items it touches, before and after (read with a
separate, unhooked client), and prices it with DynamoDB's published rules:

* reads: 4 KB units; 0.5 RCU eventually consistent, 1 strongly consistent; a read
  that finds nothing still costs the minimum; a Query is priced on the size of what
  it returns, at least one unit;
* writes: 1 KB units of the larger of the old and new item, 1 WCU minimum, also when
  the condition fails; twice that inside ``TransactWriteItems``;
* index writes: per index whose entry appears, disappears (1 write each) or moves to
  a new key (2); index entries are KEYS_ONLY here, so nothing else writes them.

moto reports a fixed ``ConsumedCapacity``, so the units are computed, not read back;
stream reads by Lambda's poller are free and are not counted. Run::

    .venv/bin/python -m infrastructure.capacity
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

import boto3

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodbstreams import DynamoDBStreamsClient

    from chalicelib.bootstrap import Container

WRITE_UNIT_BYTES: Final = 1024
READ_UNIT_BYTES: Final = 4096
#: Operations that write; everything else the app calls reads.
_WRITES: Final = frozenset(
    {"PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem"}
)
_TRANSACT_KINDS: Final = ("Put", "Update", "Delete", "ConditionCheck")
_MAX_POLLS: Final = 1000
#: Records per amortised batch. moto slows down sharply on transactions near the
#: 100-action limit; the cost per record for any batch size follows from the table.
DEFAULT_BATCH: Final = 10


def attribute_size(value: Mapping[str, Any]) -> int:
    """Bytes DynamoDB counts for one attribute value (names are counted by the caller)."""
    ((kind, raw),) = value.items()
    if kind == "S":
        return len(str(raw).encode())
    if kind == "N":
        digits = Decimal(str(raw)).normalize().as_tuple().digits
        return math.ceil(len(digits) / 2) + 1
    if kind == "B":
        return len(raw)
    if kind in {"BOOL", "NULL"}:
        return 1
    if kind == "L":
        return 3 + sum(1 + attribute_size(v) for v in raw)
    if kind == "M":
        return 3 + sum(len(k.encode()) + 1 + attribute_size(v) for k, v in raw.items())
    if kind in {"SS", "NS", "BS"}:
        return sum(attribute_size({kind[0]: v}) for v in raw)
    raise ValueError(f"unknown attribute type {kind}")


def item_size(item: Mapping[str, Any] | None) -> int:
    if not item:
        return 0
    return sum(len(name.encode()) + attribute_size(value) for name, value in item.items())


def write_units(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> int:
    return max(1, math.ceil(max(item_size(before), item_size(after)) / WRITE_UNIT_BYTES))


def read_units(size: int, *, consistent: bool) -> float:
    units = max(1, math.ceil(size / READ_UNIT_BYTES))
    return float(units) if consistent else units / 2


@dataclass(frozen=True)
class Index:
    name: str
    keys: tuple[str, ...]

    def entry(self, item: Mapping[str, Any] | None) -> tuple[Any, ...] | None:
        """The item's key in this (sparse) index, or None if it is not in it."""
        if not item or any(k not in item for k in self.keys):
            return None
        return tuple(str(item[k]) for k in self.keys)

    def writes(self, before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> int:
        old, new = self.entry(before), self.entry(after)
        if old == new:
            return 0
        return 2 if old is not None and new is not None else 1


def table_indexes(client: DynamoDBClient, table: str) -> list[Index]:
    description = client.describe_table(TableName=table)["Table"]
    indexes = [
        *description.get("LocalSecondaryIndexes", []),
        *description.get("GlobalSecondaryIndexes", []),
    ]
    return [
        Index(i["IndexName"], tuple(k["AttributeName"] for k in i["KeySchema"])) for i in indexes
    ]


@dataclass
class Usage:
    """What a flow consumed (averages per record after :meth:`per`, hence floats)."""

    calls: dict[str, float] = field(default_factory=dict)
    rcu: float = 0.0
    wcu: float = 0.0  # table
    index_wcu: float = 0.0

    @property
    def total_wcu(self) -> float:
        return self.wcu + self.index_wcu

    def add(self, other: Usage) -> None:
        for operation, n in other.calls.items():
            self.calls[operation] = self.calls.get(operation, 0) + n
        self.rcu += other.rcu
        self.wcu += other.wcu
        self.index_wcu += other.index_wcu

    def per(self, n: int) -> Usage:
        return Usage(
            {k: v / n for k, v in self.calls.items()},
            self.rcu / n,
            self.wcu / n,
            self.index_wcu / n,
        )


class CapacityMeter:
    """Prices every call of the hooked clients (see the module docstring)."""

    def __init__(self, reader: DynamoDBClient, table: str) -> None:
        self._reader = reader
        self._table = table
        self._indexes = table_indexes(reader, table)
        self._local = threading.local()
        self._lock = threading.Lock()
        self.usage = Usage()

    def attach(self, client: DynamoDBClient) -> None:
        events = client.meta.events
        events.register("before-call.dynamodb", self._before, unique_id=f"meter-{id(self)}")
        events.register("after-call.dynamodb", self._after, unique_id=f"meter-{id(self)}-after")

    @contextmanager
    def measure(self) -> Iterator[Usage]:
        """The usage of the calls made inside the block."""
        with self._lock:
            self.usage = Usage()
        result = Usage()
        try:
            yield result
        finally:
            with self._lock:
                result.add(self.usage)

    # -- hooks ---------------------------------------------------------------------

    def _keys(self, operation: str, params: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """(kind, key) of each item a write touches."""
        if operation == "TransactWriteItems":
            out = []
            for entry in params["TransactItems"]:
                for kind in _TRANSACT_KINDS:
                    if kind in entry:
                        body = entry[kind]
                        out.append((kind, body.get("Key") or self._key_of(body["Item"])))
            return out
        if operation == "PutItem":
            return [("Put", self._key_of(params["Item"]))]
        return [(operation, dict(params["Key"]))]

    @staticmethod
    def _key_of(item: Mapping[str, Any]) -> dict[str, Any]:
        return {"PK": item["PK"], "SK": item["SK"]}

    def _read(self, key: Mapping[str, Any]) -> dict[str, Any] | None:
        response = self._reader.get_item(TableName=self._table, Key=key, ConsistentRead=True)
        item: dict[str, Any] | None = response.get("Item")
        return item

    def _before(self, model: Any, params: Mapping[str, Any], **_: Any) -> None:
        operation = model.name
        body = _api_params(params)
        if operation in _WRITES:
            touched = self._keys(operation, body)
            self._local.pending = (operation, touched, [self._read(k) for _, k in touched])
        else:
            self._local.pending = (operation, [], [])
        self._local.params = body

    def _after(self, model: Any, parsed: Mapping[str, Any], **_: Any) -> None:
        operation, touched, before = self._local.pending
        params = self._local.params
        usage = Usage({operation: 1})
        if operation in _WRITES:
            factor = 2 if operation == "TransactWriteItems" else 1
            for (_, key), old in zip(touched, before, strict=True):
                new = self._read(key)
                usage.wcu += factor * write_units(old, new)
                usage.index_wcu += sum(index.writes(old, new) for index in self._indexes)
        else:
            usage.rcu += self._read_cost(operation, params, parsed)
        with self._lock:
            self.usage.add(usage)

    def _read_cost(
        self, operation: str, params: Mapping[str, Any], parsed: Mapping[str, Any]
    ) -> float:
        consistent = bool(params.get("ConsistentRead"))
        if operation == "GetItem":
            return read_units(item_size(parsed.get("Item")), consistent=consistent)
        if operation == "Query":
            size = sum(item_size(i) for i in parsed.get("Items", []))
            return read_units(size, consistent=consistent)
        if operation == "BatchGetItem":
            # Consistency is chosen per table inside RequestItems.
            requested = params.get("RequestItems", {})
            return sum(
                read_units(
                    item_size(i), consistent=bool(requested.get(table, {}).get("ConsistentRead"))
                )
                for table, items in parsed.get("Responses", {}).items()
                for i in items
            )
        raise ValueError(f"no read price for {operation}")


def _number(value: float) -> str:
    return f"{round(value, 2):g}"


def _api_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The call's API parameters from botocore's serialised request (JSON body)."""
    import json

    body = params.get("body", b"")
    return dict(json.loads(body or b"{}"))


# -- the flows ---------------------------------------------------------------------------


@dataclass
class Report:
    """Usage per create and per delete; the processor's cost alone and amortised."""

    create_api: Usage
    create_processor: Usage
    create_processor_batched: Usage
    delete_api: Usage
    delete_processor: Usage
    delete_processor_batched: Usage
    batch: int

    def rows(self) -> list[tuple[str, Usage]]:
        return [
            ("create: API request", self.create_api),
            ("create: stream processor, batch of 1", self.create_processor),
            (
                f"create: stream processor, per record in a batch of {self.batch}",
                self.create_processor_batched,
            ),
            ("delete: API request", self.delete_api),
            ("delete: stream processor, batch of 1", self.delete_processor),
            (
                f"delete: stream processor, per record in a batch of {self.batch}",
                self.delete_processor_batched,
            ),
        ]

    def markdown(self) -> str:
        lines = [
            "| flow | calls | RCU | WCU table | WCU indexes | WCU total |",
            "|---|---|---|---|---|---|",
        ]
        for name, usage in self.rows():
            calls = ", ".join(f"{op} {_number(n)}" for op, n in sorted(usage.calls.items()))
            lines.append(
                f"| {name} | {calls} | {_number(usage.rcu)} | {_number(usage.wcu)} "
                f"| {_number(usage.index_wcu)} | {_number(usage.total_wcu)} |"
            )
        return "\n".join(lines) + "\n"


def measure(
    container: Container,
    streams: DynamoDBStreamsClient,
    reader: DynamoDBClient,
    *,
    stream_handler: Callable[[dict[str, Any], Any], object],
    batch: int = DEFAULT_BATCH,
) -> Report:
    """Create and delete services through the app's services and stream handler.

    ``container`` must be the process's container (``use_container``), so that
    ``stream_handler`` (the app's decorated function) uses the same hooked clients.
    """
    from infrastructure.local.event_sources import StreamPoller, StreamSettings

    settings = container.settings
    meter = CapacityMeter(reader, settings.table_name)
    for client in (container.dynamodb, container.dynamodb_no_retry):
        meter.attach(client)
    poller = StreamPoller(
        stream_handler,
        streams,
        settings.stream_arn,
        settings=dataclasses.replace(
            StreamSettings.from_mapping(), batching_window_seconds=0, batch_size=batch
        ),
    )

    def drain() -> None:
        for _ in range(_MAX_POLLS):
            if poller.poll_once().idle:
                return
        raise RuntimeError("stream not drained")

    accounts = container.account_service
    services = container.service_service
    drain()  # start from a quiet stream
    account = accounts.create(f"capacity-{uuid.uuid4().hex[:8]}", batch + 10)
    # Warm the account: the first write after a heal marks it for the healer (one
    # index write); steady traffic does not pay that again.
    warm = services.create(account.id, "warm-up")
    drain()

    with meter.measure() as create_api:
        single = services.create(account.id, "single")
    with meter.measure() as create_processor:
        drain()
    with meter.measure() as delete_api:
        services.delete(account.id, single.id)
    with meter.measure() as delete_processor:
        drain()

    created = [services.create(account.id, f"bulk-{i}") for i in range(batch)]
    with meter.measure() as created_batch:
        drain()
    for service in created:
        services.delete(account.id, service.id)
    with meter.measure() as deleted_batch:
        drain()
    services.delete(account.id, warm.id)
    drain()
    return Report(
        create_api=create_api,
        create_processor=create_processor,
        create_processor_batched=created_batch.per(batch),
        delete_api=delete_api,
        delete_processor=delete_processor,
        delete_processor_batched=deleted_batch.per(batch),
        batch=batch,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infrastructure.capacity",
        description="Capacity units per create and per delete, on the embedded backend.",
    )
    parser.add_argument(
        "--batch", type=int, default=DEFAULT_BATCH, help="records per amortised batch"
    )
    args = parser.parse_args(argv)

    from infrastructure.local.backend import EmbeddedBackend, aws_environment
    from infrastructure.local.provision import cloudformation_client, provision

    with EmbeddedBackend(port=0) as backend:
        os.environ.update(aws_environment(backend.url))
        outputs = provision(
            cloudformation_client(backend.url),
            stack_name="distributed-counter-capacity",
            parameters={"Stage": "local", "TableName": "distributed-counter-capacity"},
        )
        os.environ.update(outputs.app_environment())
        # Imported only now: the app reads its settings from the environment.
        import app
        from chalicelib.bootstrap import Container, use_container
        from chalicelib.settings import Settings

        container = Container(Settings())
        use_container(container)
        report = measure(
            container,
            boto3.client("dynamodbstreams"),
            boto3.client("dynamodb"),
            stream_handler=app.handle_stream_records,
            batch=args.batch,
        )
    sys.stdout.write(report.markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
