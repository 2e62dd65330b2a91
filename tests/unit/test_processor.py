"""StreamProcessor over in-memory fakes: aggregation, chunking, exactly-once, retries.

:class:`FakeLedger` applies a transaction to the fake table with the real ledger's
conditions (all or nothing; a failed condition reports the item's current state),
and can be scripted to refuse transactions (conflict, throttling) first.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Sequence
from typing import Any

import pytest

from chalicelib.counting.processor import StreamProcessor
from chalicelib.counting.records import Action, action_for
from chalicelib.entities import (
    ACCOUNT_SK,
    Account,
    Service,
    account_pk,
    count_sk,
    service_sk,
    timestamp,
    utc_now,
)
from chalicelib.errors import BackendUnavailableError
from chalicelib.repositories.ledger import (
    MAX_ITEMS_PER_TRANSACTION,
    CountLedger,
    TransactionOutcome,
)
from tests import events
from tests.fakes import FakeRepositories, FakeTable

ATTEMPTS = 8


def _holds(action: Action, item: dict[str, Any] | None) -> bool:
    """The ledger's conditions (``ledger._CONDITIONS``) on a fake item."""
    if item is None:
        return False
    deleted, counted = item.get("deleted") is True, item.get("counter_processed") is True
    if action is Action.COUNT:
        return not deleted and not counted
    if action is Action.REMOVE_COUNTED:
        return deleted and counted
    return deleted and not counted


class FakeLedger(CountLedger):
    """Transactions on a :class:`FakeTable`; ``refusals`` are returned first, in order."""

    def __init__(self, table: FakeTable) -> None:  # no super(): no client to hold
        self.table = table
        self.transactions: list[tuple[str, list[tuple[str, Action]]]] = []
        self.refusals: deque[TransactionOutcome] = deque()

    def apply(self, account_id: str, actions: Sequence[tuple[str, Action]]) -> TransactionOutcome:
        assert 0 < len(actions) <= MAX_ITEMS_PER_TRANSACTION
        assert len({item for item, _ in actions}) == len(actions), "one item twice"
        self.transactions.append((account_id, list(actions)))
        if self.refusals:
            return self.refusals.popleft()
        pk = account_pk(account_id)
        replanned: dict[str, Action | None] = {}
        for item_id, action in actions:
            item = self.table.get(pk, service_sk(item_id))
            if not _holds(action, item):
                replanned[item_id] = action_for(item)
        count = self.table.get(pk, count_sk())
        if count is None or replanned:
            return TransactionOutcome(
                committed=False, replanned=replanned, account_gone=count is None
            )
        for item_id, action in actions:
            key = (pk, service_sk(item_id))
            if action is Action.COUNT:
                self.table.items[key]["counter_processed"] = True
                self.table.items[key].pop("pending_since", None)
            else:
                del self.table.items[key]
        stored = self.table.items[(pk, count_sk())]
        stored["count_value"] += sum(action.delta for _, action in actions)
        stored["version"] += 1
        return TransactionOutcome(committed=True)

    def items_per_transaction(self) -> list[int]:
        return [len(actions) for _, actions in self.transactions]


class Harness:
    """Fakes + ledger + processor, and the arrangements the tests need."""

    def __init__(self) -> None:
        self.repos = FakeRepositories()
        self.table = self.repos.table
        self.ledger = FakeLedger(self.table)
        self.sleeps: list[float] = []
        self.processor = StreamProcessor(
            self.ledger,
            self.repos.accounts,
            self.repos.counts,
            self.repos.services,
            attempts=ATTEMPTS,
            sleep=self.sleeps.append,
        )

    def account(self) -> str:
        now = timestamp(utc_now())
        account = Account(
            id=str(uuid.uuid4()),
            username="owner",
            max_number_of_services=100_000,
            created_at=now,
            updated_at=now,
        )
        self.repos.accounts.create(account)
        return account.id

    def service(self, account_id: str, *, deleted: bool = False, counted: bool = False) -> str:
        """A service item as the API (and earlier processing) left it."""
        now = timestamp(utc_now())
        service = Service(
            id=str(uuid.uuid4()), account_id=account_id, name="s", created_at=now, updated_at=now
        )
        self.repos.services.create(service)
        item = self.table.items[(account_pk(account_id), service_sk(service.id))]
        item.update({"deleted": deleted, "counter_processed": counted})
        if counted and not deleted:
            item.pop("pending_since", None)
        if counted:
            self.table.items[(account_pk(account_id), count_sk())]["count_value"] += 1
        return service.id

    def count(self, account_id: str) -> int:
        item = self.table.get(account_pk(account_id), count_sk())
        assert item is not None
        return int(item["count_value"])

    def hint(self, account_id: str) -> tuple[int, int]:
        item = self.table.get(account_pk(account_id), ACCOUNT_SK)
        assert item is not None
        return int(item.get("ec_hint", 0)), int(item.get("ec_version", 0))

    def exists(self, account_id: str, service_id: str) -> bool:
        return self.table.get(account_pk(account_id), service_sk(service_id)) is not None


