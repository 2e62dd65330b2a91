"""AccountService over in-memory fakes: lifecycle, delete guard, usage, counts."""

from __future__ import annotations

import uuid

import pytest

from chalicelib.entities import Account, account_pk, count_sk
from chalicelib.errors import AccountNotEmptyError, NotFoundError
from chalicelib.services.accounts import AccountService
from chalicelib.services.services import ServiceService
from tests.fakes import FakeRepositories

DEFAULT_LIMIT = 7


@pytest.fixture
def repos() -> FakeRepositories:
    return FakeRepositories()


@pytest.fixture
def accounts(repos: FakeRepositories) -> AccountService:
    return AccountService(repos.accounts, repos.services, repos.counts, default_limit=DEFAULT_LIMIT)


@pytest.fixture
def services(repos: FakeRepositories) -> ServiceService:
    return ServiceService(repos.accounts, repos.services)


# -- create / get / update --------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "expected"),
    [(None, DEFAULT_LIMIT), (0, 0), (3, 3)],
    ids=["default", "zero", "explicit"],
)
def test_create_uses_default_limit_only_when_none_given(
    accounts: AccountService, repos: FakeRepositories, requested: int | None, expected: int
) -> None:
    # WHEN an account is created with or without a limit
    account = accounts.create("alice", requested)

    # THEN the limit is the requested one (0 included) or the default; counters start at 0
    assert account.max_number_of_services == expected
    assert account.number_of_services == 0
    assert accounts.get(account.id) == account
    # AND its Count item exists at 0
    count = repos.table.get(account_pk(account.id), count_sk())
    assert count is not None
    assert count["count_value"] == 0


def test_get_missing_account_is_not_found(accounts: AccountService) -> None:
    missing = str(uuid.uuid4())
    with pytest.raises(NotFoundError) as raised:
        accounts.get(missing)
    assert (raised.value.kind, raised.value.identifier) == ("account", missing)


def test_update_without_changes_reads_and_does_not_write(
    accounts: AccountService, repos: FakeRepositories
) -> None:
    # GIVEN an account
    account = accounts.create("alice", 3)

    # WHEN it is updated with nothing to change
    same = accounts.update(account.id, username=None, max_number_of_services=None)

    # THEN it comes back unchanged and no write happened
    assert same == account
    assert repos.accounts.called("update") == 0


def test_update_changes_given_fields_only(accounts: AccountService) -> None:
    # GIVEN an account
    account = accounts.create("alice", 3)

    # WHEN only the limit is changed
    updated = accounts.update(account.id, username=None, max_number_of_services=9)

    # THEN the name stays and the limit changes
    assert (updated.username, updated.max_number_of_services) == ("alice", 9)
    assert accounts.get(account.id).max_number_of_services == 9


def test_update_never_creates_an_account(accounts: AccountService, repos: FakeRepositories) -> None:
    # GIVEN no account
    missing = str(uuid.uuid4())

    # WHEN it is updated
    with pytest.raises(NotFoundError):
        accounts.update(missing, username="bob", max_number_of_services=None)

    # THEN nothing was created
    assert repos.table.items == {}


def test_page_walks_accounts_in_creation_order(accounts: AccountService) -> None:
    # GIVEN five accounts
    created = [accounts.create(f"user{n}", 1).id for n in range(5)]

    # WHEN paged two at a time
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(10):
        page, cursor = accounts.page(2, cursor)
        assert len(page) <= 2
        seen += [a.id for a in page]
        if cursor is None:
            break

    # THEN each comes once, in creation order
    assert seen == created


# -- delete -----------------------------------------------------------------------------


def test_delete_empty_account_removes_account_and_count(
    accounts: AccountService, repos: FakeRepositories
) -> None:
    # GIVEN an account without services
    account = accounts.create("alice", 3)

    # WHEN it is deleted
    accounts.delete(account.id)

    # THEN no item of it is left
    assert [k for k in repos.table.items if k[0] == account_pk(account.id)] == []


def test_delete_missing_account_is_not_found(accounts: AccountService) -> None:
    with pytest.raises(NotFoundError):
        accounts.delete(str(uuid.uuid4()))


def test_delete_refused_while_a_live_service_exists(
    accounts: AccountService, services: ServiceService
) -> None:
    # GIVEN an account with a live service
    account = accounts.create("alice", 3)
    services.create(account.id, "web")

    # WHEN it is deleted THEN 409 and it still exists
    with pytest.raises(AccountNotEmptyError):
        accounts.delete(account.id)
    assert accounts.get(account.id).id == account.id


