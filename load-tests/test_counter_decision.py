"""Micro-benchmark: the counter decision of one create, in process (no backend, no HTTP).

This is what the original project's "counter latency under 0.5 ms" can only mean:
the work the API does to decide and record a create, with the backend taken out.
``ServiceService.create`` runs over the in-memory repository fakes (``tests/fakes.py``):
read the account, check ``max(BE, EC)`` against the limit, put the service, take a
slot with the conditional increment.

Run with ``make bench`` (part of the report) or
``pytest load-tests/test_counter_decision.py``. Benchmarks never assert timings.
"""

from __future__ import annotations

import sys
from itertools import count
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chalicelib.entities import Account, timestamp, utc_now
from chalicelib.errors import ServiceLimitReachedError
from chalicelib.services.services import ServiceService
from tests.fakes import FakeRepositories

pytest.importorskip("pytest_benchmark")


def _account(limit: int, *, used: int = 0) -> tuple[FakeRepositories, ServiceService, str]:
    fakes = FakeRepositories()
    now = timestamp(utc_now())
    account = Account(
        id="acct-1",
        username="bench",
        max_number_of_services=limit,
        number_of_services=used,
        created_at=now,
        updated_at=now,
    )
    fakes.accounts.create(account)
    ids = count()
    service = ServiceService(fakes.accounts, fakes.services, new_id=lambda: f"svc-{next(ids)}")
    return fakes, service, account.id


def test_create_decision_accepts(benchmark):  # type: ignore[no-untyped-def]
    # GIVEN an account far below its limit
    _, service, account_id = _account(limit=1_000_000_000)
    # WHEN one create is decided and recorded (read, check, put, increment)
    created = benchmark(service.create, account_id, "svc")
    # THEN it was accepted
    assert created.account_id == account_id


def test_create_decision_refuses_at_the_limit(benchmark):  # type: ignore[no-untyped-def]
    # GIVEN an account at its limit
    _, service, account_id = _account(limit=5, used=5)

    def refused() -> bool:
        try:
            service.create(account_id, "svc")
        except ServiceLimitReachedError:
            return True
        return False

    # WHEN a create is decided THEN it is refused before any write
    assert benchmark(refused)


def test_limit_check_alone(benchmark):  # type: ignore[no-untyped-def]
    # GIVEN the account as read; WHEN the pure decision max(BE, EC) >= limit is taken
    now = timestamp(utc_now())
    account = Account(
        id="a",
        username="b",
        max_number_of_services=5000,
        number_of_services=10,
        ec_hint=12,
        created_at=now,
        updated_at=now,
    )
    # THEN it says "below the limit"
    assert benchmark(lambda: account.effective_count >= account.max_number_of_services) is False