@pytest.fixture
def h() -> Harness:
    return Harness()


def test_one_transaction_per_account_for_a_whole_batch(h: Harness) -> None:
    # GIVEN a batch with 5 new services in each of 3 accounts, interleaved
    accounts = [h.account() for _ in range(3)]
    created = {a: [h.service(a) for _ in range(5)] for a in accounts}
    records = [events.insert(a, created[a][n]) for n in range(5) for a in accounts]

    # WHEN the batch is processed
    report = h.processor.process(records)

    # THEN each account took one transaction of 5 items, and counts and hints moved
    assert sorted(h.ledger.items_per_transaction()) == [5, 5, 5]
    assert report.transactions == 3
    assert report.relevant == 15
    assert report.response() == {"batchItemFailures": []}
    for account in accounts:
        assert h.count(account) == 5
        assert h.hint(account) == (5, 1)


def test_transactions_take_at_most_99_services_plus_the_count(h: Harness) -> None:
    # GIVEN 250 new services of one account in one batch
    account = h.account()
    records = [events.insert(account, h.service(account)) for _ in range(250)]

    # WHEN processed
    h.processor.process(records)

    # THEN three transactions (99 + 99 + 52) counted all of them
    assert h.ledger.items_per_transaction() == [99, 99, 52]
    assert h.count(account) == 250


def test_a_batch_larger_than_the_attempt_budget_settles(h: Harness) -> None:
    # GIVEN 1,000 new services of one account (11 chunks; 8 attempts allowed)
    account = h.account()
    records = [events.insert(account, h.service(account)) for _ in range(1000)]

    # WHEN processed
    report = h.processor.process(records)

    # THEN every chunk is applied: attempts bound failures, not progress
    assert report.response() == {"batchItemFailures": []}
    assert len(h.ledger.transactions) == 11
    assert h.count(account) == 1000


def test_insert_and_delete_in_one_batch_collapse_into_one_delete(h: Harness) -> None:
    # GIVEN a service created and soft-deleted before any processing
    account = h.account()
    service = h.service(account, deleted=True)
    records = [events.insert(account, service), events.soft_delete(account, service, counted=False)]

    # WHEN the batch holding both is processed
    h.processor.process(records)

    # THEN one item action: the hard delete, with no count change
    assert h.ledger.transactions == [(account, [(service, Action.REMOVE_UNCOUNTED)])]
    assert not h.exists(account, service)
    assert h.count(account) == 0


def test_soft_delete_of_a_counted_service_hard_deletes_and_decrements(h: Harness) -> None:
    # GIVEN a counted service, now soft-deleted
    account = h.account()
    keep = h.service(account, counted=True)
    gone = h.service(account, deleted=True, counted=True)

    # WHEN its soft delete is processed
    h.processor.process([events.soft_delete(account, gone, counted=True)])

    # THEN it is hard-deleted and uncounted; the other one stays counted
    assert not h.exists(account, gone)
    assert h.exists(account, keep)
    assert h.count(account) == 1