def test_delete_refused_while_a_deleted_service_awaits_processing(
    accounts: AccountService, services: ServiceService, repos: FakeRepositories
) -> None:
    # GIVEN an account whose only service is soft-deleted but not yet hard-deleted
    account = accounts.create("alice", 3)
    service = services.create(account.id, "web")
    services.delete(account.id, service.id)

    # WHEN it is deleted THEN 409 (the processor still has work on it)
    with pytest.raises(AccountNotEmptyError):
        accounts.delete(account.id)

    # AND once the processor hard-deleted the service, the account can go
    repos.table.hard_delete(account.id, service.id)
    accounts.delete(account.id)
    with pytest.raises(NotFoundError):
        accounts.get(account.id)


def test_delete_racing_another_delete_is_not_found(
    accounts: AccountService, repos: FakeRepositories
) -> None:
    # GIVEN another request deletes the account between our checks and our delete
    account = accounts.create("alice", 3)

    def concurrent_delete() -> None:
        repos.table.delete(account_pk(account.id), "METADATA")
        repos.table.delete(account_pk(account.id), count_sk())

    repos.services.script.interleave("has_any", concurrent_delete)

    # WHEN we delete it THEN 404
    with pytest.raises(NotFoundError):
        accounts.delete(account.id)


# -- usage / counts ---------------------------------------------------------------------


def given_counters(repos: FakeRepositories, account: Account, *, be: int, ec: int) -> None:
    key = (account_pk(account.id), "METADATA")
    repos.table.items[key]["number_of_services"] = be
    repos.table.items[(account_pk(account.id), count_sk())]["count_value"] = ec


@pytest.mark.parametrize(
    ("limit", "be", "ec", "effective", "remaining"),
    [
        pytest.param(10, 3, 5, 5, 5, id="eventual-ahead"),
        pytest.param(10, 6, 4, 6, 4, id="best-effort-ahead"),
        pytest.param(4, 6, 2, 6, 0, id="over-limit-clamped"),
    ],
)
def test_usage_reports_both_counters_and_uses_the_larger(
    accounts: AccountService,
    repos: FakeRepositories,
    limit: int,
    be: int,
    ec: int,
    effective: int,
    remaining: int,
) -> None:
    # GIVEN an account whose counters differ
    account = accounts.create("alice", limit)
    given_counters(repos, account, be=be, ec=ec)

    # WHEN its usage is read
    usage = accounts.usage(account.id)

    # THEN both counters, the larger as effective, and a non-negative remainder
    assert (usage.number_of_services, usage.count_value) == (be, ec)
    assert (usage.effective, usage.remaining) == (effective, remaining)
    assert usage.max_number_of_services == limit
    assert usage.pending == 0


def test_usage_counts_pending_creations_and_deletions(
    accounts: AccountService, services: ServiceService, repos: FakeRepositories
) -> None:
    # GIVEN one uncounted service, one counted one, and one counted then deleted
    account = accounts.create("alice", 10)
    services.create(account.id, "new")
    counted = services.create(account.id, "counted")
    repos.table.mark_counted(account.id, counted.id)
    deleted = services.create(account.id, "deleted")
    repos.table.mark_counted(account.id, deleted.id)
    services.delete(account.id, deleted.id)

    # WHEN its usage is read
    usage = accounts.usage(account.id)

    # THEN two are pending (the new one and the deletion)
    assert usage.pending == 2
    assert usage.count_value == 2
    assert usage.number_of_services == 2


def test_usage_of_missing_account_is_not_found(accounts: AccountService) -> None:
    with pytest.raises(NotFoundError):
        accounts.usage(str(uuid.uuid4()))


def test_counts_lists_the_services_count(accounts: AccountService) -> None:
    # GIVEN an account
    account = accounts.create("alice", 3)

    # WHEN its counts are listed
    counts = accounts.counts(account.id)

    # THEN the SERVICES count at 0
    assert [(c.count_type, c.count_value, c.version) for c in counts] == [("SERVICES", 0, 0)]


def test_counts_of_missing_account_is_not_found(accounts: AccountService) -> None:
    with pytest.raises(NotFoundError):
        accounts.counts(str(uuid.uuid4()))
