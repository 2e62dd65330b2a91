"""Local event sources against the embedded backend (``backend_url`` from conftest).

Pollers are driven step by step with ``poll_once()`` and plain recording handlers;
each test gets its own table and queues, so nothing leaks between tests. Only the
last test touches the real app, to check that its handlers are found.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import threading
import time
import types
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from chalice import Chalice, Rate

from chalicelib import event_sources as mapping
from infrastructure.local.event_sources import (
    FilterCriteria,
    FunctionIdentity,
    LambdaContext,
    LocalEventSourceOptions,
    ScheduleRunner,
    SqsOnFailureDestination,
    SqsOutcome,
    SqsPoller,
    SqsSettings,
    StreamOutcome,
    StreamPoller,
    StreamPollResult,
    StreamSettings,
    discover_event_handlers,
    run_until_stopped,
    schedule_interval_seconds,
    start_event_sources,
)

REGION = "us-east-1"
CREDENTIALS = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}
ISO_MILLIS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
ISO_SECONDS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
MAX_STEPS = 60  # every drive loop below is bounded


# --------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------


def _client(service: str, url: str) -> Any:
    return boto3.client(service, endpoint_url=url, region_name=REGION, **CREDENTIALS)


@pytest.fixture(scope="module")
def ddb(backend_url: str) -> Any:
    return _client("dynamodb", backend_url)


@pytest.fixture(scope="module")
def streams(backend_url: str) -> Any:
    return _client("dynamodbstreams", backend_url)


@pytest.fixture(scope="module")
def sqs(backend_url: str) -> Any:
    return _client("sqs", backend_url)


@dataclass(frozen=True)
class Table:
    name: str
    stream_arn: str


@pytest.fixture
def table(ddb: Any) -> Table:
    name = f"counter-{uuid.uuid4().hex[:8]}"
    created = ddb.create_table(
        TableName=name,
        KeySchema=[
            {"AttributeName": "PK", "KeyType": "HASH"},
            {"AttributeName": "SK", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "PK", "AttributeType": "S"},
            {"AttributeName": "SK", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )
    return Table(name, created["TableDescription"]["LatestStreamArn"])


@dataclass(frozen=True)
class Queues:
    tier1_name: str
    tier1_url: str
    tier2_url: str


@pytest.fixture
def queues(sqs: Any) -> Queues:
    # The same shape as the template: tier 1 redrives to tier 2 after 5 receives.
    suffix = uuid.uuid4().hex[:8]
    tier2_url = sqs.create_queue(QueueName=f"dlq-tier2-{suffix}")["QueueUrl"]
    tier2_arn = sqs.get_queue_attributes(QueueUrl=tier2_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    tier1_name = f"dlq-tier1-{suffix}"
    tier1_url = sqs.create_queue(
        QueueName=tier1_name,
        Attributes={
            "VisibilityTimeout": str(mapping.TIER1_VISIBILITY_TIMEOUT_SECONDS),
            "RedrivePolicy": json.dumps(
                {
                    "deadLetterTargetArn": tier2_arn,
                    "maxReceiveCount": mapping.TIER1_MAX_RECEIVE_COUNT,
                }
            ),
        },
    )["QueueUrl"]
    return Queues(tier1_name, tier1_url, tier2_url)


class RecordingHandler:
    """A stand-in for a Lambda handler: keeps every event, answers via ``behaviour``."""

    def __init__(self, behaviour: Callable[[dict[str, Any]], object] | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.contexts: list[LambdaContext] = []
        self._behaviour = behaviour

    def __call__(self, event: dict[str, Any], context: LambdaContext) -> object:
        self.events.append(json.loads(json.dumps(event)))  # must be JSON, as on Lambda
        self.contexts.append(context)
        return self._behaviour(event) if self._behaviour else None

    @property
    def batches(self) -> list[list[str]]:
        """Sequence numbers (streams) or message ids (SQS) of each invocation."""
        return [[_record_id(record) for record in event["Records"]] for event in self.events]


def _record_id(record: dict[str, Any]) -> str:
    if "dynamodb" in record:
        return str(record["dynamodb"]["SequenceNumber"])
    return str(record["messageId"])


def fast(**overrides: Any) -> StreamSettings:
    """Deployed settings without waiting: no window, no backoff, no filter."""
    settings = replace(
        StreamSettings.from_mapping(),
        batching_window_seconds=0,
        retry_backoff_seconds=0,
        idle_poll_seconds=0,
        filter_criteria=FilterCriteria([]),
    )
    return replace(settings, **overrides)


def put(ddb: Any, table: Table, sk: str, **attributes: Any) -> None:
    item = {"PK": {"S": "ACCOUNT#a1"}, "SK": {"S": sk}, **attributes}
    ddb.put_item(TableName=table.name, Item=item)


def put_services(ddb: Any, table: Table, count: int) -> None:
    for index in range(count):
        put(ddb, table, f"SERVICE#{index:03d}", deleted={"BOOL": False})


def stream_sequence_numbers(streams: Any, table: Table) -> list[str]:
    shard = streams.describe_stream(StreamArn=table.stream_arn)["StreamDescription"]["Shards"][0]
    iterator = streams.get_shard_iterator(
        StreamArn=table.stream_arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    records = streams.get_records(ShardIterator=iterator)["Records"]
    return [record["dynamodb"]["SequenceNumber"] for record in records]


def drain(poller: StreamPoller) -> list[StreamPollResult]:
    """Step until the poller is idle; bounded."""
    results: list[StreamPollResult] = []
    for _ in range(MAX_STEPS):
        result = poller.poll_once()
        if result.idle:
            return results
        results.append(result)
    raise AssertionError(f"poller still busy after {MAX_STEPS} steps: {results[-3:]}")


def receive_all(sqs: Any, queue_url: str) -> list[dict[str, Any]]:
    return list(
        sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get(
            "Messages", []
        )
    )


def identity() -> FunctionIdentity:
    return FunctionIdentity.for_handler("counter", "test", "handler", REGION, "123456789012")


# --------------------------------------------------------------------------------------
# Stream: event shape
# --------------------------------------------------------------------------------------


def test_stream_event_has_lambdas_shape(ddb: Any, streams: Any, table: Table) -> None:
    # GIVEN an insert with binary, number, map and list attributes, then a modify
    put(
        ddb,
        table,
        "SERVICE#1",
        blob={"B": b"\x00\x01\xff"},
        blobs={"BS": [b"x", b"y"]},
        n={"N": "1.50"},
        nested={"M": {"list": {"L": [{"BOOL": True}, {"NULL": True}, {"B": b"z"}]}}},
    )
    put(ddb, table, "SERVICE#1", n={"N": "2"})
    handler = RecordingHandler()
    poller = StreamPoller(handler, streams, table.stream_arn, settings=fast())
    before = time.time()

    # WHEN the poller takes one step
    result = poller.poll_once()

    # THEN the handler got one Lambda-shaped event with both records
    assert result.outcome is StreamOutcome.SUCCEEDED
    insert, modify = handler.events[0]["Records"]
    assert set(insert) == {
        "eventID",
        "eventName",
        "eventVersion",
        "eventSource",
        "awsRegion",
        "dynamodb",
        "eventSourceARN",
    }
    assert insert["eventName"] == "INSERT"
    assert insert["eventSource"] == "aws:dynamodb"
    assert insert["eventSourceARN"] == table.stream_arn
    assert insert["awsRegion"] == REGION
    dynamodb = insert["dynamodb"]
    created = dynamodb["ApproximateCreationDateTime"]
    assert isinstance(created, float)
    assert created == int(created)  # whole seconds, as DynamoDB rounds them
    assert before - 5 <= created <= time.time()
    assert dynamodb["Keys"] == {"PK": {"S": "ACCOUNT#a1"}, "SK": {"S": "SERVICE#1"}}
    image = dynamodb["NewImage"]
    assert image["blob"] == {"B": base64.b64encode(b"\x00\x01\xff").decode()}
    assert image["blobs"] == {"BS": ["eA==", "eQ=="]}
    assert image["n"] == {"N": "1.50"}
    assert image["nested"] == {
        "M": {"list": {"L": [{"BOOL": True}, {"NULL": True}, {"B": "eg=="}]}}
    }
    assert "OldImage" not in dynamodb
    assert dynamodb["StreamViewType"] == "NEW_AND_OLD_IMAGES"
    assert isinstance(dynamodb["SizeBytes"], int)
    assert modify["eventName"] == "MODIFY"
    assert modify["dynamodb"]["OldImage"]["n"] == {"N": "1.50"}
    assert modify["dynamodb"]["NewImage"] == {
        "PK": {"S": "ACCOUNT#a1"},
        "SK": {"S": "SERVICE#1"},
        "n": {"N": "2"},
    }
    assert result.checkpoint == modify["dynamodb"]["SequenceNumber"]


def test_handler_gets_a_lambda_context(ddb: Any, streams: Any, table: Table) -> None:
    # GIVEN a record and a poller with a known function identity
    put(ddb, table, "SERVICE#1")
    handler = RecordingHandler()
    poller = StreamPoller(handler, streams, table.stream_arn, settings=fast(), function=identity())

    # WHEN it is delivered
    poller.poll_once()

    # THEN the context names the function and counts down its timeout
    context = handler.contexts[0]
    assert context.function_name == "counter-test-handler"
    assert context.invoked_function_arn.endswith(":function:counter-test-handler")
    assert uuid.UUID(context.aws_request_id)
    assert 0 < context.get_remaining_time_in_millis() <= 60_000


# --------------------------------------------------------------------------------------
# Stream: filter criteria
# --------------------------------------------------------------------------------------


def test_deployed_filter_delivers_only_service_inserts_and_soft_deletes(
    ddb: Any, streams: Any, table: Table
) -> None:
    # GIVEN account, count and service changes of every kind
    put(ddb, table, "METADATA", number_of_services={"N": "0"})  # account insert
    put(ddb, table, "SERVICE#1", deleted={"BOOL": False})  # service insert: wanted
    put(ddb, table, "COUNT#SERVICES", count_value={"N": "1"})  # count insert
    put(ddb, table, "SERVICE#1", deleted={"BOOL": False}, counter_processed={"BOOL": True})
    put(ddb, table, "SERVICE#1", deleted={"BOOL": True}, counter_processed={"BOOL": True})
    put(ddb, table, "SERVICE#1", deleted={"BOOL": True}, counter_processed={"BOOL": True})
    ddb.delete_item(TableName=table.name, Key={"PK": {"S": "ACCOUNT#a1"}, "SK": {"S": "SERVICE#1"}})
    sequence = stream_sequence_numbers(streams, table)
    handler = RecordingHandler()
    poller = StreamPoller(
        handler, streams, table.stream_arn, settings=fast(filter_criteria=_deployed_filter())
    )

    # WHEN the poller drains the stream
    results = drain(poller)

    # THEN only the service insert and the false -> true soft delete were delivered,
    # and the checkpoint moved past the dropped records too
    assert handler.batches == [[sequence[1], sequence[4]]]
    assert [r["eventName"] for r in handler.events[0]["Records"]] == ["INSERT", "MODIFY"]
    assert poller.checkpoints == {results[0].shard_id: sequence[-1]}
    assert sum(result.filtered for result in results) == 5


def test_records_the_filter_drops_are_never_delivered(ddb: Any, streams: Any, table: Table) -> None:
    # GIVEN only records that match no pattern
    put(ddb, table, "METADATA")
    put(ddb, table, "COUNT#SERVICES")
    handler = RecordingHandler()
    poller = StreamPoller(
        handler, streams, table.stream_arn, settings=fast(filter_criteria=_deployed_filter())
    )

    # WHEN the poller steps
    result = poller.poll_once()

    # THEN nothing is invoked, the records are done, and the next step is idle
    assert result.outcome is StreamOutcome.FILTERED
    assert result.filtered == 2
    assert result.checkpoint == stream_sequence_numbers(streams, table)[-1]
    assert handler.events == []
    assert poller.poll_once().idle


def _deployed_filter() -> FilterCriteria:
    return FilterCriteria.from_mapping_property(
        mapping.stream_mapping_properties()["FilterCriteria"]
    )


def _record(event_name: str, keys: dict[str, Any], **images: Any) -> dict[str, Any]:
    return {"eventName": event_name, "dynamodb": {"Keys": keys, **images}}


SERVICE_KEYS = {"PK": {"S": "ACCOUNT#1"}, "SK": {"S": "SERVICE#9"}}


@pytest.mark.parametrize(
    ("pattern", "record", "expected"),
    [
        # exact values; a list is an OR
        ({"eventName": ["INSERT"]}, _record("INSERT", {}), True),
        ({"eventName": ["INSERT", "REMOVE"]}, _record("REMOVE", {}), True),
        ({"eventName": ["INSERT"]}, _record("MODIFY", {}), False),
        # prefix, nested objects
        (
            {"dynamodb": {"Keys": {"SK": {"S": [{"prefix": "SERVICE#"}]}}}},
            _record("INSERT", SERVICE_KEYS),
            True,
        ),
        (
            {"dynamodb": {"Keys": {"SK": {"S": [{"prefix": "SERVICE#"}]}}}},
            _record("INSERT", {"SK": {"S": "METADATA"}}),
            False,
        ),
        # a field the record lacks matches nothing
        (
            {"dynamodb": {"OldImage": {"deleted": {"BOOL": [False]}}}},
            _record("INSERT", SERVICE_KEYS, NewImage={"deleted": {"BOOL": False}}),
            False,
        ),
        # booleans match exactly, false included
        (
            {"dynamodb": {"NewImage": {"deleted": {"BOOL": [True]}}}},
            _record("MODIFY", SERVICE_KEYS, NewImage={"deleted": {"BOOL": False}}),
            False,
        ),
        (
            {"dynamodb": {"NewImage": {"deleted": {"BOOL": [False]}}}},
            _record("MODIFY", SERVICE_KEYS, NewImage={"deleted": {"BOOL": False}}),
            True,
        ),
        # every field of a pattern must match (AND)
        (
            {"eventName": ["MODIFY"], "dynamodb": {"Keys": {"SK": {"S": [{"prefix": "S"}]}}}},
            _record("INSERT", SERVICE_KEYS),
            False,
        ),
    ],
)
def test_filter_pattern_semantics_match_lambdas(
    pattern: dict[str, Any], record: dict[str, Any], expected: bool
) -> None:
    assert FilterCriteria([pattern]).matches(record) is expected


def test_filters_are_ored_and_no_filter_passes_everything() -> None:
    criteria = FilterCriteria([{"eventName": ["INSERT"]}, {"eventName": ["REMOVE"]}])
    assert criteria.matches({"eventName": "REMOVE"})
    assert not criteria.matches({"eventName": "MODIFY"})
    assert FilterCriteria([]).matches({"eventName": "MODIFY"})


def test_deployed_filter_drops_no_op_and_flag_only_modifies() -> None:
    criteria = _deployed_filter()
    not_deleted = {"deleted": {"BOOL": False}}
    deleted = {"deleted": {"BOOL": True}}
    assert criteria.matches(_record("INSERT", SERVICE_KEYS, NewImage=not_deleted))
    assert criteria.matches(_record("MODIFY", SERVICE_KEYS, OldImage=not_deleted, NewImage=deleted))
    assert not criteria.matches(_record("MODIFY", SERVICE_KEYS, OldImage=deleted, NewImage=deleted))
    assert not criteria.matches(
        _record("MODIFY", SERVICE_KEYS, OldImage=not_deleted, NewImage=not_deleted)
    )
    assert not criteria.matches(_record("REMOVE", SERVICE_KEYS, OldImage=deleted))


# --------------------------------------------------------------------------------------
# Stream: batch size and batching window
# --------------------------------------------------------------------------------------


def test_batch_size_bounds_each_invocation(ddb: Any, streams: Any, table: Table) -> None:
    # GIVEN seven records and a batch size of three
    put_services(ddb, table, 7)
    handler = RecordingHandler()
    poller = StreamPoller(handler, streams, table.stream_arn, settings=fast(batch_size=3))

    # WHEN the poller drains the stream
    drain(poller)

    # THEN the handler saw 3 + 3 + 1 records, in stream order
    assert [len(batch) for batch in handler.batches] == [3, 3, 1]
    assert list(itertools.chain(*handler.batches)) == stream_sequence_numbers(streams, table)


def test_batching_window_gathers_records_that_arrive_within_it(
    ddb: Any, streams: Any, table: Table
) -> None:
    # GIVEN one record now and another 0.2 s later, and a 0.8 s window
    put(ddb, table, "SERVICE#1")
    handler = RecordingHandler()
    settings = fast(batch_size=10, batching_window_seconds=0.8, idle_poll_seconds=0.05)
    poller = StreamPoller(handler, streams, table.stream_arn, settings=settings)
    late_writer = threading.Timer(0.2, put, args=(ddb, table, "SERVICE#2"))

    # WHEN the poller takes one step
    started = time.monotonic()
    late_writer.start()
    result = poller.poll_once()
    elapsed = time.monotonic() - started
    late_writer.join()

    # THEN both records came in one invocation, after the window elapsed
    assert result.outcome is StreamOutcome.SUCCEEDED
    assert [len(batch) for batch in handler.batches] == [2]
    assert 0.7 <= elapsed < 3


def test_a_full_batch_does_not_wait_for_the_window(ddb: Any, streams: Any, table: Table) -> None:
    # GIVEN a full batch already in the stream and a long window
    put_services(ddb, table, 3)
    handler = RecordingHandler()
    settings = fast(batch_size=3, batching_window_seconds=30)
    poller = StreamPoller(handler, streams, table.stream_arn, settings=settings)

    # WHEN the poller takes one step
    started = time.monotonic()
    poller.poll_once()

    # THEN it invoked at once with the full batch
    assert time.monotonic() - started < 5
    assert [len(batch) for batch in handler.batches] == [3]


# --------------------------------------------------------------------------------------
# Stream: failures
# --------------------------------------------------------------------------------------


def test_batch_item_failures_redeliver_from_the_lowest_reported_record(
    ddb: Any, streams: Any, table: Table
) -> None:
    # GIVEN five records and a handler that first reports records 4 and 2 as failed
    put_services(ddb, table, 5)
    sequence = stream_sequence_numbers(streams, table)
    responses = iter(
        [
            {
                "batchItemFailures": [
                    {"itemIdentifier": sequence[4]},
                    {"itemIdentifier": sequence[2]},
                ]
            },
            {"batchItemFailures": []},
        ]
    )
    handler = RecordingHandler(lambda event: next(responses))
    poller = StreamPoller(handler, streams, table.stream_arn, settings=fast(batch_size=10))

    # WHEN the poller steps twice
    first = poller.poll_once()
    second = poller.poll_once()

    # THEN records before the lowest failure were checkpointed, and the rest came
    # again, in order, starting at the failed record
    assert first.outcome is StreamOutcome.PARTIAL_FAILURE
    assert first.checkpoint == sequence[1]
    assert second.outcome is StreamOutcome.SUCCEEDED
    assert handler.batches == [sequence, sequence[2:]]
    assert second.checkpoint == sequence[4]
    assert poller.poll_once().idle


def test_a_failure_reported_at_the_first_record_counts_as_a_retry(
    ddb: Any, streams: Any, table: Table, sqs: Any, queues: Queues
) -> None:
    # GIVEN a handler that always reports its first record as failed, one retry allowed
    put_services(ddb, table, 2)
    handler = RecordingHandler(
        lambda event: {
            "batchItemFailures": [
                {"itemIdentifier": event["Records"][0]["dynamodb"]["SequenceNumber"]}
            ]
        }
    )
    poller = StreamPoller(
        handler,
        streams,
        table.stream_arn,
        settings=fast(maximum_retry_attempts=1),
        on_failure=SqsOnFailureDestination(sqs, queues.tier1_url),
    )

    # WHEN the poller drains the stream
    outcomes = [result.outcome for result in drain(poller)]

    # THEN the batch was retried once and then given up (no bisect: not a function error)
    assert outcomes == [StreamOutcome.PARTIAL_FAILURE, StreamOutcome.DISCARDED]
    assert len(handler.events) == 2
    message = json.loads(receive_all(sqs, queues.tier1_url)[0]["Body"])
    assert "functionError" not in message["responseContext"]
    assert message["DDBStreamBatchInfo"]["batchSize"] == 2


def test_retries_wait_for_the_backoff(ddb: Any, streams: Any, table: Table) -> None:
    # GIVEN a handler that fails once, and a 0.3 s retry backoff
    put_services(ddb, table, 1)
    responses = iter([ZeroDivisionError, None])

    def behaviour(event: dict[str, Any]) -> None:
        error = next(responses)
        if error is not None:
            raise error

    handler = RecordingHandler(behaviour)
    settings = fast(bisect_on_error=False, retry_backoff_seconds=0.3)
    poller = StreamPoller(handler, streams, table.stream_arn, settings=settings)

    # WHEN it fails, and is polled again at once and after the backoff
    failed = poller.poll_once()
    too_early = poller.poll_once()
    time.sleep(0.35)
    retried = poller.poll_once()

    # THEN the retry waited for the backoff
    assert failed.outcome is StreamOutcome.RETRYING
    assert too_early.idle
    assert retried.outcome is StreamOutcome.SUCCEEDED
    assert len(handler.events) == 2


@pytest.mark.parametrize(
    "response",
    [
        {"batchItemFailures": [{"itemIdentifier": ""}]},
        {"batchItemFailures": [{"itemIdentifier": None}]},
        {"batchItemFailures": [{"wrongKey": "1"}]},
        {"batchItemFailures": [{"itemIdentifier": "999"}]},
    ],
)
def test_a_malformed_partial_response_fails_the_whole_batch(
    ddb: Any, streams: Any, table: Table, response: dict[str, Any]
) -> None:
    put_services(ddb, table, 2)
    handler = RecordingHandler(lambda event: response)
    poller = StreamPoller(handler, streams, table.stream_arn, settings=fast(bisect_on_error=False))

    result = poller.poll_once()

    assert result.outcome is StreamOutcome.RETRYING
    assert result.checkpoint is None


def test_bisect_narrows_a_poison_record_to_a_batch_of_one(
    ddb: Any, streams: Any, table: Table, sqs: Any, queues: Queues
) -> None:
    # GIVEN eight records, the sixth of which always makes the handler raise
    put_services(ddb, table, 8)
    sequence = stream_sequence_numbers(streams, table)
    poison = sequence[5]

    def behaviour(event: dict[str, Any]) -> None:
        if poison in [record["dynamodb"]["SequenceNumber"] for record in event["Records"]]:
            raise RuntimeError("poison")

    handler = RecordingHandler(behaviour)
    poller = StreamPoller(
        handler,
        streams,
        table.stream_arn,
        settings=fast(batch_size=8, maximum_retry_attempts=1, bisect_on_error=True),
        on_failure=SqsOnFailureDestination(sqs, queues.tier1_url),
    )

    # WHEN the poller drains the stream
    outcomes = [result.outcome for result in drain(poller)]

    # THEN halves were tried until the poison stood alone; it was retried once, then
    # sent to the OnFailure destination; everything else was delivered, in order
    assert (
        handler.batches
        == [
            sequence,  # fails -> halves
            sequence[:4],  # ok
            sequence[4:],  # fails -> halves
            sequence[4:6],  # fails -> halves
            [sequence[4]],  # ok
            [poison],  # fails, retry 1
            [poison],  # fails, retries exhausted
            sequence[6:],  # ok
        ]
    )
    assert outcomes == [
        StreamOutcome.BISECTED,
        StreamOutcome.SUCCEEDED,
        StreamOutcome.BISECTED,
        StreamOutcome.BISECTED,
        StreamOutcome.SUCCEEDED,
        StreamOutcome.RETRYING,
        StreamOutcome.DISCARDED,
        StreamOutcome.SUCCEEDED,
    ]
    [message] = [json.loads(m["Body"]) for m in receive_all(sqs, queues.tier1_url)]
    info = message["DDBStreamBatchInfo"]
    assert (info["startSequenceNumber"], info["endSequenceNumber"]) == (poison, poison)
    assert info["batchSize"] == 1
    assert message["requestContext"]["approximateInvokeCount"] == 2
    assert poller.checkpoints == {info["shardId"]: sequence[-1]}


def test_exhausted_retries_send_exactly_lambdas_on_failure_message(
    ddb: Any, streams: Any, table: Table, sqs: Any, queues: Queues
) -> None:
    # GIVEN three records, a handler that always raises, two retries, no bisect
    put_services(ddb, table, 3)
    sequence = stream_sequence_numbers(streams, table)
    handler = RecordingHandler(lambda event: 1 / 0)
    function = identity()
    poller = StreamPoller(
        handler,
        streams,
        table.stream_arn,
        settings=fast(maximum_retry_attempts=2, bisect_on_error=False),
        function=function,
        on_failure=SqsOnFailureDestination(sqs, queues.tier1_url),
    )

    # WHEN the poller drains the stream
    results = drain(poller)

    # THEN the batch was invoked three times, then one OnFailure message was sent
    assert [r.outcome for r in results] == [
        StreamOutcome.RETRYING,
        StreamOutcome.RETRYING,
        StreamOutcome.DISCARDED,
    ]
    assert handler.batches == [sequence] * 3
    messages = receive_all(sqs, queues.tier1_url)
    assert len(messages) == 1
    body = json.loads(messages[0]["Body"])
    assert body == results[-1].on_failure
    assert set(body) == {
        "requestContext",
        "responseContext",
        "version",
        "timestamp",
        "DDBStreamBatchInfo",
    }
    assert body["requestContext"] == {
        "requestId": handler.contexts[-1].aws_request_id,
        "functionArn": function.arn,
        "condition": "RetryAttemptsExhausted",
        "approximateInvokeCount": 3,
    }
    assert body["responseContext"] == {
        "statusCode": 200,
        "executedVersion": "$LATEST",
        "functionError": "Unhandled",
    }
    assert body["version"] == "1.0"
    assert ISO_MILLIS.match(body["timestamp"])
    info = body["DDBStreamBatchInfo"]
    assert info["shardId"] == results[-1].shard_id
    assert info["startSequenceNumber"] == sequence[0]
    assert info["endSequenceNumber"] == sequence[-1]
    assert info["batchSize"] == 3
    assert info["streamArn"] == table.stream_arn
    assert ISO_SECONDS.match(info["approximateArrivalOfFirstRecord"])
    assert ISO_SECONDS.match(info["approximateArrivalOfLastRecord"])

    # AND the shard moved on: a new record is delivered alone
    put(ddb, table, "SERVICE#new")
    handler._behaviour = None
    assert poller.poll_once().outcome is StreamOutcome.SUCCEEDED
    assert len(handler.batches[-1]) == 1


def test_records_older_than_the_maximum_age_go_to_on_failure_without_invocation(
    ddb: Any, streams: Any, table: Table, sqs: Any, queues: Queues
) -> None:
    # GIVEN two records and a clock two hours ahead, maximum age one hour
    put_services(ddb, table, 2)
    sequence = stream_sequence_numbers(streams, table)
    handler = RecordingHandler()
    poller = StreamPoller(
        handler,
        streams,
        table.stream_arn,
        settings=fast(maximum_record_age_seconds=3600),
        on_failure=SqsOnFailureDestination(sqs, queues.tier1_url),
        clock=lambda: time.time() + 7200,
    )

    # WHEN the poller steps
    result = poller.poll_once()

    # THEN the handler was not invoked and the batch went to the OnFailure queue
    assert result.outcome is StreamOutcome.DISCARDED
    assert handler.events == []
    [message] = [json.loads(m["Body"]) for m in receive_all(sqs, queues.tier1_url)]
    assert message["requestContext"]["condition"] == "RecordAgeExceeded"
    assert message["requestContext"]["approximateInvokeCount"] == 0
    assert "functionError" not in message["responseContext"]
    info = message["DDBStreamBatchInfo"]
    assert (info["startSequenceNumber"], info["endSequenceNumber"]) == (sequence[0], sequence[1])
    assert result.checkpoint == sequence[1]


class FlakyDestination:
    """An OnFailure destination whose first send fails."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.calls = 0

    def send(self, message: Any) -> None:
        self.calls += 1
        if self.calls == 1:
            raise ConnectionError("destination down")
        self.sent.append(dict(message))


