"""Account use cases: lifecycle, listing, usage and counts."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime

from chalicelib.entities import Account, Count, timestamp, utc_now
from chalicelib.errors import AccountNotEmptyError, NotFoundError
from chalicelib.repositories.accounts import AccountRepository
from chalicelib.repositories.counts import CountRepository
from chalicelib.repositories.services import ServiceRepository
from chalicelib.schemas import Usage


class AccountService:
    """Accounts and their limits. Counters are never writable through here."""

    def __init__(
        self,
        accounts: AccountRepository,
        services: ServiceRepository,
        counts: CountRepository,
        *,
        default_limit: int,
        clock: Callable[[], datetime] = utc_now,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self._accounts = accounts
        self._services = services
        self._counts = counts
        self._default_limit = default_limit
        self._clock = clock
        self._new_id = new_id

    def create(self, username: str, max_number_of_services: int | None) -> Account:
        now = timestamp(self._clock())
        account = Account(
            id=self._new_id(),
            username=username,
            max_number_of_services=(
                self._default_limit if max_number_of_services is None else max_number_of_services
            ),
            created_at=now,
            updated_at=now,
        )
        self._accounts.create(account)
        return account

    def get(self, account_id: str) -> Account:
        account = self._accounts.get(account_id)
        if account is None:
            raise NotFoundError("account", account_id)
        return account

    def page(self, limit: int, cursor: str | None) -> tuple[list[Account], str | None]:
        return self._accounts.page(limit, cursor)

    def update(
        self, account_id: str, *, username: str | None, max_number_of_services: int | None
    ) -> Account:
        if username is None and max_number_of_services is None:
            return self.get(account_id)
        account = self._accounts.update(
            account_id, username=username, max_number_of_services=max_number_of_services
        )
        if account is None:
            raise NotFoundError("account", account_id)
        return account

    def delete(self, account_id: str) -> None:
        """Delete an account with no services at all (live or awaiting processing)."""
        found = self._accounts.get_with_revision(account_id)
        if found is None:
            raise NotFoundError("account", account_id)
        if self._services.has_any(account_id):
            raise AccountNotEmptyError(account_id)
        # Conditional on the revision read before the check: a create that slips in
        # between bumps it and makes the delete fail instead of orphaning its service.
        if not self._accounts.delete(account_id, observed_revision=found[1]):
            raise NotFoundError("account", account_id)

    def usage(self, account_id: str) -> Usage:
        account = self._accounts.get(account_id, consistent=True)
        if account is None:
            raise NotFoundError("account", account_id)
        count = self._counts.get(account_id)
        count_value = count.count_value if count else account.ec_hint
        effective = max(account.number_of_services, count_value)
        return Usage(
            account_id=account.id,
            max_number_of_services=account.max_number_of_services,
            number_of_services=account.number_of_services,
            count_value=count_value,
            effective=effective,
            remaining=max(0, account.max_number_of_services - effective),
            pending=self._services.count_pending(account_id),
        )

    def counts(self, account_id: str) -> list[Count]:
        counts = self._counts.all_of(account_id)
        if not counts and self._accounts.get(account_id) is None:
            raise NotFoundError("account", account_id)
        return counts
