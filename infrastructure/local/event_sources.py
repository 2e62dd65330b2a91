"""Local event sources: Lambda's event source mappings, run against the embedded backend.

Neither ``chalice local`` nor moto invokes stream, queue or schedule handlers. This
module polls the table's stream and the tier-1 queue and runs the schedule, and calls
the app's decorated functions with Lambda-shaped events, honouring the mapping
settings in :mod:`chalicelib.event_sources` (the deployed mapping reads the same).

Three pollers, each usable on its own and driven one step at a time by tests:

* :class:`StreamPoller` -- DynamoDB Streams: batch size, batching window, filter
  criteria, ``batchItemFailures``, bisect on error, maximum retries, maximum record
  age and the OnFailure destination, keeping per-shard order.
* :class:`SqsPoller` -- an SQS queue: delete on success, leave for redrive on failure.
* :class:`ScheduleRunner` -- a ``@app.schedule`` handler every N seconds.

:func:`start_event_sources` wires them to an app module and runs each in a daemon
thread until a stop event is set.

moto behaviour this module works around (moto 5.2.5):

* A failed ``TransactWriteItems`` restores a deep copy of the table, stream shard
  included, so existing shard iterators keep pointing at an orphaned shard that
  never sees another record. After an empty read the poller therefore takes a fresh
  iterator from the last sequence number it read instead of following
  ``NextShardIterator`` forever (cheap, and also what expiring iterators need on AWS).
* GetRecords with an unknown iterator answers HTTP 500 rather than
  ``ExpiredIteratorException``; both drop the iterator and re-acquire it.
* ReceiveMessage with ``WaitTimeSeconds`` blocks inside the request, and the embedded
  backend serialises requests, so a long poll would stall every other client. Queue
  polls use ``WaitTimeSeconds=0`` and sleep on this side instead.
"""

from __future__ import annotations

import base64
import enum
import json
import logging
import math
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

import boto3
from botocore.exceptions import BotoCoreError, ClientError
from moto.events.models import EventPattern

from chalicelib import event_sources as mapping

if TYPE_CHECKING:
    from mypy_boto3_dynamodbstreams.client import DynamoDBStreamsClient
    from mypy_boto3_dynamodbstreams.type_defs import RecordTypeDef, ShardTypeDef
    from mypy_boto3_sqs.client import SQSClient
    from mypy_boto3_sqs.type_defs import MessageTypeDef

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]
#: How Lambda calls a Chalice function: ``handler(event, context)``. Chalice's
#: ``EventSourceHandler`` (what the decorators return) has exactly this signature.
LambdaHandler = Callable[[JsonDict, "LambdaContext"], object]

#: GetRecords' maximum page; records beyond the batch wait in memory, in order.
_GET_RECORDS_LIMIT: Final = 1000
#: SQS ReceiveMessage returns at most 10 messages per call.
_SQS_RECEIVE_LIMIT: Final = 10
#: Fetches one step may make before it gives up gathering (a long run of records the
#: filter drops would otherwise keep a single step busy).
_MAX_FETCHES_PER_STEP: Final = 100
#: DescribeStream pages to follow; a table has a handful of shards.
_MAX_DESCRIBE_PAGES: Final = 100
#: After this long without work a poller polls at most once per QUIET_POLL_SECONDS.
#: moto keeps every shard iterator it hands out (about 2.6 KB each, one per
#: GetRecords), so polling an idle stream 4 times a second grows the backend by
#: tens of MB an hour; a quiet stack polls less.
QUIET_AFTER_SECONDS: Final = 10.0
QUIET_POLL_SECONDS: Final = 1.0


# --------------------------------------------------------------------------------------
# Invoking a handler like Lambda does
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FunctionIdentity:
    """What a Lambda function is called locally, for contexts and OnFailure messages."""

    name: str
    arn: str
    timeout_seconds: float = 60.0
    memory_limit_in_mb: int = 128

    @classmethod
    def for_handler(
        cls, app_name: str, stage: str, handler_name: str, region: str, account: str
    ) -> FunctionIdentity:
        """The identity Chalice would deploy: ``<app>-<stage>-<handler>``."""
        name = f"{app_name}-{stage}-{handler_name}"
        return cls(name=name, arn=f"arn:aws:lambda:{region}:{account}:function:{name}")


@dataclass(frozen=True)
class LambdaContext:
    """The parts of Lambda's context object that handlers and Powertools read."""

    function_name: str
    invoked_function_arn: str
    aws_request_id: str
    memory_limit_in_mb: int
    deadline_monotonic: float
    function_version: str = "$LATEST"
    log_group_name: str = ""
    log_stream_name: str = "local"

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the function's timeout (never negative)."""
        return max(0, int((self.deadline_monotonic - time.monotonic()) * 1000))


@dataclass(frozen=True)
class Invocation:
    """One call of a handler: what it was given and how it ended."""

    request_id: str
    event: JsonDict
    response: object = None
    error: BaseException | None = None

    @property
    def failed(self) -> bool:
        """Whether the handler raised (Lambda's "function error")."""
        return self.error is not None


def invoke(handler: LambdaHandler, event: JsonDict, function: FunctionIdentity) -> Invocation:
    """Call ``handler(event, context)``; a raised exception is a function error, kept."""
    request_id = str(uuid.uuid4())
    context = LambdaContext(
        function_name=function.name,
        invoked_function_arn=function.arn,
        aws_request_id=request_id,
        memory_limit_in_mb=function.memory_limit_in_mb,
        deadline_monotonic=time.monotonic() + function.timeout_seconds,
        log_group_name=f"/aws/lambda/{function.name}",
    )
    try:
        response = handler(event, context)
    except Exception as error:  # Lambda reports any exception as a function error.
        logger.warning("%s failed (request %s): %r", function.name, request_id, error)
        logger.debug("traceback", exc_info=error)
        return Invocation(request_id, event, error=error)
    return Invocation(request_id, event, response=response)


# --------------------------------------------------------------------------------------
# Lambda-shaped records
# --------------------------------------------------------------------------------------


def lambda_attribute_value(value: Mapping[str, Any]) -> JsonDict:
    """One DynamoDB JSON attribute value as Lambda delivers it.

    boto3 decodes binary values (``B``, ``BS``) to ``bytes``; Lambda's JSON carries
    them base64-encoded. Everything else is already in Lambda's shape.
    """
    converted: JsonDict = {}
    for kind, inner in value.items():
        if kind == "B":
            converted[kind] = _b64(inner)
        elif kind == "BS":
            converted[kind] = [_b64(item) for item in inner]
        elif kind == "M":
            converted[kind] = lambda_item(inner)
        elif kind == "L":
            converted[kind] = [lambda_attribute_value(item) for item in inner]
        else:
            converted[kind] = inner
    return converted