def test_a_failed_on_failure_send_is_retried_not_lost(ddb: Any, streams: Any, table: Table) -> None:
    # GIVEN a batch that exhausts its retries and a destination that fails once
    put_services(ddb, table, 1)
    destination = FlakyDestination()
    handler = RecordingHandler(lambda event: 1 / 0)
    poller = StreamPoller(
        handler,
        streams,
        table.stream_arn,
        settings=fast(maximum_retry_attempts=0),
        on_failure=destination,
    )

    # WHEN the first send fails, and the poller steps again
    with pytest.raises(ConnectionError):
        poller.poll_once()
    result = poller.poll_once()

    # THEN the message was sent on the next step without invoking again
    assert result.outcome is StreamOutcome.DISCARDED
    assert len(destination.sent) == 1
    assert len(handler.events) == 1


def test_a_new_poller_resumes_after_the_checkpoint(ddb: Any, streams: Any, table: Table) -> None:
    # GIVEN a poller that delivered two records, then stopped
    put_services(ddb, table, 2)
    checkpoints: dict[str, str] = {}
    first = RecordingHandler()
    drain(StreamPoller(first, streams, table.stream_arn, settings=fast(), checkpoints=checkpoints))
    put(ddb, table, "SERVICE#later")

    # WHEN a new poller starts from the same checkpoints
    second = RecordingHandler()
    drain(StreamPoller(second, streams, table.stream_arn, settings=fast(), checkpoints=checkpoints))

    # THEN it delivers only what came after
    assert [len(batch) for batch in second.batches] == [1]
    assert second.batches[0][0] == stream_sequence_numbers(streams, table)[-1]


