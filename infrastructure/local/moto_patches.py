"""Two patches of moto's costs that DynamoDB does not have.

Applied by the embedded backend (``make run``, the test suite and the bench) unless
``--stock-moto`` is given. Written for the bench first, where they were measured.

1. Item-level rollback for ``TransactWriteItems``.

moto 5.2.5 backs up a transaction by deep-copying every table it touches, stream
included, *before* applying it, success or not. The cost grows with the table: on
this machine a one-item transaction takes ~10 ms on an empty table, ~300 ms with
1,000 items and ~1.4 s with 4,000, while the serialised backend does nothing else.
DynamoDB's cost per transaction does not depend on the table's size, so a benchmark
on stock moto measures that copy, not the strategies.

The patch keeps moto's transaction logic and replaces the backup: it snapshots only
the items the transaction names and the length of each touched table's stream, and
on failure restores those items and drops the stream records the failed
transaction appended. Semantics are unchanged (all or nothing); as a side effect
the stream keeps its shard object, so a failed transaction no longer orphans
shard iterators or leaves a phantom record.

2. A plain JSON encoder for DynamoDB Streams' ``GetRecords``. moto 5.2 renders every
response through its botocore-model serializer, about 3 ms per stream record on this
machine while the serialised backend does nothing else: reading a busy table's
stream cost the backend as much as the writes that filled it. On AWS, Lambda's
stream reads do not touch the table's throughput at all. The patch returns the same
JSON document (``ApproximateCreationDateTime`` as epoch seconds, as the service
sends it), encoded with :func:`json.dumps`.

Apply both in the backend process, before it serves: :func:`install`.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import types
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from moto.dynamodb import models as dynamodb_models
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.dynamodb.models.table import Table
from moto.dynamodbstreams.responses import DynamoDBStreamsHandler

_INSTALLED_FLAG = "_bench_item_level_rollback"


def _no_table_copy(obj: Any, memo: dict[int, Any] | None = None) -> Any:
    # moto's own backup: hand the table back as is (the wrapper snapshots items).
    if isinstance(obj, Table):
        return obj
    return copy.deepcopy(obj, memo)


def _key_of(table: Table, op_type: str, op: dict[str, Any]) -> tuple[DynamoType, DynamoType | None]:
    attrs = op["Item"] if op_type == "Put" else op["Key"]
    hash_key = DynamoType(attrs[table.hash_key_attr])
    range_attr = table.range_key_attr
    return hash_key, DynamoType(attrs[range_attr]) if range_attr else None


def _snapshot(
    backend: DynamoDBBackend, transact_items: list[dict[str, Any]]
) -> list[tuple[Table, Any, Any]]:
    """``(table, key, deep copy of the item or None)`` per named item, plus stream lengths."""
    saved: list[tuple[Table, Any, Any]] = []
    for entry in transact_items:
        try:
            op_type, op = next(iter(entry.items()))
            table = backend.tables[op["TableName"]]
            hash_key, range_key = _key_of(table, op_type, op)
        except (KeyError, StopIteration, TypeError):
            continue  # moto rejects the request itself; nothing is applied
        current = (
            table.get_item(hash_key, range_key) if (range_key or not table.has_range_key) else None
        )
        saved.append((table, (hash_key, range_key), copy.deepcopy(current)))
    return saved


def _restore(
    saved: list[tuple[Table, Any, Any]], stream_lengths: dict[int, tuple[Table, int]]
) -> None:
    for table, (hash_key, range_key), item in reversed(saved):
        if range_key is not None:
            partition = table.items[hash_key]
            if item is None:
                partition.pop(range_key, None)
                if not partition:
                    table.items.pop(hash_key, None)
            else:
                partition[range_key] = item
        elif item is None:
            table.items.pop(hash_key, None)
        else:
            table.items[hash_key] = item
    for table, length in stream_lengths.values():
        if table.stream_shard is not None:
            del table.stream_shard.items[length:]


def _with_item_level_rollback(
    original: Callable[[DynamoDBBackend, list[dict[str, Any]]], None],
) -> Callable[[DynamoDBBackend, list[dict[str, Any]]], None]:
    @functools.wraps(original)
    def transact_write_items(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
        saved = _snapshot(self, transact_items)
        streams = {
            id(table): (table, len(table.stream_shard.items))
            for table, _, _ in saved
            if table.stream_shard is not None
        }
        try:
            original(self, transact_items)
        except Exception:
            _restore(saved, streams)
            raise

    return transact_write_items


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return round(moment.timestamp(), 3)  # milliseconds, as moto's serializer renders it
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode("ascii")
    raise TypeError(f"cannot encode {type(value).__name__}")


def _get_records_as_json(self: DynamoDBStreamsHandler) -> str:
    limit = self._get_param("Limit") or 1000
    result = self.backend.get_records(self._get_param("ShardIterator"), limit)
    return json.dumps(result, default=_json_default)


def install() -> bool:
    """Patch moto in this process (idempotent). ``True`` if it was installed now."""
    if getattr(DynamoDBBackend, _INSTALLED_FLAG, False):
        return False
    DynamoDBStreamsHandler.get_records = _get_records_as_json  # type: ignore[method-assign,assignment]
    shim = types.SimpleNamespace(deepcopy=_no_table_copy, copy=copy.copy)
    dynamodb_models.copy = shim  # type: ignore[attr-defined,assignment]
    DynamoDBBackend.transact_write_items = _with_item_level_rollback(  # type: ignore[method-assign,assignment]
        DynamoDBBackend.transact_write_items
    )
    setattr(DynamoDBBackend, _INSTALLED_FLAG, True)
    return True
