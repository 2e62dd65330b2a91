"""A local-runtime bug the model test found: the stream poller skipped a record after a
failed transaction (stock moto's rollback reuses sequence numbers).

Stock moto applies a ``TransactWriteItems`` item by item and, when one condition fails,
puts back a deep copy of the table taken before, stream shard included. The writes
already applied stay in the *old* shard object as phantom records. A shard iterator
taken before the rollback still reads that old shard: the poller receives the phantom
and remembers its sequence number. The restored shard hands the same sequence numbers
to the next real records, so when the poller re-acquires its iterator "after the last
record read" it skips them. The processor's duplicate deliveries fail their
transactions routinely, so ``make run`` could lose a service's INSERT.

Fixed in the embedded backend: ``infrastructure/local/moto_patches.py`` rolls back
item by item and keeps the shard object, so no phantom is ever readable (the backend
serialises requests). This test pins that fix."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.exceptions import ClientError

from infrastructure.local.event_sources import FilterCriteria, LambdaContext, StreamPoller
from tests.events.live import fast_stream_settings

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient


@pytest.fixture
def table(backend_url: str) -> Iterator[tuple[DynamoDBClient, str, str]]:
    client: DynamoDBClient = boto3.client("dynamodb")
    name = f"rollback-{uuid.uuid4().hex[:8]}"
    client.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "PK", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "PK", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )
    arn = client.describe_table(TableName=name)["Table"]["LatestStreamArn"]
    yield client, name, arn
    client.delete_table(TableName=name)


def test_a_record_written_after_a_failed_transaction_is_delivered(
    table: tuple[DynamoDBClient, str, str],
) -> None:
    client, name, arn = table
    delivered: list[str] = []

    def handler(event: dict[str, Any], context: LambdaContext) -> None:
        delivered.extend(r["dynamodb"]["Keys"]["PK"]["S"] for r in event["Records"])

    settings = replace(fast_stream_settings(), filter_criteria=FilterCriteria([]))
    poller = StreamPoller(handler, boto3.client("dynamodbstreams"), arn, settings=settings)

    # GIVEN a poller that has read the stream (it holds a shard iterator)
    client.put_item(TableName=name, Item={"PK": {"S": "first"}})
    poller.poll_once()
    assert delivered == ["first"]

    # WHEN a transaction applies its first write, fails its second, and is rolled back
    with pytest.raises(ClientError):
        client.transact_write_items(
            TransactItems=[
                {
                    "Update": {
                        "TableName": name,
                        "Key": {"PK": {"S": "first"}},
                        "UpdateExpression": "SET n = :one",
                        "ExpressionAttributeValues": {":one": {"N": "1"}},
                    }
                },
                {
                    "Put": {
                        "TableName": name,
                        "Item": {"PK": {"S": "never"}},
                        "ConditionExpression": "attribute_exists(PK)",
                    }
                },
            ]
        )
    # AND a real record follows
    client.put_item(TableName=name, Item={"PK": {"S": "real"}})
    for _ in range(5):
        poller.poll_once()

    # THEN the real record is delivered (and the rolled-back write is not)
    assert "real" in delivered, delivered
