"""Delivery faults of the stream processor: what Lambda's event source mapping does to batches.

:mod:`tests.faults` fails single backend requests through botocore's hooks. This module
fails *deliveries*, around the stream handler the pollers of
:mod:`infrastructure.local.event_sources` invoke:

* **crash after k records** -- the function handles the first ``k`` records of the
  batch (their transactions commit), then dies. Lambda sees a function error and
  delivers the whole batch again (or bisects it).
* **crash at a transaction** -- a botocore hook kills the process just before the
  processor's n-th ``TransactWriteItems`` is sent, or right after it committed (so the
  eventual-count hint is never published).
* **deliver twice** -- the batch is handed to the function a second time after it
  succeeded (at-least-once delivery: the checkpoint was lost).
* **deliver again from tier 1 later** -- after the batch succeeded, its shard and
  sequence range are held back as an OnFailure message and sent to the tier-1 queue
  when the test says so, long after the records were processed.

Every injection is recorded in an :class:`tests.faults.InjectionLog` (``kind`` is a
:class:`DeliveryKind`), so a test counts delivery faults with the botocore ones.

Example
-------
::

    faults = DeliveryFaults(processor_handler(container), streams=container.streams,
                            tier1=SqsOnFailureDestination(sqs, tier1_url))
    faults.crash_after(2, when=nth(1))
    faults.duplicate(when=probability(0.1))
    poller = StreamPoller(faults, streams, stream_arn, settings=...)
    poller.poll_once()
    faults.release()  # the held tier-1 messages, now
"""

from __future__ import annotations

import enum
import itertools
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chalicelib.bootstrap import Container, use_container
from infrastructure.local.event_sources import (
    FailureCondition,
    FunctionIdentity,
    LambdaContext,
    LambdaHandler,
    OnFailureDestination,
    StreamRecord,
    stream_failure_message,
)
from tests.faults import Injection, InjectionLog, Predicate, Schedule, always

if TYPE_CHECKING:
    from botocore.client import BaseClient
    from mypy_boto3_dynamodbstreams import DynamoDBStreamsClient

JsonDict = dict[str, Any]


class DeliveryKind(enum.StrEnum):
    CRASH_AFTER_RECORDS = "crash_after_records"
    CRASH_BEFORE_TRANSACTION = "crash_before_transaction"
    CRASH_AFTER_COMMIT = "crash_after_commit"
    DUPLICATE = "duplicate"
    TIER1_LATER = "tier1_later"


class ProcessCrash(BaseException):
    """The Lambda process dies (timeout, out of memory): no ``except Exception`` runs."""


class LambdaCrashedError(Exception):
    """What the event source mapping sees of a crash: a function error."""


# -- handlers -----------------------------------------------------------------------------


def processor_handler(container: Container) -> LambdaHandler:
    """The stream handler of ``app.py`` bound to ``container`` (not the process global).

    Concurrent tests run the API and the processor in one process, each on its own
    container (as on AWS, where they are different functions).
    """

    def handle(event: JsonDict, context: LambdaContext) -> object:
        return container.processor.process(event["Records"]).response()

    return handle


def replay_handler(container: Container) -> LambdaHandler:
    """The tier-1 handler of ``app.py`` bound to ``container``."""

    def handle(event: JsonDict, context: LambdaContext) -> object:
        for record in event["Records"]:
            container.replayer.replay(record["body"])
        return None

    return handle


def crashes_as_errors(handler: LambdaHandler) -> LambdaHandler:
    """``handler``, with a :class:`ProcessCrash` turned into the function error Lambda sees."""

    def handle(event: JsonDict, context: LambdaContext) -> object:
        try:
            return handler(event, context)
        except ProcessCrash as crash:
            raise LambdaCrashedError(f"process crashed: {crash}") from None

    return handle


def app_handler_on(container: Container, handler: LambdaHandler) -> LambdaHandler:
    """The app's own handler, run with ``container`` as the process container.

    For sequential tests only: while it runs, the API of this process uses
    ``container`` too. The previous container is restored afterwards.
    """
    from chalicelib import bootstrap

    def handle(event: JsonDict, context: LambdaContext) -> object:
        previous = bootstrap._container
        use_container(container)
        try:
            return handler(event, context)
        finally:
            use_container(previous)

    return handle


# -- crash at a transaction (botocore hook) -----------------------------------------------


def counts_transaction(params: Mapping[str, Any]) -> bool:
    """The processor's transactions are the ones that add to ``count_value``."""
    return "count_value :delta" in str(params.get("TransactItems", ""))


