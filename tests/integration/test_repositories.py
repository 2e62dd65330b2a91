"""Repository contract: the in-memory fakes and the embedded backend behave alike.

Every test runs twice, against ``tests.fakes`` and against the real repositories on
a private copy of the provisioned table (same keys and indexes, so paging sees only
this module's items). A behaviour the services rely on belongs here; if the fake
and DynamoDB disagree, unit tests over the fake prove nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import boto3
import pytest

from chalicelib.entities import (
    Account,
    Service,
    account_pk,
    count_sk,
    service_sk,
    timestamp,
)
from chalicelib.errors import AccountNotEmptyError, ValidationFailedError
from chalicelib.repositories.accounts import (
    AccountRepository,
    DecrementOutcome,
    IncrementOutcome,
)
from chalicelib.repositories.counts import CountRepository
from chalicelib.repositories.dynamo import from_item, to_item, to_values
from chalicelib.repositories.services import ServiceRepository, SoftDeleteOutcome
from tests.fakes import FakeRepositories

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

    from infrastructure.local.provision import StackOutputs

pytestmark = pytest.mark.stack


@dataclass
class Backend:
    """The repositories under test plus what the stream processor would do."""

    name: str
    accounts: AccountRepository
    services: ServiceRepository
    counts: CountRepository
    #: Raw item (plain values) or None: to see what a write really left behind.
    item: Callable[[str, str], dict[str, Any] | None]
    mark_counted: Callable[[str, str], None]
    hard_delete: Callable[[str, str], None]


# -- the two backends --------------------------------------------------------------------


def _clone_table(client: DynamoDBClient, source: str, name: str) -> None:
    """Create ``name`` with the keys and indexes of ``source`` (no stream)."""
    table = client.describe_table(TableName=source)["Table"]

    def index(definition: Any) -> dict[str, Any]:
        return {
            "IndexName": definition["IndexName"],
            "KeySchema": definition["KeySchema"],
            "Projection": definition["Projection"],
        }

    params: dict[str, Any] = {
        "TableName": name,
        "KeySchema": table["KeySchema"],
        "AttributeDefinitions": table["AttributeDefinitions"],
        "BillingMode": "PAY_PER_REQUEST",
    }
    if table.get("LocalSecondaryIndexes"):
        params["LocalSecondaryIndexes"] = [index(i) for i in table["LocalSecondaryIndexes"]]
    if table.get("GlobalSecondaryIndexes"):
        params["GlobalSecondaryIndexes"] = [index(i) for i in table["GlobalSecondaryIndexes"]]
    client.create_table(**params)
    client.get_waiter("table_exists").wait(
        TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 30}
    )


@pytest.fixture(scope="module")
def contract_table(stack_outputs: StackOutputs) -> Iterator[tuple[DynamoDBClient, str]]:
    client: DynamoDBClient = boto3.client("dynamodb")
    name = f"contract-{uuid.uuid4().hex[:12]}"
    _clone_table(client, stack_outputs.table_name, name)
    yield client, name
    client.delete_table(TableName=name)


def _dynamodb_backend(client: DynamoDBClient, table: str) -> Backend:
    def item(pk: str, sk: str) -> dict[str, Any] | None:
        found = client.get_item(
            TableName=table, Key=to_item({"PK": pk, "SK": sk}), ConsistentRead=True
        ).get("Item")
        return from_item(found) if found else None

    def add_to_count(account_id: str, delta: int) -> None:
        client.update_item(
            TableName=table,
            Key=to_item({"PK": account_pk(account_id), "SK": count_sk()}),
            UpdateExpression="ADD count_value :delta, version :one",
            ConditionExpression="attribute_exists(PK)",
            ExpressionAttributeValues=to_values({":delta": delta, ":one": 1}),
        )

    def mark_counted(account_id: str, service_id: str) -> None:
        client.update_item(
            TableName=table,
            Key=to_item({"PK": account_pk(account_id), "SK": service_sk(service_id)}),
            UpdateExpression="SET counter_processed = :true REMOVE pending_since",
            ConditionExpression="counter_processed = :false AND deleted = :false",
            ExpressionAttributeValues=to_values({":true": True, ":false": False}),
        )
        add_to_count(account_id, 1)

    def hard_delete(account_id: str, service_id: str) -> None:
        old = client.delete_item(
            TableName=table,
            Key=to_item({"PK": account_pk(account_id), "SK": service_sk(service_id)}),
            ReturnValues="ALL_OLD",
        ).get("Attributes", {})
        if from_item(old).get("counter_processed"):
            add_to_count(account_id, -1)

    return Backend(
        name="dynamodb",
        accounts=AccountRepository(client, client, table, heal_shards=4, increment_attempts=3),
        services=ServiceRepository(client, table, conflict_attempts=3, sleep=lambda _: None),
        counts=CountRepository(client, table),
        item=item,
        mark_counted=mark_counted,
        hard_delete=hard_delete,
    )


def _fake_backend() -> Backend:
    fakes = FakeRepositories()
    return Backend(
        name="fake",
        accounts=fakes.accounts,
        services=fakes.services,
        counts=fakes.counts,
        item=fakes.table.get,
        mark_counted=fakes.table.mark_counted,
        hard_delete=fakes.table.hard_delete,
    )


@pytest.fixture(params=["fake", "dynamodb"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "fake":
        return _fake_backend()
    client, table = request.getfixturevalue("contract_table")
    return _dynamodb_backend(client, table)


# -- arrangement helpers --------------------------------------------------------------

_clock = datetime.now(UTC) - timedelta(days=1)


def _next_moment() -> str:
    """Strictly increasing timestamps, so creation order is unambiguous on both."""
    global _clock
    _clock += timedelta(milliseconds=1)
    return timestamp(_clock)


def new_account(backend: Backend, *, limit: int = 5) -> Account:
    now = _next_moment()
    account = Account(
        id=str(uuid.uuid4()),
        username="owner",
        max_number_of_services=limit,
        created_at=now,
        updated_at=now,
    )
    backend.accounts.create(account)
    return account


def new_service(backend: Backend, account_id: str, name: str = "svc") -> Service:
    now = _next_moment()
    service = Service(
        id=str(uuid.uuid4()), account_id=account_id, name=name, created_at=now, updated_at=now
    )
    backend.services.create(service)
    return service


def be_of(backend: Backend, account_id: str) -> int:
    account = backend.accounts.get(account_id, consistent=True)
    assert account is not None
    return account.number_of_services


def account_item(backend: Backend, account_id: str) -> dict[str, Any] | None:
    return backend.item(account_pk(account_id), "METADATA")


def service_item(backend: Backend, account_id: str, service_id: str) -> dict[str, Any] | None:
    return backend.item(account_pk(account_id), service_sk(service_id))


# -- accounts -------------------------------------------------------------------------


def test_account_create_then_get(backend: Backend) -> None:
    account = new_account(backend, limit=3)
    assert backend.accounts.get(account.id) == account
    assert backend.accounts.get(account.id, consistent=True) == account
    count = backend.counts.get(account.id)
    assert count is not None
    assert (count.account_id, count.count_value, count.version) == (account.id, 0, 0)


def test_account_get_missing_is_none(backend: Backend) -> None:
    assert backend.accounts.get(str(uuid.uuid4())) is None
    assert backend.counts.get(str(uuid.uuid4())) is None
    assert backend.counts.all_of(str(uuid.uuid4())) == []


def test_account_update_changes_given_fields(backend: Backend) -> None:
    account = new_account(backend, limit=3)
    updated = backend.accounts.update(account.id, username="renamed", max_number_of_services=None)
    assert updated is not None
    assert (updated.username, updated.max_number_of_services) == ("renamed", 3)
    assert updated.updated_at >= account.updated_at
    assert backend.accounts.get(account.id, consistent=True) == updated


def test_account_update_never_creates(backend: Backend) -> None:
    missing = str(uuid.uuid4())
    assert backend.accounts.update(missing, username="x", max_number_of_services=1) is None
    assert account_item(backend, missing) is None


def test_account_delete_removes_account_and_count(backend: Backend) -> None:
    account = new_account(backend)
    assert backend.accounts.delete(account.id, observed_revision=0) is True
    assert backend.accounts.get(account.id, consistent=True) is None
    assert backend.item(account_pk(account.id), count_sk()) is None
    assert backend.accounts.delete(account.id, observed_revision=0) is False


def test_account_delete_refuses_after_a_counter_write(backend: Backend) -> None:
    # GIVEN an account whose best-effort counter moved after its revision was observed
    account = new_account(backend)
    assert backend.accounts.increment(account.id) is IncrementOutcome.APPLIED

    # WHEN it is deleted with the stale revision THEN it refuses and keeps the account
    with pytest.raises(AccountNotEmptyError):
        backend.accounts.delete(account.id, observed_revision=0)
    assert backend.accounts.get(account.id, consistent=True) is not None


def test_account_pages_in_creation_order_each_once(backend: Backend) -> None:
    # GIVEN five new accounts (other tests' accounts may share the table)
    mine = [new_account(backend).id for _ in range(5)]

    # WHEN every page of two is walked
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(500):
        page, cursor = backend.accounts.page(2, cursor)
        assert len(page) <= 2
        seen += [a.id for a in page]
        if cursor is None:
            break
    else:
        pytest.fail("paging did not end")

    # THEN no account comes twice and ours come in creation order
    assert len(seen) == len(set(seen))
    assert [a for a in seen if a in mine] == mine


def test_account_page_rejects_a_foreign_cursor(backend: Backend) -> None:
    with pytest.raises(ValidationFailedError):
        backend.accounts.page(2, "bm90LWEtY3Vyc29y")


# -- the best-effort counter -------------------------------------------------------------


def test_increment_takes_slots_up_to_the_limit(backend: Backend) -> None:
    account = new_account(backend, limit=2)
    assert backend.accounts.increment(account.id) is IncrementOutcome.APPLIED
    assert backend.accounts.increment(account.id) is IncrementOutcome.APPLIED
    assert backend.accounts.increment(account.id) is IncrementOutcome.LIMIT_REACHED
    assert be_of(backend, account.id) == 2


def test_increment_refused_when_eventual_hint_reached_limit(backend: Backend) -> None:
    account = new_account(backend, limit=2)
    assert backend.accounts.record_eventual_count(account.id, 2, 1) is True
    assert backend.accounts.increment(account.id) is IncrementOutcome.LIMIT_REACHED
    assert be_of(backend, account.id) == 0


def test_increment_with_zero_limit_is_refused(backend: Backend) -> None:
    account = new_account(backend, limit=0)
    assert backend.accounts.increment(account.id) is IncrementOutcome.LIMIT_REACHED


def test_increment_on_missing_account_creates_nothing(backend: Backend) -> None:
    missing = str(uuid.uuid4())
    assert backend.accounts.increment(missing) is IncrementOutcome.ACCOUNT_MISSING
    assert account_item(backend, missing) is None


def test_decrement_stops_at_zero_and_owes_the_rest(backend: Backend) -> None:
    account = new_account(backend)
    backend.accounts.increment(account.id)
    assert backend.accounts.decrement(account.id) is DecrementOutcome.APPLIED
    assert backend.accounts.decrement(account.id) is DecrementOutcome.OWED
    assert be_of(backend, account.id) == 0


def test_an_owed_decrement_is_paid_by_the_next_increment(backend: Backend) -> None:
    # GIVEN a delete that found BE at 0 (its service's increment still in flight)
    account = new_account(backend)
    assert backend.accounts.decrement(account.id) is DecrementOutcome.OWED

    # WHEN the in-flight increment lands THEN it pays the debt: BE stays 0
    assert backend.accounts.increment(account.id) is IncrementOutcome.APPLIED
    assert be_of(backend, account.id) == 0
    # AND the next increment counts again
    assert backend.accounts.increment(account.id) is IncrementOutcome.APPLIED
    assert be_of(backend, account.id) == 1


def test_a_give_back_cancels_a_debt_before_it_raises_the_counter(backend: Backend) -> None:
    # GIVEN a debt (a delete found BE at 0)
    account = new_account(backend)
    assert backend.accounts.decrement(account.id) is DecrementOutcome.OWED

    # WHEN a decrement is given back THEN the debt goes, BE stays 0
    backend.accounts.give_back(account.id)
    assert be_of(backend, account.id) == 0
    # AND the next increment counts
    assert backend.accounts.increment(account.id) is IncrementOutcome.APPLIED
    assert be_of(backend, account.id) == 1


def test_decrement_and_give_back_on_missing_account_create_nothing(backend: Backend) -> None:
    missing = str(uuid.uuid4())
    assert backend.accounts.decrement(missing) is DecrementOutcome.SKIPPED
    backend.accounts.give_back(missing)
    assert account_item(backend, missing) is None


def test_give_back_adds_one(backend: Backend) -> None:
    account = new_account(backend)
    backend.accounts.give_back(account.id)
    assert be_of(backend, account.id) == 1


def test_eventual_hint_never_goes_back(backend: Backend) -> None:
    account = new_account(backend)
    assert backend.accounts.record_eventual_count(account.id, 3, 5) is True
    assert backend.accounts.record_eventual_count(account.id, 1, 4) is False
    assert backend.accounts.record_eventual_count(account.id, 9, 5) is False
    stored = backend.accounts.get(account.id, consistent=True)
    assert stored is not None
    assert (stored.ec_hint, stored.ec_version) == (3, 5)
    assert backend.accounts.record_eventual_count(str(uuid.uuid4()), 1, 1) is False


# -- services ---------------------------------------------------------------------------


def test_service_create_then_get_is_uncounted_and_pending(backend: Backend) -> None:
    account = new_account(backend)
    service = new_service(backend, account.id, "web")
    assert backend.services.get(account.id, service.id) == service
    item = service_item(backend, account.id, service.id)
    assert item is not None
    assert (item["deleted"], item["counter_processed"]) == (False, False)
    assert item["pending_since"] == service.created_at
    assert backend.services.count_pending(account.id) == 1
    assert backend.services.pending(account.id) == [(service.id, service.created_at)]


def test_service_create_never_overwrites(backend: Backend) -> None:
    account = new_account(backend)
    service = new_service(backend, account.id, "first")
    backend.services.create(service.model_copy(update={"name": "second"}))
    stored = backend.services.get(account.id, service.id)
    assert stored is not None
    assert stored.name == "first"


def test_service_get_missing_is_none(backend: Backend) -> None:
    assert backend.services.get(str(uuid.uuid4()), str(uuid.uuid4())) is None


def test_service_rename_live_only_and_never_creates(backend: Backend) -> None:
    account = new_account(backend)
    service = new_service(backend, account.id, "web")
    renamed = backend.services.rename(account.id, service.id, "api")
    assert renamed is not None
    assert (renamed.id, renamed.name) == (service.id, "api")

    backend.services.soft_delete(account.id, service.id, "r1")
    assert backend.services.rename(account.id, service.id, "again") is None

    missing = str(uuid.uuid4())
    assert backend.services.rename(account.id, missing, "x") is None
    assert service_item(backend, account.id, missing) is None


def test_soft_delete_flags_once_and_recognises_its_own_retry(backend: Backend) -> None:
    # GIVEN a counted live service
    account = new_account(backend)
    service = new_service(backend, account.id)
    backend.mark_counted(account.id, service.id)
    assert backend.services.count_pending(account.id) == 0

    # WHEN it is soft-deleted, then deleted again by the same and by another request
    first = backend.services.soft_delete(account.id, service.id, "request-1")
    retried = backend.services.soft_delete(account.id, service.id, "request-1")
    other = backend.services.soft_delete(account.id, service.id, "request-2")

    # THEN the first and its own retry report DELETED, the other GONE_ACCOUNTED
    # (the first request accounted for the service)
    assert (first, retried, other) == (
        SoftDeleteOutcome.DELETED,
        SoftDeleteOutcome.DELETED,
        SoftDeleteOutcome.GONE_ACCOUNTED,
    )
    # AND the item is flagged and pending for the processor
    item = service_item(backend, account.id, service.id)
    assert item is not None
    assert item["deleted"] is True
    assert item["deleted_by"] == "request-1"
    assert backend.services.count_pending(account.id) == 1


def test_soft_delete_loser_learns_the_winner_did_not_account(backend: Backend) -> None:
    # GIVEN a service soft-deleted by a request whose decrement did not apply
    account = new_account(backend)
    service = new_service(backend, account.id)
    backend.services.soft_delete(account.id, service.id, "winner", accounted=False)

    # WHEN another request tries THEN it is told its own decrement must stand
    outcome = backend.services.soft_delete(account.id, service.id, "loser")
    assert outcome is SoftDeleteOutcome.GONE


def test_soft_delete_of_missing_service_creates_nothing(backend: Backend) -> None:
    account = new_account(backend)
    missing = str(uuid.uuid4())
    assert backend.services.soft_delete(account.id, missing, "r") is SoftDeleteOutcome.GONE
    assert service_item(backend, account.id, missing) is None


def test_remove_uncounted_only_removes_uncounted_live_services(backend: Backend) -> None:
    account = new_account(backend)
    uncounted = new_service(backend, account.id, "uncounted")
    counted = new_service(backend, account.id, "counted")
    backend.mark_counted(account.id, counted.id)
    deleted = new_service(backend, account.id, "deleted")
    backend.services.soft_delete(account.id, deleted.id, "r")

    assert backend.services.remove_uncounted(account.id, uncounted.id) is True
    assert service_item(backend, account.id, uncounted.id) is None
    assert backend.services.remove_uncounted(account.id, counted.id) is False
    assert service_item(backend, account.id, counted.id) is not None
    assert backend.services.remove_uncounted(account.id, deleted.id) is False
    assert service_item(backend, account.id, deleted.id) is not None
    assert backend.services.remove_uncounted(account.id, str(uuid.uuid4())) is False


def test_has_any_sees_live_and_pending_deleted_services(backend: Backend) -> None:
    account = new_account(backend)
    assert backend.services.has_any(account.id) is False
    service = new_service(backend, account.id)
    assert backend.services.has_any(account.id) is True
    backend.services.soft_delete(account.id, service.id, "r")
    assert backend.services.has_any(account.id) is True
    backend.hard_delete(account.id, service.id)
    assert backend.services.has_any(account.id) is False


def test_list_live_pages_skip_deleted_services(backend: Backend) -> None:
    # GIVEN six services, two of them soft-deleted
    account = new_account(backend)
    created = [new_service(backend, account.id, f"s{n}") for n in range(6)]
    for gone in (created[1], created[4]):
        backend.services.soft_delete(account.id, gone.id, "r")
    live = sorted(s.id for s in created if s not in (created[1], created[4]))

    # WHEN every page of two is walked
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(20):
        page, cursor = backend.services.list_live(account.id, 2, cursor)
        assert len(page) <= 2
        assert all(not s.deleted for s in page)
        seen += [s.id for s in page]
        if cursor is None:
            break

    # THEN each live service comes once, in key order
    assert seen == live


def test_list_live_rejects_a_foreign_cursor(backend: Backend) -> None:
    account = new_account(backend)
    with pytest.raises(ValidationFailedError):
        backend.services.list_live(account.id, 2, "e30")  # "{}"


def test_pending_lists_oldest_first_and_counts(backend: Backend) -> None:
    account = new_account(backend)
    first = new_service(backend, account.id)
    second = new_service(backend, account.id)
    third = new_service(backend, account.id)
    backend.mark_counted(account.id, second.id)
    assert [s for s, _ in backend.services.pending(account.id)] == [first.id, third.id]
    assert [s for s, _ in backend.services.pending(account.id, limit=1)] == [first.id]
    assert backend.services.count_pending(account.id) == 2


def test_counts_follow_the_processor(backend: Backend) -> None:
    account = new_account(backend)
    service = new_service(backend, account.id)
    backend.mark_counted(account.id, service.id)
    [count] = backend.counts.all_of(account.id)
    assert (count.count_type, count.count_value, count.version) == ("SERVICES", 1, 1)
    backend.services.soft_delete(account.id, service.id, "r")
    backend.hard_delete(account.id, service.id)
    count_after = backend.counts.get(account.id)
    assert count_after is not None
    assert (count_after.count_value, count_after.version) == (0, 2)
