"""The app's event handlers, invoked as Lambda would (``chalice.test.Client``) with the
recorded events of ``tests/events/``, against the embedded backend.

Each test gives the recorded account a fresh id, puts the table in the state the
recorded batch left it in, and invokes the handler with the recording.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from chalice.test import Client

from app import app
from chalicelib.bootstrap import Container, use_container
from chalicelib.counting.replay import RangeFailedError
from chalicelib.entities import Account
from chalicelib.repositories.dynamo import from_item
from infrastructure.local.provision import StackOutputs
from tests import events
from tests.calls import CallCounter
from tests.events import ACCOUNT_ID, SERVICE_IDS
from tests.events.live import ClockedContainer, StreamTail, app_settings, isolated_stack
from tests.faults import FaultInjector, attach_to_container

REPO_ROOT = Path(__file__).resolve().parents[2]
S1, S2, S3, S4 = SERVICE_IDS


@pytest.fixture(scope="module")
def ec_stack(backend_url: str) -> StackOutputs:
    return isolated_stack(backend_url, "ec-handlers")


@pytest.fixture
def container(ec_stack: StackOutputs) -> Iterator[ClockedContainer]:
    installed = ClockedContainer(app_settings(ec_stack))
    # Clients first: the test client patches the environment during an invocation.
    for client in (installed.dynamodb, installed.dynamodb_no_retry, installed.streams):
        assert client is not None
    use_container(installed)
    yield installed
    use_container(None)


@pytest.fixture
def calls(container: Container) -> CallCounter:
    counter = CallCounter()
    attach_to_container(container, [counter])
    return counter


@pytest.fixture
def lambda_client() -> Iterator[Any]:
    with Client(app, project_dir=str(REPO_ROOT)) as client:
        yield client.lambda_


@pytest.fixture
def account_id() -> str:
    return str(uuid.uuid4())


def recorded(name: str, account_id: str) -> dict[str, Any]:
    return events.load(name, {ACCOUNT_ID: account_id})


def restore_table(container: Container, event: dict[str, Any]) -> None:
    """Put the recorded items' last images in the table (the state the batch left)."""
    last: dict[tuple[str, str], dict[str, Any] | None] = {}
    for record in event["Records"]:
        keys = record["dynamodb"]["Keys"]
        last[(keys["PK"]["S"], keys["SK"]["S"])] = record["dynamodb"].get("NewImage")
    for (pk, sk), image in last.items():
        key = {"PK": {"S": pk}, "SK": {"S": sk}}
        if image is None:
            container.dynamodb.delete_item(TableName=container.settings.table_name, Key=key)
        else:
            container.dynamodb.put_item(TableName=container.settings.table_name, Item=image)


def given_recorded_account(container: Container, account_id: str) -> None:
    """The recorded account, created through its repository (Account + Count items)."""
    now = "2024-01-01T00:00:00.000000Z"
    container.accounts.create(
        Account(
            id=account_id,
            username="fixture-owner",
            max_number_of_services=10,
            created_at=now,
            updated_at=now,
        )
    )


def counters(container: Container, account_id: str) -> tuple[int, int, int]:
    """(best-effort, eventual, hint)."""
    account = container.accounts.get(account_id, consistent=True)
    count = container.counts.get(account_id)
    assert account is not None
    assert count is not None
    return account.number_of_services, count.count_value, account.ec_hint


def service(container: Container, account_id: str, service_id: str) -> dict[str, Any] | None:
    item = container.dynamodb.get_item(
        TableName=container.settings.table_name,
        Key={"PK": {"S": f"ACCOUNT#{account_id}"}, "SK": {"S": f"SERVICE#{service_id}"}},
        ConsistentRead=True,
    ).get("Item")
    return from_item(item) if item else None


def test_the_recorded_batches_of_a_service_lifecycle_count_exactly(
    container: Container, lambda_client: Any, calls: CallCounter, account_id: str
) -> None:
    # GIVEN the table as the API left it after the recorded batch: 3 creates, 1 of them
    # deleted before processing, a rename and a no-op write
    given_recorded_account(container, account_id)
    batch = recorded(events.CREATES_AND_DELETES, account_id)
    restore_table(container, batch)

    # WHEN the stream handler is invoked with it
    with calls.measure() as stats:
        response = lambda_client.invoke("handle_stream_records", batch)

    # THEN two services are counted, the deleted one is gone, in one transaction
    assert response.payload == {"batchItemFailures": []}
    assert stats.total("TransactWriteItems") == 1
    assert counters(container, account_id) == (2, 2, 2)
    assert service(container, account_id, S3) is None
    assert service(container, account_id, S1)["counter_processed"] is True  # type: ignore[index]

    # WHEN the recorded echo of that processing (flag flips, Count, hint, REMOVE) arrives
    with calls.measure() as stats:
        response = lambda_client.invoke(
            "handle_stream_records", recorded(events.PROCESSOR_ECHO, account_id)
        )

    # THEN it costs nothing
    assert response.payload == {"batchItemFailures": []}
    assert stats.total() == 0

    # WHEN service 1 is deleted through the API and its recorded batch is delivered
    container.service_service.delete(account_id, S1)
    response = lambda_client.invoke(
        "handle_stream_records", recorded(events.DELETE_COUNTED, account_id)
    )

    # THEN it is hard-deleted and uncounted
    assert response.payload == {"batchItemFailures": []}
    assert service(container, account_id, S1) is None
    assert counters(container, account_id) == (1, 1, 1)


