"""In-memory fakes of the repositories, for unit tests of the services.

They subclass the real repositories (so they type-check where those are expected)
and keep every item in one :class:`FakeTable`, keyed like the real table, so the
three fakes see each other's writes as the real repositories do. Behaviour matches
the real ones method by method; ``tests/integration/test_repositories.py`` holds
both to the same contract.

Unit tests can also *script* a method's next results (``repo.script.push(...)``)
to reach branches the real backend only reaches under races or faults, and read
``repo.calls`` to see what was called.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from chalicelib.entities import (
    ACCOUNT_LISTING,
    ACCOUNT_SK,
    COUNT_PREFIX,
    SERVICE_PREFIX,
    SERVICES_COUNT_TYPE,
    Account,
    Count,
    Service,
    account_pk,
    count_sk,
    service_sk,
    timestamp,
    utc_now,
)
from chalicelib.errors import AccountNotEmptyError
from chalicelib.repositories.accounts import AccountRepository, DecrementOutcome, IncrementOutcome
from chalicelib.repositories.counts import CountRepository
from chalicelib.repositories.dynamo import decode_cursor, encode_cursor
from chalicelib.repositories.services import ServiceRepository, SoftDeleteOutcome

Key = tuple[str, str]
Item = dict[str, Any]

_ACCOUNT_PAGE_KEYS = frozenset({"PK", "SK", "listing", "created_at"})
_SERVICE_PAGE_KEYS = frozenset({"PK", "SK"})


def _now() -> str:
    return timestamp(utc_now())


@dataclass
class FakeTable:
    """The single table: items by ``(PK, SK)``, attribute values as plain Python."""

    items: dict[Key, Item] = field(default_factory=dict)

    def get(self, pk: str, sk: str) -> Item | None:
        item = self.items.get((pk, sk))
        return dict(item) if item is not None else None

    def put(self, item: Item) -> None:
        self.items[(item["PK"], item["SK"])] = dict(item)

    def delete(self, pk: str, sk: str) -> None:
        self.items.pop((pk, sk), None)

    def partition(self, pk: str, prefix: str) -> list[Item]:
        return [
            dict(v) for (p, s), v in sorted(self.items.items()) if p == pk and s.startswith(prefix)
        ]

    # -- what the stream processor would do (test arrangement) -------------------

    def mark_counted(self, account_id: str, service_id: str) -> None:
        """The processor counted a live service: flag it and add it to the Count item."""
        key = (account_pk(account_id), service_sk(service_id))
        service = self.items[key]
        service["counter_processed"] = True
        service.pop("pending_since", None)
        self._add_to_count(account_id, 1)

    def hard_delete(self, account_id: str, service_id: str) -> None:
        """The processor removed a soft-deleted service (and uncounted it if counted)."""
        key = (account_pk(account_id), service_sk(service_id))
        service = self.items.pop(key)
        if service.get("counter_processed"):
            self._add_to_count(account_id, -1)

    def _add_to_count(self, account_id: str, delta: int) -> None:
        count = self.items.get((account_pk(account_id), count_sk()))
        if count is not None:
            count["count_value"] = int(count.get("count_value", 0)) + delta
            count["version"] = int(count.get("version", 0)) + 1


@dataclass
class Scripted:
    """One scripted result: returned instead of running the method.

    ``before`` runs first (e.g. a concurrent writer's effect); ``apply`` also runs
    the real fake behaviour (an ambiguous failure that was applied after all). With
    ``result=None`` and ``apply=True`` the real result is returned: only ``before``
    is injected (see :meth:`Script.interleave`).
    """

    result: Any
    before: Callable[[], object] | None = None
    apply: bool = False


class Script:
    """Per-method queues of scripted results, consumed in order.

    Every method runs a scripted ``before``; only ``increment``, ``decrement`` and
    ``soft_delete`` (the outcomes that races and faults change) honour a ``result``.
    """

    def __init__(self) -> None:
        self._queues: dict[str, deque[Scripted]] = {}

    def push(
        self,
        method: str,
        result: Any,
        *,
        before: Callable[[], object] | None = None,
        apply: bool = False,
    ) -> None:
        self._queues.setdefault(method, deque()).append(Scripted(result, before, apply))

    def interleave(self, method: str, before: Callable[[], object]) -> None:
        """Run ``before`` (a concurrent writer) just ahead of the next ``method`` call."""
        self.push(method, None, before=before, apply=True)

    def pop(self, method: str) -> Scripted | None:
        queue = self._queues.get(method)
        return queue.popleft() if queue else None


class _Recorder:
    """Call log and scripted results, shared by the fakes."""

    script: Script
    calls: list[tuple[str, tuple[Any, ...]]]

    def _init_recorder(self) -> None:
        self.script = Script()
        self.calls = []

    def _scripted(self, method: str, *args: Any) -> Scripted | None:
        self.calls.append((method, args))
        scripted = self.script.pop(method)
        if scripted is not None and scripted.before is not None:
            scripted.before()
        return scripted

    def called(self, method: str) -> int:
        return sum(1 for name, _ in self.calls if name == method)


def _transaction_canceled() -> ClientError:
    return ClientError(
        {"Error": {"Code": "TransactionCanceledException", "Message": "condition failed"}},
        "TransactWriteItems",
    )


class FakeAccountRepository(_Recorder, AccountRepository):
    """Account items in a :class:`FakeTable`."""

    def __init__(self, table: FakeTable) -> None:  # no super(): no clients to hold
        self.table = table
        self._init_recorder()

    def _item(self, account_id: str) -> Item | None:
        return self.table.get(account_pk(account_id), ACCOUNT_SK)

    def _write(self, account_id: str, changes: Item, *, counted: bool = False) -> Item:
        key = (account_pk(account_id), ACCOUNT_SK)
        item = self.table.items[key]
        item.update(changes)
        item["updated_at"] = _now()
        if counted:
            item["revision"] = int(item.get("revision", 0)) + 1
        return dict(item)

    def create(self, account: Account) -> None:
        self._scripted("create", account)
        pk = account_pk(account.id)
        if self.table.get(pk, ACCOUNT_SK) or self.table.get(pk, count_sk()):
            raise _transaction_canceled()
        self.table.put(
            {"PK": pk, "SK": ACCOUNT_SK, "listing": ACCOUNT_LISTING, "revision": 0}
            | account.model_dump()
        )
        self.table.put(
            {
                "PK": pk,
                "SK": count_sk(),
                "account_id": account.id,
                "count_type": SERVICES_COUNT_TYPE,
                "count_value": 0,
                "version": 0,
                "created_at": account.created_at,
            }
        )

    def get(self, account_id: str, *, consistent: bool = False) -> Account | None:
        self._scripted("get", account_id)
        item = self._item(account_id)
        return Account.model_validate(item) if item else None

    def get_with_revision(self, account_id: str) -> tuple[Account, int] | None:
        self._scripted("get_with_revision", account_id)
        item = self._item(account_id)
        if item is None:
            return None
        return Account.model_validate(item), int(item.get("revision", 0))

    def page(self, limit: int, cursor: str | None) -> tuple[list[Account], str | None]:
        self._scripted("page", limit, cursor)
        start = decode_cursor(cursor, _ACCOUNT_PAGE_KEYS)
        accounts = sorted(
            (i for i in self.table.items.values() if i.get("listing") == ACCOUNT_LISTING),
            key=lambda i: (i["created_at"], i["PK"]),
        )
        if start:
            after = (start["created_at"]["S"], start["PK"]["S"])
            accounts = [a for a in accounts if (a["created_at"], a["PK"]) > after]
        page = accounts[:limit]
        # Like DynamoDB: a full page carries a cursor, even when nothing follows.
        next_cursor = None
        if len(page) == limit and page:
            last = page[-1]
            next_cursor = encode_cursor(
                {
                    "PK": {"S": last["PK"]},
                    "SK": {"S": last["SK"]},
                    "listing": {"S": last["listing"]},
                    "created_at": {"S": last["created_at"]},
                }
            )
        return [Account.model_validate(a) for a in page], next_cursor

    def update(
        self, account_id: str, *, username: str | None, max_number_of_services: int | None
    ) -> Account | None:
        self._scripted("update", account_id, username, max_number_of_services)
        if self._item(account_id) is None:
            return None
        changes: Item = {}
        if username is not None:
            changes["username"] = username
        if max_number_of_services is not None:
            changes["max_number_of_services"] = max_number_of_services
        return Account.model_validate(self._write(account_id, changes))

    def delete(self, account_id: str, *, observed_revision: int) -> bool:
        self._scripted("delete", account_id)
        item = self._item(account_id)
        if item is None:
            return False
        count = self.table.get(account_pk(account_id), count_sk())
        if int(item.get("revision", 0)) != observed_revision or (
            count is not None and int(count.get("count_value", 0)) != 0
        ):
            raise AccountNotEmptyError(account_id)
        self.table.delete(account_pk(account_id), ACCOUNT_SK)
        self.table.delete(account_pk(account_id), count_sk())
        return True

    def increment(self, account_id: str) -> IncrementOutcome:
        scripted = self._scripted("increment", account_id)
        if scripted is not None:
            real = self._increment(account_id) if scripted.apply else None
            result: IncrementOutcome | None = scripted.result or real
            assert result is not None, "script a result, or apply the real behaviour"
            return result
        return self._increment(account_id)

    def _increment(self, account_id: str) -> IncrementOutcome:
        item = self._item(account_id)
        if item is None:
            return IncrementOutcome.ACCOUNT_MISSING
        limit = int(item["max_number_of_services"])
        if not (
            int(item.get("number_of_services", 0)) < limit and int(item.get("ec_hint", 0)) < limit
        ):
            return IncrementOutcome.LIMIT_REACHED
        debt = int(item.get("be_debt", 0))
        if debt > 0:
            self._write(account_id, {"be_debt": debt - 1}, counted=True)
            return IncrementOutcome.APPLIED
        self._write(
            account_id,
            {"number_of_services": int(item.get("number_of_services", 0)) + 1},
            counted=True,
        )
        return IncrementOutcome.APPLIED

    def decrement(self, account_id: str) -> DecrementOutcome:
        scripted = self._scripted("decrement", account_id)
        if scripted is not None:
            real = self._decrement(account_id) if scripted.apply else None
            result: DecrementOutcome | None = scripted.result or real
            assert result is not None, "script a result, or apply the real behaviour"
            return result
        return self._decrement(account_id)

    def _decrement(self, account_id: str) -> DecrementOutcome:
        item = self._item(account_id)
        if item is None:
            return DecrementOutcome.SKIPPED
        if int(item.get("number_of_services", 0)) <= 0:
            self._write(account_id, {"be_debt": int(item.get("be_debt", 0)) + 1}, counted=True)
            return DecrementOutcome.OWED
        self._write(
            account_id,
            {"number_of_services": int(item["number_of_services"]) - 1},
            counted=True,
        )
        return DecrementOutcome.APPLIED

    def give_back(self, account_id: str) -> None:
        self._scripted("give_back", account_id)
        item = self._item(account_id)
        if item is not None and int(item.get("be_debt", 0)) > 0:
            self._write(account_id, {"be_debt": int(item["be_debt"]) - 1}, counted=True)
        elif item is not None:
            self._write(
                account_id,
                {"number_of_services": int(item.get("number_of_services", 0)) + 1},
                counted=True,
            )

    def record_eventual_count(self, account_id: str, count_value: int, version: int) -> bool:
        self._scripted("record_eventual_count", account_id, count_value, version)
        item = self._item(account_id)
        if item is None or int(item.get("ec_version", 0)) >= version:
            return False
        key = (account_pk(account_id), ACCOUNT_SK)
        self.table.items[key].update({"ec_hint": count_value, "ec_version": version})
        return True


class FakeServiceRepository(_Recorder, ServiceRepository):
    """Service items in a :class:`FakeTable`."""

    def __init__(self, table: FakeTable) -> None:
        self.table = table
        self._init_recorder()

    def _item(self, account_id: str, service_id: str) -> Item | None:
        return self.table.get(account_pk(account_id), service_sk(service_id))

    def create(self, service: Service) -> None:
        self._scripted("create", service)
        if self._item(service.account_id, service.id) is not None:
            return  # like the real one: an existing id is our own earlier attempt
        self.table.put(
            {"PK": account_pk(service.account_id), "SK": service_sk(service.id)}
            | service.model_dump()
            | {"pending_since": service.created_at}
        )

    def get(self, account_id: str, service_id: str, *, consistent: bool = False) -> Service | None:
        self._scripted("get", account_id, service_id)
        item = self._item(account_id, service_id)
        return Service.model_validate(item) if item else None

    def list_live(
        self, account_id: str, limit: int, cursor: str | None
    ) -> tuple[list[Service], str | None]:
        self._scripted("list_live", account_id, limit, cursor)
        start = decode_cursor(cursor, _SERVICE_PAGE_KEYS)
        items = self.table.partition(account_pk(account_id), SERVICE_PREFIX)
        if start:
            after = start["SK"]["S"]
            items = [i for i in items if i["SK"] > after]
        live = [i for i in items if not i.get("deleted")][:limit]
        next_cursor = None
        if len(live) == limit and live:
            next_cursor = encode_cursor({"PK": {"S": live[-1]["PK"]}, "SK": {"S": live[-1]["SK"]}})
        return [Service.model_validate(i) for i in live], next_cursor

    def rename(self, account_id: str, service_id: str, name: str) -> Service | None:
        self._scripted("rename", account_id, service_id, name)
        item = self._item(account_id, service_id)
        if item is None or item.get("deleted"):
            return None
        stored = self.table.items[(account_pk(account_id), service_sk(service_id))]
        stored.update({"name": name, "updated_at": _now()})
        return Service.model_validate(stored)

    def soft_delete(
        self, account_id: str, service_id: str, request_id: str, *, accounted: bool = True
    ) -> SoftDeleteOutcome:
        scripted = self._scripted("soft_delete", account_id, service_id, request_id)
        if scripted is not None and scripted.result is not None:
            result: SoftDeleteOutcome = scripted.result
            return result
        item = self._item(account_id, service_id)
        if item is None:
            return SoftDeleteOutcome.GONE
        if item.get("deleted"):
            if item.get("deleted_by") == request_id:
                return SoftDeleteOutcome.DELETED
            if item.get("accounted") is True:
                return SoftDeleteOutcome.GONE_ACCOUNTED
            return SoftDeleteOutcome.GONE
        now = _now()
        stored = self.table.items[(account_pk(account_id), service_sk(service_id))]
        stored.update(
            {
                "deleted": True,
                "deleted_by": request_id,
                "updated_at": now,
                "pending_since": now,
                "accounted": accounted,
            }
        )
        return SoftDeleteOutcome.DELETED

    def remove_uncounted(self, account_id: str, service_id: str) -> bool:
        self._scripted("remove_uncounted", account_id, service_id)
        item = self._item(account_id, service_id)
        if item is None or item.get("counter_processed") or item.get("deleted"):
            return False
        self.table.delete(account_pk(account_id), service_sk(service_id))
        return True

    def has_any(self, account_id: str) -> bool:
        self._scripted("has_any", account_id)
        return bool(self.table.partition(account_pk(account_id), SERVICE_PREFIX))

    def pending(self, account_id: str, *, limit: int | None = None) -> list[tuple[str, str]]:
        self._scripted("pending", account_id, limit)
        pairs = self._pending(account_id)
        return pairs if limit is None else pairs[:limit]

    def _pending(self, account_id: str) -> list[tuple[str, str]]:
        found = sorted(
            (str(i["pending_since"]), str(i["SK"]).removeprefix(SERVICE_PREFIX))
            for i in self.table.partition(account_pk(account_id), SERVICE_PREFIX)
            if "pending_since" in i
        )
        return [(service_id, since) for since, service_id in found]

    def count_pending(self, account_id: str) -> int:
        self._scripted("count_pending", account_id)
        return len(self._pending(account_id))


class FakeCountRepository(_Recorder, CountRepository):
    """Count items in a :class:`FakeTable` (read-only, like the real repository)."""

    def __init__(self, table: FakeTable) -> None:
        self.table = table
        self._init_recorder()

    def get(self, account_id: str, *, consistent: bool = True) -> Count | None:
        self._scripted("get", account_id)
        item = self.table.get(account_pk(account_id), count_sk())
        return Count.model_validate(item) if item else None

    def get_many(self, account_ids: Sequence[str]) -> list[Count]:
        self._scripted("get_many", *account_ids)
        items = (self.table.get(account_pk(a), count_sk()) for a in account_ids)
        return [Count.model_validate(i) for i in items if i]

    def all_of(self, account_id: str) -> list[Count]:
        self._scripted("all_of", account_id)
        return [
            Count.model_validate(i)
            for i in self.table.partition(account_pk(account_id), COUNT_PREFIX)
        ]


@dataclass
class FakeRepositories:
    """The three fakes over one table."""

    table: FakeTable = field(default_factory=FakeTable)
    accounts: FakeAccountRepository = field(init=False)
    services: FakeServiceRepository = field(init=False)
    counts: FakeCountRepository = field(init=False)

    def __post_init__(self) -> None:
        self.accounts = FakeAccountRepository(self.table)
        self.services = FakeServiceRepository(self.table)
        self.counts = FakeCountRepository(self.table)