def test_soft_delete_of_a_never_counted_service_only_hard_deletes(h: Harness) -> None:
    # GIVEN a service deleted before its INSERT was processed, in an earlier batch
    account = h.account()
    h.service(account, counted=True)
    service = h.service(account, deleted=True)

    # WHEN its soft delete is processed alone
    h.processor.process([events.soft_delete(account, service, counted=False)])

    # THEN it is hard-deleted and the count is unchanged
    assert not h.exists(account, service)
    assert h.count(account) == 1


def test_the_same_batch_delivered_twice_counts_once(h: Harness) -> None:
    # GIVEN a processed batch of creates and deletes
    account = h.account()
    live = [h.service(account) for _ in range(3)]
    dead = h.service(account, deleted=True)
    batch = [
        *(events.insert(account, s) for s in live),
        events.insert(account, dead),
        events.soft_delete(account, dead, counted=False),
    ]
    h.processor.process(batch)
    assert h.count(account) == 3

    # WHEN the same batch (plus a duplicated INSERT) is delivered again
    report = h.processor.process([*batch, batch[0]])

    # THEN every condition fails, the changes are dropped, nothing moves
    assert report.response() == {"batchItemFailures": []}
    assert report.applied == {}
    assert h.count(account) == 3
    assert h.hint(account) == (3, 1)


def test_the_items_current_state_decides_not_the_records_image(h: Harness) -> None:
    # GIVEN an INSERT record of a service that was soft-deleted since (the delete is
    # in a later batch)
    account = h.account()
    service = h.service(account, deleted=True)

    # WHEN the INSERT is processed
    report = h.processor.process([events.insert(account, service)])

    # THEN the cancelled COUNT is re-planned from the item: a hard delete, no count
    assert [a for _, actions in h.ledger.transactions for _, a in actions] == [
        Action.COUNT,
        Action.REMOVE_UNCOUNTED,
    ]
    assert report.response() == {"batchItemFailures": []}
    assert not h.exists(account, service)
    assert h.count(account) == 0


def test_only_failed_items_are_dropped_the_rest_is_retried(h: Harness) -> None:
    # GIVEN a batch where one of three services was counted by an earlier delivery
    account = h.account()
    done = h.service(account, counted=True)
    new = [h.service(account) for _ in range(2)]

    # WHEN processed
    h.processor.process([events.insert(account, done), *(events.insert(account, s) for s in new)])

    # THEN the second transaction carries only the two new ones
    assert h.ledger.items_per_transaction() == [3, 2]
    assert h.count(account) == 3


def test_conflicts_are_retried_with_backoff(h: Harness) -> None:
    # GIVEN two transaction conflicts before the backend accepts
    account = h.account()
    service = h.service(account)
    h.ledger.refusals.extend([TransactionOutcome(committed=False, contended=True)] * 2)

    # WHEN processed
    report = h.processor.process([events.insert(account, service)])

    # THEN it backed off twice, growing, and counted once
    assert len(h.sleeps) == 2
    assert all(0 <= s <= 1.0 for s in h.sleeps)
    assert report.transactions == 3
    assert h.count(account) == 1


def test_an_account_that_never_settles_is_reported_at_its_first_record(h: Harness) -> None:
    # GIVEN two accounts; every transaction of the second conflicts
    ok, stuck = h.account(), h.account()
    ok_services = [h.service(ok) for _ in range(2)]
    stuck_service = h.service(stuck)
    records = [
        events.insert(ok, ok_services[0]),
        events.flag_flip(stuck, stuck_service),  # irrelevant: not where to resume
        events.insert(stuck, stuck_service),
        events.insert(ok, ok_services[1]),
    ]
    processor = StreamProcessor(
        ConflictingFor(h.table, stuck),
        h.repos.accounts,
        h.repos.counts,
        h.repos.services,
        attempts=3,
        sleep=h.sleeps.append,
    )

    # WHEN processed
    report = processor.process(records)

    # THEN the healthy account is applied and Lambda resumes at the stuck INSERT
    assert h.count(ok) == 2
    assert h.count(stuck) == 0
    assert report.failed_accounts == [stuck]
    assert report.response() == {
        "batchItemFailures": [{"itemIdentifier": records[2]["dynamodb"]["SequenceNumber"]}]
    }
    assert len(h.sleeps) == 3


