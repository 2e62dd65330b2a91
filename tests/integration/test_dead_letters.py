"""Two-tier dead letters on the embedded backend, driven step by step through the local
event sources, the app's handlers and the operator command.

A poison record: the transaction of one account fails with an error no retry can fix
(a ``ValidationException`` injected on its ``TransactWriteItems``) until "the cause is
fixed" (the fault rule is removed).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import app as app_module
from chalicelib.bootstrap import Container, use_container
from chalicelib.counting.replay import DeadLetterReplayer
from chalicelib.event_sources import STREAM_MAXIMUM_RETRY_ATTEMPTS, TIER1_MAX_RECEIVE_COUNT
from infrastructure import counterctl
from infrastructure.local.event_sources import (
    LambdaContext,
    SqsOnFailureDestination,
    SqsOutcome,
    SqsPoller,
    SqsSettings,
    StreamOutcome,
    StreamPoller,
    StreamPollResult,
)
from infrastructure.local.provision import StackOutputs
from tests.events.live import StreamTail, app_settings, fast_stream_settings, isolated_stack
from tests.faults import Fault, FaultInjector, FaultKind, attach_to_container

MAX_STEPS = 60


@pytest.fixture(scope="module")
def ec_stack(backend_url: str) -> StackOutputs:
    return isolated_stack(backend_url, "ec-dlq")


@pytest.fixture
def container(ec_stack: StackOutputs) -> Iterator[Container]:
    """The app's container for this test (the handlers and counterctl use it)."""
    installed = Container(app_settings(ec_stack))
    use_container(installed)
    yield installed
    use_container(None)


@pytest.fixture
def queues(container: Container, ec_stack: StackOutputs) -> Iterator[None]:
    """Both queues empty before and after the test."""
    urls = (ec_stack.tier1_queue_url, ec_stack.tier2_queue_url)
    for url in urls:
        empty(container, url)
    yield
    for url in urls:
        empty(container, url)


def empty(container: Container, url: str) -> None:
    # Not PurgeQueue: SQS allows one purge a minute per queue.
    for _ in range(MAX_STEPS):
        messages = container.sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0
        ).get("Messages", [])
        if not messages:
            return
        container.sqs.delete_message_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(messages)
            ],
        )
    raise AssertionError(f"{url} not empty after {MAX_STEPS} receives")


@pytest.fixture
def stream_poller(container: Container, ec_stack: StackOutputs) -> StreamPoller:
    """The deployed stream mapping (filter, retries, bisect, OnFailure to tier 1)
    delivering to the app's stream handler, starting at the stream's current end."""
    poller = stream_poller_for(app_module.handle_stream_records, container, ec_stack)
    drain(poller)  # records of earlier tests are not ours
    return poller


def stream_poller_for(
    handler: Callable[[dict[str, Any], LambdaContext], object],
    container: Container,
    ec_stack: StackOutputs,
) -> StreamPoller:
    return StreamPoller(
        handler,
        container.streams,
        ec_stack.stream_arn,
        settings=fast_stream_settings(),
        on_failure=SqsOnFailureDestination(container.sqs, ec_stack.tier1_queue_url),
    )


@pytest.fixture
def tier1_poller(container: Container, ec_stack: StackOutputs) -> SqsPoller:
    """The tier-1 mapping delivering to the app's dead-letter handler; a failed message
    is visible again at once (on AWS: after the visibility timeout)."""
    return SqsPoller(
        app_module.handle_dead_letters,
        container.sqs,
        ec_stack.tier1_queue_url,
        settings=SqsSettings(retry_visibility_seconds=0),
    )


def drain(poller: StreamPoller) -> list[StreamPollResult]:
    results: list[StreamPollResult] = []
    for _ in range(MAX_STEPS):
        result = poller.poll_once()
        if result.idle:
            return results
        results.append(result)
    raise AssertionError(f"stream poller still busy after {MAX_STEPS} steps")


def poison(container: Container, account_id: str) -> FaultInjector:
    """Every transaction of ``account_id`` fails with an error no retry fixes."""
    faults = FaultInjector()
    attach_to_container(container, [faults])
    faults.add(
        Fault(FaultKind.SERVER_ERROR, code="ValidationException", message="poison"),
        "TransactWriteItems",
        where=lambda params: f"ACCOUNT#{account_id}" in str(params.get("TransactItems")),
    )
    return faults


