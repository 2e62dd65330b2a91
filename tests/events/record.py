"""Record the JSON fixtures of this folder from the embedded backend.

Run ``python -m tests.events.record`` from the repository root. It starts moto's
server on a free port of 127.0.0.1, provisions the data template, drives the app's
services (create/delete) with fixed ids, and captures what the local event sources
deliver to the handlers -- unfiltered, so the batches also hold the records the
processor must ignore. Each captured batch is then handed to the real handler, so the
next batch holds the processor's own writes. Finally the events are sanitised (fixed
timestamps, sequence numbers, event ids, ARNs, message ids) and written next to this
file. Re-recording should change nothing but what the code changed.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests import events  # noqa: E402

_ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?Z")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_EPOCH = 1704067200.0  # 2024-01-01T00:00:00Z


class Capture:
    """A handler stand-in that keeps each event (as JSON) and then calls ``then``."""

    def __init__(self, then: Callable[[dict[str, Any], Any], object] | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self._then = then

    def __call__(self, event: dict[str, Any], context: Any) -> object:
        self.events.append(json.loads(json.dumps(event)))
        return self._then(event, context) if self._then else None


def _fixed_ids() -> Iterator[str]:
    yield events.ACCOUNT_ID
    yield from events.SERVICE_IDS
    for n in itertools.count(1):
        yield f"00000000-0000-4000-8000-{n:012d}"


def sanitise(captured: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Replace run-specific values with fixed ones, keeping their order."""
    text = json.dumps(captured)
    fixed = set(events.SERVICE_IDS) | {events.ACCOUNT_ID}
    replacements: dict[str, str] = {}
    for n, moment in enumerate(sorted(set(_ISO.findall(text)))):
        stamp = datetime.fromtimestamp(_EPOCH, UTC) + timedelta(milliseconds=n)
        # Keep each value's shape: seconds, milliseconds or microseconds.
        digits = len(moment) - len("2024-01-01T00:00:00Z") - 1
        fraction = f".{stamp.microsecond:06d}"[: digits + 1] if digits > 0 else ""
        replacements[moment] = stamp.strftime("%Y-%m-%dT%H:%M:%S") + fraction + "Z"
    found_sequences = re.findall(r'SequenceNumber\\?": \\?"(\d+)', text)
    sequences = sorted(set(found_sequences), key=int)
    for n, sequence in enumerate(sequences, start=1):
        replacements[sequence] = f"4{n:020d}"
    for n, found in enumerate(dict.fromkeys(_UUID.findall(text)), start=1):
        if found not in fixed:
            replacements[found] = f"ffffffff-0000-4000-8000-{n:012d}"
    stream_arns = set(re.findall(r"arn:aws:dynamodb:[^\"]+/stream/[^\"\\]+", text))
    replacements |= dict.fromkeys(stream_arns, events.STREAM_ARN)
    shards = set(re.findall(r"shardId-[0-9a-zA-Z-]+", text))
    replacements |= dict.fromkeys(shards, events.SHARD_ID)
    for old in sorted(replacements, key=len, reverse=True):
        text = text.replace(old, replacements[old])
    cleaned: list[dict[str, Any]] = json.loads(text)
    for event in cleaned:
        _scrub(event)
    return cleaned


def _scrub(node: Any) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "ApproximateCreationDateTime":
                node[key] = _EPOCH
            elif key in {"receiptHandle", "md5OfBody"}:
                node[key] = f"sanitised-{key}"
            elif key in {"SentTimestamp", "ApproximateFirstReceiveTimestamp"}:
                node[key] = str(int(_EPOCH * 1000))
            elif key == "body" and isinstance(value, str):
                body = json.loads(value)
                _scrub(body)
                node[key] = json.dumps(body)
            else:
                _scrub(value)
    elif isinstance(node, list):
        for item in node:
            _scrub(item)


def _event_ids(records: list[dict[str, Any]]) -> None:
    # Stable event ids (from the sanitised sequence numbers) and sizes (from the
    # sanitised keys and images; the recorded ones vary with timestamp digits).
    for record in records:
        body = record["dynamodb"]
        record["eventID"] = f"{int(body['SequenceNumber']):032x}"
        images = {k: body[k] for k in ("Keys", "NewImage", "OldImage") if k in body}
        body["SizeBytes"] = len(json.dumps(images, sort_keys=True, separators=(",", ":")))