def test_the_poller_keeps_reading_after_a_failed_transaction(
    ddb: Any, streams: Any, table: Table
) -> None:
    # GIVEN a poller that has read the stream (moto then orphans its shard iterator
    # when a transaction fails, because it restores a copy of the table)
    put(ddb, table, "SERVICE#1")
    handler = RecordingHandler()
    poller = StreamPoller(handler, streams, table.stream_arn, settings=fast())
    drain(poller)
    with pytest.raises(ddb.exceptions.TransactionCanceledException):
        ddb.transact_write_items(
            TransactItems=[
                {
                    "ConditionCheck": {
                        "TableName": table.name,
                        "Key": {"PK": {"S": "ACCOUNT#a1"}, "SK": {"S": "SERVICE#1"}},
                        "ConditionExpression": "attribute_not_exists(PK)",
                    }
                }
            ]
        )

    # WHEN another record is written
    put(ddb, table, "SERVICE#2")
    drain(poller)

    # THEN the poller still sees it
    assert [batch[0] for batch in handler.batches] == stream_sequence_numbers(streams, table)


def test_a_poller_thread_stops_promptly_inside_a_batching_window(
    ddb: Any, streams: Any, table: Table
) -> None:
    # GIVEN a poller gathering a batch with a 30 s window
    put(ddb, table, "SERVICE#1")
    handler = RecordingHandler()
    settings = fast(batch_size=10, batching_window_seconds=30, idle_poll_seconds=0.05)
    poller = StreamPoller(handler, streams, table.stream_arn, settings=settings)
    stop = threading.Event()
    thread = threading.Thread(target=poller.run, args=(stop,), daemon=True)
    thread.start()
    time.sleep(0.3)

    # WHEN it is told to stop
    stopped_at = time.monotonic()
    stop.set()
    thread.join(timeout=5)

    # THEN it stops within a second
    assert not thread.is_alive()
    assert time.monotonic() - stopped_at < 1


