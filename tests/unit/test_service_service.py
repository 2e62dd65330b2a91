"""ServiceService over in-memory fakes: limits, rollback, increments, the delete flow."""

from __future__ import annotations

import itertools
import uuid

import pytest

from chalicelib.entities import Account, account_pk, service_sk, timestamp, utc_now
from chalicelib.errors import BackendUnavailableError, NotFoundError, ServiceLimitReachedError
from chalicelib.repositories.accounts import DecrementOutcome, IncrementOutcome
from chalicelib.repositories.services import SoftDeleteOutcome
from chalicelib.services.services import ServiceService
from tests.fakes import FakeRepositories


@pytest.fixture
def repos() -> FakeRepositories:
    return FakeRepositories()


@pytest.fixture
def services(repos: FakeRepositories) -> ServiceService:
    ids = (f"00000000-0000-4000-8000-{n:012d}" for n in itertools.count(1))
    return ServiceService(repos.accounts, repos.services, new_id=lambda: next(ids))


def given_account(repos: FakeRepositories, *, limit: int, be: int = 0, ec_hint: int = 0) -> Account:
    now = timestamp(utc_now())
    account = Account(
        id=str(uuid.uuid4()),
        username="owner",
        max_number_of_services=limit,
        number_of_services=be,
        ec_hint=ec_hint,
        ec_version=1 if ec_hint else 0,
        created_at=now,
        updated_at=now,
    )
    repos.accounts.create(account)
    repos.accounts.calls.clear()
    return account


def be_of(repos: FakeRepositories, account_id: str) -> int:
    account = repos.accounts.get(account_id)
    assert account is not None
    return account.number_of_services


def stored_service(repos: FakeRepositories, account_id: str, service_id: str) -> dict[str, object]:
    item = repos.table.get(account_pk(account_id), service_sk(service_id))
    assert item is not None, "service item missing"
    return item


def service_items(repos: FakeRepositories, account_id: str) -> list[dict[str, object]]:
    return repos.table.partition(account_pk(account_id), "SERVICE#")


# -- create: limit checks --------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "be", "ec_hint"),
    [
        pytest.param(3, 3, 0, id="best-effort-at-limit"),
        pytest.param(3, 0, 3, id="eventual-hint-at-limit"),
        pytest.param(3, 1, 4, id="hint-above-limit"),
        pytest.param(0, 0, 0, id="zero-limit"),
    ],
)
def test_create_refuses_when_max_of_counters_reaches_limit(
    repos: FakeRepositories, services: ServiceService, limit: int, be: int, ec_hint: int
) -> None:
    # GIVEN an account whose max(BE, ec_hint) is at or above its limit
    account = given_account(repos, limit=limit, be=be, ec_hint=ec_hint)

    # WHEN a service is created
    with pytest.raises(ServiceLimitReachedError) as raised:
        services.create(account.id, "web")

    # THEN it is refused before any write: no item, no counter change
    assert raised.value.limit == limit
    assert service_items(repos, account.id) == []
    assert repos.services.called("create") == 0
    assert repos.accounts.called("increment") == 0
    assert be_of(repos, account.id) == be


def test_create_below_limit_puts_service_then_takes_a_slot(
    repos: FakeRepositories, services: ServiceService
) -> None:
    # GIVEN an account with one slot left (BE 1, hint 2, limit 3)
    account = given_account(repos, limit=3, be=1, ec_hint=2)

    # WHEN a service is created
    service = services.create(account.id, "web")

    # THEN the service exists uncounted and pending, and BE took one slot after the put
    assert [c for c, _ in repos.accounts.calls] == ["get", "increment"]
    item = stored_service(repos, account.id, service.id)
    assert item["name"] == "web"
    assert item["deleted"] is False
    assert item["counter_processed"] is False
    assert item["pending_since"] == service.created_at
    assert be_of(repos, account.id) == 2
    assert repos.services.called("create") == 1


