"""Tier-1 dead-letter replay: re-read a failed stream range, or recover from the table."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from botocore.exceptions import ClientError

from chalicelib.counting.processor import BatchReport, StreamProcessor
from chalicelib.entities import ACCOUNT_LISTING, account_id_of
from chalicelib.repositories.dynamo import error_code, from_item, to_values

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodbstreams import DynamoDBStreamsClient

logger = logging.getLogger(__name__)

#: The range is gone from the stream (trimmed after 24 h, or the stream was replaced).
_STREAM_GONE: Final = frozenset(
    {"TrimmedDataAccessException", "ExpiredIteratorException", "ResourceNotFoundException"}
)
_MAX_READS: Final = 1000
#: Consecutive empty GetRecords pages tolerated before the range is given up on (the
#: message is retried, and ends in tier 2 if the range never shows up).
_MAX_EMPTY_PAGES: Final = 20


@dataclass(frozen=True)
class StreamRange:
    """What Lambda's OnFailure message says about a failed batch."""

    stream_arn: str
    shard_id: str
    start_sequence: str
    end_sequence: str

    @classmethod
    def from_message(cls, body: str | Mapping[str, Any]) -> StreamRange:
        data = json.loads(body) if isinstance(body, str) else body
        info = data["DDBStreamBatchInfo"]
        return cls(
            stream_arn=str(info["streamArn"]),
            shard_id=str(info["shardId"]),
            start_sequence=str(info["startSequenceNumber"]),
            end_sequence=str(info["endSequenceNumber"]),
        )


class RangeFailedError(Exception):
    """Replaying the range left work undone; the message must be retried."""


class DeadLetterReplayer:
    """Replays a tier-1 message through the same idempotent processor."""

    def __init__(
        self,
        processor: StreamProcessor,
        streams: DynamoDBStreamsClient,
        dynamodb: DynamoDBClient,
        table_name: str,
    ) -> None:
        self._processor = processor
        self._streams = streams
        self._dynamodb = dynamodb
        self._table = table_name

    def replay(self, body: str | Mapping[str, Any]) -> BatchReport:
        """Replay one OnFailure message; raises if anything is left to do."""
        batch = StreamRange.from_message(body)
        try:
            records = list(self._read(batch))
        except ClientError as error:
            if error_code(error) not in _STREAM_GONE:
                raise
            logger.warning("stream range gone (%s); recovering from the table", error_code(error))
            return self.recover_all()
        report = self._processor.process(records)
        if report.failed_accounts:
            raise RangeFailedError(f"accounts not settled: {report.failed_accounts}")
        return report

    def _read(self, batch: StreamRange) -> Iterator[dict[str, Any]]:
        iterator = self._streams.get_shard_iterator(
            StreamArn=batch.stream_arn,
            ShardId=batch.shard_id,
            ShardIteratorType="AT_SEQUENCE_NUMBER",
            SequenceNumber=batch.start_sequence,
        ).get("ShardIterator")
        end = int(batch.end_sequence)
        empty_pages = 0
        for _ in range(_MAX_READS):
            if not iterator:
                return  # the shard is closed and fully read
            page = self._streams.get_records(ShardIterator=iterator, Limit=1000)
            records = page.get("Records", [])
            for record in records:
                sequence = int(record["dynamodb"].get("SequenceNumber", "0"))
                if sequence > end:
                    return
                yield dict(record)
                if sequence == end:
                    return
            # An empty page does not mean the range is over: GetRecords may answer
            # empty pages before it reaches the records of an open shard.
            empty_pages = 0 if records else empty_pages + 1
            if empty_pages >= _MAX_EMPTY_PAGES:
                raise RangeFailedError(
                    f"no record up to {batch.end_sequence} after {empty_pages} empty pages"
                )
            iterator = page.get("NextShardIterator")

    def recover_all(self) -> BatchReport:
        """Settle every account's pending items from the table (the source of truth)."""
        total = BatchReport()
        for account_id in self._all_accounts():
            report = self._processor.recover(account_id)
            total.relevant += report.relevant
            total.transactions += report.transactions
            for action, applied in report.applied.items():
                total.applied[action] = total.applied.get(action, 0) + applied
        return total

    def _all_accounts(self) -> Iterator[str]:
        start: dict[str, Any] | None = None
        for _ in range(100_000):  # bounded: 100k pages of accounts
            query: dict[str, Any] = {
                "TableName": self._table,
                "IndexName": "AccountsIndex",
                "KeyConditionExpression": "listing = :listing",
                "ExpressionAttributeValues": to_values({":listing": ACCOUNT_LISTING}),
            }
            if start:
                query["ExclusiveStartKey"] = start
            page = self._dynamodb.query(**query)
            for item in page.get("Items", []):
                yield account_id_of(str(from_item(item)["PK"]))
            start = page.get("LastEvaluatedKey")
            if not start:
                return