def ctl(*argv: str) -> tuple[int, str]:
    """Run the operator command in-process; (exit status, output)."""
    out = io.StringIO()
    status = counterctl.main(list(argv), out=out)
    return status, out.getvalue()


def count_of(container: Container, account_id: str) -> int:
    count = container.counts.get(account_id)
    assert count is not None
    return count.count_value


def new_account(container: Container) -> str:
    return container.account_service.create("owner", 100).id


def create(container: Container, account_id: str, n: int) -> list[str]:
    return [container.service_service.create(account_id, f"s{i}").id for i in range(n)]


def depth(container: Container, url: str) -> int:
    attributes = container.sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


@pytest.mark.usefixtures("queues")
def test_a_poison_record_goes_through_both_tiers_and_the_operator_replays_it(
    container: Container,
    ec_stack: StackOutputs,
    stream_poller: StreamPoller,
    tier1_poller: SqsPoller,
) -> None:
    # GIVEN a healthy account and a poisoned one, with services in one stream batch
    healthy, poisoned = new_account(container), new_account(container)
    create(container, healthy, 2)
    create(container, poisoned, 3)
    faults = poison(container, poisoned)

    # WHEN the stream mapping delivers the batch until it gives up
    results = drain(stream_poller)

    # THEN the handler reported the poisoned account's first record, the mapping
    # retried from there and sent that range to tier 1; the healthy account counted
    outcomes = [r.outcome for r in results]
    assert outcomes.count(StreamOutcome.DISCARDED) == 1
    retried = [o for o in outcomes if o is StreamOutcome.PARTIAL_FAILURE]
    assert len(retried) >= STREAM_MAXIMUM_RETRY_ATTEMPTS
    discarded = next(r for r in results if r.outcome is StreamOutcome.DISCARDED)
    assert discarded.on_failure is not None
    info = discarded.on_failure["DDBStreamBatchInfo"]
    assert info["batchSize"] == 3
    assert count_of(container, healthy) == 2
    assert count_of(container, poisoned) == 0
    assert depth(container, ec_stack.tier1_queue_url) == 1

    # WHEN tier 1 keeps failing to replay it (the cause is not fixed yet)
    tier1 = [tier1_poller.poll_once().outcome for _ in range(TIER1_MAX_RECEIVE_COUNT + 1)]

    # THEN after maxReceiveCount receives the queue's redrive moved it to tier 2
    assert tier1 == [SqsOutcome.FAILED] * TIER1_MAX_RECEIVE_COUNT + [SqsOutcome.IDLE]
    assert depth(container, ec_stack.tier1_queue_url) == 0
    status, listed = ctl("--json", "dlq", "list")
    assert status == 0
    (letter,) = json.loads(listed)
    assert letter["first_sequence"] == info["startSequenceNumber"]
    assert letter["last_sequence"] == info["endSequenceNumber"]
    assert letter["condition"] == "RetryAttemptsExhausted"

    # WHEN the operator inspects it, and replays it before the cause is fixed
    status, shown = ctl("dlq", "show", letter["message_id"])
    assert status == 0
    assert json.loads(shown)["body"]["DDBStreamBatchInfo"] == info
    status, _ = ctl("dlq", "replay", letter["message_id"])

    # THEN the replay fails and the message stays, visible for the next attempt
    assert status == counterctl.FAILED
    assert [m["message_id"] for m in json.loads(ctl("--json", "dlq", "list")[1])] == [
        letter["message_id"]
    ]

    # WHEN the cause is fixed and the operator replays it
    faults.clear()
    status, output = ctl("dlq", "replay", letter["message_id"])

    # THEN it is applied and deleted; every count is right
    assert status == 0, output
    assert f"replayed and deleted {letter['message_id']}" in output
    assert count_of(container, poisoned) == 3
    assert count_of(container, healthy) == 2
    assert depth(container, ec_stack.tier2_queue_url) == 0