def test_create_on_missing_account_is_not_found_and_writes_nothing(
    repos: FakeRepositories, services: ServiceService
) -> None:
    # GIVEN no account
    missing = str(uuid.uuid4())

    # WHEN a service is created for it
    with pytest.raises(NotFoundError) as raised:
        services.create(missing, "web")

    # THEN 404 (account), and nothing was written
    assert raised.value.kind == "account"
    assert repos.table.items == {}


# -- create: the conditional increment -----------------------------------------------


def test_create_rolls_back_uncounted_service_with_hard_delete_when_limit_taken_concurrently(
    repos: FakeRepositories, services: ServiceService
) -> None:
    # GIVEN an account with one slot left, which a concurrent create takes between
    # our read and our increment
    account = given_account(repos, limit=2, be=1)
    repos.accounts.script.push("increment", IncrementOutcome.LIMIT_REACHED)

    # WHEN a service is created
    with pytest.raises(ServiceLimitReachedError):
        services.create(account.id, "web")

    # THEN the service is hard-deleted (never counted) and BE is unchanged
    assert service_items(repos, account.id) == []
    assert repos.services.called("remove_uncounted") == 1
    assert repos.services.called("soft_delete") == 0
    assert be_of(repos, account.id) == 1


def test_create_rolls_back_counted_service_with_soft_delete(
    repos: FakeRepositories, services: ServiceService
) -> None:
    # GIVEN the stream processor counts the new service before the increment fails
    account = given_account(repos, limit=2, be=1)

    def processor_counts_it() -> None:
        [item] = service_items(repos, account.id)
        repos.table.mark_counted(account.id, str(item["id"]))

    repos.accounts.script.push(
        "increment", IncrementOutcome.LIMIT_REACHED, before=processor_counts_it
    )

    # WHEN a service is created
    with pytest.raises(ServiceLimitReachedError):
        services.create(account.id, "web")

    # THEN it is soft-deleted (the processor will uncount and hard-delete it), not removed
    [item] = service_items(repos, account.id)
    assert item["deleted"] is True
    assert item["counter_processed"] is True
    assert "pending_since" in item
    assert be_of(repos, account.id) == 1


def test_create_rolls_back_and_reports_404_when_account_vanishes(
    repos: FakeRepositories, services: ServiceService
) -> None:
    # GIVEN the account is deleted between our read and our increment
    account = given_account(repos, limit=5)
    repos.accounts.script.push("increment", IncrementOutcome.ACCOUNT_MISSING)

    # WHEN a service is created
    with pytest.raises(NotFoundError) as raised:
        services.create(account.id, "web")

    # THEN 404 (account) and no orphan service is left
    assert raised.value.kind == "account"
    assert service_items(repos, account.id) == []


@pytest.mark.parametrize(
    ("outcome", "applied"),
    [
        pytest.param(IncrementOutcome.UNKNOWN, False, id="unknown-not-applied"),
        pytest.param(IncrementOutcome.UNKNOWN, True, id="unknown-applied"),
        pytest.param(IncrementOutcome.NOT_APPLIED, False, id="throttled-out"),
    ],
)
def test_create_returns_service_when_increment_outcome_is_not_known_or_not_applied(
    repos: FakeRepositories, services: ServiceService, outcome: IncrementOutcome, applied: bool
) -> None:
    # GIVEN the increment fails ambiguously (maybe applied) or is throttled out
    account = given_account(repos, limit=5, be=2)
    repos.accounts.script.push("increment", outcome, apply=applied)

    # WHEN a service is created
    service = services.create(account.id, "web")

    # THEN the caller gets the service, it is kept, and BE was not incremented twice
    assert stored_service(repos, account.id, service.id)["deleted"] is False
    assert repos.accounts.called("increment") == 1
    assert be_of(repos, account.id) == (3 if applied else 2)
    assert repos.services.called("remove_uncounted") == 0


def test_create_increment_refuses_slot_taken_after_the_read(
    repos: FakeRepositories, services: ServiceService
) -> None:
    # GIVEN an account with one slot left, taken by a concurrent create's increment
    # after our read passed the limit check
    account = given_account(repos, limit=3, be=2)
    repos.accounts.script.interleave("increment", lambda: repos.accounts.increment(account.id))

    # WHEN a service is created
    with pytest.raises(ServiceLimitReachedError):
        services.create(account.id, "web")

    # THEN the increment's own condition refused: BE stays at the limit, ours rolled back
    assert be_of(repos, account.id) == 3
    assert service_items(repos, account.id) == []