@dataclass(frozen=True)
class Step:
    idle: bool


def test_the_run_loop_outlives_errors_and_is_bounded() -> None:
    # GIVEN steps that fail with a backend error, then a bug, then work, then idle
    error = ClientError({"Error": {"Code": "InternalFailure", "Message": "down"}}, "GetRecords")
    script: list[Any] = [error, RuntimeError("bug"), Step(idle=False), Step(idle=True)]
    calls = []

    def poll_once() -> Step:
        calls.append(1)
        outcome = script[min(len(calls), len(script)) - 1]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    # WHEN the loop runs with a poll budget
    polls = run_until_stopped(
        poll_once,
        threading.Event(),
        idle_seconds=0,
        name="test",
        error_backoff_seconds=0,
        max_polls=6,
    )

    # THEN it kept going through both errors and stopped at the budget
    assert polls == 6
    assert len(calls) == 6


# --------------------------------------------------------------------------------------
# SQS
# --------------------------------------------------------------------------------------


def test_sqs_success_invokes_with_lambdas_event_and_deletes(sqs: Any, queues: Queues) -> None:
    # GIVEN a message with an attribute on the tier-1 queue
    sent = sqs.send_message(
        QueueUrl=queues.tier1_url,
        MessageBody='{"hello": 1}',
        MessageAttributes={"kind": {"DataType": "String", "StringValue": "replay"}},
    )
    handler = RecordingHandler()
    poller = SqsPoller(handler, sqs, queues.tier1_url, settings=SqsSettings(batch_size=1))

    # WHEN the poller steps
    result = poller.poll_once()

    # THEN the handler got a Lambda SQS event and the message is gone
    assert result.outcome is SqsOutcome.SUCCEEDED
    [record] = handler.events[0]["Records"]
    assert record["messageId"] == sent["MessageId"]
    assert record["receiptHandle"]
    assert record["body"] == '{"hello": 1}'
    assert record["attributes"]["ApproximateReceiveCount"] == "1"
    assert {"SentTimestamp", "SenderId", "ApproximateFirstReceiveTimestamp"} <= set(
        record["attributes"]
    )
    assert record["messageAttributes"] == {
        "kind": {
            "stringValue": "replay",
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": "String",
        }
    }
    assert record["md5OfBody"] == sent["MD5OfMessageBody"]
    assert record["eventSource"] == "aws:sqs"
    assert record["eventSourceARN"] == poller.queue_arn
    assert record["eventSourceARN"].endswith(f":{queues.tier1_name}")
    assert record["awsRegion"] == REGION
    assert result.deleted == (sent["MessageId"],)
    assert _queue_depth(sqs, queues.tier1_url) == 0


