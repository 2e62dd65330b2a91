"""Which stream records matter, and what an item's state asks for (recorded events)."""

from __future__ import annotations

import pytest

from chalicelib.counting.records import (
    Action,
    action_for,
    changes_by_account,
    relevant_change,
)
from chalicelib.event_sources import STREAM_FILTER_PATTERNS
from infrastructure.local.event_sources import FilterCriteria
from tests import events
from tests.events import ACCOUNT_ID, SERVICE_IDS

S1, S2, S3, _ = SERVICE_IDS


def _records(name: str) -> list[dict[str, object]]:
    records: list[dict[str, object]] = events.load(name)["Records"]
    return records


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ({"deleted": False, "counter_processed": False}, Action.COUNT),
        ({"deleted": False, "counter_processed": True}, None),
        ({"deleted": True, "counter_processed": True}, Action.REMOVE_COUNTED),
        ({"deleted": True, "counter_processed": False}, Action.REMOVE_UNCOUNTED),
        ({"deleted": {"BOOL": True}, "counter_processed": {"BOOL": True}}, Action.REMOVE_COUNTED),
        ({"deleted": {"BOOL": False}, "counter_processed": {"BOOL": False}}, Action.COUNT),
        (None, None),
        ({}, None),
    ],
)
def test_action_follows_the_items_current_state(
    state: dict[str, object] | None, expected: Action | None
) -> None:
    # GIVEN an item state (plain or DynamoDB JSON; None: the item is gone)
    # WHEN the action is decided THEN it is the one the state needs
    assert action_for(state) is expected


def test_deltas_count_up_for_a_new_service_and_down_only_for_a_counted_one() -> None:
    assert [a.delta for a in (Action.COUNT, Action.REMOVE_COUNTED, Action.REMOVE_UNCOUNTED)] == [
        1,
        -1,
        0,
    ]


def test_api_batch_yields_service_inserts_and_the_soft_delete_only() -> None:
    # GIVEN the recorded batch of what the API wrote: account + count inserts,
    # three service inserts, BE updates, a soft delete, a rename and a no-op write
    records = _records(events.CREATES_AND_DELETES)
    assert len(records) == 12

    # WHEN each record is classified
    changes = [c for r in records if (c := relevant_change(r)) is not None]

    # THEN only the three INSERTs and the soft delete of service 3 matter
    assert [(c.item_id, action_for(c.image)) for c in changes] == [
        (S1, Action.COUNT),
        (S2, Action.COUNT),
        (S3, Action.COUNT),
        (S3, Action.REMOVE_UNCOUNTED),
    ]
    assert {c.account_id for c in changes} == {ACCOUNT_ID}
    assert all(c.sequence_number for c in changes)


def test_the_processors_own_writes_are_all_ignored() -> None:
    # GIVEN the recorded echo of a processed batch: flag flips, REMOVE, Count, hint
    records = _records(events.PROCESSOR_ECHO)
    assert {r["eventName"] for r in records} == {"MODIFY", "REMOVE"}

    # WHEN classified THEN nothing is relevant
    assert [relevant_change(r) for r in records] == [None] * len(records)


def test_soft_delete_of_a_counted_service_asks_for_a_counted_removal() -> None:
    # GIVEN the recorded delete of a counted service (BE decrement + soft delete)
    records = _records(events.DELETE_COUNTED)

    # WHEN grouped THEN one change: remove service 1 and uncount it
    grouped = changes_by_account(records)
    assert list(grouped) == [ACCOUNT_ID]
    (change,) = grouped[ACCOUNT_ID]
    assert (change.item_id, action_for(change.image)) == (S1, Action.REMOVE_COUNTED)


def test_grouping_keeps_stream_order_within_each_account() -> None:
    # GIVEN interleaved records of two accounts
    a, b = "acc-a", "acc-b"
    records = [
        events.insert(a, "1"),
        events.insert(b, "2"),
        events.soft_delete(a, "1", counted=False),
        events.insert(b, "3"),
    ]

    # WHEN grouped
    grouped = changes_by_account(records)

    # THEN each account's changes keep their order
    assert [(c.item_id, c.image["deleted"]) for c in grouped[a]] == [
        ("1", {"BOOL": False}),
        ("1", {"BOOL": True}),
    ]
    assert [c.item_id for c in grouped[b]] == ["2", "3"]


@pytest.mark.parametrize(
    "record",
    [
        events.remove("a", "1"),
        events.flag_flip("a", "1"),
        # soft-deleted already: a later write to a deleted item is no new delete
        events.stream_record(
            "MODIFY",
            {"PK": {"S": "ACCOUNT#a"}, "SK": {"S": "SERVICE#1"}},
            old=events.service_image("a", "1", deleted=True),
            new=events.service_image("a", "1", deleted=True, counted=True),
        ),
        # an undelete is not a delete
        events.stream_record(
            "MODIFY",
            {"PK": {"S": "ACCOUNT#a"}, "SK": {"S": "SERVICE#1"}},
            old=events.service_image("a", "1", deleted=True),
            new=events.service_image("a", "1"),
        ),
        # keys only (a KEYS_ONLY stream): no image to act on
        events.stream_record("INSERT", {"PK": {"S": "ACCOUNT#a"}, "SK": {"S": "SERVICE#1"}}),
        events.stream_record(
            "INSERT",
            {"PK": {"S": "ACCOUNT#a"}, "SK": {"S": "COUNT#SERVICES"}},
            new={"count_value": {"N": "1"}},
        ),
        {"eventName": "INSERT"},
    ],
    ids=["remove", "flag-flip", "modify-of-deleted", "undelete", "no-image", "count", "garbage"],
)
def test_records_that_change_nothing_are_not_relevant(record: dict[str, object]) -> None:
    assert relevant_change(record) is None


def test_deployed_filter_lets_through_exactly_what_the_processor_acts_on() -> None:
    # GIVEN the deployed FilterCriteria and every recorded stream record
    criteria = FilterCriteria(STREAM_FILTER_PATTERNS)
    records = [
        *_records(events.CREATES_AND_DELETES),
        *_records(events.PROCESSOR_ECHO),
        *_records(events.DELETE_COUNTED),
    ]

    # WHEN both judge each record THEN they agree on every one
    assert [criteria.matches(r) for r in records] == [
        relevant_change(r) is not None for r in records
    ]
    assert sum(criteria.matches(r) for r in records) == 5
