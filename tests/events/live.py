"""Lambda-shaped events from the live embedded backend, and the settings handlers see.

:class:`StreamTail` reads the table's stream through the local event sources' stream
poller (so records have exactly the shape Lambda delivers), from the moment it is
created on: tests take the records their own writes produced and hand them to the
processor or the handler, as often and in whatever grouping they like.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from chalicelib.bootstrap import Container
from chalicelib.entities import utc_now
from chalicelib.settings import Settings
from infrastructure.local.event_sources import (
    FilterCriteria,
    LambdaContext,
    StreamPoller,
    StreamSettings,
)
from infrastructure.local.provision import StackOutputs, cloudformation_client, provision

if TYPE_CHECKING:
    from mypy_boto3_dynamodbstreams import DynamoDBStreamsClient

_MAX_STEPS: Final = 200


def isolated_stack(backend_url: str, name: str) -> StackOutputs:
    """A stack of the data template of the caller's own (table, stream, both queues).

    moto copies the whole table, stream included, on every ``TransactWriteItems`` (to
    roll back on failure), so a transaction costs time in proportion to the table:
    ~20 ms on an empty one, over a second at 1,000 services. A small table of one's
    own keeps the processor's transactions fast whatever else the session wrote, and
    its queues are drained by nobody else.
    """
    unique = f"{name}-{uuid.uuid4().hex[:8]}"
    return provision(
        cloudformation_client(backend_url),
        stack_name=unique,
        parameters={"Stage": "local", "TableName": unique},
    )


def app_settings(outputs: StackOutputs, **overrides: Any) -> Settings:
    """The app's settings for the provisioned stack, quick to give up, for tests.

    Short timeouts keep the API request budget (and so the smallest allowed quiet
    period) small; tests that use the healer advance its clock instead of waiting.
    """
    values: dict[str, Any] = {
        "table_name": outputs.table_name,
        "stream_arn": outputs.stream_arn,
        "tier1_queue_name": outputs.tier1_queue_name,
        "tier2_queue_name": outputs.tier2_queue_name,
        "connect_timeout_seconds": 1.0,
        "read_timeout_seconds": 2.0,
        "max_attempts": 3,
        "processor_attempts": 4,
        "heal_quiet_seconds": 30.0,
        "stuck_after_seconds": 300.0,
    }
    return Settings(**(values | overrides))


class ClockedContainer(Container):
    """The app's container with the healer's clock ``ahead`` of the wall clock.

    Set ``ahead`` past the quiet period once the writes are done, instead of waiting.
    """

    ahead = timedelta()

    def clock(self) -> datetime:
        return utc_now() + self.ahead


def fast_stream_settings(**overrides: Any) -> StreamSettings:
    """The deployed stream mapping without waiting (no window, backoff or idle sleep)."""
    settings = replace(
        StreamSettings.from_mapping(),
        batching_window_seconds=0,
        retry_backoff_seconds=0,
        idle_poll_seconds=0,
    )
    return replace(settings, **overrides)


class StreamTail:
    """The stream's records written after construction, unfiltered, in stream order."""

    def __init__(self, streams: DynamoDBStreamsClient, stream_arn: str) -> None:
        self._pending: list[dict[str, Any]] = []
        self._poller = StreamPoller(
            self._keep,
            streams,
            stream_arn,
            settings=fast_stream_settings(batch_size=1000, filter_criteria=FilterCriteria([])),
        )
        self._drain()
        self._pending.clear()  # history written before us is not ours

    def _keep(self, event: dict[str, Any], context: LambdaContext) -> None:
        self._pending.extend(event["Records"])

    def _drain(self) -> None:
        for _ in range(_MAX_STEPS):
            if self._poller.poll_once().idle:
                return
        raise AssertionError(f"stream still busy after {_MAX_STEPS} reads")

    def take(self, account_ids: Iterable[str]) -> list[dict[str, Any]]:
        """New records of these accounts' items (others are kept back for others)."""
        self._drain()
        keys = {f"ACCOUNT#{a}" for a in account_ids}
        mine = [r for r in self._pending if r["dynamodb"]["Keys"]["PK"]["S"] in keys]
        self._pending = [r for r in self._pending if r["dynamodb"]["Keys"]["PK"]["S"] not in keys]
        return mine