@pytest.mark.usefixtures("queues")
def test_a_function_error_is_bisected_down_to_the_record_that_causes_it(
    container: Container, ec_stack: StackOutputs, tier1_poller: SqsPoller
) -> None:
    # GIVEN a handler that crashes on one record (a timeout, a runtime error)
    bad: list[str] = []

    def crashes_on_bad(event: dict[str, Any], context: LambdaContext) -> object:
        if any(r["dynamodb"]["Keys"]["SK"]["S"] in bad for r in event["Records"]):
            raise RuntimeError("crashed on the bad record")
        return app_module.handle_stream_records(event, context)

    poller = stream_poller_for(crashes_on_bad, container, ec_stack)
    drain(poller)  # records of earlier tests are not ours
    account = new_account(container)
    services = create(container, account, 6)
    bad.append(f"SERVICE#{services[3]}")

    # WHEN the mapping delivers the six creates
    results = drain(poller)

    # THEN it bisected until the bad record was alone, retried it, and sent only that
    # record to tier 1; the other five were counted
    assert StreamOutcome.BISECTED in [r.outcome for r in results]
    discarded = [r for r in results if r.outcome is StreamOutcome.DISCARDED]
    assert len(discarded) == 1
    assert discarded[0].on_failure is not None
    assert discarded[0].on_failure["DDBStreamBatchInfo"]["batchSize"] == 1
    assert count_of(container, account) == 5

    # WHEN the tier-1 consumer replays the range (through the processor itself)
    assert tier1_poller.poll_once().outcome is SqsOutcome.SUCCEEDED

    # THEN the sixth is counted too
    assert count_of(container, account) == 6


def test_replaying_a_range_that_was_already_processed_changes_nothing(
    container: Container, ec_stack: StackOutputs
) -> None:
    # GIVEN a range of creates and a delete, processed
    tail = StreamTail(container.streams, ec_stack.stream_arn)
    account = new_account(container)
    services = create(container, account, 3)
    container.service_service.delete(account, services[0])
    records = tail.take([account])
    container.processor.process(records)
    message = _on_failure_message(records, ec_stack)

    # WHEN tier 1 replays it (twice: SQS delivers at least once)
    app_module.handle_dead_letters(_sqs_event(message), None)
    app_module.handle_dead_letters(_sqs_event(message), None)

    # THEN the count is unchanged
    assert count_of(container, account) == 2


def test_replaying_a_range_never_processed_counts_it_once(
    container: Container, ec_stack: StackOutputs
) -> None:
    # GIVEN creates whose batch went to tier 1 without being processed
    tail = StreamTail(container.streams, ec_stack.stream_arn)
    account = new_account(container)
    create(container, account, 4)
    message = _on_failure_message(tail.take([account]), ec_stack)

    # WHEN tier 1 replays the range THEN all four are counted
    report = container.replayer.replay(message)
    assert report.relevant == 4
    assert count_of(container, account) == 4


def test_a_range_gone_from_the_stream_is_recovered_from_the_table(
    container: Container, ec_stack: StackOutputs
) -> None:
    # GIVEN unprocessed creates, and a range the stream has trimmed since
    tail = StreamTail(container.streams, ec_stack.stream_arn)
    account = new_account(container)
    create(container, account, 2)
    message = _on_failure_message(tail.take([account]), ec_stack)
    faults = FaultInjector()
    faults.attach(container.streams, label="streams")
    faults.add(
        Fault(FaultKind.SERVER_ERROR, code="TrimmedDataAccessException", status=400),
        "GetShardIterator",
    )

    # WHEN tier 1 replays it
    container.replayer.replay(message)

    # THEN the pending services were found in the table and counted
    assert count_of(container, account) == 2
    assert container.services.pending(account) == []


def test_replay_reads_past_empty_pages_of_the_stream(
    container: Container, ec_stack: StackOutputs
) -> None:
    # GIVEN a range whose records come after an empty GetRecords page (DynamoDB Streams
    # may answer an empty page before the records of an open shard)
    tail = StreamTail(container.streams, ec_stack.stream_arn)
    account = new_account(container)
    create(container, account, 3)
    records = tail.take([account])
    message = _on_failure_message(records, ec_stack)
    streams: Any = PagedStreams([[], records[:2], [], records[2:]])
    replayer = DeadLetterReplayer(
        container.processor, streams, container.dynamodb, ec_stack.table_name
    )

    # WHEN the range is replayed THEN every record in it was read and counted
    replayer.replay(message)
    assert count_of(container, account) == 3


class PagedStreams:
    """A DynamoDB Streams client stand-in that serves fixed pages of records."""

    def __init__(self, pages: list[list[dict[str, Any]]]) -> None:
        self._pages = pages

    def get_shard_iterator(self, **_: Any) -> dict[str, Any]:
        return {"ShardIterator": "0"}

    def get_records(self, **request: Any) -> dict[str, Any]:
        index = int(request["ShardIterator"])
        page = self._pages[index] if index < len(self._pages) else []
        return {"Records": page, "NextShardIterator": str(index + 1)}