def test_sqs_failures_redrive_to_tier2_after_max_receive_count(sqs: Any, queues: Queues) -> None:
    # GIVEN a message and a handler that always raises; retries become visible at once
    sqs.send_message(QueueUrl=queues.tier1_url, MessageBody="poison")
    handler = RecordingHandler(lambda event: 1 / 0)
    poller = SqsPoller(
        handler, sqs, queues.tier1_url, settings=SqsSettings(retry_visibility_seconds=0)
    )

    # WHEN the poller steps until the queue is empty (bounded)
    outcomes = []
    for _ in range(MAX_STEPS):
        result = poller.poll_once()
        if result.idle:
            break
        outcomes.append(result.outcome)

    # THEN it was received maxReceiveCount times, then the redrive moved it to tier 2
    assert outcomes == [SqsOutcome.FAILED] * mapping.TIER1_MAX_RECEIVE_COUNT
    counts = [e["Records"][0]["attributes"]["ApproximateReceiveCount"] for e in handler.events]
    assert counts == ["1", "2", "3", "4", "5"]
    [dead] = receive_all(sqs, queues.tier2_url)
    assert dead["Body"] == "poison"
    assert _queue_depth(sqs, queues.tier1_url) == 0


def test_sqs_partial_batch_response_keeps_only_reported_messages(sqs: Any, queues: Queues) -> None:
    ids = [
        sqs.send_message(QueueUrl=queues.tier1_url, MessageBody=str(i))["MessageId"]
        for i in range(3)
    ]
    handler = RecordingHandler(lambda event: {"batchItemFailures": [{"itemIdentifier": ids[1]}]})
    settings = SqsSettings(
        batch_size=3, report_batch_item_failures=True, retry_visibility_seconds=0
    )
    poller = SqsPoller(handler, sqs, queues.tier1_url, settings=settings)

    result = poller.poll_once()

    assert result.outcome is SqsOutcome.PARTIAL_FAILURE
    assert sorted(result.deleted) == sorted([ids[0], ids[2]])
    assert [m["MessageId"] for m in receive_all(sqs, queues.tier1_url)] == [ids[1]]