def lambda_item(item: Mapping[str, Any]) -> JsonDict:
    """A DynamoDB JSON item (or key) as Lambda delivers it."""
    return {name: lambda_attribute_value(value) for name, value in item.items()}


def _b64(data: bytes | bytearray | str) -> str:
    if isinstance(data, str):  # already encoded (e.g. a recorded event)
        return data
    return base64.b64encode(bytes(data)).decode("ascii")


def _epoch_seconds(moment: datetime | float | int) -> float:
    # DynamoDB rounds ApproximateCreationDateTime down to the second; Lambda's JSON
    # carries it as a number (e.g. 1.713466838E9, a float once parsed in Python).
    if isinstance(moment, datetime):
        return float(math.floor(moment.timestamp()))
    return float(math.floor(moment))


@dataclass(frozen=True)
class StreamRecord:
    """A stream record in Lambda's shape, plus what the poller needs to order it."""

    sequence_number: str
    created_at: float  # epoch seconds
    lambda_record: JsonDict


def to_lambda_stream_record(raw: RecordTypeDef | Mapping[str, Any], stream_arn: str) -> JsonDict:
    """A GetRecords record as Lambda puts it in ``event["Records"]``.

    Adds ``eventSourceARN`` (GetRecords omits it), turns the creation time into epoch
    seconds and keeps images in DynamoDB JSON with binary values base64-encoded.
    """
    source: Mapping[str, Any] = raw["dynamodb"]
    dynamodb: JsonDict = {
        "ApproximateCreationDateTime": _epoch_seconds(source["ApproximateCreationDateTime"]),
        "Keys": lambda_item(source.get("Keys", {})),
    }
    for image in ("NewImage", "OldImage"):
        if image in source:
            dynamodb[image] = lambda_item(source[image])
    dynamodb["SequenceNumber"] = source["SequenceNumber"]
    dynamodb["SizeBytes"] = source["SizeBytes"]
    dynamodb["StreamViewType"] = source["StreamViewType"]
    record: JsonDict = {
        "eventID": raw["eventID"],
        "eventName": raw["eventName"],
        "eventVersion": raw["eventVersion"],
        "eventSource": raw["eventSource"],
        "awsRegion": raw["awsRegion"],
        "dynamodb": dynamodb,
        "eventSourceARN": stream_arn,
    }
    if "userIdentity" in raw:  # TTL deletions carry the service principal
        record["userIdentity"] = dict(raw["userIdentity"])
    return record


def to_stream_record(raw: RecordTypeDef | Mapping[str, Any], stream_arn: str) -> StreamRecord:
    """Wrap a GetRecords record for the poller."""
    record = to_lambda_stream_record(raw, stream_arn)
    dynamodb = record["dynamodb"]
    return StreamRecord(
        sequence_number=dynamodb["SequenceNumber"],
        created_at=dynamodb["ApproximateCreationDateTime"],
        lambda_record=record,
    )