def write(name: str, event: dict[str, Any]) -> None:
    if "Records" in event and event["Records"] and "dynamodb" in event["Records"][0]:
        _event_ids(event["Records"])
    path = events.EVENTS_DIR / name
    path.write_text(json.dumps(event, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    print(f"wrote {path.relative_to(REPO_ROOT)}")


def main() -> int:
    from infrastructure.local.backend import EmbeddedBackend, aws_environment

    with EmbeddedBackend(port=0) as backend:
        os.environ.update(aws_environment(backend.url))
        return _record(backend.url)


def _record(url: str) -> int:
    from infrastructure.local import event_sources as local
    from infrastructure.local.provision import cloudformation_client, provision

    outputs = provision(cloudformation_client(url))
    os.environ.update(outputs.app_environment())

    import app as app_module
    from chalicelib import event_sources as mapping
    from chalicelib.bootstrap import Container, use_container
    from chalicelib.services.accounts import AccountService
    from chalicelib.services.services import ServiceService
    from chalicelib.settings import Settings

    container = Container(
        Settings(
            table_name=outputs.table_name,
            stream_arn=outputs.stream_arn,
            tier1_queue_name=outputs.tier1_queue_name,
            tier2_queue_name=outputs.tier2_queue_name,
        )
    )
    use_container(container)
    ids = _fixed_ids()
    accounts = AccountService(
        container.accounts, container.services, container.counts, default_limit=10,
        new_id=lambda: next(ids),
    )  # fmt: skip
    services = ServiceService(container.accounts, container.services, new_id=lambda: next(ids))
    settings = replace(
        local.StreamSettings.from_mapping(),
        batching_window_seconds=0,
        retry_backoff_seconds=0,
        idle_poll_seconds=0,
        batch_size=1000,
        filter_criteria=local.FilterCriteria([]),
    )
    identity = local.FunctionIdentity.for_handler(
        "distributed-counter", "local", "handle_stream_records", "us-east-1", "123456789012"
    )
    captured = Capture(then=app_module.handle_stream_records)
    poller = local.StreamPoller(
        captured, container.streams, outputs.stream_arn, settings=settings, function=identity
    )

    def one_batch() -> None:
        result = poller.poll_once()
        assert result.outcome is local.StreamOutcome.SUCCEEDED, result

    # Batch 1: what the API writes. Three creates, one deleted before it is counted,
    # a rename and a no-op write (moto emits MODIFY for it; DynamoDB may not).
    account = accounts.create("fixture-owner", 10)
    s1, s2, s3 = (services.create(account.id, f"service-{n}") for n in (1, 2, 3))
    services.delete(account.id, s3.id)
    services.rename(account.id, s2.id, "service-2-renamed")
    container.dynamodb.update_item(
        TableName=outputs.table_name,
        Key={"PK": {"S": f"ACCOUNT#{account.id}"}, "SK": {"S": f"SERVICE#{s1.id}"}},
        UpdateExpression="SET #n = :same",
        ExpressionAttributeNames={"#n": "name"},
        ExpressionAttributeValues={":same": {"S": "service-1"}},
    )
    one_batch()
    # Batch 2: the processor's own writes (flag flips, Count, hint, REMOVE).
    one_batch()
    # Batch 3: delete of a counted service (the decrement and the soft delete).
    services.delete(account.id, s1.id)
    one_batch()
    one_batch()  # its echo, not kept

    # Tier 1: a batch the function keeps failing on goes to the OnFailure queue.
    services.create(account.id, "service-4")
    failing = replace(
        settings,
        maximum_retry_attempts=0,
        bisect_on_error=False,
        filter_criteria=local.FilterCriteria.from_mapping_property(
            mapping.stream_mapping_properties()["FilterCriteria"]
        ),
    )

    def poison(event: dict[str, Any], context: Any) -> object:
        raise RuntimeError("poison")

    failing_poller = local.StreamPoller(
        poison,
        container.streams,
        outputs.stream_arn,
        settings=failing,
        function=identity,
        on_failure=local.SqsOnFailureDestination(container.sqs, outputs.tier1_queue_url),
        checkpoints=dict(poller.checkpoints),
    )
    for _ in range(5):
        if failing_poller.poll_once().outcome is local.StreamOutcome.DISCARDED:
            break
    tier1 = Capture(then=app_module.handle_dead_letters)
    sqs_poller = local.SqsPoller(tier1, container.sqs, outputs.tier1_queue_url)
    assert sqs_poller.poll_once().outcome is local.SqsOutcome.SUCCEEDED

    schedule = Capture()
    local.ScheduleRunner(
        schedule,
        interval_seconds=300,
        rule_arn="arn:aws:events:us-east-1:123456789012:rule/distributed-counter-local-heal_counters-event",
        function=identity,
    ).run_once()

    # One pass over everything, so a value maps to the same replacement everywhere.
    batch1, batch2, batch3, message, scheduled = sanitise(
        [*captured.events[:3], *tier1.events, *schedule.events]
    )
    write(events.CREATES_AND_DELETES, batch1)
    write(events.PROCESSOR_ECHO, batch2)
    write(events.DELETE_COUNTED, batch3)
    write(events.TIER1_MESSAGE, message)
    write(events.SCHEDULE, scheduled)
    count = container.counts.get(account.id)
    if count is None or count.count_value != 2:  # s2 and s4 are live
        raise SystemExit(f"unexpected count after recording: {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
