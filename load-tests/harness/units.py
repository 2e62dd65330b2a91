"""DynamoDB capacity units from a call's parameters and response (on-demand pricing rules).

* Writes: 1 WCU per 1 KB of item size (rounded up); 2 per item in a transaction.
* Reads: 1 RCU per 4 KB strongly consistent, half that eventually consistent;
  a query is charged for the summed size of the items it read (before filtering).
* A failed conditional write is charged like a successful one; so is a cancelled
  transaction (an assumption: DynamoDB charges the prepare phase it ran).

Item sizes follow DynamoDB's rules: attribute name bytes + value bytes. Updates and
deletes carry no item, so they are sized at 1 KB or less: every item of this table is
far smaller (the bench checks the largest item after each run).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

WRITE_UNIT_BYTES: Final = 1024
READ_UNIT_BYTES: Final = 4096
#: A KEYS_ONLY index entry of this table (PK, SK and the index key): for COUNT queries,
#: which return no items to measure.
INDEX_ENTRY_BYTES: Final = 120


def value_size(value: Mapping[str, Any]) -> int:
    """Bytes of one DynamoDB JSON attribute value."""
    ((kind, inner),) = value.items()
    if kind == "S":
        return len(str(inner).encode())
    if kind == "N":
        digits = len(str(inner).lstrip("-").replace(".", "").lstrip("0")) or 1
        return math.ceil(digits / 2) + 1
    if kind == "B":
        return len(inner)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind in ("SS", "NS", "BS"):
        return sum(value_size({kind[0]: member}) for member in inner)
    if kind == "L":
        return 3 + sum(1 + value_size(member) for member in inner)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + value_size(v) for k, v in inner.items())
    return 0


def item_size(item: Mapping[str, Any]) -> int:
    """Bytes of an item in DynamoDB JSON (names + values)."""
    return sum(len(name.encode()) + value_size(value) for name, value in item.items())


def write_units(size: int | None) -> int:
    return max(1, math.ceil((size or 0) / WRITE_UNIT_BYTES))


def read_units(size: int, consistent: bool) -> float:
    units = max(1, math.ceil(size / READ_UNIT_BYTES))
    return float(units) if consistent else units / 2


@dataclass(frozen=True)
class Units:
    wcu: float = 0.0
    rcu: float = 0.0


def _write_item_units(action: str, body: Mapping[str, Any]) -> int:
    return write_units(item_size(body["Item"]) if action == "Put" else None)


def units_of(operation: str, params: Mapping[str, Any], response: Mapping[str, Any]) -> Units:
    """Capacity one call consumed (``response`` may be an error body)."""
    if operation == "PutItem":
        return Units(wcu=write_units(item_size(params.get("Item", {}))))
    if operation in ("UpdateItem", "DeleteItem"):
        return Units(wcu=write_units(None))
    if operation == "TransactWriteItems":
        total = 0
        for entry in params.get("TransactItems", []):
            ((action, body),) = entry.items()
            total += 2 * _write_item_units(action, body)
        return Units(wcu=total)
    if operation == "BatchWriteItem":
        total = 0
        for requests in params.get("RequestItems", {}).values():
            for request in requests:
                put = request.get("PutRequest")
                total += write_units(item_size(put["Item"]) if put else None)
        return Units(wcu=total)
    consistent = bool(params.get("ConsistentRead", False))
    if operation == "GetItem":
        return Units(rcu=read_units(item_size(response.get("Item", {})), consistent))
    if operation == "Query":
        items = response.get("Items", [])
        scanned = int(response.get("ScannedCount", len(items)))
        if items:
            size = sum(item_size(i) for i in items) * max(1.0, scanned / len(items))
        else:
            size = scanned * INDEX_ENTRY_BYTES
        return Units(rcu=read_units(math.ceil(size), consistent))
    if operation == "BatchGetItem":
        rcu = 0.0
        for items in response.get("Responses", {}).values():
            rcu += sum(read_units(item_size(i), False) for i in items)
        return Units(rcu=rcu)
    if operation == "TransactGetItems":
        rcu = sum(
            2 * read_units(item_size(r.get("Item", {})), True)
            for r in response.get("Responses", [])
        )
        return Units(rcu=rcu)
    return Units()
