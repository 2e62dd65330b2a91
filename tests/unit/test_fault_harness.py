"""The fault harness's pure parts: schedules, predicates, the log, installing a container.

Its botocore behaviour (refusals, ambiguous sends, retries) is tested against the
embedded backend in ``tests/functional/test_faults_api.py``.
"""

from __future__ import annotations

import pytest
from botocore.exceptions import EndpointConnectionError
from botocore.stub import Stubber

from chalicelib import bootstrap
from chalicelib.bootstrap import Container
from chalicelib.settings import Settings
from tests.calls import CallCounter
from tests.faults import (
    FaultInjector,
    Injection,
    InjectionLog,
    always,
    expression_contains,
    installed,
    key_matches,
    nth,
    probability,
    times,
)


def fired(schedule: object, n: int = 10) -> list[int]:
    assert callable(schedule)
    return [i for i in range(1, n + 1) if schedule(i)]


def test_schedules_pick_the_right_attempts() -> None:
    assert fired(always(), 3) == [1, 2, 3]
    assert fired(nth(3)) == [3]
    assert fired(times(2)) == [1, 2]
    assert fired(times(2, skip=3)) == [4, 5]
    assert fired(times(0)) == []


def test_invalid_schedules_are_refused() -> None:
    with pytest.raises(ValueError, match="1-based"):
        nth(0)
    with pytest.raises(ValueError, match=">= 0"):
        times(-1)
    with pytest.raises(ValueError, match="probability"):
        probability(1.5)


def test_probability_is_reproducible_from_its_seed() -> None:
    first = fired(probability(0.3, seed=42), 200)
    again = fired(probability(0.3, seed=42), 200)
    other = fired(probability(0.3, seed=43), 200)
    assert first == again
    assert first != other
    assert 30 <= len(first) <= 90  # about 60 of 200


def test_injector_seeds_its_probability_schedules() -> None:
    a, b = FaultInjector(seed=5), FaultInjector(seed=5)
    assert fired(a.probability(0.5), 50) == fired(b.probability(0.5), 50)


def test_key_matches_exact_and_prefix() -> None:
    params = {"Key": {"PK": {"S": "ACCOUNT#1"}, "SK": {"S": "SERVICE#9"}}}
    assert key_matches(PK="ACCOUNT#1")(params)
    assert key_matches(PK="ACCOUNT#1", SK="SERVICE#*")(params)
    assert not key_matches(SK="METADATA")(params)
    assert not key_matches(PK="ACCOUNT#*", X="y")(params)
    assert key_matches(PK="A*")({"Item": {"PK": {"S": "AB"}}})


def test_expression_contains() -> None:
    predicate = expression_contains("UpdateExpression", "deleted = :true")
    assert predicate({"UpdateExpression": "SET deleted = :true, x = :y"})
    assert not predicate({"UpdateExpression": "SET x = :y"})
    assert not predicate({})


def test_log_counts_by_kind_operation_and_rule() -> None:
    log = InjectionLog()
    log.record(Injection("throttle", "GetItem", "r1"))
    log.record(Injection("throttle", "PutItem", "r1"))
    log.record(Injection("ambiguous", "PutItem", "r2", backend_status=200))
    assert log.count() == len(log) == 3
    assert log.count("throttle") == 2
    assert log.count(operation="PutItem") == 2
    assert log.count(rule="r2") == 1
    assert [i.applied for i in log] == [False, False, True]
    log.clear()
    assert len(log) == 0


def test_rules_are_counted_and_can_be_cleared() -> None:
    faults = FaultInjector()
    rule = faults.throttle("GetItem", when=nth(2))
    assert faults.rules == [rule]
    assert (rule.matched, rule.fired) == (0, 0)
    faults.clear()
    assert faults.rules == []


def test_ambiguous_accepts_only_lost_response_errors() -> None:
    with pytest.raises(ValueError, match="ambiguous"):
        FaultInjector().ambiguous("PutItem", error=EndpointConnectionError)  # type: ignore[arg-type]


def test_installed_swaps_the_app_container_and_restores_it() -> None:
    # GIVEN a container and a call counter
    container = Container(Settings())
    calls = CallCounter()

    # WHEN installed THEN the app uses it, with the counter on both of its clients
    with installed(container, calls, FaultInjector()):
        assert bootstrap.container() is container
        for name in ("dynamodb", "dynamodb_no_retry"):
            client = getattr(container, name)
            with Stubber(client) as stub:  # answers at before-call: no backend needed
                stub.add_response("get_item", {})
                client.get_item(TableName="t", Key={"PK": {"S": "x"}})
        stats = calls.snapshot()
        assert (
            stats.total("GetItem", "dynamodb") == stats.total("GetItem", "dynamodb_no_retry") == 1
        )

    # AND afterwards the app builds its own container again
    assert bootstrap.container() is not container
    bootstrap.use_container(None)