def _queue_depth(sqs: Any, queue_url: str) -> int:
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


# --------------------------------------------------------------------------------------
# Schedule
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "seconds"),
    [
        ("rate(1 minute)", 60.0),
        ("rate(5 minutes)", 300.0),
        ("rate(2 hours)", 7200.0),
        (Rate(3, unit=Rate.MINUTES), 180.0),
        ("cron(0 12 * * ? *)", 60.0),
    ],
)
def test_schedule_interval_comes_from_the_expression(expression: object, seconds: float) -> None:
    assert schedule_interval_seconds(expression) == seconds


def test_schedule_runs_the_handler_with_a_scheduled_event_until_stopped() -> None:
    # GIVEN a runner every 50 ms
    handler = RecordingHandler()
    rule_arn = "arn:aws:events:us-east-1:123456789012:rule/counter-test-heal-event"
    runner = ScheduleRunner(handler, interval_seconds=0.05, rule_arn=rule_arn, function=identity())
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)

    # WHEN it runs for a while and is stopped
    thread.start()
    time.sleep(0.4)
    stop.set()
    thread.join(timeout=2)

    # THEN it ran several times with EventBridge's scheduled event, and stopped
    assert not thread.is_alive()
    assert len(handler.events) >= 3
    event = handler.events[0]
    assert event["detail-type"] == "Scheduled Event"
    assert event["source"] == "aws.events"
    assert event["resources"] == [rule_arn]
    assert (event["account"], event["region"]) == ("123456789012", REGION)
    assert ISO_SECONDS.match(event["time"])
    assert event["detail"] == {}