class TransactionCrash:
    """Kills the process around a processor transaction, on a schedule.

    ``before`` fires in ``before-send`` (nothing was sent); ``after`` fires in
    ``after-call`` of a successful call (committed, response received, nothing after
    it ran). Attach it to the processor's clients only, and run the handler inside
    :class:`DeliveryFaults`, which turns the crash into a function error.
    """

    def __init__(self, log: InjectionLog, *, where: Predicate = counts_transaction) -> None:
        self._log = log
        self._where = where
        self._lock = threading.Lock()
        self._before: Schedule | None = None
        self._after: Schedule | None = None
        self._seen = {DeliveryKind.CRASH_BEFORE_TRANSACTION: 0, DeliveryKind.CRASH_AFTER_COMMIT: 0}

    def arm(self, *, before: Schedule | None = None, after: Schedule | None = None) -> None:
        with self._lock:
            self._before, self._after = before, after

    def disarm(self) -> None:
        self.arm()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """No crash inside the block; the schedules are armed again after it."""
        with self._lock:
            before, after = self._before, self._after
        self.disarm()
        try:
            yield
        finally:
            self.arm(before=before, after=after)

    def attach(self, client: BaseClient, *, label: str = "") -> BaseClient:
        uid = f"transaction-crash-{id(self)}"
        client.meta.events.register(
            "before-send.dynamodb.TransactWriteItems", self._before_send, unique_id=f"{uid}-b"
        )
        client.meta.events.register(
            "provide-client-params.dynamodb.TransactWriteItems",
            self._remember,
            unique_id=f"{uid}-p",
        )
        client.meta.events.register(
            "after-call.dynamodb.TransactWriteItems", self._after_call, unique_id=f"{uid}-a"
        )
        return client

    @staticmethod
    def _remember(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["transaction_crash_params"] = params

    def _fire(self, kind: DeliveryKind, params: Mapping[str, Any]) -> None:
        if not self._where(params):
            return
        with self._lock:
            schedule = (
                self._before if kind is DeliveryKind.CRASH_BEFORE_TRANSACTION else self._after
            )
            if schedule is None:
                return
            self._seen[kind] += 1
            if not schedule(self._seen[kind]):
                return
        self._log.record(Injection(kind=kind.value, operation="TransactWriteItems", rule=kind))
        raise ProcessCrash(kind.value)

    def _before_send(self, request: Any, **_: Any) -> None:
        context = getattr(request, "context", None) or {}
        self._fire(
            DeliveryKind.CRASH_BEFORE_TRANSACTION, context.get("transaction_crash_params", {})
        )

    def _after_call(self, http_response: Any, context: dict[str, Any], **_: Any) -> None:
        if getattr(http_response, "status_code", 500) >= 300:
            return
        self._fire(DeliveryKind.CRASH_AFTER_COMMIT, context.get("transaction_crash_params", {}))


# -- delivery faults around the handler -----------------------------------------------------


@dataclass
class DeliveryRule:
    kind: DeliveryKind
    when: Schedule
    #: ``crash_after_records`` only: records handled before the crash (a function of the
    #: batch size, so one rule fits every batch).
    records: Callable[[int], int] | None = None
    matched: int = 0
    fired: int = 0


class DeliveryFaults:
    """A stream handler that wraps another and misdelivers batches on a schedule.

    Thread-safe. A rule is evaluated once per delivered batch; crash rules come first
    (a crashed delivery is not duplicated), then duplicate, then tier-1-later.
    """

    def __init__(
        self,
        handler: LambdaHandler,
        *,
        streams: DynamoDBStreamsClient | None = None,
        tier1: OnFailureDestination | None = None,
        log: InjectionLog | None = None,
        function: FunctionIdentity | None = None,
    ) -> None:
        self.handler = handler
        self._streams = streams
        self._tier1 = tier1
        self.log = log if log is not None else InjectionLog()
        self._function = function or FunctionIdentity("delivery-faults", "arn:local:delivery")
        self._lock = threading.Lock()
        self._rules: list[DeliveryRule] = []
        self._held: list[JsonDict] = []
        self._batches = itertools.count(1)
        self.delivered = 0

    # -- rules ---------------------------------------------------------------------

    def crash_after(
        self, k: int | Callable[[int], int], *, when: Schedule | None = None
    ) -> DeliveryRule:
        """Handle the first ``k`` records (``k(batch size)`` if callable), then crash."""
        records = k if callable(k) else _constant(k)
        return self._add(DeliveryRule(DeliveryKind.CRASH_AFTER_RECORDS, when or always(), records))

    def duplicate(self, *, when: Schedule | None = None) -> DeliveryRule:
        """Deliver a batch that succeeded once more (the mapping lost its checkpoint)."""
        return self._add(DeliveryRule(DeliveryKind.DUPLICATE, when or always()))

    def tier1_later(self, *, when: Schedule | None = None) -> DeliveryRule:
        """Hold a succeeded batch's range for the tier-1 queue; :meth:`release` sends it."""
        if self._tier1 is None or self._streams is None:
            raise ValueError("tier1_later needs the streams client and a tier-1 destination")
        return self._add(DeliveryRule(DeliveryKind.TIER1_LATER, when or always()))

    def _add(self, rule: DeliveryRule) -> DeliveryRule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        """Remove every rule (held messages and the log stay)."""
        with self._lock:
            self._rules.clear()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """No rule fires inside the block (draining, checking)."""
        with self._lock:
            rules, self._rules = self._rules, []
        try:
            yield
        finally:
            with self._lock:
                self._rules = rules + self._rules

    def _fires(self, kind: DeliveryKind) -> DeliveryRule | None:
        with self._lock:
            for rule in self._rules:
                if rule.kind is not kind:
                    continue
                rule.matched += 1
                if rule.when(rule.matched):
                    rule.fired += 1
                    return rule
        return None

    def _record(self, kind: DeliveryKind, records: Sequence[JsonDict], **detail: Any) -> None:
        first = records[0]["dynamodb"]["SequenceNumber"] if records else ""
        self.log.record(
            Injection(
                kind=kind.value,
                operation="StreamBatch",
                rule=kind.value,
                params={"records": len(records), "first": first, **detail},
            )
        )

    # -- the handler ----------------------------------------------------------------

    def __call__(self, event: JsonDict, context: LambdaContext) -> object:
        records: list[JsonDict] = list(event.get("Records", []))
        next(self._batches)
        crash = self._fires(DeliveryKind.CRASH_AFTER_RECORDS)
        if crash is not None and crash.records is not None:
            k = max(0, min(len(records), crash.records(len(records))))
            self._record(DeliveryKind.CRASH_AFTER_RECORDS, records, k=k)
            if k:
                self._invoke({"Records": records[:k]}, context)
            raise LambdaCrashedError(f"crashed after {k} of {len(records)} records")
        response = self._invoke(event, context)
        if _succeeded(response) and self._fires(DeliveryKind.DUPLICATE):
            self._record(DeliveryKind.DUPLICATE, records)
            response = self._invoke(event, context)
        if records and _succeeded(response) and self._fires(DeliveryKind.TIER1_LATER):
            self._record(DeliveryKind.TIER1_LATER, records)
            self._hold(records)
        return response

    def _invoke(self, event: JsonDict, context: LambdaContext) -> object:
        with self._lock:
            self.delivered += 1
        try:
            return self.handler(event, context)
        except ProcessCrash as crash:
            raise LambdaCrashedError(f"process crashed: {crash}") from None

    # -- tier 1, later ----------------------------------------------------------------

    def _hold(self, records: Sequence[JsonDict]) -> None:
        assert self._streams is not None
        stream_arn = str(records[0].get("eventSourceARN", ""))
        first = records[0]["dynamodb"]["SequenceNumber"]
        shard = shard_of(self._streams, stream_arn, first)
        wrapped = [
            StreamRecord(
                r["dynamodb"]["SequenceNumber"],
                float(r["dynamodb"]["ApproximateCreationDateTime"]),
                r,
            )
            for r in records
        ]
        message = stream_failure_message(
            records=wrapped,
            shard_id=shard,
            stream_arn=stream_arn,
            function=self._function,
            condition=FailureCondition.RETRY_ATTEMPTS_EXHAUSTED,
            last_invocation=None,
            invoke_count=1,
            now=time.time(),
        )
        with self._lock:
            self._held.append(message)

    @property
    def held(self) -> int:
        with self._lock:
            return len(self._held)

    def release(self, n: int | None = None) -> int:
        """Send the oldest ``n`` (default all) held messages to the tier-1 queue."""
        assert self._tier1 is not None or not self._held
        with self._lock:
            count = len(self._held) if n is None else min(n, len(self._held))
            batch, self._held = self._held[:count], self._held[count:]
        for message in batch:
            assert self._tier1 is not None
            self._tier1.send(message)
        return len(batch)


def _constant(k: int) -> Callable[[int], int]:
    return lambda _size: k


def _succeeded(response: object) -> bool:
    if not isinstance(response, Mapping):
        return True
    return not response.get("batchItemFailures")


def shard_of(streams: DynamoDBStreamsClient, stream_arn: str, sequence_number: str) -> str:
    """The shard of ``stream_arn`` whose sequence range holds ``sequence_number``."""
    wanted = int(sequence_number)
    description = streams.describe_stream(StreamArn=stream_arn)["StreamDescription"]
    for shard in description.get("Shards", []):
        span = shard.get("SequenceNumberRange", {})
        start = int(span.get("StartingSequenceNumber", "0"))
        end = span.get("EndingSequenceNumber")
        if start <= wanted and (end is None or wanted <= int(end)):
            return shard["ShardId"]
    raise LookupError(f"no shard of {stream_arn} holds {sequence_number}")
