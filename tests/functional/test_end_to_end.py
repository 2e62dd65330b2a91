"""End to end on the local stack: HTTP API (waitress) + stream and tier-1 pollers running
in threads, as ``make run`` runs them, against a table of this module's own.

Creates and deletes go through HTTP; the test then waits (bounded poll) until the
stream is drained and checks the counters, as a client would see them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
import requests

import app as app_module
from chalicelib.bootstrap import use_container
from chalicelib.entities import account_pk, service_sk
from infrastructure.local.event_sources import (
    FunctionIdentity,
    ScheduleRunner,
    SqsOnFailureDestination,
    SqsPoller,
    SqsSettings,
    StreamPoller,
    StreamSettings,
    run_until_stopped,
)
from infrastructure.local.provision import StackOutputs
from tests.events.live import ClockedContainer, app_settings, isolated_stack
from tests.faults import FaultInjector, attach_to_container, expression_contains, times

DRAIN_TIMEOUT_SECONDS = 30.0


@pytest.fixture(scope="module")
def ec_stack(backend_url: str) -> StackOutputs:
    return isolated_stack(backend_url, "ec-e2e")


@pytest.fixture
def container(ec_stack: StackOutputs) -> Iterator[ClockedContainer]:
    installed = ClockedContainer(app_settings(ec_stack))
    use_container(installed)
    yield installed
    use_container(None)


@pytest.fixture
def event_sources(container: ClockedContainer, ec_stack: StackOutputs) -> Iterator[None]:
    """The stream mapping (deployed settings, faster idle polling) and the tier-1
    consumer, each in a thread, delivering to the app's handlers."""
    stop = threading.Event()
    stream = StreamPoller(
        app_module.handle_stream_records,
        container.streams,
        ec_stack.stream_arn,
        settings=replace(
            StreamSettings.from_mapping(), idle_poll_seconds=0.05, retry_backoff_seconds=0.05
        ),
        on_failure=SqsOnFailureDestination(container.sqs, ec_stack.tier1_queue_url),
    )
    tier1 = SqsPoller(
        app_module.handle_dead_letters,
        container.sqs,
        ec_stack.tier1_queue_url,
        settings=SqsSettings(idle_poll_seconds=0.1),
    )
    threads = [
        threading.Thread(target=stream.run, args=(stop,), daemon=True),
        threading.Thread(
            target=run_until_stopped,
            args=(tier1.poll_once, stop),
            kwargs={"idle_seconds": 0.1, "name": "tier1"},
            daemon=True,
        ),
    ]
    for thread in threads:
        thread.start()
    yield
    stop.set()
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive(), f"{thread.name} did not stop"


def wait_until(condition: Any, what: str, timeout: float = DRAIN_TIMEOUT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"not {what} after {timeout} s")


@pytest.mark.usefixtures("event_sources")
def test_counts_converge_to_the_live_services_and_the_healer_aligns_both_counters(
    api: requests.Session, container: ClockedContainer
) -> None:
    # GIVEN two accounts, and two best-effort increments lost on the way (BE undercounts)
    accounts = [
        api.post("/accounts", json={"username": f"e2e-{n}", "max_number_of_services": 100}).json()[
            "id"
        ]
        for n in range(2)
    ]
    faults = FaultInjector()
    attach_to_container(container, [faults])
    faults.ambiguous(
        "UpdateItem",
        send=False,
        client="dynamodb_no_retry",
        where=expression_contains("UpdateExpression", "number_of_services + :delta"),
        when=times(2, skip=5),
    )

    # WHEN N services are created and M deleted through HTTP, some deletes right after
    # their create (before the stream got to them), some after they were counted
    created: dict[str, list[str]] = {a: [] for a in accounts}
    for n in range(24):
        account = accounts[n % 2]
        response = api.post("/services", json={"account_id": account, "name": f"svc-{n}"})
        assert response.status_code == 200, response.text
        created[account].append(response.json()["id"])
    deleted = {a: created[a][:3] for a in accounts}  # early: likely before counting
    for account, ids in deleted.items():
        for service_id in ids:
            assert api.delete(f"/services/{service_id}?ownerAccountId={account}").ok
    wait_until(lambda: _drained(container, accounts), "drained")
    for account in accounts:  # late: certainly after counting
        service_id = created[account][-1]
        assert api.delete(f"/services/{service_id}?ownerAccountId={account}").ok
        deleted[account].append(service_id)
    live = {a: len(created[a]) - len(deleted[a]) for a in accounts}

    # THEN once drained, the eventual count is N - M per account and deletes are hard
    wait_until(lambda: _drained(container, accounts), "drained")
    assert faults.count() == 2
    for account in accounts:
        assert _count(container, account) == live[account] == 8
        assert all(_item(container, account, s) is None for s in deleted[account])
        usage = api.get(f"/accounts/{account}").json()
        assert usage["number_of_services"] <= live[account]
    assert (
        sum(api.get(f"/accounts/{a}").json()["number_of_services"] for a in accounts)
        == sum(live.values()) - 2
    )

    # WHEN the scheduled healer runs once the accounts have been quiet long enough
    container.ahead = timedelta(seconds=container.settings.heal_quiet_seconds + 1)
    schedule = ScheduleRunner(
        app_module.heal_counters,
        interval_seconds=300,
        rule_arn="arn:aws:events:us-east-1:123456789012:rule/heal",
        function=_identity(),
    )
    run = schedule.run_once()

    # THEN the best-effort counter equals the eventual count on every account
    assert not run.failed, run.error
    for account in accounts:
        body = api.get(f"/accounts/{account}").json()
        assert body["number_of_services"] == _count(container, account) == live[account]


def _identity() -> FunctionIdentity:
    return FunctionIdentity.for_handler(
        "distributed-counter", "local", "heal_counters", "us-east-1", "123456789012"
    )


def _count(container: ClockedContainer, account_id: str) -> int:
    count = container.counts.get(account_id)
    assert count is not None
    return count.count_value


def _drained(container: ClockedContainer, accounts: list[str]) -> bool:
    return all(container.services.count_pending(a) == 0 for a in accounts)


def _item(container: ClockedContainer, account_id: str, service_id: str) -> Any:
    return container.dynamodb.get_item(
        TableName=container.settings.table_name,
        Key={"PK": {"S": account_pk(account_id)}, "SK": {"S": service_sk(service_id)}},
        ConsistentRead=True,
    ).get("Item")
