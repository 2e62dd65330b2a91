"""Concurrent requests over real HTTP: the limit holds and BE never overcounts (I1, I3)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
import requests

from chalicelib.repositories.dynamo import from_item
from tests.fixtures_api import partition_items

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

    from infrastructure.local.provision import StackOutputs

pytestmark = pytest.mark.stack
T = TypeVar("T")
TIMEOUT = 30


def all_at_once(jobs: list[Callable[[], T]]) -> list[T]:
    """Run ``jobs`` on their own threads, released together by a barrier."""
    barrier = threading.Barrier(len(jobs), timeout=TIMEOUT)

    def run(job: Callable[[], T]) -> T:
        barrier.wait()
        return job()

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return list(pool.map(run, jobs, timeout=TIMEOUT * 2))


def new_account(api_url: str, limit: int) -> str:
    response = requests.post(
        f"{api_url}/accounts",
        json={"username": "concurrent", "max_number_of_services": limit},
        timeout=TIMEOUT,
    )
    response.raise_for_status()
    account_id: str = response.json()["id"]
    return account_id


def stored(client: DynamoDBClient, table: str, account_id: str) -> tuple[int, list[Any]]:
    """(BE, service items) as stored, read consistently."""
    items = [from_item(i) for i in partition_items(client, table, account_id)]
    [account] = [i for i in items if i["SK"] == "METADATA"]
    services = [i for i in items if str(i["SK"]).startswith("SERVICE#")]
    return int(account["number_of_services"]), services


@pytest.fixture
def table(stack_outputs: StackOutputs) -> str:
    return stack_outputs.table_name


def test_fifty_concurrent_creates_leave_exactly_the_limit(
    api_url: str, dynamodb_client: DynamoDBClient, table: str
) -> None:
    # GIVEN an account with limit 10
    account_id = new_account(api_url, limit=10)

    def create(n: int) -> Callable[[], int]:
        def post() -> int:
            return requests.post(
                f"{api_url}/services",
                json={"account_id": account_id, "name": f"s{n}"},
                timeout=TIMEOUT,
            ).status_code

        return post

    # WHEN 50 creates arrive at once
    statuses = Counter(all_at_once([create(n) for n in range(50)]))

    # THEN exactly 10 succeed, the rest are 409, and the table agrees
    assert statuses == Counter({200: 10, 409: 40})
    be, services = stored(dynamodb_client, table, account_id)
    assert be == 10
    assert len(services) == 10
    assert not any(s["deleted"] for s in services)
    listed = requests.get(
        f"{api_url}/accounts/{account_id}/services", params={"limit": "100"}, timeout=TIMEOUT
    ).json()["items"]
    assert len(listed) == 10


def test_concurrent_deletes_of_the_same_services_decrement_once_each(
    api_url: str, dynamodb_client: DynamoDBClient, table: str
) -> None:
    # GIVEN an account with 10 services; fewer concurrent decrements (8) than BE, so
    # the counter never touches 0 (see test_delete_give_back_after_a_skipped_winner_*)
    account_id = new_account(api_url, limit=10)
    service_ids = [
        requests.post(
            f"{api_url}/services",
            json={"account_id": account_id, "name": f"s{n}"},
            timeout=TIMEOUT,
        ).json()["id"]
        for n in range(10)
    ]

    def delete(service_id: str) -> Callable[[], tuple[str, int]]:
        def send() -> tuple[str, int]:
            status = requests.delete(
                f"{api_url}/services/{service_id}",
                params={"ownerAccountId": account_id},
                timeout=TIMEOUT,
            ).status_code
            return service_id, status

        return send

    # WHEN four of them are each deleted twice at once
    doomed = service_ids[:4]
    results = all_at_once([delete(s) for s in doomed for _ in range(2)])

    # THEN each doomed service got exactly one 200 (the other 404), and BE == 6 live
    by_service: dict[str, list[int]] = {}
    for service_id, status in results:
        by_service.setdefault(service_id, []).append(status)
    assert {s: sorted(v) for s, v in by_service.items()} == {s: [200, 404] for s in doomed}
    be, services = stored(dynamodb_client, table, account_id)
    live = [s for s in services if not s["deleted"]]
    assert len(live) == 6
    assert be == 6


def test_mixed_concurrent_creates_and_deletes_never_overcount(
    api_url: str, dynamodb_client: DynamoDBClient, table: str
) -> None:
    # GIVEN an account at 3 of 5, with its services known
    account_id = new_account(api_url, limit=5)
    existing = [
        requests.post(
            f"{api_url}/services", json={"account_id": account_id, "name": "old"}, timeout=TIMEOUT
        ).json()["id"]
        for _ in range(3)
    ]

    def create() -> int:
        return requests.post(
            f"{api_url}/services", json={"account_id": account_id, "name": "new"}, timeout=TIMEOUT
        ).status_code

    def delete(service_id: str) -> Callable[[], int]:
        return lambda: (
            requests.delete(
                f"{api_url}/services/{service_id}",
                params={"ownerAccountId": account_id},
                timeout=TIMEOUT,
            ).status_code
        )

    # WHEN 10 creates and the 3 deletes race
    jobs: list[Callable[[], int]] = [create for _ in range(10)]
    jobs += [delete(s) for s in existing]
    statuses = all_at_once(jobs)

    # THEN only contract statuses; deletes all succeeded; the limit held; BE is exact
    assert set(statuses) <= {200, 409}
    assert statuses[10:] == [200, 200, 200]
    be, services = stored(dynamodb_client, table, account_id)
    live = [s for s in services if not s["deleted"]]
    assert len(live) <= 5
    assert be == len(live)
    assert statuses[:10].count(200) == len([s for s in live if s["name"] == "new"])
