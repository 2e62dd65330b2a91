"""Count items (the eventual counter): reads. Only the stream processor writes them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from chalicelib.entities import COUNT_PREFIX, Count, account_pk, count_sk
from chalicelib.repositories.dynamo import (
    from_item,
    to_item,
    to_values,
    unavailable_as_domain_error,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient


class CountRepository:
    """Reads of ``COUNT#<type>`` items."""

    def __init__(self, client: DynamoDBClient, table_name: str) -> None:
        self._client = client
        self._table = table_name

    def get(self, account_id: str, *, consistent: bool = True) -> Count | None:
        with unavailable_as_domain_error("read count"):
            response = self._client.get_item(
                TableName=self._table,
                Key=to_item({"PK": account_pk(account_id), "SK": count_sk()}),
                ConsistentRead=consistent,
            )
        item = response.get("Item")
        return Count.model_validate(from_item(item)) if item else None

    def all_of(self, account_id: str) -> list[Count]:
        with unavailable_as_domain_error("list counts"):
            page = self._client.query(
                TableName=self._table,
                KeyConditionExpression="PK = :pk AND begins_with(SK, :prefix)",
                ExpressionAttributeValues=to_values(
                    {":pk": account_pk(account_id), ":prefix": COUNT_PREFIX}
                ),
                ConsistentRead=True,
            )
        return [Count.model_validate(from_item(i)) for i in page.get("Items", [])]