# -- get / rename / page ------------------------------------------------------------


def test_get_hides_soft_deleted_service(repos: FakeRepositories, services: ServiceService) -> None:
    # GIVEN a soft-deleted service
    account = given_account(repos, limit=5)
    service = services.create(account.id, "web")
    services.delete(account.id, service.id)

    # WHEN it is read or renamed THEN it is not found
    with pytest.raises(NotFoundError):
        services.get(account.id, service.id)
    with pytest.raises(NotFoundError):
        services.rename(account.id, service.id, "other")


def test_rename_changes_only_the_name(repos: FakeRepositories, services: ServiceService) -> None:
    # GIVEN a live service
    account = given_account(repos, limit=5)
    service = services.create(account.id, "web")

    # WHEN it is renamed
    renamed = services.rename(account.id, service.id, "api")

    # THEN the name changed; counters did not
    assert renamed.name == "api"
    assert renamed.id == service.id
    assert services.get(account.id, service.id).name == "api"
    assert be_of(repos, account.id) == 1


def test_page_of_missing_account_is_not_found(
    repos: FakeRepositories, services: ServiceService
) -> None:
    with pytest.raises(NotFoundError) as raised:
        services.page(str(uuid.uuid4()), 10, None)
    assert raised.value.kind == "account"


def test_page_lists_live_services_only(repos: FakeRepositories, services: ServiceService) -> None:
    # GIVEN three services, one of them deleted
    account = given_account(repos, limit=5)
    created = [services.create(account.id, f"s{n}") for n in range(3)]
    services.delete(account.id, created[1].id)

    # WHEN the account's services are paged two at a time
    first, cursor = services.page(account.id, 2, None)
    rest, end = services.page(account.id, 2, cursor) if cursor else ([], None)

    # THEN the live ones come back once each
    assert [s.id for s in first + rest] == [created[0].id, created[2].id]
    assert end is None


# -- delete -------------------------------------------------------------------------


def test_delete_decrements_then_soft_deletes(
    repos: FakeRepositories, services: ServiceService
) -> None:
    # GIVEN a live service counted by BE
    account = given_account(repos, limit=5)
    service = services.create(account.id, "web")
    repos.accounts.calls.clear()

    # WHEN it is deleted
    services.delete(account.id, service.id)

    # THEN BE went down by one and the item is flagged deleted and pending
    assert [c for c, _ in repos.accounts.calls] == ["decrement"]
    assert be_of(repos, account.id) == 0
    item = stored_service(repos, account.id, service.id)
    assert item["deleted"] is True
    assert "pending_since" in item


@pytest.mark.parametrize("already_deleted", [False, True], ids=["missing", "already-deleted"])
def test_delete_of_missing_or_deleted_service_is_404_without_decrement(
    repos: FakeRepositories, services: ServiceService, already_deleted: bool
) -> None:
    # GIVEN a missing or already soft-deleted service
    account = given_account(repos, limit=5)
    service_id = str(uuid.uuid4())
    if already_deleted:
        service_id = services.create(account.id, "web").id
        services.delete(account.id, service_id)
    before = be_of(repos, account.id)
    repos.accounts.calls.clear()

    # WHEN it is deleted
    with pytest.raises(NotFoundError) as raised:
        services.delete(account.id, service_id)

    # THEN 404 (service), and the counter was not touched
    assert raised.value.kind == "service"
    assert repos.accounts.called("decrement") == 0
    assert be_of(repos, account.id) == before