# --------------------------------------------------------------------------------------
# Wiring to a Chalice app
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outputs:
    stream_arn: str
    tier1_queue_url: str


def _app_module(table: Table, queues: Queues, calls: dict[str, list[Any]]) -> types.ModuleType:
    app = Chalice(app_name="counter-test")

    @app.on_dynamodb_record(stream_arn="arn:aws:dynamodb:us-east-1:1:table/x/stream/label")
    def on_records(event: Any) -> None:
        calls["stream"].append(event.to_dict())

    @app.on_sqs_message(queue=queues.tier1_name, batch_size=1)
    def on_dead_letter(event: Any) -> None:
        calls["queue"].append(event.to_dict())

    @app.schedule(Rate(1, unit=Rate.MINUTES))
    def heal(event: Any) -> None:
        calls["schedule"].append(event.to_dict())

    module = types.ModuleType("app")
    module.app = app  # type: ignore[attr-defined]
    return module


def test_the_real_apps_handlers_are_discovered() -> None:
    import app

    handlers = discover_event_handlers(app)

    assert [h.name for h in handlers.streams] == ["handle_stream_records"]
    assert [h.name for h in handlers.queues] == ["handle_dead_letters"]
    assert [h.name for h in handlers.schedules] == ["heal_counters"]
    assert handlers.streams[0].handler is app.handle_stream_records


