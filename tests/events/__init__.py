"""Recorded Lambda events (JSON fixtures) and small builders of stream records.

The ``*.json`` files were recorded from the embedded backend through the local event
sources' event builders (``python -m tests.events.record``) and then sanitised: fixed
ids, timestamps, event ids and ARNs. They keep exactly what Lambda would deliver, so
handler tests see the real shape, including the records the processor must ignore.

Fixture ids (substitute fresh ones with :func:`load` to keep tests independent):

* :data:`ACCOUNT_ID` -- the account every fixture's services belong to.
* :data:`SERVICE_IDS` -- its services, in creation order.

The builders make single records in the same shape for tests that need many.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

EVENTS_DIR: Final = Path(__file__).resolve().parent

ACCOUNT_ID: Final = "00000000-0000-4000-8000-0000000000a1"
SERVICE_IDS: Final = tuple(f"00000000-0000-4000-8000-00000000051{n}" for n in range(1, 5))
STREAM_ARN: Final = (
    "arn:aws:dynamodb:us-east-1:123456789012:table/distributed-counter"
    "/stream/2024-01-01T00:00:00.000"
)
SHARD_ID: Final = "shardId-00000001704067200000-00000000"
TIER1_QUEUE_ARN: Final = "arn:aws:sqs:us-east-1:123456789012:distributed-counter-dlq-tier1"

#: The fixtures, by what they hold.
CREATES_AND_DELETES: Final = "stream_creates_and_deletes.json"
PROCESSOR_ECHO: Final = "stream_processor_echo.json"
DELETE_COUNTED: Final = "stream_delete_counted.json"
TIER1_MESSAGE: Final = "sqs_tier1_on_failure.json"
SCHEDULE: Final = "schedule_heal.json"


def load(name: str, substitutions: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The event in ``name``, with every occurrence of each key replaced by its value.

    ``load(CREATES_AND_DELETES, {ACCOUNT_ID: fresh_id})`` gives the same batch for an
    account of the test's own.
    """
    text = (EVENTS_DIR / name).read_text(encoding="utf-8")
    for old, new in (substitutions or {}).items():
        text = text.replace(old, new)
    event: dict[str, Any] = json.loads(text)
    return event


# -- builders -----------------------------------------------------------------------------

_sequence = itertools.count(1_000_000)


def next_sequence_number() -> str:
    """A fresh, increasing sequence number (process-wide)."""
    return f"4{next(_sequence):020d}"


def service_image(
    account_id: str,
    service_id: str,
    *,
    deleted: bool = False,
    counted: bool = False,
    name: str = "svc",
) -> dict[str, Any]:
    """A Service item in DynamoDB JSON, as a stream image carries it."""
    image: dict[str, Any] = {
        "PK": {"S": f"ACCOUNT#{account_id}"},
        "SK": {"S": f"SERVICE#{service_id}"},
        "id": {"S": service_id},
        "account_id": {"S": account_id},
        "name": {"S": name},
        "created_at": {"S": "2024-01-01T00:00:00.000000Z"},
        "updated_at": {"S": "2024-01-01T00:00:00.000000Z"},
        "deleted": {"BOOL": deleted},
        "counter_processed": {"BOOL": counted},
    }
    if deleted or not counted:
        image["pending_since"] = {"S": "2024-01-01T00:00:00.000000Z"}
    return image


def stream_record(
    event_name: str,
    keys: Mapping[str, Any],
    *,
    new: Mapping[str, Any] | None = None,
    old: Mapping[str, Any] | None = None,
    sequence_number: str | None = None,
) -> dict[str, Any]:
    """One Lambda-shaped DynamoDB stream record."""
    body: dict[str, Any] = {
        "ApproximateCreationDateTime": 1704067200.0,
        "Keys": dict(keys),
    }
    if new is not None:
        body["NewImage"] = dict(new)
    if old is not None:
        body["OldImage"] = dict(old)
    body["SequenceNumber"] = sequence_number or next_sequence_number()
    body["SizeBytes"] = 512
    body["StreamViewType"] = "NEW_AND_OLD_IMAGES"
    return {
        "eventID": f"{int(body['SequenceNumber']):032x}",
        "eventName": event_name,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": body,
        "eventSourceARN": STREAM_ARN,
    }


def _service_keys(account_id: str, service_id: str) -> dict[str, Any]:
    return {"PK": {"S": f"ACCOUNT#{account_id}"}, "SK": {"S": f"SERVICE#{service_id}"}}


def insert(account_id: str, service_id: str) -> dict[str, Any]:
    """The INSERT of a new, uncounted Service."""
    return stream_record(
        "INSERT",
        _service_keys(account_id, service_id),
        new=service_image(account_id, service_id),
    )


def soft_delete(account_id: str, service_id: str, *, counted: bool) -> dict[str, Any]:
    """The MODIFY that flags a Service deleted (``counted``: as its images say)."""
    return stream_record(
        "MODIFY",
        _service_keys(account_id, service_id),
        old=service_image(account_id, service_id, counted=counted),
        new=service_image(account_id, service_id, deleted=True, counted=counted),
    )


def flag_flip(account_id: str, service_id: str) -> dict[str, Any]:
    """The processor's own MODIFY: ``counter_processed`` false -> true."""
    return stream_record(
        "MODIFY",
        _service_keys(account_id, service_id),
        old=service_image(account_id, service_id),
        new=service_image(account_id, service_id, counted=True),
    )


def remove(account_id: str, service_id: str) -> dict[str, Any]:
    """The REMOVE of a hard-deleted Service."""
    return stream_record(
        "REMOVE",
        _service_keys(account_id, service_id),
        old=service_image(account_id, service_id, deleted=True, counted=True),
    )


def stream_event(*records: Mapping[str, Any]) -> dict[str, Any]:
    """A stream batch as the handler receives it."""
    return {"Records": [dict(r) for r in records]}
