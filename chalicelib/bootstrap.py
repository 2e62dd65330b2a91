"""Composition root: builds clients, repositories and services once per container."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config

from chalicelib.counting.dead_letters import Tier2Queue
from chalicelib.counting.healer import Healer
from chalicelib.counting.processor import StreamProcessor
from chalicelib.counting.replay import DeadLetterReplayer
from chalicelib.entities import utc_now
from chalicelib.repositories.accounts import AccountRepository
from chalicelib.repositories.counts import CountRepository
from chalicelib.repositories.ledger import CountLedger
from chalicelib.repositories.services import ServiceRepository
from chalicelib.services.accounts import AccountService
from chalicelib.services.services import ServiceService
from chalicelib.settings import Settings, get_settings

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodbstreams import DynamoDBStreamsClient
    from mypy_boto3_sqs import SQSClient


@dataclass
class Container:
    """Everything the handlers use, built lazily from ``settings``.

    Tests build one with their own clients (e.g. with fault hooks registered).
    """

    settings: Settings

    def clock(self) -> datetime:
        """The healer's notion of now (tests move it forward instead of sleeping)."""
        return utc_now()

    def _config(self, **retries: int | str) -> Config:
        return Config(
            connect_timeout=self.settings.connect_timeout_seconds,
            read_timeout=self.settings.read_timeout_seconds,
            retries=retries,  # type: ignore[arg-type]
            tcp_keepalive=True,
            max_pool_connections=32,
        )

    @cached_property
    def dynamodb(self) -> DynamoDBClient:
        """Standard retries: for reads and for writes that are safe to repeat."""
        return boto3.client(
            "dynamodb",
            config=self._config(mode="standard", total_max_attempts=self.settings.max_attempts),
        )

    @cached_property
    def dynamodb_no_retry(self) -> DynamoDBClient:
        """No botocore retries: the best-effort increment decides per error itself."""
        return boto3.client("dynamodb", config=self._config(total_max_attempts=1))

    @cached_property
    def accounts(self) -> AccountRepository:
        return AccountRepository(
            self.dynamodb,
            self.dynamodb_no_retry,
            self.settings.table_name,
            heal_shards=self.settings.heal_shards,
            increment_attempts=self.settings.max_attempts,
        )

    @cached_property
    def services(self) -> ServiceRepository:
        return ServiceRepository(
            self.dynamodb, self.settings.table_name, conflict_attempts=self.settings.max_attempts
        )

    @cached_property
    def counts(self) -> CountRepository:
        return CountRepository(self.dynamodb, self.settings.table_name)

    @cached_property
    def account_service(self) -> AccountService:
        return AccountService(
            self.accounts,
            self.services,
            self.counts,
            default_limit=self.settings.default_service_limit,
        )

    @cached_property
    def service_service(self) -> ServiceService:
        return ServiceService(self.accounts, self.services)

    @cached_property
    def streams(self) -> DynamoDBStreamsClient:
        return boto3.client(
            "dynamodbstreams",
            config=self._config(mode="standard", total_max_attempts=self.settings.max_attempts),
        )

    @cached_property
    def sqs(self) -> SQSClient:
        return boto3.client(
            "sqs",
            config=self._config(mode="standard", total_max_attempts=self.settings.max_attempts),
        )

    @cached_property
    def ledger(self) -> CountLedger:
        return CountLedger(self.dynamodb, self.settings.table_name)

    @cached_property
    def processor(self) -> StreamProcessor:
        return StreamProcessor(
            self.ledger,
            self.accounts,
            self.counts,
            self.services,
            attempts=self.settings.processor_attempts,
        )

    @cached_property
    def healer(self) -> Healer:
        return Healer(
            self.accounts,
            self.services,
            self.counts,
            self.processor,
            quiet=timedelta(seconds=self.settings.heal_quiet_seconds),
            stuck_after=timedelta(seconds=self.settings.stuck_after_seconds),
            batch_limit=self.settings.heal_batch_limit,
            clock=self.clock,
        )

    @cached_property
    def replayer(self) -> DeadLetterReplayer:
        return DeadLetterReplayer(
            self.processor, self.streams, self.dynamodb, self.settings.table_name
        )

    def tier2_queue(self) -> Tier2Queue:
        url = self.sqs.get_queue_url(QueueName=self.settings.tier2_queue_name)["QueueUrl"]
        return Tier2Queue(self.sqs, url, self.replayer)


_container: Container | None = None


def container() -> Container:
    """The container of this process (one per Lambda container)."""
    global _container
    if _container is None:
        _container = Container(get_settings())
    return _container


def use_container(replacement: Container | None) -> None:
    """Swap the process container (tests; ``None`` resets to settings-built)."""
    global _container
    _container = replacement