def test_handlers_are_discovered_from_the_app(table: Table, queues: Queues) -> None:
    handlers = discover_event_handlers(_app_module(table, queues, {}))

    assert handlers.app_name == "counter-test"
    assert [h.name for h in handlers.streams] == ["on_records"]
    assert [h.name for h in handlers.queues] == ["on_dead_letter"]
    assert [h.name for h in handlers.schedules] == ["heal"]


def test_started_event_sources_deliver_and_stop_promptly(
    backend_url: str,
    ddb: Any,
    sqs: Any,
    table: Table,
    queues: Queues,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN an app with a stream, a queue and a schedule handler, started locally
    monkeypatch.setenv("AWS_ENDPOINT_URL", backend_url)
    session = boto3.Session(
        aws_access_key_id="local", aws_secret_access_key="local", region_name=REGION
    )
    calls: dict[str, list[Any]] = {"stream": [], "queue": [], "schedule": []}
    stop = threading.Event()
    options = _fast_options()
    threads = start_event_sources(
        _app_module(table, queues, calls),
        Outputs(table.stream_arn, queues.tier1_url),
        stop,
        session=session,
        options=options,
    )

    try:
        # WHEN a service is created and a message is queued
        put(ddb, table, "SERVICE#1", deleted={"BOOL": False})
        sqs.send_message(QueueUrl=queues.tier1_url, MessageBody="{}")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(calls.values()):
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=3)

    # THEN every handler ran (through Chalice's event classes) and every thread stopped
    assert all(thread.daemon and not thread.is_alive() for thread in threads)
    assert calls["stream"][0]["Records"][0]["eventSourceARN"] == table.stream_arn
    assert calls["queue"][0]["Records"][0]["body"] == "{}"
    assert calls["schedule"][0]["detail-type"] == "Scheduled Event"


def _fast_options() -> LocalEventSourceOptions:
    return LocalEventSourceOptions(
        stream=replace(fast(), idle_poll_seconds=0.05),
        queue=SqsSettings(idle_poll_seconds=0.05),
        schedule_interval_seconds=0.1,
    )