def to_lambda_sqs_record(
    message: MessageTypeDef | Mapping[str, Any], queue_arn: str, region: str
) -> JsonDict:
    """A ReceiveMessage message as Lambda puts it in ``event["Records"]``."""
    record: JsonDict = {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message.get("Body", ""),
        "attributes": dict(message.get("Attributes", {})),
        "messageAttributes": {
            name: _lambda_message_attribute(value)
            for name, value in message.get("MessageAttributes", {}).items()
        },
        "md5OfBody": message.get("MD5OfBody", ""),
    }
    if "MD5OfMessageAttributes" in message:
        record["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
    record["eventSource"] = "aws:sqs"
    record["eventSourceARN"] = queue_arn
    record["awsRegion"] = region
    return record


def _lambda_message_attribute(value: Mapping[str, Any]) -> JsonDict:
    # Lambda uses camelCase names and base64 for binary values.
    attribute: JsonDict = {}
    if "StringValue" in value:
        attribute["stringValue"] = value["StringValue"]
    if "BinaryValue" in value:
        attribute["binaryValue"] = _b64(value["BinaryValue"])
    attribute["stringListValues"] = list(value.get("StringListValues", []))
    attribute["binaryListValues"] = [_b64(item) for item in value.get("BinaryListValues", [])]
    attribute["dataType"] = value.get("DataType", "String")
    return attribute


# --------------------------------------------------------------------------------------
# Filter criteria
# --------------------------------------------------------------------------------------


class FilterCriteria:
    """Lambda's FilterCriteria: a record passes if any pattern matches it.

    Matching reuses moto's EventBridge pattern engine (Lambda filtering uses the
    EventBridge syntax). It covers what the mapping uses -- exact values, ``prefix``,
    nested objects, lists as OR -- and is pinned by tests. Known difference: moto
    flattens nested keys with dots, so an attribute whose name contains a dot could
    match a nested pattern; the table's attribute names have none.
    """

    def __init__(self, patterns: Iterable[Mapping[str, Any]]) -> None:
        self._patterns = [EventPattern.load(json.dumps(pattern)) for pattern in patterns]

    @classmethod
    def from_mapping_property(cls, criteria: Mapping[str, Any] | None) -> FilterCriteria:
        """From the CloudFormation ``FilterCriteria`` property (patterns as JSON text)."""
        filters = (criteria or {}).get("Filters", [])
        return cls(json.loads(item["Pattern"]) for item in filters)

    def matches(self, record: Mapping[str, Any]) -> bool:
        """Whether Lambda would deliver ``record`` (no patterns: everything passes)."""
        if not self._patterns:
            return True
        # moto types the argument as an EventBridge event; it matches any JSON object.
        event = cast(Any, record)
        return any(pattern.matches_event(event) for pattern in self._patterns)


# --------------------------------------------------------------------------------------
# OnFailure destination
# --------------------------------------------------------------------------------------


class OnFailureDestination(Protocol):
    """Where a stream mapping sends the record of a batch it gave up on."""

    def send(self, message: Mapping[str, Any]) -> None:
        """Deliver one invocation record."""


class SqsOnFailureDestination:
    """An SQS queue as the OnFailure destination (the tier-1 dead-letter queue)."""

    def __init__(self, sqs: SQSClient, queue_url: str) -> None:
        self._sqs = sqs
        self._queue_url = queue_url

    def send(self, message: Mapping[str, Any]) -> None:
        """Send the invocation record as the message body, as Lambda does."""
        self._sqs.send_message(QueueUrl=self._queue_url, MessageBody=json.dumps(message))


class FailureCondition(enum.StrEnum):
    """Why the mapping discarded a batch (``requestContext.condition``)."""

    RETRY_ATTEMPTS_EXHAUSTED = "RetryAttemptsExhausted"
    RECORD_AGE_EXCEEDED = "RecordAgeExceeded"


def _iso_millis(epoch: float) -> str:
    moment = datetime.fromtimestamp(epoch, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _iso_seconds(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def stream_failure_message(
    *,
    records: Sequence[StreamRecord],
    shard_id: str,
    stream_arn: str,
    function: FunctionIdentity,
    condition: FailureCondition,
    last_invocation: Invocation | None,
    invoke_count: int,
    now: float,
) -> JsonDict:
    """The invocation record Lambda sends to a stream mapping's OnFailure destination.

    It names the shard and the sequence range only; the consumer re-reads the records.
    ``responseContext`` describes the last invocation (``functionError`` only when it
    raised); a batch discarded for age without being invoked has no function error.
    """
    response_context: JsonDict = {"statusCode": 200, "executedVersion": "$LATEST"}
    if last_invocation is not None and last_invocation.failed:
        response_context["functionError"] = "Unhandled"
    request_id = last_invocation.request_id if last_invocation else str(uuid.uuid4())
    return {
        "requestContext": {
            "requestId": request_id,
            "functionArn": function.arn,
            "condition": str(condition),
            "approximateInvokeCount": invoke_count,
        },
        "responseContext": response_context,
        "version": "1.0",
        "timestamp": _iso_millis(now),
        "DDBStreamBatchInfo": {
            "shardId": shard_id,
            "startSequenceNumber": records[0].sequence_number,
            "endSequenceNumber": records[-1].sequence_number,
            "approximateArrivalOfFirstRecord": _iso_seconds(records[0].created_at),
            "approximateArrivalOfLastRecord": _iso_seconds(records[-1].created_at),
            "batchSize": len(records),
            "streamArn": stream_arn,
        },
    }


# --------------------------------------------------------------------------------------
# Partial batch responses
# --------------------------------------------------------------------------------------


class InvalidBatchResponseError(ValueError):
    """A ``batchItemFailures`` response Lambda would treat as a whole-batch failure."""


def first_reported_failure(response: object, identifiers: Sequence[str]) -> int | None:
    """Index of the earliest item a ``batchItemFailures`` response reports, or None.

    Lambda's rules: no response, no list or an empty list mean success; an entry with
    a missing, empty or unknown ``itemIdentifier`` fails the whole batch; otherwise it
    resumes from the lowest reported item.

    Raises
    ------
    InvalidBatchResponseError
        The response fails the whole batch.
    """
    if not isinstance(response, Mapping):
        return None
    failures = response.get("batchItemFailures")
    if not failures:
        return None
    if not isinstance(failures, list):
        raise InvalidBatchResponseError(f"batchItemFailures is not a list: {failures!r}")
    positions = {identifier: index for index, identifier in enumerate(identifiers)}
    indexes = []
    for failure in failures:
        identifier = failure.get("itemIdentifier") if isinstance(failure, Mapping) else None
        if not isinstance(identifier, str) or identifier not in positions:
            raise InvalidBatchResponseError(f"invalid batch item failure: {failure!r}")
        indexes.append(positions[identifier])
    return min(indexes)


# --------------------------------------------------------------------------------------
# Stream poller
# --------------------------------------------------------------------------------------


def _int_setting(value: object) -> int:
    if not isinstance(value, int):
        raise TypeError(f"expected an integer mapping setting, got {value!r}")
    return value


@dataclass(frozen=True)
class StreamSettings:
    """A stream mapping's settings, plus local pacing that Lambda does not expose.

    Build it with :meth:`from_mapping` (the deployed values) and override with
    :func:`dataclasses.replace` in tests.
    """

    batch_size: int
    batching_window_seconds: float
    starting_position: str
    maximum_retry_attempts: int  # -1: retry until the record expires
    maximum_record_age_seconds: int  # -1: no limit
    bisect_on_error: bool
    report_batch_item_failures: bool
    filter_criteria: FilterCriteria
    #: Wait before retrying a failed batch (Lambda backs off; locally keep it short).
    retry_backoff_seconds: float = 0.2
    #: Sleep between reads of an idle shard (Lambda polls each shard 4 times a second).
    idle_poll_seconds: float = 0.25
    #: How often to look for new shards.
    shard_refresh_seconds: float = 10.0

    @classmethod
    def from_mapping(cls, properties: Mapping[str, Any] | None = None) -> StreamSettings:
        """From CloudFormation mapping properties; default: what the deploy uses."""
        props = mapping.stream_mapping_properties() if properties is None else properties
        return cls(
            batch_size=_int_setting(props.get("BatchSize", 100)),
            batching_window_seconds=float(props.get("MaximumBatchingWindowInSeconds", 0)),
            starting_position=str(props["StartingPosition"]),
            maximum_retry_attempts=_int_setting(props.get("MaximumRetryAttempts", -1)),
            maximum_record_age_seconds=_int_setting(props.get("MaximumRecordAgeInSeconds", -1)),
            bisect_on_error=bool(props.get("BisectBatchOnFunctionError", False)),
            report_batch_item_failures="ReportBatchItemFailures"
            in props.get("FunctionResponseTypes", ()),
            filter_criteria=FilterCriteria.from_mapping_property(props.get("FilterCriteria")),
        )

    def retries_exhausted(self, failed_attempts: int) -> bool:
        """Whether a batch that failed this many times is given up on."""
        return 0 <= self.maximum_retry_attempts < failed_attempts

    def expired(self, record: StreamRecord, now: float) -> bool:
        """Whether a record is older than the maximum record age."""
        limit = self.maximum_record_age_seconds
        return limit >= 0 and now - record.created_at > limit


class StreamOutcome(enum.Enum):
    """What one :meth:`StreamPoller.poll_once` step did."""

    IDLE = "idle"  # nothing to deliver (no records, or a retry not yet due)
    FILTERED = "filtered"  # read records, the filter dropped them all; no invocation
    SUCCEEDED = "succeeded"  # invoked; the whole batch is done
    PARTIAL_FAILURE = "partial_failure"  # invoked; items before the reported one are done
    RETRYING = "retrying"  # invoked; function error, the same batch will be retried
    BISECTED = "bisected"  # invoked; function error, the batch was split in two
    DISCARDED = "discarded"  # batch sent to the OnFailure destination


@dataclass(frozen=True)
class StreamPollResult:
    """The outcome of one step, for tests, benchmarks and logs."""

    outcome: StreamOutcome
    shard_id: str | None = None
    #: Sequence numbers of the batch invoked or discarded in this step.
    sequence_numbers: tuple[str, ...] = ()
    #: Records the filter dropped in this step.
    filtered: int = 0
    invocation: Invocation | None = None
    on_failure: JsonDict | None = None
    #: The shard's checkpoint after the step (last sequence number done).
    checkpoint: str | None = None

    @property
    def idle(self) -> bool:
        """Whether the step found nothing to do."""
        return self.outcome is StreamOutcome.IDLE


@dataclass
class _Batch:
    """Records delivered together, and how often they failed."""

    records: list[StreamRecord]
    failed_attempts: int = 0
    invocations: int = 0
    last_invocation: Invocation | None = None
    #: A record the filter dropped after the last one here: done once this batch is.
    skip_through: str | None = None
    not_before: float = 0.0  # monotonic time of the next attempt
    #: Set when the batch is to go to the OnFailure destination. It stays on the
    #: shard until the message is sent, so a failed send is retried, not lost.
    give_up: FailureCondition | None = None

    @property
    def sequence_numbers(self) -> tuple[str, ...]:
        return tuple(record.sequence_number for record in self.records)


@dataclass
class _Shard:
    shard_id: str
    parent_id: str | None
    starting_position: str
    iterator: str | None = None
    #: Highest sequence number read from the backend (re-acquire iterators after it).
    last_read: str | None = None
    closed: bool = False  # the shard ended and everything in it was read
    buffer: deque[StreamRecord] = field(default_factory=deque)
    #: Batches to deliver before reading on; the last one is next (bisect halves).
    work: list[_Batch] = field(default_factory=list)

    @property
    def drained(self) -> bool:
        return self.closed and not self.buffer and not self.work


@dataclass
class _Gathered:
    records: list[StreamRecord] = field(default_factory=list)
    filtered: int = 0
    skip_through: str | None = None


class StreamPoller:
    """Delivers one DynamoDB stream to one handler, as a Lambda stream mapping does.

    Per shard, in order (children after their parents): read, filter, gather a batch
    (batch size or batching window), invoke, and act on the result. A batch is never
    followed by a later record of its shard before it is done (succeeded, or sent to
    the OnFailure destination).

    Failure handling, as Lambda documents it:

    * ``batchItemFailures`` (when ``report_batch_item_failures``): records before the
      lowest reported one are done; the rest is retried. When progress was made the
      rest counts as a new batch; a failure at the first record counts as a failed
      attempt. A malformed response fails the whole batch.
    * A raised exception with ``bisect_on_error`` and more than one record splits the
      batch in halves, first half first; splitting consumes no retry.
    * Otherwise a failed attempt is counted; after ``maximum_retry_attempts`` retries
      the batch goes to the OnFailure destination (``RetryAttemptsExhausted``).
    * Records older than ``maximum_record_age_seconds`` go to the OnFailure destination
      without being invoked (``RecordAgeExceeded``).

    Drive it with :meth:`poll_once` (tests) or :meth:`run` (a thread).
    """

    def __init__(
        self,
        handler: LambdaHandler,
        streams: DynamoDBStreamsClient,
        stream_arn: str,
        *,
        settings: StreamSettings | None = None,
        function: FunctionIdentity | None = None,
        on_failure: OnFailureDestination | None = None,
        checkpoints: MutableMapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """
        Parameters
        ----------
        handler:
            Called as ``handler(event, context)``.
        streams:
            A ``dynamodbstreams`` client for the backend.
        stream_arn:
            The stream to read; also the records' ``eventSourceARN``.
        settings:
            Mapping settings; default :meth:`StreamSettings.from_mapping`.
        function:
            Identity used in contexts and OnFailure messages.
        on_failure:
            Destination for discarded batches; without one they are only logged.
        checkpoints:
            Shard id -> last sequence number done. Pass the same mapping to a new
            poller to resume where a previous one stopped.
        clock:
            Wall clock (epoch seconds) for record age; tests move it forward.
        """
        self._handler = handler
        self._streams = streams
        self._stream_arn = stream_arn
        self._settings = settings or StreamSettings.from_mapping()
        self._function = function or _default_identity(stream_arn, "stream-handler")
        self._on_failure = on_failure
        self.checkpoints: MutableMapping[str, str] = {} if checkpoints is None else checkpoints
        self._clock = clock
        self._shards: dict[str, _Shard] = {}
        self._next_refresh = 0.0
        self._turn = 0  # round-robin position among ready shards
        self._stop = threading.Event()

    @property
    def settings(self) -> StreamSettings:
        """The settings in force."""
        return self._settings

    # -- driving -------------------------------------------------------------------

    def poll_once(self) -> StreamPollResult:
        """Do one step on the next shard with something to do; return what happened.

        A step is at most one invocation or one OnFailure delivery. It may block for
        the batching window while it gathers records, never longer.
        """
        self._refresh_shards_if_due()
        ready = self._ready_shards()
        for offset in range(len(ready)):
            shard = ready[(self._turn + offset) % len(ready)]
            result = self._step(shard)
            if not result.idle:
                self._turn = (self._turn + offset + 1) % max(1, len(ready))
                return result
        return StreamPollResult(StreamOutcome.IDLE)

    def run(self, stop_event: threading.Event) -> None:
        """Poll until ``stop_event`` is set (the body of a daemon thread)."""
        self._stop = stop_event
        run_until_stopped(
            self.poll_once,
            stop_event,
            idle_seconds=self._settings.idle_poll_seconds,
            name=self._function.name,
        )

    # -- shards --------------------------------------------------------------------

    def _refresh_shards_if_due(self) -> None:
        now = time.monotonic()
        if self._shards and now < self._next_refresh:
            return
        self._next_refresh = now + self._settings.shard_refresh_seconds
        first_discovery = not self._shards
        for description in self._describe_shards():
            shard_id = description["ShardId"]
            if shard_id in self._shards:
                continue
            # The starting position applies to the shards open when polling starts;
            # shards that appear later are read from their beginning.
            position = self._settings.starting_position if first_discovery else "TRIM_HORIZON"
            self._shards[shard_id] = _Shard(
                shard_id, description.get("ParentShardId"), starting_position=position
            )

    def _describe_shards(self) -> list[ShardTypeDef]:
        shards: list[ShardTypeDef] = []
        start: str | None = None
        for _ in range(_MAX_DESCRIBE_PAGES):
            if start is None:
                page = self._streams.describe_stream(StreamArn=self._stream_arn)
            else:
                page = self._streams.describe_stream(
                    StreamArn=self._stream_arn, ExclusiveStartShardId=start
                )
            description = page["StreamDescription"]
            shards.extend(description.get("Shards", []))
            start = description.get("LastEvaluatedShardId")
            if not start:
                break
        return shards

    def _ready_shards(self) -> list[_Shard]:
        # A child shard waits until its parent is drained, so records of one item stay
        # in order across a split. A parent no longer listed has been trimmed.
        ready = []
        for shard in self._shards.values():
            if shard.drained:
                continue
            parent = self._shards.get(shard.parent_id) if shard.parent_id else None
            if parent is None or parent.drained:
                ready.append(shard)
        return ready

    # -- one step on one shard --------------------------------------------------------

    def _step(self, shard: _Shard) -> StreamPollResult:
        if shard.work:
            return self._work_on(shard, shard.work[-1])
        gathered = self._gather(shard)
        if not gathered.records:
            outcome = StreamOutcome.FILTERED if gathered.filtered else StreamOutcome.IDLE
            return self._result(outcome, shard, filtered=gathered.filtered)
        batch = _Batch(gathered.records, skip_through=gathered.skip_through)
        shard.work.append(batch)
        return replace(self._work_on(shard, batch), filtered=gathered.filtered)

    def _work_on(self, shard: _Shard, batch: _Batch) -> StreamPollResult:
        if batch.give_up is not None:
            return self._discard(shard, batch)
        if time.monotonic() < batch.not_before:
            return self._result(StreamOutcome.IDLE, shard)
        expired = self._split_expired(batch)
        if expired is not None:
            if not batch.records:
                shard.work.pop()
            shard.work.append(expired)
            return self._discard(shard, expired)
        return self._deliver(shard, batch)

    def _deliver(self, shard: _Shard, batch: _Batch) -> StreamPollResult:
        event = {"Records": [record.lambda_record for record in batch.records]}
        invocation = invoke(self._handler, event, self._function)
        batch.invocations += 1
        batch.last_invocation = invocation
        if invocation.failed:
            return self._on_function_error(shard, batch, invocation)
        if not self._settings.report_batch_item_failures:
            return self._complete(shard, batch, StreamOutcome.SUCCEEDED, invocation)
        try:
            failed_at = first_reported_failure(invocation.response, batch.sequence_numbers)
        except InvalidBatchResponseError as error:
            logger.warning("%s: %s; whole batch failed", self._function.name, error)
            return self._on_function_error(shard, batch, invocation)
        if failed_at is None:
            return self._complete(shard, batch, StreamOutcome.SUCCEEDED, invocation)
        return self._on_partial_failure(shard, batch, failed_at, invocation)

    def _on_partial_failure(
        self, shard: _Shard, batch: _Batch, failed_at: int, invocation: Invocation
    ) -> StreamPollResult:
        invoked = batch.sequence_numbers
        if failed_at == 0:
            return self._retry_later(shard, batch, invocation, StreamOutcome.PARTIAL_FAILURE)
        self._checkpoint(shard, batch.records[failed_at - 1].sequence_number)
        # Progress was made: what is left is a new batch with its own retry budget,
        # retried after the usual pause (the failure is usually contention).
        shard.work[-1] = _Batch(
            batch.records[failed_at:],
            skip_through=batch.skip_through,
            not_before=time.monotonic() + self._settings.retry_backoff_seconds,
        )
        return self._result(
            StreamOutcome.PARTIAL_FAILURE, shard, sequence_numbers=invoked, invocation=invocation
        )

    def _on_function_error(
        self, shard: _Shard, batch: _Batch, invocation: Invocation
    ) -> StreamPollResult:
        if self._settings.bisect_on_error and len(batch.records) > 1:
            middle = len(batch.records) // 2
            first = _Batch(batch.records[:middle])
            second = _Batch(batch.records[middle:], skip_through=batch.skip_through)
            shard.work[-1:] = [second, first]  # first half is delivered first
            return self._result(
                StreamOutcome.BISECTED,
                shard,
                sequence_numbers=batch.sequence_numbers,
                invocation=invocation,
            )
        return self._retry_later(shard, batch, invocation, StreamOutcome.RETRYING)

    def _retry_later(
        self, shard: _Shard, batch: _Batch, invocation: Invocation, outcome: StreamOutcome
    ) -> StreamPollResult:
        batch.failed_attempts += 1
        if self._settings.retries_exhausted(batch.failed_attempts):
            batch.give_up = FailureCondition.RETRY_ATTEMPTS_EXHAUSTED
            return self._discard(shard, batch)
        batch.not_before = time.monotonic() + self._settings.retry_backoff_seconds
        return self._result(
            outcome, shard, sequence_numbers=batch.sequence_numbers, invocation=invocation
        )

    def _complete(
        self, shard: _Shard, batch: _Batch, outcome: StreamOutcome, invocation: Invocation
    ) -> StreamPollResult:
        shard.work.pop()
        self._checkpoint(shard, batch.skip_through or batch.records[-1].sequence_number)
        return self._result(
            outcome, shard, sequence_numbers=batch.sequence_numbers, invocation=invocation
        )

    def _split_expired(self, batch: _Batch) -> _Batch | None:
        """Detach the batch's leading records that are too old to deliver."""
        now = self._clock()
        count = 0
        while count < len(batch.records) and self._settings.expired(batch.records[count], now):
            count += 1
        if count == 0:
            return None
        expired = _Batch(
            batch.records[:count],
            invocations=batch.invocations,
            last_invocation=batch.last_invocation,
            give_up=FailureCondition.RECORD_AGE_EXCEEDED,
        )
        del batch.records[:count]
        if not batch.records:  # the whole batch expired: it carries the skip
            expired.skip_through = batch.skip_through
        return expired

    def _discard(self, shard: _Shard, batch: _Batch) -> StreamPollResult:
        """Send the batch on top of the shard's work to the OnFailure destination."""
        condition = batch.give_up or FailureCondition.RETRY_ATTEMPTS_EXHAUSTED
        message = stream_failure_message(
            records=batch.records,
            shard_id=shard.shard_id,
            stream_arn=self._stream_arn,
            function=self._function,
            condition=condition,
            last_invocation=batch.last_invocation,
            invoke_count=batch.invocations,
            now=self._clock(),
        )
        logger.warning(
            "%s: %s, records %s..%s sent to the OnFailure destination",
            self._function.name,
            condition,
            batch.records[0].sequence_number,
            batch.records[-1].sequence_number,
        )
        if self._on_failure is not None:
            self._on_failure.send(message)  # if this raises, the next step sends again
        shard.work.pop()
        self._checkpoint(shard, batch.skip_through or batch.records[-1].sequence_number)
        return self._result(
            StreamOutcome.DISCARDED,
            shard,
            sequence_numbers=batch.sequence_numbers,
            invocation=batch.last_invocation,
            on_failure=message,
        )

    def _checkpoint(self, shard: _Shard, sequence_number: str) -> None:
        self.checkpoints[shard.shard_id] = sequence_number

    def _result(
        self,
        outcome: StreamOutcome,
        shard: _Shard,
        *,
        sequence_numbers: tuple[str, ...] = (),
        filtered: int = 0,
        invocation: Invocation | None = None,
        on_failure: JsonDict | None = None,
    ) -> StreamPollResult:
        return StreamPollResult(
            outcome=outcome,
            shard_id=shard.shard_id,
            sequence_numbers=sequence_numbers,
            filtered=filtered,
            invocation=invocation,
            on_failure=on_failure,
            checkpoint=self.checkpoints.get(shard.shard_id),
        )

    # -- reading and batching -------------------------------------------------------

    def _gather(self, shard: _Shard) -> _Gathered:
        """Collect up to a batch of matching records, waiting at most the window.

        The window opens at the first matching record: with nothing to deliver there
        is nothing to wait for.
        """
        gathered = _Gathered()
        deadline: float | None = None
        for _ in range(_MAX_FETCHES_PER_STEP):
            self._take_buffered(shard, gathered)
            if len(gathered.records) >= self._settings.batch_size or shard.closed:
                break
            if gathered.records and deadline is None:
                deadline = time.monotonic() + self._settings.batching_window_seconds
            remaining = (deadline - time.monotonic()) if deadline is not None else None
            if (remaining is not None and remaining <= 0) or self._stop.is_set():
                break
            if self._fetch_keeping(shard, gathered) == 0:
                if remaining is None:
                    break  # nothing matched and nothing new: the shard is idle
                self._stop.wait(min(max(self._settings.idle_poll_seconds, 0.01), remaining))
        return gathered

    def _fetch_keeping(self, shard: _Shard, gathered: _Gathered) -> int:
        try:
            return self._fetch(shard)
        except Exception:
            # Put what was gathered back, in order, so a failed read loses nothing.
            shard.buffer.extendleft(reversed(gathered.records))
            raise

    def _take_buffered(self, shard: _Shard, gathered: _Gathered) -> None:
        criteria = self._settings.filter_criteria
        while shard.buffer and len(gathered.records) < self._settings.batch_size:
            record = shard.buffer.popleft()
            if criteria.matches(record.lambda_record):
                gathered.records.append(record)
                gathered.skip_through = None
            elif gathered.records:
                gathered.filtered += 1
                gathered.skip_through = record.sequence_number
            else:
                # Dropped before anything is pending on the shard: done right away.
                gathered.filtered += 1
                self._checkpoint(shard, record.sequence_number)

    def _fetch(self, shard: _Shard) -> int:
        """Read the next page of the shard into its buffer; return how many records."""
        if shard.iterator is None:
            shard.iterator = self._acquire_iterator(shard)
            if shard.iterator is None:
                shard.closed = True
                return 0
        try:
            page = self._streams.get_records(ShardIterator=shard.iterator, Limit=_GET_RECORDS_LIMIT)
        except ClientError:
            # Expired or unknown iterator (moto answers 500 after a restart): start
            # again from the last record read on the next fetch.
            shard.iterator = None
            raise
        records = page.get("Records", [])
        for raw in records:
            record = to_stream_record(raw, self._stream_arn)
            shard.buffer.append(record)
            shard.last_read = record.sequence_number
        next_iterator = page.get("NextShardIterator")
        if next_iterator is None:
            shard.closed = True
        elif records or not self._can_reacquire(shard):
            shard.iterator = next_iterator
        else:
            # Empty read: take a fresh iterator next time (see the module notes on
            # moto orphaning iterators after a failed transaction).
            shard.iterator = None
        return len(records)

    def _can_reacquire(self, shard: _Shard) -> bool:
        # Only LATEST with nothing read yet has no absolute position to return to.
        positioned = shard.last_read or self.checkpoints.get(shard.shard_id)
        return bool(positioned) or shard.starting_position != "LATEST"

    def _acquire_iterator(self, shard: _Shard) -> str | None:
        after = shard.last_read or self.checkpoints.get(shard.shard_id)
        if after is not None:
            response = self._streams.get_shard_iterator(
                StreamArn=self._stream_arn,
                ShardId=shard.shard_id,
                ShardIteratorType="AFTER_SEQUENCE_NUMBER",
                SequenceNumber=after,
            )
        else:
            response = self._streams.get_shard_iterator(
                StreamArn=self._stream_arn,
                ShardId=shard.shard_id,
                ShardIteratorType="LATEST"
                if shard.starting_position == "LATEST"
                else "TRIM_HORIZON",
            )
        return response.get("ShardIterator")


# --------------------------------------------------------------------------------------
# SQS poller
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SqsSettings:
    """An SQS mapping's settings, plus local pacing."""

    batch_size: int = mapping.TIER1_BATCH_SIZE
    report_batch_item_failures: bool = False
    #: Visibility given to messages whose invocation failed, so retries come quickly
    #: locally (on AWS they wait out the queue's visibility timeout). None: leave it.
    retry_visibility_seconds: int | None = 1
    #: Server-side long poll. Keep 0 against the serialised embedded backend.
    wait_time_seconds: int = 0
    idle_poll_seconds: float = 0.25


class SqsOutcome(enum.Enum):
    """What one :meth:`SqsPoller.poll_once` step did."""

    IDLE = "idle"
    SUCCEEDED = "succeeded"  # invoked; messages deleted
    PARTIAL_FAILURE = "partial_failure"  # invoked; the reported messages were kept
    FAILED = "failed"  # invoked; function error, messages left for redelivery


@dataclass(frozen=True)
class SqsPollResult:
    """The outcome of one step."""

    outcome: SqsOutcome
    message_ids: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()
    invocation: Invocation | None = None

    @property
    def idle(self) -> bool:
        """Whether the step found nothing to do."""
        return self.outcome is SqsOutcome.IDLE


class SqsPoller:
    """Delivers one SQS queue to one handler, as a Lambda SQS mapping does.

    Success deletes the messages. A function error leaves them in the queue: they come
    back after the visibility timeout (shortened locally), and the queue's redrive
    policy moves a message that keeps failing to its dead-letter queue.
    """

    def __init__(
        self,
        handler: LambdaHandler,
        sqs: SQSClient,
        queue_url: str,
        *,
        settings: SqsSettings | None = None,
        function: FunctionIdentity | None = None,
    ) -> None:
        self._handler = handler
        self._sqs = sqs
        self._queue_url = queue_url
        self._settings = settings or SqsSettings()
        attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
        self.queue_arn = attributes["Attributes"]["QueueArn"]
        self._region = self.queue_arn.split(":")[3]
        self._function = function or _default_identity(self.queue_arn, "queue-handler")

    def poll_once(self) -> SqsPollResult:
        """Receive up to a batch, invoke once, then delete or release the messages."""
        messages = self._receive()
        if not messages:
            return SqsPollResult(SqsOutcome.IDLE)
        event = {
            "Records": [
                to_lambda_sqs_record(message, self.queue_arn, self._region) for message in messages
            ]
        }
        ids = tuple(message["MessageId"] for message in messages)
        invocation = invoke(self._handler, event, self._function)
        failed = self._failed_messages(messages, invocation)
        failed_ids = {message["MessageId"] for message in failed}
        succeeded = [message for message in messages if message["MessageId"] not in failed_ids]
        self._delete(succeeded)
        self._release(failed)
        deleted = tuple(message["MessageId"] for message in succeeded)
        if invocation.failed or (failed and not succeeded):
            outcome = SqsOutcome.FAILED
        elif failed:
            outcome = SqsOutcome.PARTIAL_FAILURE
        else:
            outcome = SqsOutcome.SUCCEEDED
        return SqsPollResult(outcome, ids, deleted, invocation)

    def run(self, stop_event: threading.Event) -> None:
        """Poll until ``stop_event`` is set (the body of a daemon thread)."""
        run_until_stopped(
            self.poll_once,
            stop_event,
            idle_seconds=self._settings.idle_poll_seconds,
            name=self._function.name,
        )

    def _receive(self) -> list[MessageTypeDef]:
        messages: list[MessageTypeDef] = []
        receives = math.ceil(self._settings.batch_size / _SQS_RECEIVE_LIMIT)
        for _ in range(receives):
            wanted = min(_SQS_RECEIVE_LIMIT, self._settings.batch_size - len(messages))
            page = self._sqs.receive_message(
                QueueUrl=self._queue_url,
                MaxNumberOfMessages=wanted,
                WaitTimeSeconds=self._settings.wait_time_seconds,
                MessageSystemAttributeNames=["All"],
                MessageAttributeNames=["All"],
            )
            received = page.get("Messages", [])
            messages.extend(received)
            if len(received) < wanted:
                break
        return messages

    def _failed_messages(
        self, messages: Sequence[MessageTypeDef], invocation: Invocation
    ) -> list[MessageTypeDef]:
        if invocation.failed:
            return list(messages)
        if not self._settings.report_batch_item_failures:
            return []
        response = invocation.response
        failures = response.get("batchItemFailures") if isinstance(response, Mapping) else None
        if not failures:
            return []
        reported = {
            failure.get("itemIdentifier") for failure in failures if isinstance(failure, Mapping)
        }
        ids = {message["MessageId"] for message in messages}
        if not reported <= ids:  # Lambda fails the whole batch on an unknown identifier
            return list(messages)
        return [message for message in messages if message["MessageId"] in reported]

    def _delete(self, messages: Sequence[MessageTypeDef]) -> None:
        if not messages:
            return
        self._sqs.delete_message_batch(
            QueueUrl=self._queue_url,
            Entries=[
                {"Id": str(index), "ReceiptHandle": message["ReceiptHandle"]}
                for index, message in enumerate(messages)
            ],
        )

    def _release(self, messages: Sequence[MessageTypeDef]) -> None:
        timeout = self._settings.retry_visibility_seconds
        if not messages or timeout is None:
            return
        self._sqs.change_message_visibility_batch(
            QueueUrl=self._queue_url,
            Entries=[
                {
                    "Id": str(index),
                    "ReceiptHandle": message["ReceiptHandle"],
                    "VisibilityTimeout": timeout,
                }
                for index, message in enumerate(messages)
            ],
        )


# --------------------------------------------------------------------------------------
# Schedule
# --------------------------------------------------------------------------------------

_RATE: Final = re.compile(r"^rate\((\d+)\s+(minute|minutes|hour|hours|day|days)\)$")
_UNIT_SECONDS: Final = {"minute": 60, "hour": 3600, "day": 86400}
DEFAULT_SCHEDULE_SECONDS: Final = 60.0


def schedule_interval_seconds(expression: object) -> float:
    """Seconds between runs for a schedule expression; cron falls back to 60 s.

    Accepts the string or Chalice's ``Rate``/``Cron`` objects (``to_string()``).
    """
    to_string = getattr(expression, "to_string", None)
    text = to_string() if callable(to_string) else str(expression)
    match = _RATE.match(str(text).strip())
    if match is None:
        return DEFAULT_SCHEDULE_SECONDS
    unit = match.group(2).rstrip("s")
    return float(int(match.group(1)) * _UNIT_SECONDS[unit])


def scheduled_event(rule_arn: str, region: str, account: str, now: float) -> JsonDict:
    """The event EventBridge sends for a scheduled rule."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": account,
        "time": _iso_seconds(now),
        "region": region,
        "resources": [rule_arn],
        "detail": {},
    }


class ScheduleRunner:
    """Runs a ``@app.schedule`` handler every ``interval_seconds``.

    Like EventBridge, the first run is one interval after the start. A failing run is
    logged and the schedule goes on.
    """

    def __init__(
        self,
        handler: LambdaHandler,
        *,
        interval_seconds: float,
        rule_arn: str,
        function: FunctionIdentity,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if interval_seconds <= 0:
            raise ValueError(f"interval_seconds must be positive, got {interval_seconds}")
        self._handler = handler
        self.interval_seconds = interval_seconds
        self._rule_arn = rule_arn
        self._function = function
        self._clock = clock
        parts = rule_arn.split(":")
        self._region, self._account = parts[3], parts[4]

    def run_once(self) -> Invocation:
        """Invoke the handler once with a scheduled event."""
        event = scheduled_event(self._rule_arn, self._region, self._account, self._clock())
        return invoke(self._handler, event, self._function)

    def run(self, stop_event: threading.Event) -> None:
        """Run every interval until ``stop_event`` is set."""
        while not stop_event.wait(self.interval_seconds):
            self.run_once()  # handler errors are logged by invoke(); the schedule goes on


# --------------------------------------------------------------------------------------
# Running in threads
# --------------------------------------------------------------------------------------


class _Step(Protocol):
    @property
    def idle(self) -> bool: ...


def run_until_stopped(
    poll_once: Callable[[], _Step],
    stop_event: threading.Event,
    *,
    idle_seconds: float,
    name: str,
    error_backoff_seconds: float = 1.0,
    max_polls: int | None = None,
) -> int:
    """Call ``poll_once`` until ``stop_event`` is set (or ``max_polls``); return the count.

    Sleeps ``idle_seconds`` after an idle step, :data:`QUIET_POLL_SECONDS` once idle
    for :data:`QUIET_AFTER_SECONDS`. Errors (the backend may be restarting or shutting
    down) are logged and retried after a pause: a poller thread that died would
    silently stop the counting.
    """
    polls = 0
    busy_at = time.monotonic()
    while not stop_event.is_set() and (max_polls is None or polls < max_polls):
        polls += 1
        try:
            step = poll_once()
        except (ClientError, BotoCoreError) as error:
            logger.warning("%s: backend error, retrying: %s", name, error)
            stop_event.wait(error_backoff_seconds)
            continue
        except Exception:
            logger.exception("%s: poll failed, retrying", name)
            stop_event.wait(error_backoff_seconds)
            continue
        now = time.monotonic()
        if not step.idle:
            busy_at = now
        elif now - busy_at < QUIET_AFTER_SECONDS:
            stop_event.wait(idle_seconds)
        else:
            stop_event.wait(max(idle_seconds, QUIET_POLL_SECONDS))
    return polls


def _default_identity(source_arn: str, handler_name: str) -> FunctionIdentity:
    parts = source_arn.split(":")
    region, account = parts[3], parts[4]
    return FunctionIdentity.for_handler("local", "local", handler_name, region, account)


# --------------------------------------------------------------------------------------
# Wiring to a Chalice app
# --------------------------------------------------------------------------------------


class ProvisionedResources(Protocol):
    """What the local runtime provisioned that the event sources need."""

    @property
    def stream_arn(self) -> str: ...

    @property
    def tier1_queue_url(self) -> str: ...


@dataclass(frozen=True)
class EventHandler:
    """One decorated event handler of the app, with its Chalice event source config."""

    name: str
    handler: LambdaHandler
    config: Any  # chalice.app.DynamoDBEventConfig, SQSEventConfig or ScheduledEventConfig


@dataclass(frozen=True)
class AppEventHandlers:
    """The app's handlers grouped by the kind of event source that drives them."""

    app_name: str
    streams: tuple[EventHandler, ...] = ()
    queues: tuple[EventHandler, ...] = ()
    schedules: tuple[EventHandler, ...] = ()


def discover_event_handlers(app_module: ModuleType) -> AppEventHandlers:
    """Find the stream, queue and schedule handlers registered on the module's app.

    Chalice records every event source in ``app.event_sources`` and the wrapped,
    ``(event, context)``-callable handler in ``app.handler_map`` under the same name,
    so no handler name is hard-coded here. Other event source kinds are ignored.
    """
    from chalice.app import (  # the route layer's dependency; imported where it is used
        Chalice,
        DynamoDBEventConfig,
        ScheduledEventConfig,
        SQSEventConfig,
    )

    app = getattr(app_module, "app", None)
    if not isinstance(app, Chalice):
        raise ValueError(f"{app_module.__name__} has no Chalice app named 'app'")
    groups: dict[type, list[EventHandler]] = {
        DynamoDBEventConfig: [],
        SQSEventConfig: [],
        ScheduledEventConfig: [],
    }
    for config in app.event_sources:
        bucket = groups.get(type(config))
        if bucket is not None:
            bucket.append(EventHandler(config.name, app.handler_map[config.name], config))
    return AppEventHandlers(
        app_name=app.app_name,
        streams=tuple(groups[DynamoDBEventConfig]),
        queues=tuple(groups[SQSEventConfig]),
        schedules=tuple(groups[ScheduledEventConfig]),
    )


@dataclass(frozen=True)
class LocalEventSourceOptions:
    """Local knobs for :func:`start_event_sources` (the mapping settings stay as deployed)."""

    stage: str = "local"
    stream: StreamSettings | None = None  # default: StreamSettings.from_mapping()
    queue: SqsSettings = field(default_factory=SqsSettings)
    #: Seconds between scheduled runs; None: from the schedule expression.
    schedule_interval_seconds: float | None = None


def start_event_sources(
    app_module: ModuleType,
    outputs: ProvisionedResources,
    stop_event: threading.Event,
    *,
    session: boto3.Session | None = None,
    options: LocalEventSourceOptions | None = None,
) -> list[threading.Thread]:
    """Start one daemon thread per stream, queue and schedule handler of the app.

    Parameters
    ----------
    app_module:
        The imported ``app`` module.
    outputs:
        Provisioned resources: the stream to poll (whatever ARN the decorator names,
        the local table's current stream is the one that exists) and the tier-1
        queue, the stream mapping's OnFailure destination.
    stop_event:
        Set it to stop every thread; each stops within about a second.
    session:
        boto3 session for the clients (default: a new one; it honours
        ``AWS_ENDPOINT_URL``).

    Returns
    -------
    The started threads (daemons).
    """
    options = options or LocalEventSourceOptions()
    session = session or boto3.Session()
    handlers = discover_event_handlers(app_module)
    region, account = _region_and_account(outputs.stream_arn)
    identity = _identity_factory(handlers.app_name, options.stage, region, account)
    sqs = session.client("sqs")
    runners: list[tuple[str, Callable[[threading.Event], None]]] = []
    for item in handlers.streams:
        poller = StreamPoller(
            item.handler,
            session.client("dynamodbstreams"),
            outputs.stream_arn,
            settings=options.stream or StreamSettings.from_mapping(),
            function=identity(item.name),
            on_failure=SqsOnFailureDestination(sqs, outputs.tier1_queue_url),
        )
        runners.append((item.name, poller.run))
    for item in handlers.queues:
        queue_url = _queue_url(sqs, item.config)
        queue_poller = SqsPoller(
            item.handler,
            session.client("sqs"),
            queue_url,
            settings=replace(options.queue, batch_size=item.config.batch_size),
            function=identity(item.name),
        )
        runners.append((item.name, queue_poller.run))
    for item in handlers.schedules:
        interval = options.schedule_interval_seconds or schedule_interval_seconds(
            item.config.schedule_expression
        )
        function = identity(item.name)
        runner = ScheduleRunner(
            item.handler,
            interval_seconds=interval,
            rule_arn=f"arn:aws:events:{region}:{account}:rule/{function.name}-event",
            function=function,
        )
        runners.append((item.name, runner.run))
    return [_start_thread(name, target, stop_event) for name, target in runners]


def _start_thread(
    name: str, target: Callable[[threading.Event], None], stop_event: threading.Event
) -> threading.Thread:
    thread = threading.Thread(
        target=target, args=(stop_event,), name=f"event-source-{name}", daemon=True
    )
    thread.start()
    logger.info("event source %s started", name)
    return thread


def _identity_factory(
    app_name: str, stage: str, region: str, account: str
) -> Callable[[str], FunctionIdentity]:
    def identity(handler_name: str) -> FunctionIdentity:
        return FunctionIdentity.for_handler(app_name, stage, handler_name, region, account)

    return identity


def _region_and_account(arn: str) -> tuple[str, str]:
    parts = arn.split(":")
    return parts[3], parts[4]


def _queue_url(sqs: SQSClient, config: Any) -> str:
    # The decorator names the queue (or its ARN); the local queue has that name.
    name = config.queue or str(config.queue_arn).rsplit(":", 1)[-1]
    return sqs.get_queue_url(QueueName=name)["QueueUrl"]
