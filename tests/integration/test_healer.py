"""Healer on the embedded backend: best-effort counter := eventual count on quiet accounts.

The healer's clock is moved forward instead of sleeping through the quiet period; the
repositories keep writing real timestamps, so "now + 31 s" is past a 30 s quiet period.
"""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from typing import Any

import pytest

from chalicelib.bootstrap import Container
from chalicelib.counting.healer import Healer, HealOutcome
from chalicelib.entities import utc_now
from chalicelib.errors import BackendUnavailableError
from infrastructure.local.provision import StackOutputs
from tests.events.live import StreamTail, app_settings, isolated_stack
from tests.faults import FaultInjector, all_of, attach_to_container, expression_contains, times

QUIET = timedelta(seconds=30)
STUCK = timedelta(seconds=300)


class Clock:
    """Wall clock plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return utc_now() + self.offset

    def advance(self, delta: timedelta) -> None:
        self.offset += delta


@pytest.fixture(scope="module")
def ec_stack(backend_url: str) -> StackOutputs:
    return isolated_stack(backend_url, "ec-healer")


@pytest.fixture(scope="module")
def tail(ec_stack: StackOutputs) -> StreamTail:
    container = Container(app_settings(ec_stack))
    return StreamTail(container.streams, ec_stack.stream_arn)


@pytest.fixture
def container(ec_stack: StackOutputs) -> Container:
    # One HealIndex shard: runs visit accounts in the order they were marked.
    return Container(app_settings(ec_stack, heal_shards=1))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def healer(container: Container, clock: Clock) -> Healer:
    return Healer(
        container.accounts,
        container.services,
        container.counts,
        container.processor,
        quiet=QUIET,
        stuck_after=STUCK,
        batch_limit=100,
        clock=clock,
    )


def new_account(container: Container) -> str:
    return container.account_service.create("owner", 100).id


def create(container: Container, account_id: str, n: int) -> list[str]:
    return [container.service_service.create(account_id, f"s{i}").id for i in range(n)]


def counters(container: Container, account_id: str) -> tuple[int, int]:
    """(best-effort, eventual)."""
    account = container.accounts.get(account_id, consistent=True)
    count = container.counts.get(account_id)
    assert account is not None
    assert count is not None
    return account.number_of_services, count.count_value


def lose_best_effort_increments(container: Container) -> FaultInjector:
    """Every BE increment fails before it is sent, as if the connection had dropped."""
    faults = FaultInjector()
    attach_to_container(container, [faults])
    faults.ambiguous(
        "UpdateItem",
        send=False,
        client="dynamodb_no_retry",
        where=expression_contains("UpdateExpression", "number_of_services + :delta"),
    )
    return faults


def test_an_undercounting_best_effort_counter_is_healed_once_the_account_is_quiet(
    container: Container, healer: Healer, clock: Clock, tail: StreamTail
) -> None:
    # GIVEN 3 services whose best-effort increments were lost (BE 0), all processed (EC 3)
    account = new_account(container)
    faults = lose_best_effort_increments(container)
    create(container, account, 3)
    faults.clear()
    container.processor.process(tail.take([account]))
    assert counters(container, account) == (0, 3)

    # WHEN the healer runs within the quiet period THEN it waits
    assert healer.heal(account) is HealOutcome.BUSY
    assert account not in healer.run().outcomes  # not due yet: marked too recently

    # WHEN it runs after the quiet period
    clock.advance(QUIET + timedelta(seconds=1))
    report = healer.run()

    # THEN BE is set to EC and the account leaves the HealIndex
    assert report.outcomes[account] is HealOutcome.HEALED
    assert counters(container, account) == (3, 3)
    assert account not in healer.run().outcomes


def test_a_delete_refused_after_its_decrement_applied_is_healed(
    container: Container, healer: Healer, clock: Clock, tail: StreamTail
) -> None:
    # GIVEN a delete whose decrement applied but whose every answer was lost: the API
    # refuses it (503) and keeps the service, so BE is one under the live services
    account = new_account(container)
    services = create(container, account, 2)
    faults = FaultInjector()
    attach_to_container(container, [faults])
    faults.ambiguous(
        "UpdateItem",
        client="dynamodb",
        where=all_of(
            expression_contains("UpdateExpression", "number_of_services + :delta"),
            lambda params: ":zero" in params.get("ExpressionAttributeValues", {}),
        ),
        when=times(1),
    )
    faults.server_error(
        "UpdateItem",
        client="dynamodb",
        where=lambda params: ":zero" in params.get("ExpressionAttributeValues", {}),
    )
    with pytest.raises(BackendUnavailableError):
        container.service_service.delete(account, services[0])
    faults.clear()
    container.processor.process(tail.take([account]))
    assert counters(container, account) == (1, 2)

    # WHEN the healer runs after the quiet period
    clock.advance(QUIET + timedelta(seconds=1))

    # THEN BE comes back up to EC
    assert healer.run().outcomes[account] is HealOutcome.HEALED
    assert counters(container, account) == (2, 2)


def test_a_best_effort_counter_above_the_eventual_count_is_brought_down(
    container: Container, healer: Healer, clock: Clock, tail: StreamTail
) -> None:
    # GIVEN BE one above EC (the API never does this; a manual fix-up or a bug could)
    account = new_account(container)
    create(container, account, 1)
    container.processor.process(tail.take([account]))
    container.accounts.give_back(account)
    assert counters(container, account) == (2, 1)

    # WHEN the healer runs after the quiet period THEN BE comes down to EC
    clock.advance(QUIET + timedelta(seconds=1))
    assert healer.run().outcomes[account] is HealOutcome.HEALED
    assert counters(container, account) == (1, 1)


def test_an_account_whose_services_were_all_deleted_goes_back_to_zero(
    container: Container, healer: Healer, clock: Clock, tail: StreamTail
) -> None:
    # GIVEN all services deleted and processed, BE left at 1 by a lost decrement
    account = new_account(container)
    services = create(container, account, 2)
    for service in services:
        container.service_service.delete(account, service)
    # what a lost decrement leaves behind
    container.accounts.give_back(account)
    container.processor.process(tail.take([account]))
    assert counters(container, account) == (1, 0)

    # WHEN healed after the quiet period THEN both are zero
    clock.advance(QUIET + timedelta(seconds=1))
    assert healer.run().outcomes[account] is HealOutcome.HEALED
    assert counters(container, account) == (0, 0)


def test_pending_stream_work_holds_the_heal_back(
    container: Container, healer: Healer, clock: Clock, tail: StreamTail
) -> None:
    # GIVEN a create the processor has not seen yet, with its BE increment lost
    account = new_account(container)
    faults = lose_best_effort_increments(container)
    create(container, account, 1)
    faults.clear()
    clock.advance(QUIET + timedelta(seconds=1))

    # WHEN the healer looks THEN the counters are not comparable yet: it waits
    assert healer.heal(account) is HealOutcome.PENDING
    assert counters(container, account) == (0, 0)

    # WHEN the record is processed and the count has been quiet as long
    container.processor.process(tail.take([account]))
    clock.advance(QUIET + timedelta(seconds=1))

    # THEN it heals
    assert healer.run().outcomes[account] is HealOutcome.HEALED
    assert counters(container, account) == (1, 1)


def test_work_stuck_longer_than_the_limit_is_recovered_from_the_table(
    container: Container, healer: Healer, clock: Clock, tail: StreamTail
) -> None:
    # GIVEN creates and a delete whose stream records were lost (never processed)
    account = new_account(container)
    services = create(container, account, 3)
    container.service_service.delete(account, services[0])
    tail.take([account])  # dropped on the floor

    # WHEN the healer runs after they have been pending past the stuck limit
    clock.advance(STUCK + timedelta(seconds=1))
    first = healer.run().outcomes[account]
    second = healer.run().outcomes[account]

    # THEN the first run recovers the count from the table, the second heals BE to it
    assert first is HealOutcome.RECOVERED
    assert second is HealOutcome.IN_SYNC
    assert counters(container, account) == (2, 2)
    assert container.services.pending(account) == []


def test_an_api_write_between_read_and_heal_wins(
    container: Container, ec_stack: StackOutputs, healer: Healer, clock: Clock
) -> None:
    # GIVEN a quiet account with BE drifted to 1 and EC 0
    account = new_account(container)
    container.accounts.give_back(account)
    clock.advance(QUIET + timedelta(seconds=1))
    # AND a create that lands right before the healer's conditional write
    other = Container(app_settings(ec_stack))
    created: list[str] = []

    def concurrent_create(params: dict[str, Any], **_: Any) -> None:
        if "REMOVE heal_shard" in params.get("UpdateExpression", "") and not created:
            created.append(other.service_service.create(account, "racer").id)

    container.dynamodb.meta.events.register(
        "provide-client-params.dynamodb.UpdateItem", concurrent_create
    )

    # WHEN the healer runs
    outcome = healer.heal(account)

    # THEN its write is refused: the API's increment is kept, BE is not overwritten
    assert created
    assert outcome is HealOutcome.RACED
    assert counters(container, account) == (2, 0)


def test_one_failing_account_does_not_stop_the_run(
    container: Container, healer: Healer, clock: Clock, tail: StreamTail
) -> None:
    # GIVEN two marked accounts; the first one's stuck work cannot be recovered (its
    # transactions keep conflicting), the second one has drifted
    broken, drifted = new_account(container), new_account(container)
    create(container, broken, 1)
    tail.take([broken])  # lost: the work is stuck
    container.accounts.give_back(drifted)
    faults = FaultInjector()
    attach_to_container(container, [faults])
    faults.conflict(
        "TransactWriteItems",
        where=lambda params: f"ACCOUNT#{broken}" in str(params.get("TransactItems")),
    )
    clock.advance(STUCK + timedelta(seconds=1))

    # WHEN the healer runs
    report = healer.run()

    # THEN the broken account is reported and the drifted one is healed all the same
    assert report.outcomes[broken] is HealOutcome.FAILED
    assert report.outcomes[drifted] is HealOutcome.HEALED
    assert counters(container, drifted) == (0, 0)


def test_runs_only_look_at_marked_accounts(
    container: Container, healer: Healer, clock: Clock, tail: StreamTail
) -> None:
    # GIVEN an account healed in sync, then left alone
    account = new_account(container)
    create(container, account, 1)
    container.processor.process(tail.take([account]))
    clock.advance(QUIET + timedelta(seconds=1))
    assert healer.run().outcomes[account] is HealOutcome.IN_SYNC

    # WHEN later runs happen THEN the account is not visited (no scan, no mark)
    for seconds in itertools.islice(itertools.count(60, 60), 3):
        clock.advance(timedelta(seconds=seconds))
        assert account not in healer.run().outcomes