def test_delete_with_undercounted_best_effort_counter_stays_at_zero(
    repos: FakeRepositories, services: ServiceService
) -> None:
    # GIVEN a service BE never counted (its increment failed ambiguously, unapplied)
    account = given_account(repos, limit=5)
    repos.accounts.script.push("increment", IncrementOutcome.UNKNOWN)
    service = services.create(account.id, "web")
    assert be_of(repos, account.id) == 0

    # WHEN it is deleted
    services.delete(account.id, service.id)

    # THEN the decrement is owed (guard > 0), BE stays 0, the service is deleted
    assert repos.accounts.called("decrement") == 1
    assert be_of(repos, account.id) == 0
    assert stored_service(repos, account.id, service.id)["deleted"] is True


@pytest.mark.parametrize(
    ("decrement", "gives_back"),
    [
        pytest.param(DecrementOutcome.APPLIED, True, id="applied"),
        pytest.param(DecrementOutcome.SKIPPED, False, id="skipped"),
    ],
)
def test_concurrent_delete_gives_the_decrement_back_only_when_it_was_applied(
    repos: FakeRepositories,
    services: ServiceService,
    decrement: DecrementOutcome,
    gives_back: bool,
) -> None:
    # GIVEN another delete of the same service wins between our read and our soft-delete
    account = given_account(repos, limit=5)
    service = services.create(account.id, "web")
    repos.accounts.script.push("decrement", decrement, apply=decrement is DecrementOutcome.APPLIED)
    repos.services.script.push("soft_delete", SoftDeleteOutcome.GONE_ACCOUNTED)

    # WHEN we delete it
    with pytest.raises(NotFoundError):
        services.delete(account.id, service.id)

    # THEN an applied decrement is given back exactly once (net BE unchanged here)
    assert repos.accounts.called("give_back") == (1 if gives_back else 0)
    assert be_of(repos, account.id) == 1


def test_delete_whose_decrement_is_unknown_keeps_the_service_and_answers_503(
    repos: FakeRepositories, services: ServiceService
) -> None:
    # GIVEN a service, and a decrement whose outcome is unknown (attempts exhausted)
    account = given_account(repos, limit=5)
    service = services.create(account.id, "web")
    repos.accounts.script.push("decrement", DecrementOutcome.UNKNOWN, apply=False)

    # WHEN it is deleted THEN 503, and the service stays live: if the decrement did
    # not apply, soft-deleting would leave BE above the live services (I1)
    with pytest.raises(BackendUnavailableError):
        services.delete(account.id, service.id)
    assert stored_service(repos, account.id, service.id)["deleted"] is False
    assert repos.accounts.called("give_back") == 0


def test_two_deletes_of_one_service_decrement_once(
    repos: FakeRepositories, services: ServiceService
) -> None:
    # GIVEN a service, and a second delete that reads it before the first soft-deletes
    account = given_account(repos, limit=5)
    keep = services.create(account.id, "keep")
    service = services.create(account.id, "web")
    assert be_of(repos, account.id) == 2

    def first_delete_wins() -> None:
        services.delete(account.id, service.id)

    repos.accounts.script.push(
        "decrement", DecrementOutcome.APPLIED, before=first_delete_wins, apply=True
    )

    # WHEN the second delete continues
    with pytest.raises(NotFoundError):
        services.delete(account.id, service.id)

    # THEN BE went down by exactly one overall, and the other service is untouched
    assert be_of(repos, account.id) == 1
    assert services.get(account.id, keep.id).id == keep.id


def test_delete_give_back_after_a_skipped_winner_never_overcounts(
    repos: FakeRepositories, services: ServiceService
) -> None:
    # GIVEN one service counted by BE (BE == live == 1)
    account = given_account(repos, limit=5)
    service = services.create(account.id, "web")

    # AND a second delete that runs after our decrement (so its own decrement finds
    # BE at 0 and is SKIPPED) and soft-deletes before us
    def other_delete_wins() -> None:
        services.delete(account.id, service.id)

    repos.services.script.interleave("soft_delete", other_delete_wins)

    # WHEN our delete continues, loses the soft delete and gives its decrement back
    with pytest.raises(NotFoundError):
        services.delete(account.id, service.id)

    # THEN BE must not exceed the live services (I1): 0 live, so BE 0
    live = [i for i in service_items(repos, account.id) if not i["deleted"]]
    assert len(live) == 0
    assert be_of(repos, account.id) <= len(live)
