"""The three strategies a run can measure, each built on a fresh stack.

* ``ours``: the real app (``app.py``) with its own composition root
  (``chalicelib.bootstrap.Container``) and its stream / dead-letter handlers;
* ``original``: :mod:`alternatives.original`;
* ``transactional``: :mod:`alternatives.transactional`.

Every DynamoDB, Streams and SQS client a strategy uses carries the same two hooks:
:class:`harness.accounting.Accounting` (calls, units, counts) and
:class:`alternatives.contention.OptimisticConcurrency` (transaction conflicts).
"""

from __future__ import annotations

import importlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Final

import boto3
from alternatives import original, transactional
from alternatives.contention import OptimisticConcurrency
from botocore.config import Config
from chalice.app import Chalice

from chalicelib import event_sources as mapping
from chalicelib.bootstrap import Container, use_container
from chalicelib.settings import Settings
from harness.accounting import Accounting
from infrastructure.local.event_sources import (
    FunctionIdentity,
    SqsOnFailureDestination,
    SqsPoller,
    StreamPoller,
    StreamSettings,
    discover_event_handlers,
)
from infrastructure.local.provision import StackOutputs

STRATEGIES: Final = ("ours", "original", "transactional")
#: Seconds between reads of an idle shard or queue: Lambda's pace (4 polls a second).
IDLE_POLL_SECONDS: Final = 0.25


@dataclass
class Strategy:
    name: str
    app: Chalice
    accounting: Accounting
    contention: OptimisticConcurrency
    pollers: list[tuple[str, Callable[[threading.Event], None]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    close: Callable[[], None] = lambda: None

    def start_pollers(self) -> None:
        for name, run in self.pollers:
            thread = threading.Thread(target=run, args=(self._stop,), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop_pollers(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        self.close()


def _client(service: str, *hooks: Any) -> Any:
    config = Config(
        retries={"mode": "standard", "total_max_attempts": 5},
        max_pool_connections=32,
        connect_timeout=2,
        read_timeout=3,
        tcp_keepalive=True,
    )
    client = boto3.client(service, config=config)
    for hook in hooks:
        hook.attach(client)
    return client


def _identity(name: str) -> FunctionIdentity:
    return FunctionIdentity(name=name, arn=f"arn:aws:lambda:us-east-1:000000000000:function:{name}")


def build(name: str, outputs: StackOutputs, contention: OptimisticConcurrency) -> Strategy:
    """The strategy ``name`` on the stack ``outputs``, its writes subject to ``contention``."""
    builders = {"ours": _ours, "original": _original, "transactional": _transactional}
    return builders[name](outputs, contention)


def _ours(outputs: StackOutputs, contention: OptimisticConcurrency) -> Strategy:
    accounting = Accounting()
    settings = Settings(
        table_name=outputs.table_name,
        stream_arn=outputs.stream_arn,
        tier1_queue_name=outputs.tier1_queue_name,
        tier2_queue_name=outputs.tier2_queue_name,
    )
    container = Container(settings)
    for client in (
        container.dynamodb,
        container.dynamodb_no_retry,
        container.streams,
        container.sqs,
    ):
        accounting.attach(client)
    for client in (container.dynamodb, container.dynamodb_no_retry):
        contention.attach(client)
    use_container(container)
    app_module = importlib.import_module("app")
    handlers = discover_event_handlers(app_module)
    (stream_handler,) = handlers.streams
    streams = _client("dynamodbstreams", accounting)
    sqs = _client("sqs", accounting)
    strategy = Strategy(
        "ours", app_module.app, accounting, contention, close=lambda: use_container(None)
    )
    poller = StreamPoller(
        accounting.stream_handler(stream_handler.handler),
        streams,
        outputs.stream_arn,
        settings=replace(StreamSettings.from_mapping(), idle_poll_seconds=IDLE_POLL_SECONDS),
        function=_identity("ours-stream"),
        on_failure=SqsOnFailureDestination(sqs, outputs.tier1_queue_url),
    )
    strategy.pollers.append(("processor", poller.run))
    for queue_handler in handlers.queues:
        queue = SqsPoller(
            queue_handler.handler, sqs, outputs.tier1_queue_url, function=_identity("ours-dlq")
        )
        strategy.pollers.append(("dead-letters", queue.run))
    return strategy


def _original(outputs: StackOutputs, contention: OptimisticConcurrency) -> Strategy:
    accounting = Accounting(hard_deletes_are_counted=True)
    dynamodb = _client("dynamodb", accounting, contention)
    app = original.create_app(dynamodb, outputs.table_name)
    handlers = [h for h in (app.handler_map.get("count_changes"),) if h is not None]
    properties = mapping.stream_mapping_properties() | {
        "FilterCriteria": {
            "Filters": [{"Pattern": json.dumps(p)} for p in original.STREAM_FILTER_PATTERNS]
        },
    }
    streams = _client("dynamodbstreams", accounting)
    strategy = Strategy("original", app, accounting, contention)
    poller = StreamPoller(
        accounting.stream_handler(handlers[0]),
        streams,
        outputs.stream_arn,
        settings=replace(
            StreamSettings.from_mapping(properties), idle_poll_seconds=IDLE_POLL_SECONDS
        ),
        function=_identity("original-stream"),
    )
    strategy.pollers.append(("processor", poller.run))
    return strategy


def _transactional(outputs: StackOutputs, contention: OptimisticConcurrency) -> Strategy:
    accounting = Accounting(single_counter=True)
    dynamodb = _client("dynamodb", accounting, contention)
    app = transactional.create_app(dynamodb, outputs.table_name)
    return Strategy("transactional", app, accounting, contention)
