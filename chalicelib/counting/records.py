"""Which stream records matter, and what each counted item needs next."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from chalicelib.entities import SERVICE_PREFIX, account_id_of


class Action(enum.Enum):
    """What the processor must do to an item, decided from the item's state."""

    #: Live and not counted yet: flag it counted, count +1.
    COUNT = "count"
    #: Soft-deleted and counted: hard delete, count -1.
    REMOVE_COUNTED = "remove_counted"
    #: Soft-deleted and never counted: hard delete, count unchanged.
    REMOVE_UNCOUNTED = "remove_uncounted"

    @property
    def delta(self) -> int:
        return {"count": 1, "remove_counted": -1, "remove_uncounted": 0}[self.value]


def action_for(state: Mapping[str, Any] | None) -> Action | None:
    """The action an item in ``state`` (DynamoDB JSON or plain) needs, if any.

    ``None`` state means the item no longer exists: nothing left to do.
    """
    if not state:
        return None
    deleted = _flag(state.get("deleted"))
    counted = _flag(state.get("counter_processed"))
    if deleted:
        return Action.REMOVE_COUNTED if counted else Action.REMOVE_UNCOUNTED
    return None if counted else Action.COUNT


def _flag(value: Any) -> bool:
    if isinstance(value, Mapping):
        return bool(value.get("BOOL", False))
    return bool(value)


@dataclass(frozen=True)
class ItemChange:
    """A relevant change of one counted item, as the stream reported it."""

    account_id: str
    item_id: str
    sequence_number: str
    #: The item's state as of this record (its new image).
    image: Mapping[str, Any]


def relevant_change(record: Mapping[str, Any]) -> ItemChange | None:
    """A Service INSERT, or a Service whose ``deleted`` went false -> true; else ``None``."""
    body = record.get("dynamodb") or {}
    keys = body.get("Keys") or {}
    sk = str((keys.get("SK") or {}).get("S", ""))
    pk = str((keys.get("PK") or {}).get("S", ""))
    new = body.get("NewImage")
    if not sk.startswith(SERVICE_PREFIX) or not new:
        return None
    event = record.get("eventName")
    if event == "MODIFY":
        old = body.get("OldImage") or {}
        if _flag(old.get("deleted")) or not _flag(new.get("deleted")):
            return None
    elif event != "INSERT":
        return None
    return ItemChange(
        account_id=account_id_of(pk),
        item_id=sk.removeprefix(SERVICE_PREFIX),
        sequence_number=str(body.get("SequenceNumber", "")),
        image=new,
    )


def changes_by_account(records: Iterable[Mapping[str, Any]]) -> dict[str, list[ItemChange]]:
    """Relevant changes grouped by account, in stream order within each account."""
    grouped: dict[str, list[ItemChange]] = {}
    for record in records:
        change = relevant_change(record)
        if change is not None:
            grouped.setdefault(change.account_id, []).append(change)
    return grouped