def test_a_recorded_batch_delivered_twice_counts_once(
    container: Container, lambda_client: Any, account_id: str
) -> None:
    # GIVEN the recorded API batch, processed once
    given_recorded_account(container, account_id)
    batch = recorded(events.CREATES_AND_DELETES, account_id)
    restore_table(container, batch)
    lambda_client.invoke("handle_stream_records", batch)

    # WHEN Lambda delivers it again, with an INSERT duplicated as moto sometimes does
    duplicated = {"Records": [*batch["Records"], batch["Records"][2]]}
    response = lambda_client.invoke("handle_stream_records", duplicated)

    # THEN nothing changes
    assert response.payload == {"batchItemFailures": []}
    assert counters(container, account_id) == (2, 2, 2)


def test_the_dead_letter_handler_replays_the_recorded_message_range(
    container: Container, ec_stack: StackOutputs, lambda_client: Any, account_id: str
) -> None:
    # GIVEN services whose stream batch failed, and the recorded tier-1 message
    # pointing at their range of the live stream
    tail = StreamTail(container.streams, ec_stack.stream_arn)
    given_recorded_account(container, account_id)
    for n in range(3):
        container.service_service.create(account_id, f"s{n}")
    records = tail.take([account_id])
    message = _pointing_at(recorded(events.TIER1_MESSAGE, account_id), records, container)

    # WHEN the tier-1 handler is invoked with it (twice: SQS is at-least-once)
    first = lambda_client.invoke("handle_dead_letters", message)
    second = lambda_client.invoke("handle_dead_letters", message)

    # THEN the range was replayed through the processor, once
    assert first.payload is None
    assert second.payload is None
    assert counters(container, account_id)[1] == 3


def test_the_dead_letter_handler_fails_while_the_range_cannot_be_applied(
    container: Container, ec_stack: StackOutputs, lambda_client: Any, account_id: str
) -> None:
    # GIVEN a recorded tier-1 message for an account whose transactions keep conflicting
    tail = StreamTail(container.streams, ec_stack.stream_arn)
    given_recorded_account(container, account_id)
    container.service_service.create(account_id, "s")
    message = _pointing_at(
        recorded(events.TIER1_MESSAGE, account_id), tail.take([account_id]), container
    )
    faults = FaultInjector()
    attach_to_container(container, [faults])
    faults.conflict("TransactWriteItems")

    # WHEN invoked THEN it raises, so SQS keeps the message for another receive
    with pytest.raises(RangeFailedError):
        lambda_client.invoke("handle_dead_letters", message)
    assert counters(container, account_id)[1] == 0


def _pointing_at(
    message: dict[str, Any], records: list[dict[str, Any]], container: Container
) -> dict[str, Any]:
    """The recorded SQS event with its OnFailure body pointed at ``records``."""
    body = json.loads(message["Records"][0]["body"])
    info = body["DDBStreamBatchInfo"]
    sequences = sorted((r["dynamodb"]["SequenceNumber"] for r in records), key=int)
    stream_arn = records[0]["eventSourceARN"]
    shard = container.streams.describe_stream(StreamArn=stream_arn)["StreamDescription"]
    info |= {
        "streamArn": stream_arn,
        "shardId": shard["Shards"][0]["ShardId"],
        "startSequenceNumber": sequences[0],
        "endSequenceNumber": sequences[-1],
        "batchSize": len(records),
    }
    message["Records"][0]["body"] = json.dumps(body)
    return message


def test_the_scheduled_healer_heals_quiet_accounts(
    container: ClockedContainer, lambda_client: Any, account_id: str
) -> None:
    # GIVEN a processed account whose best-effort counter drifted (a lost increment)
    given_recorded_account(container, account_id)
    batch = recorded(events.CREATES_AND_DELETES, account_id)
    restore_table(container, batch)
    lambda_client.invoke("handle_stream_records", batch)
    container.accounts.decrement(account_id)
    assert counters(container, account_id)[:2] == (1, 2)

    # WHEN the recorded schedule event fires within, then after the quiet period
    scheduled = events.load(events.SCHEDULE)
    early = lambda_client.invoke("heal_counters", scheduled).payload
    container.ahead = timedelta(seconds=container.settings.heal_quiet_seconds + 1)
    later = lambda_client.invoke("heal_counters", scheduled).payload

    # THEN the first run leaves it be, the second heals it
    assert "healed" not in early
    assert later["healed"] >= 1
    assert counters(container, account_id)[:2] == (2, 2)


def test_recorded_events_are_what_the_handlers_are_registered_for() -> None:
    # GIVEN the app's handlers WHEN their event source configs are read
    sources = {config.name: type(config).__name__ for config in app.event_sources}

    # THEN each recorded event has its handler
    assert sources == {
        "handle_stream_records": "DynamoDBEventConfig",
        "handle_dead_letters": "SQSEventConfig",
        "heal_counters": "ScheduledEventConfig",
    }