def _on_failure_message(records: list[dict[str, Any]], ec_stack: StackOutputs) -> dict[str, Any]:
    """What the stream mapping sends to tier 1 for a batch of ``records``."""
    sequences = [r["dynamodb"]["SequenceNumber"] for r in records]
    shard = _shard_of(records[0]["eventSourceARN"], ec_stack)
    return {
        "requestContext": {"condition": "RetryAttemptsExhausted", "approximateInvokeCount": 6},
        "DDBStreamBatchInfo": {
            "shardId": shard,
            "startSequenceNumber": min(sequences, key=int),
            "endSequenceNumber": max(sequences, key=int),
            "batchSize": len(records),
            "streamArn": ec_stack.stream_arn,
        },
    }


def _shard_of(stream_arn: str, ec_stack: StackOutputs) -> str:
    streams = Container(app_settings(ec_stack)).streams
    description = streams.describe_stream(StreamArn=stream_arn)
    return str(description["StreamDescription"]["Shards"][0]["ShardId"])


def _sqs_event(message: dict[str, Any]) -> dict[str, Any]:
    return {
        "Records": [
            {
                "messageId": "m-1",
                "receiptHandle": "r-1",
                "body": json.dumps(message),
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:tier1",
                "awsRegion": "us-east-1",
            }
        ]
    }


@pytest.mark.usefixtures("queues")
def test_replay_all_keeps_the_messages_that_still_fail_and_purge_empties_the_queue(
    container: Container, ec_stack: StackOutputs
) -> None:
    # GIVEN two tier-2 messages: one replayable, one whose cause persists
    tail = StreamTail(container.streams, ec_stack.stream_arn)
    fine, broken = new_account(container), new_account(container)
    create(container, fine, 1)
    create(container, broken, 1)
    for account in (fine, broken):
        message = _on_failure_message(tail.take([account]), ec_stack)
        container.sqs.send_message(
            QueueUrl=ec_stack.tier2_queue_url, MessageBody=json.dumps(message)
        )
    poison(container, broken)

    # WHEN the operator replays everything
    status, output = ctl("--json", "dlq", "replay", "--all")

    # THEN one was replayed and deleted, the other reported and kept (visible again)
    assert status == counterctl.FAILED
    outcome = json.loads(output)
    assert len(outcome["replayed"]) == 1
    assert len(outcome["failed"]) == 1
    assert count_of(container, fine) == 1
    assert count_of(container, broken) == 0
    assert [m["message_id"] for m in json.loads(ctl("--json", "dlq", "list")[1])] == list(
        outcome["failed"]
    )

    # WHEN the operator purges without and then with confirmation
    refused, _ = ctl("dlq", "purge")
    status, _ = ctl("dlq", "purge", "--yes")

    # THEN only the confirmed purge empties the queue
    assert refused == counterctl.USAGE
    assert status == 0
    assert depth(container, ec_stack.tier2_queue_url) == 0
    assert ctl("dlq", "show", "no-such-message")[0] == counterctl.NOT_FOUND


def test_operator_heal_and_recover_commands(container: Container, ec_stack: StackOutputs) -> None:
    # GIVEN an account whose creates were never processed (stream records lost)
    account = new_account(container)
    create(container, account, 2)

    # WHEN the operator recovers it from the table, then heals it
    status, recovered = ctl("--json", "recover", "--account", account)
    heal_status, healed = ctl("--json", "heal", "--account", account)

    # THEN the count is rebuilt, and the heal waits for the quiet period (just written)
    assert status == 0
    assert json.loads(recovered) == {"pending_items": 2, "transactions": 1, "applied": 2}
    assert count_of(container, account) == 2
    assert heal_status == 0
    assert json.loads(healed) == {"outcomes": {account: "busy"}}
    status, table = ctl("recover", "--all")
    assert status == 0
    assert table.splitlines()[0].split() == ["pending_items", "transactions", "applied"]

    # WHEN another account's creates are lost and everything is recovered
    other = new_account(container)
    create(container, other, 3)
    status, recovered = ctl("--json", "recover", "--all")

    # THEN the report counts what was applied across accounts
    assert status == 0
    assert json.loads(recovered)["applied"] >= 3
    assert count_of(container, other) == 3
