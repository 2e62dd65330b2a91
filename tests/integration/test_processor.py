"""Stream processor against the embedded backend, on records read from the real stream.

Duplicates, redeliveries, crashes in the middle of a batch, conflicts, cancellations
and throttling must never change the final count (invariant I2).
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from chalicelib.bootstrap import Container
from chalicelib.counting.processor import BatchReport
from chalicelib.entities import account_pk, service_sk
from chalicelib.repositories.dynamo import from_item
from infrastructure.local.provision import StackOutputs
from tests.calls import CallCounter
from tests.events.live import StreamTail, app_settings, isolated_stack
from tests.faults import FaultInjector, attach_to_container, times


class Crash(BaseException):
    """The Lambda process dies (timeout, out of memory): nothing in it runs on."""


class CrashAt:
    """Kills the processor at the ``n``-th transaction, before it is sent or after it
    committed (botocore hooks, like :mod:`tests.faults`)."""

    def __init__(self, n: int, *, after_commit: bool) -> None:
        self._n = n
        self._after = after_commit
        self._seen = itertools.count(1)
        self.fired = False

    def attach(self, client: Any, *, label: str = "") -> Any:
        event = "after-call" if self._after else "before-send"
        client.meta.events.register(
            f"{event}.dynamodb.TransactWriteItems", self._hook, unique_id=f"crash-{id(self)}"
        )
        return client

    def _hook(self, **_: Any) -> None:
        if next(self._seen) == self._n and not self.fired:
            self.fired = True
            raise Crash(f"crashed at transaction {self._n}")


@pytest.fixture(scope="module")
def ec_stack(backend_url: str) -> StackOutputs:
    return isolated_stack(backend_url, "ec-processor")


@pytest.fixture(scope="module")
def tail(ec_stack: StackOutputs) -> StreamTail:
    container = Container(app_settings(ec_stack))
    return StreamTail(container.streams, ec_stack.stream_arn)


@pytest.fixture
def container(ec_stack: StackOutputs) -> Container:
    return Container(app_settings(ec_stack))


@pytest.fixture
def calls(container: Container) -> CallCounter:
    counter = CallCounter()
    attach_to_container(container, [counter])
    return counter


def new_account(container: Container, limit: int = 1000) -> str:
    return container.account_service.create("owner", limit).id


def create(container: Container, account_id: str, n: int) -> list[str]:
    return [container.service_service.create(account_id, f"s{i}").id for i in range(n)]


def count_of(container: Container, account_id: str) -> int:
    count = container.counts.get(account_id)
    assert count is not None
    return count.count_value


def service_item(container: Container, account_id: str, service_id: str) -> dict[str, Any] | None:
    item = container.dynamodb.get_item(
        TableName=container.settings.table_name,
        Key={"PK": {"S": account_pk(account_id)}, "SK": {"S": service_sk(service_id)}},
        ConsistentRead=True,
    ).get("Item")
    return from_item(item) if item else None


def live_services(container: Container, account_id: str) -> int:
    services, _ = container.services.list_live(account_id, 100, None)
    return len(services)


def test_creates_and_deletes_from_the_stream_settle_in_one_transaction(
    container: Container, tail: StreamTail, calls: CallCounter
) -> None:
    # GIVEN 5 creates and 2 deletes, one of them before anything was processed
    account = new_account(container)
    services = create(container, account, 5)
    container.service_service.delete(account, services[0])
    records = tail.take([account])

    # WHEN the stream batch is processed
    with calls.measure() as stats:
        report = container.processor.process(records)

    # THEN one transaction settled the account; the deleted service is gone
    assert report.response() == {"batchItemFailures": []}
    assert stats.total("TransactWriteItems") == 1
    assert count_of(container, account) == 4
    assert service_item(container, account, services[0]) is None
    assert all(service_item(container, account, s)["counter_processed"] for s in services[1:])  # type: ignore[index]
    # AND the hint on the account caught up
    stored = container.accounts.get(account, consistent=True)
    assert stored is not None
    assert (stored.ec_hint, stored.ec_version) == (4, 1)

    # WHEN a counted service is deleted and that batch is processed
    container.service_service.delete(account, services[1])
    container.processor.process(tail.take([account]))

    # THEN it is hard-deleted and uncounted
    assert service_item(container, account, services[1]) is None
    assert count_of(container, account) == 3 == live_services(container, account)


def test_the_processors_own_writes_come_back_and_change_nothing(
    container: Container, tail: StreamTail, calls: CallCounter
) -> None:
    # GIVEN a processed batch
    account = new_account(container)
    create(container, account, 3)
    container.processor.process(tail.take([account]))

    # WHEN the records its own writes produced (flag flips, Count, hint) are processed
    echo = tail.take([account])
    with calls.measure() as stats:
        report = container.processor.process(echo)

    # THEN they cost no transaction
    assert len(echo) >= 3
    assert report.relevant == 0
    assert stats.total("TransactWriteItems") == 0
    assert count_of(container, account) == 3


def test_the_same_batch_delivered_twice_counts_once(
    container: Container, tail: StreamTail, calls: CallCounter
) -> None:
    # GIVEN a batch of 4 creates and 1 delete across two accounts, processed once
    a, b = new_account(container), new_account(container)
    created = create(container, a, 2) + create(container, b, 2)
    container.service_service.delete(a, created[0])
    batch = tail.take([a, b])
    container.processor.process(batch)

    # WHEN the very same batch arrives again, with a duplicated INSERT
    with calls.measure() as stats:
        report = container.processor.process([*batch, batch[1]])

    # THEN the conditions fail, the changes are dropped; the hints are re-published
    # conditionally (already current, so they change nothing)
    assert report.response() == {"batchItemFailures": []}
    assert report.applied == {}
    assert stats.total("TransactWriteItems") == 2  # one cancelled per account
    assert stats.total("UpdateItem") == 2  # one conditional hint write per account
    assert (count_of(container, a), count_of(container, b)) == (1, 2)


@pytest.mark.parametrize("after_commit", [False, True], ids=["before-send", "after-commit"])
def test_a_crash_in_the_middle_of_a_batch_never_changes_the_final_count(
    ec_stack: StackOutputs, container: Container, tail: StreamTail, after_commit: bool
) -> None:
    # GIVEN a batch for three accounts, and a processor that dies at the 2nd transaction
    arrange = container
    accounts = [new_account(arrange) for _ in range(3)]
    for n, account in enumerate(accounts):
        services = create(arrange, account, 3 + n)
        arrange.service_service.delete(account, services[-1])
    batch = tail.take(accounts)
    crash = CrashAt(2, after_commit=after_commit)
    doomed = attach_to_container(Container(app_settings(ec_stack)), [crash])

    # WHEN it crashes mid-batch, and Lambda redelivers the whole batch (to another container)
    with pytest.raises(Crash):
        doomed.processor.process(batch)
    report = container.processor.process(batch)

    # THEN every account ends with its live services counted, none twice
    assert crash.fired
    assert report.response() == {"batchItemFailures": []}
    assert [count_of(arrange, a) for a in accounts] == [2, 3, 4]
    assert [live_services(arrange, a) for a in accounts] == [2, 3, 4]


def test_a_lost_transaction_response_is_retried_without_counting_twice(
    container: Container, tail: StreamTail
) -> None:
    # GIVEN a transaction whose response is lost after it was applied (timeout)
    account = new_account(container)
    create(container, account, 4)
    faults = FaultInjector()
    attach_to_container(container, [faults])
    faults.ambiguous("TransactWriteItems", when=times(1))

    # WHEN the batch is processed
    report = container.processor.process(tail.take([account]))

    # THEN botocore's retry meets the applied conditions and the count is exact
    assert faults.log.select(kind="ambiguous")[0].applied
    assert report.response() == {"batchItemFailures": []}
    assert count_of(container, account) == 4


def test_conflicts_and_cancellations_are_retried_until_applied(
    container: Container, tail: StreamTail, calls: CallCounter
) -> None:
    # GIVEN two conflicts, then a cancellation that blames a conflict on one item
    account = new_account(container)
    create(container, account, 2)
    faults = FaultInjector()
    attach_to_container(container, [faults])
    faults.conflict("TransactWriteItems", when=times(2))
    faults.canceled(
        reasons=[{"Code": "None"}, {"Code": "TransactionConflict"}, {"Code": "None"}],
        when=times(1),
    )

    # WHEN processed
    with calls.measure() as stats:
        report = container.processor.process(tail.take([account]))

    # THEN after the refusals one transaction went through, counting both
    assert faults.count() == 3
    assert stats.total_attempts("TransactWriteItems") == 4
    assert report.response() == {"batchItemFailures": []}
    assert count_of(container, account) == 2


def test_throttled_transactions_are_retried(
    container: Container, tail: StreamTail, calls: CallCounter
) -> None:
    # GIVEN throttling on the first attempt (botocore retries those itself)
    account = new_account(container)
    create(container, account, 3)
    faults = FaultInjector()
    attach_to_container(container, [faults])
    faults.throttle("TransactWriteItems", when=times(1))

    # WHEN processed THEN it counts exactly once
    report = container.processor.process(tail.take([account]))
    assert faults.count() == 1
    assert report.response() == {"batchItemFailures": []}
    assert count_of(container, account) == 3


def test_an_account_that_keeps_conflicting_is_reported_for_redelivery(
    container: Container, tail: StreamTail
) -> None:
    # GIVEN one account whose transactions always conflict, one that is fine
    stuck, fine = new_account(container), new_account(container)
    create(container, stuck, 1)
    create(container, fine, 1)
    faults = FaultInjector()
    attach_to_container(container, [faults])
    faults.conflict(
        "TransactWriteItems",
        where=lambda params: account_pk(stuck) in str(params.get("TransactItems")),
    )
    batch = tail.take([stuck, fine])

    # WHEN processed
    report: BatchReport = container.processor.process(batch)

    # THEN the fine account is counted and Lambda is told to resume at the stuck INSERT
    first_stuck = next(
        r for r in batch if r["dynamodb"]["Keys"]["SK"]["S"].startswith("SERVICE#")
        and r["dynamodb"]["Keys"]["PK"]["S"] == account_pk(stuck)
    )  # fmt: skip
    assert report.response() == {
        "batchItemFailures": [{"itemIdentifier": first_stuck["dynamodb"]["SequenceNumber"]}]
    }
    assert count_of(container, fine) == 1
    assert count_of(container, stuck) == 0

    # WHEN the conflicts stop and the batch is redelivered THEN it settles
    faults.clear()
    assert container.processor.process(batch).response() == {"batchItemFailures": []}
    assert count_of(container, stuck) == 1


def test_the_hint_never_moves_backwards(container: Container, tail: StreamTail) -> None:
    # GIVEN an account whose hint was published at version 2
    account = new_account(container)
    create(container, account, 1)
    container.processor.process(tail.take([account]))
    create(container, account, 1)
    container.processor.process(tail.take([account]))

    # WHEN a slower processor publishes the older version 1
    applied = container.accounts.record_eventual_count(account, 1, 1)

    # THEN it is refused and the hint stays at the newer count
    stored = container.accounts.get(account, consistent=True)
    assert stored is not None
    assert not applied
    assert (stored.ec_hint, stored.ec_version) == (2, 2)


def test_recover_rebuilds_the_count_from_the_table_alone(
    container: Container, tail: StreamTail
) -> None:
    # GIVEN creates and deletes whose stream records were never processed (lost)
    account = new_account(container)
    services = create(container, account, 4)
    container.service_service.delete(account, services[0])
    tail.take([account])

    # WHEN recovered from the table
    report = container.processor.recover(account)

    # THEN the count is the live services, and nothing is pending
    assert report.relevant == 4
    assert count_of(container, account) == 3 == live_services(container, account)
    assert container.services.pending(account) == []