class ConflictingFor(FakeLedger):
    """Every transaction of one account meets a conflict."""

    def __init__(self, table: FakeTable, account_id: str) -> None:
        super().__init__(table)
        self.stuck = account_id

    def apply(self, account_id: str, actions: Sequence[tuple[str, Action]]) -> TransactionOutcome:
        if account_id == self.stuck:
            return TransactionOutcome(committed=False, contended=True)
        return super().apply(account_id, actions)


def test_changes_of_a_deleted_account_are_dropped(h: Harness) -> None:
    # GIVEN a record of an account whose Count item is gone
    account = h.account()
    service = h.service(account)
    del h.table.items[(account_pk(account), count_sk())]

    # WHEN processed THEN nothing fails and nothing is retried
    report = h.processor.process([events.insert(account, service)])
    assert report.response() == {"batchItemFailures": []}
    assert len(h.ledger.transactions) == 1


def test_records_the_processor_ignores_cost_no_transaction(h: Harness) -> None:
    # GIVEN the recorded echo of the processor's own writes
    batch = events.load(events.PROCESSOR_ECHO)["Records"]

    # WHEN processed THEN no transaction and no failure
    report = h.processor.process(batch)
    assert report.records == len(batch)
    assert report.relevant == 0
    assert h.ledger.transactions == []
    assert report.response() == {"batchItemFailures": []}


def test_a_failed_hint_update_fails_the_account_so_it_is_redelivered(h: Harness) -> None:
    # GIVEN the Account write of the hint fails (backend unavailable)
    account = h.account()
    service = h.service(account)
    h.repos.accounts.script.push(
        "record_eventual_count", None, before=_raise(BackendUnavailableError("hint"))
    )
    record = events.insert(account, service)

    # WHEN processed THEN the count is committed, but the record is reported failed:
    # the hint is also what marks the account for the healer
    report = h.processor.process([record])
    assert report.response() == {
        "batchItemFailures": [{"itemIdentifier": record["dynamodb"]["SequenceNumber"]}]
    }
    assert h.count(account) == 1
    assert h.hint(account) == (0, 0)

    # AND the redelivery, with the change already applied, publishes the hint
    assert h.processor.process([record]).response() == {"batchItemFailures": []}
    assert h.hint(account) == (1, 1)


def _raise(error: Exception) -> Any:
    def raiser() -> None:
        raise error

    return raiser


def test_hint_is_published_after_each_account_with_the_counts_version(h: Harness) -> None:
    # GIVEN two batches for one account
    account = h.account()
    first, second = h.service(account), h.service(account)

    # WHEN processed one after the other
    h.processor.process([events.insert(account, first)])
    h.processor.process([events.insert(account, second)])

    # THEN each published the count it read, with its version
    assert [args for name, args in h.repos.accounts.calls if name == "record_eventual_count"] == [
        (account, 1, 1),
        (account, 2, 2),
    ]


def test_recover_applies_whatever_pending_items_need(h: Harness) -> None:
    # GIVEN an account whose stream records were lost: 2 uncounted live services,
    # 1 soft-deleted counted one, 1 soft-deleted uncounted one
    account = h.account()
    live = [h.service(account) for _ in range(2)]
    h.service(account, counted=True)
    gone_counted = h.service(account, deleted=True, counted=True)
    gone_uncounted = h.service(account, deleted=True)

    # WHEN recovered from the table
    report = h.processor.recover(account)

    # THEN the count equals the live services and nothing is pending
    assert report.relevant == 4
    assert h.count(account) == 3
    assert not h.exists(account, gone_counted)
    assert not h.exists(account, gone_uncounted)
    assert all(h.exists(account, s) for s in live)
    assert h.repos.services.pending(account) == []


def test_recover_settles_more_pending_items_than_the_attempt_budget_covers(h: Harness) -> None:
    # GIVEN 900 pending services (10 chunks; 8 attempts allowed)
    account = h.account()
    for _ in range(900):
        h.service(account)

    # WHEN recovered THEN all are counted
    h.processor.recover(account)
    assert h.count(account) == 900
