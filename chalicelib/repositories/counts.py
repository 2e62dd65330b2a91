"""Count items (the eventual counter): reads. Only the stream processor writes them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from chalicelib.entities import COUNT_PREFIX, Count, account_pk, count_sk
from chalicelib.repositories.dynamo import (
    from_item,
    to_item,
    to_values,
    unavailable_as_domain_error,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

#: BatchGetItem takes at most 100 keys.
_BATCH_GET_LIMIT: Final = 100
_MAX_BATCH_ROUNDS: Final = 10


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

    def get_many(self, account_ids: Sequence[str]) -> list[Count]:
        """Consistent batch read of several accounts' Count items (missing ones skipped)."""
        found: list[Count] = []
        for start in range(0, len(account_ids), _BATCH_GET_LIMIT):
            keys: list[Any] = [
                to_item({"PK": account_pk(a), "SK": count_sk()})
                for a in account_ids[start : start + _BATCH_GET_LIMIT]
            ]
            for _ in range(_MAX_BATCH_ROUNDS):  # unprocessed keys come back when throttled
                if not keys:
                    break
                with unavailable_as_domain_error("read counts"):
                    response = self._client.batch_get_item(
                        RequestItems={self._table: {"Keys": keys, "ConsistentRead": True}}
                    )
                found += [
                    Count.model_validate(from_item(i))
                    for i in response.get("Responses", {}).get(self._table, [])
                ]
                unprocessed = response.get("UnprocessedKeys", {}).get(self._table)
                keys = list(unprocessed["Keys"]) if unprocessed else []
        return found

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
