"""DESIGN section 5 invariants as checks on the table, read consistently.

Reads go through a client of their own (no fault hooks). One account's partition
(Account, Count and Service items) is read with a single strongly consistent
``Query``: the embedded backend serialises requests, so one page is an atomic
snapshot of the partition (on DynamoDB a query is not; these checks are for the
local backend). A partition of more than one page is reported as not a snapshot.

:class:`I1Observer` checks I1 *before every write attempt* on an account, i.e. after
every earlier write: together with a check after each step it sees every state the
account passes through in a sequential test.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from pydantic import ValidationError

from chalicelib.entities import (
    ACCOUNT_SK,
    COUNT_PREFIX,
    SERVICE_PREFIX,
    Account,
    Count,
    Service,
    account_id_of,
    account_pk,
)
from chalicelib.repositories.dynamo import from_item

if TYPE_CHECKING:
    from botocore.client import BaseClient
    from mypy_boto3_dynamodb import DynamoDBClient

_MAX_PAGES: Final = 20
_WRITES: Final = frozenset({"PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems"})
#: Attributes every item of a kind carries from its creation (a ``Put``); an item made by
#: an ``Update`` would carry only its key and the updated attributes (I6).
_BORN_WITH: Final = {
    "account": frozenset({"id", "username", "max_number_of_services", "created_at", "listing"}),
    "count": frozenset({"account_id", "count_type", "count_value", "version", "created_at"}),
    "service": frozenset(
        {"id", "account_id", "name", "created_at", "deleted", "counter_processed"}
    ),
}


@dataclass(frozen=True)
class Partition:
    """One account's items at one moment."""

    account_id: str
    account: dict[str, Any] | None
    count: dict[str, Any] | None
    services: list[dict[str, Any]] = field(default_factory=list)
    #: Whether one request returned the whole partition (an atomic snapshot).
    snapshot: bool = True

    @property
    def live_ids(self) -> set[str]:
        return {str(s["id"]) for s in self.services if not s.get("deleted")}

    @property
    def live_in_order(self) -> list[str]:
        """Live service ids, oldest first (a stable order across runs, unlike ids)."""
        live = [s for s in self.services if not s.get("deleted")]
        return [str(s["id"]) for s in sorted(live, key=lambda s: (s["created_at"], s["id"]))]

    @property
    def live(self) -> int:
        return len(self.live_ids)

    @property
    def be(self) -> int:
        return int((self.account or {}).get("number_of_services", 0))

    @property
    def debt(self) -> int:
        """Decrements owed by deletes that found BE at 0 (the next increment pays one)."""
        return int((self.account or {}).get("be_debt", 0))

    @property
    def limit(self) -> int:
        return int((self.account or {}).get("max_number_of_services", 0))

    @property
    def ec_hint(self) -> int:
        return int((self.account or {}).get("ec_hint", 0))

    @property
    def ec(self) -> int:
        return int((self.count or {}).get("count_value", 0))

    @property
    def marked_for_heal(self) -> bool:
        return "heal_since" in (self.account or {})

    @property
    def hint_behind(self) -> bool:
        """The processor committed a count it never published on the Account."""
        return int((self.account or {}).get("ec_version", 0)) < int(
            (self.count or {}).get("version", 0)
        )

    @property
    def pending(self) -> int:
        """Services with stream work left (counted on put, uncounted on soft delete)."""
        return sum(1 for s in self.services if "pending_since" in s)

    @property
    def awaiting_hard_delete(self) -> int:
        return sum(1 for s in self.services if s.get("deleted"))

    def describe(self) -> str:
        return (
            f"account {self.account_id}: BE={self.be} live={self.live} EC={self.ec} "
            f"debt={self.debt} hint={self.ec_hint} limit={self.limit} pending={self.pending} "
            f"soft-deleted={self.awaiting_hard_delete} marked={self.marked_for_heal} "
            f"hint-behind={self.hint_behind}"
        )


def read_partition(client: DynamoDBClient, table: str, account_id: str) -> Partition:
    """Every item of the account, with one consistent query per page."""
    items: list[dict[str, Any]] = []
    start: dict[str, Any] | None = None
    pages = 0
    for pages in range(1, _MAX_PAGES + 1):  # noqa: B007 (the count is used below)
        query: dict[str, Any] = {
            "TableName": table,
            "KeyConditionExpression": "PK = :pk",
            "ExpressionAttributeValues": {":pk": {"S": account_pk(account_id)}},
            "ConsistentRead": True,
        }
        if start:
            query["ExclusiveStartKey"] = start
        page = client.query(**query)
        items += [from_item(i) for i in page.get("Items", [])]
        start = page.get("LastEvaluatedKey")
        if not start:
            break
    account = next((i for i in items if i["SK"] == ACCOUNT_SK), None)
    count = next((i for i in items if str(i["SK"]).startswith(COUNT_PREFIX)), None)
    services = [i for i in items if str(i["SK"]).startswith(SERVICE_PREFIX)]
    return Partition(account_id, account, count, services, snapshot=pages == 1)


# -- the invariants ----------------------------------------------------------------------


def i1_violations(partition: Partition) -> list[str]:
    """I1: ``0 <= number_of_services <= live services``."""
    if partition.account is None:
        return []
    if not 0 <= partition.be <= partition.live:
        return [f"I1 broken: {partition.describe()}"]
    return []


def i2_violations(partition: Partition) -> list[str]:
    """I2, once processing has drained: ``count_value == live``, nothing left pending."""
    if partition.account is None:
        return []
    found = []
    if partition.ec != partition.live:
        found.append(f"I2 broken: {partition.describe()}")
    if partition.pending or partition.awaiting_hard_delete:
        found.append(f"I2: processing did not drain: {partition.describe()}")
    return found


