"""Service use cases: create and delete with the best-effort counter (DESIGN section 4)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime

from chalicelib.entities import Service, timestamp, utc_now
from chalicelib.errors import BackendUnavailableError, NotFoundError, ServiceLimitReachedError
from chalicelib.repositories.accounts import (
    AccountRepository,
    DecrementOutcome,
    IncrementOutcome,
)
from chalicelib.repositories.services import ServiceRepository, SoftDeleteOutcome

logger = logging.getLogger(__name__)


class ServiceService:
    """Creates, renames and deletes services inside their account's limit."""

    def __init__(
        self,
        accounts: AccountRepository,
        services: ServiceRepository,
        *,
        clock: Callable[[], datetime] = utc_now,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self._accounts = accounts
        self._services = services
        self._clock = clock
        self._new_id = new_id

    def create(self, account_id: str, name: str) -> Service:
        """Read the account, put the service, then take a slot of the limit.

        The slot is taken with a conditional increment *after* the put, so the
        best-effort counter never counts a service that does not exist, and
        concurrent creates cannot pass the limit through it.
        """
        account = self._accounts.get(account_id)
        if account is None:
            raise NotFoundError("account", account_id)
        if account.effective_count >= account.max_number_of_services:
            raise ServiceLimitReachedError(account_id, account.max_number_of_services)
        now = timestamp(self._clock())
        service = Service(
            id=self._new_id(), account_id=account_id, name=name, created_at=now, updated_at=now
        )
        self._services.create(service)
        outcome = self._accounts.increment(account_id)
        if outcome is IncrementOutcome.LIMIT_REACHED:
            self._roll_back(service)
            raise ServiceLimitReachedError(account_id, account.max_number_of_services)
        if outcome is IncrementOutcome.ACCOUNT_MISSING:
            self._roll_back(service)
            raise NotFoundError("account", account_id)
        if outcome is not IncrementOutcome.APPLIED:
            # The service exists; the best-effort counter may undercount it until the
            # healer runs. The eventual counter counts it from the stream.
            logger.warning("best-effort increment %s for account %s", outcome.value, account_id)
        return service

    def _roll_back(self, service: Service) -> None:
        if not self._services.remove_uncounted(service.account_id, service.id):
            # Counted already: let the stream processor hard-delete and decrement it.
            # The best-effort counter never counted it: accounted for.
            self._services.soft_delete(
                service.account_id, service.id, request_id=service.id, accounted=True
            )

    def get(self, account_id: str, service_id: str) -> Service:
        service = self._services.get(account_id, service_id)
        if service is None or service.deleted:
            raise NotFoundError("service", service_id)
        return service

    def page(
        self, account_id: str, limit: int, cursor: str | None
    ) -> tuple[list[Service], str | None]:
        if self._accounts.get(account_id) is None:
            raise NotFoundError("account", account_id)
        return self._services.list_live(account_id, limit, cursor)

    def rename(self, account_id: str, service_id: str, name: str) -> Service:
        service = self._services.rename(account_id, service_id, name)
        if service is None:
            raise NotFoundError("service", service_id)
        return service

    def delete(self, account_id: str, service_id: str) -> None:
        """Decrement, then soft-delete; the stream processor hard-deletes later."""
        service = self._services.get(account_id, service_id)
        if service is None or service.deleted:
            raise NotFoundError("service", service_id)
        decrement = self._accounts.decrement(account_id)
        if decrement is DecrementOutcome.UNKNOWN:
            # Not known to have applied: soft-deleting now could leave the best-effort
            # counter above the live services (I1). Keep the service; the counter may
            # undercount by one (safe, healed later) and the client retries.
            raise BackendUnavailableError("delete service")
        decremented = decrement in (DecrementOutcome.APPLIED, DecrementOutcome.OWED)
        outcome = self._services.soft_delete(
            account_id, service_id, request_id=self._new_id(), accounted=decremented
        )
        if outcome is SoftDeleteOutcome.DELETED:
            return
        # A concurrent delete won. Give our decrement back only when the winner's also
        # applied (a double decrement); otherwise ours is the only one and stands.
        if decremented and outcome is SoftDeleteOutcome.GONE_ACCOUNTED:
            self._accounts.give_back(account_id)
        raise NotFoundError("service", service_id)