def i5_violations(partition: Partition) -> list[str]:
    """I5, after the healer ran on a quiet account: ``number_of_services == count_value``."""
    if partition.account is not None and partition.be != partition.ec:
        return [f"I5 broken: {partition.describe()}"]
    return []


def scan_table(client: DynamoDBClient, table: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    start: dict[str, Any] | None = None
    for _ in range(_MAX_PAGES * 10):
        request: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
        if start:
            request["ExclusiveStartKey"] = start
        page = client.scan(**request)
        items += [from_item(i) for i in page.get("Items", [])]
        start = page.get("LastEvaluatedKey")
        if not start:
            return items
    raise AssertionError(f"{table}: scan did not end")


def i6_violations(items: Iterable[Mapping[str, Any]]) -> list[str]:
    """I6: no item was created by an update (no phantom), and none outlived its account.

    An Account, Count or Service item is only ever created by a ``Put`` that writes all
    of its attributes, so an item missing one of them was made by an ``Update``. A
    Count or Service item whose Account item is gone is an orphan.
    """
    found: list[str] = []
    accounts = {str(i["PK"]) for i in items if i.get("SK") == ACCOUNT_SK}
    for item in items:
        pk, sk = str(item.get("PK")), str(item.get("SK"))
        if sk == ACCOUNT_SK:
            kind, model = "account", Account
        elif sk.startswith(COUNT_PREFIX):
            kind, model = "count", Count  # type: ignore[assignment]
        elif sk.startswith(SERVICE_PREFIX):
            kind, model = "service", Service  # type: ignore[assignment]
        else:
            found.append(f"I6: unknown item {pk} {sk}")
            continue
        missing = _BORN_WITH[kind] - set(item)
        if missing:
            found.append(f"I6: phantom {kind} {pk} {sk} lacks {sorted(missing)}: {dict(item)}")
            continue
        try:
            model.model_validate(dict(item))
        except ValidationError as error:
            found.append(f"I6: malformed {kind} {pk} {sk}: {error}")
        if kind != "account" and pk not in accounts:
            found.append(f"I6: orphan {kind} {pk} {sk} (no account item)")
    return found


# -- I1 at every moment ---------------------------------------------------------------------


def accounts_written(params: Mapping[str, Any]) -> set[str]:
    """Account ids whose partitions a write request touches."""
    keys: list[Mapping[str, Any]] = []
    for name in ("Key", "Item"):
        if name in params:
            keys.append(params[name])
    for action in params.get("TransactItems", []):
        for body in action.values():
            keys.append(body.get("Key") or body.get("Item") or {})
    return {account_id_of(str(k["PK"]["S"])) for k in keys if "PK" in k and "S" in k["PK"]}


class I1Observer:
    """Checks I1 on an account before each write attempt to it (thread-safe).

    Parameters
    ----------
    reader:
        A client with no fault hooks, for the consistent reads.
    table:
        The table the observed clients write to.
    """

    def __init__(self, reader: DynamoDBClient, table: str) -> None:
        self._reader = reader
        self._table = table
        self._lock = threading.Lock()
        self.checks = 0
        self.violations: list[str] = []
        self.enabled = True

    def attach(self, client: BaseClient, *, label: str = "") -> BaseClient:
        uid = f"i1-observer-{id(self)}"
        client.meta.events.register_first(
            "provide-client-params.dynamodb", self._remember, unique_id=f"{uid}-params"
        )
        client.meta.events.register_first(
            "before-send.dynamodb", self._before_send, unique_id=f"{uid}-send"
        )
        return client

    @staticmethod
    def _remember(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["i1_observer_params"] = params

    def _before_send(self, request: Any, event_name: str, **_: Any) -> None:
        if not self.enabled or event_name.rsplit(".", 1)[-1] not in _WRITES:
            return
        context = getattr(request, "context", None) or {}
        for account_id in accounts_written(context.get("i1_observer_params", {})):
            self.check(account_id)

    def check(self, account_id: str) -> list[str]:
        found = i1_violations(read_partition(self._reader, self._table, account_id))
        with self._lock:
            self.checks += 1
            self.violations += found
        return found


# -- diagnostics ------------------------------------------------------------------------------


def stream_history(streams: Any, stream_arn: str, account_id: str, limit: int = 60) -> list[str]:
    """The stream's records of one account's services, oldest first (for failure reports)."""
    pk = account_pk(account_id)
    lines: list[str] = []
    shards = streams.describe_stream(StreamArn=stream_arn)["StreamDescription"].get("Shards", [])
    for shard in shards:
        iterator = streams.get_shard_iterator(
            StreamArn=stream_arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        ).get("ShardIterator")
        for _ in range(_MAX_PAGES * 50):
            if not iterator:
                break
            page = streams.get_records(ShardIterator=iterator, Limit=1000)
            for record in page.get("Records", []):
                body = record["dynamodb"]
                if body["Keys"]["PK"]["S"] != pk:
                    continue
                new, old = body.get("NewImage", {}), body.get("OldImage", {})

                def flag(image: Mapping[str, Any], name: str) -> object:
                    return image.get(name, {}).get("BOOL")

                lines.append(
                    f"{shard['ShardId'][-8:]} {body['SequenceNumber']} {record['eventName']} "
                    f"{body['Keys']['SK']['S'][:20]} "
                    f"deleted {flag(old, 'deleted')}->{flag(new, 'deleted')} "
                    f"counted {flag(old, 'counter_processed')}->{flag(new, 'counter_processed')}"
                )
            if not page.get("Records"):
                break
            iterator = page.get("NextShardIterator")
    return lines[-limit:]
