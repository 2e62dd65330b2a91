"""Service items: put, read, list, rename, soft delete, rollback, pending queries."""

from __future__ import annotations

import enum
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from botocore.exceptions import ClientError

from chalicelib.entities import (
    SERVICE_PREFIX,
    Service,
    account_pk,
    service_sk,
    timestamp,
    utc_now,
)
from chalicelib.repositories.dynamo import (
    CONDITION_FAILED,
    decode_cursor,
    encode_cursor,
    error_code,
    from_item,
    is_conflict,
    retry,
    to_item,
    to_values,
    unavailable_as_domain_error,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

PENDING_INDEX: Final = "PendingIndex"
_PAGE_KEYS: Final = frozenset({"PK", "SK"})
#: Bounded number of queries used to fill one page of live services.
_MAX_QUERIES_PER_PAGE: Final = 5


class SoftDeleteOutcome(enum.Enum):
    DELETED = "deleted"
    #: Missing, or deleted by someone else whose decrement is not known to have
    #: applied: a decrement of ours is the only one and must stand.
    GONE = "gone"
    #: Deleted by someone else who accounted for it (their decrement applied, or the
    #: best-effort counter never counted it): a decrement of ours is one too many.
    GONE_ACCOUNTED = "gone_accounted"


class ServiceRepository:
    """Service items. Writes that can meet a processor transaction retry conflicts.

    Parameters
    ----------
    client:
        DynamoDB client with the standard retry policy.
    conflict_attempts:
        Attempts for writes that may meet an in-flight stream-processor transaction
        (``TransactionConflictException`` proves the write was not applied).
    """

    def __init__(
        self,
        client: DynamoDBClient,
        table_name: str,
        *,
        conflict_attempts: int,
        clock: Callable[[], datetime] = utc_now,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self._client = client
        self._table = table_name
        self._conflict_attempts = conflict_attempts
        self._clock = clock
        self._sleep_kwargs: dict[str, Any] = {"sleep": sleep} if sleep else {}

    @staticmethod
    def _key(account_id: str, service_id: str) -> dict[str, Any]:
        return to_item({"PK": account_pk(account_id), "SK": service_sk(service_id)})

    def _retry_conflicts(self, call: Callable[[], Any]) -> Any:
        return retry(
            call, retryable=is_conflict, attempts=self._conflict_attempts, **self._sleep_kwargs
        )

    def create(self, service: Service) -> None:
        """Put a new, not yet counted Service. Never overwrites an existing item."""
        item = to_item(
            {"PK": account_pk(service.account_id), "SK": service_sk(service.id)}
            | service.model_dump()
            | {"pending_since": service.created_at}
        )
        try:
            with unavailable_as_domain_error("create service"):
                self._client.put_item(
                    TableName=self._table,
                    Item=item,
                    ConditionExpression="attribute_not_exists(PK)",
                )
        except ClientError as error:
            # Ids are fresh UUIDs: the item can only exist because an earlier attempt
            # of this very call was applied and its response was lost.
            if error_code(error) != CONDITION_FAILED:
                raise

    def get(self, account_id: str, service_id: str, *, consistent: bool = False) -> Service | None:
        with unavailable_as_domain_error("read service"):
            response = self._client.get_item(
                TableName=self._table,
                Key=self._key(account_id, service_id),
                ConsistentRead=consistent,
            )
        item = response.get("Item")
        return Service.model_validate(from_item(item)) if item else None

    def list_live(
        self, account_id: str, limit: int, cursor: str | None
    ) -> tuple[list[Service], str | None]:
        """One page of non-deleted services (at most ``limit``; may be fewer)."""
        pk = account_pk(account_id)
        start = decode_cursor(
            cursor,
            _PAGE_KEYS,
            lambda key: key["PK"] == pk and key["SK"].startswith(SERVICE_PREFIX),
        )
        services: list[Service] = []
        for _ in range(_MAX_QUERIES_PER_PAGE):
            query: dict[str, Any] = {
                "TableName": self._table,
                "KeyConditionExpression": "PK = :pk AND begins_with(SK, :prefix)",
                "FilterExpression": "deleted = :false",
                "ExpressionAttributeValues": to_values(
                    {":pk": account_pk(account_id), ":prefix": SERVICE_PREFIX, ":false": False}
                ),
                "Limit": limit - len(services),
            }
            if start:
                query["ExclusiveStartKey"] = start
            with unavailable_as_domain_error("list services"):
                page = self._client.query(**query)
            services += [Service.model_validate(from_item(i)) for i in page.get("Items", [])]
            start = page.get("LastEvaluatedKey")
            if not start or len(services) >= limit:
                break
        return services, encode_cursor(start)

    def rename(self, account_id: str, service_id: str, name: str) -> Service | None:
        """Rename a live service; ``None`` if it is missing or deleted."""
        try:
            with unavailable_as_domain_error("rename service"):
                response = self._retry_conflicts(
                    lambda: self._client.update_item(
                        TableName=self._table,
                        Key=self._key(account_id, service_id),
                        UpdateExpression="SET #name = :name, updated_at = :now",
                        ConditionExpression="attribute_exists(PK) AND deleted = :false",
                        ExpressionAttributeNames={"#name": "name"},
                        ExpressionAttributeValues=to_values(
                            {":name": name, ":now": timestamp(self._clock()), ":false": False}
                        ),
                        ReturnValues="ALL_NEW",
                    )
                )
        except ClientError as error:
            if error_code(error) == CONDITION_FAILED:
                return None
            raise
        return Service.model_validate(from_item(response["Attributes"]))

    def soft_delete(
        self, account_id: str, service_id: str, request_id: str, *, accounted: bool = True
    ) -> SoftDeleteOutcome:
        """Flag a live service deleted (the stream processor hard-deletes it).

        ``request_id`` is stored with the flag so that a retry after a lost response
        recognises its own write instead of mistaking it for a concurrent delete.
        ``accounted`` records whether the best-effort counter no longer counts the
        service (this request's decrement applied, or it was never counted), so a
        concurrent loser knows whether its own decrement was a duplicate.
        """
        now = timestamp(self._clock())
        try:
            with unavailable_as_domain_error("delete service"):
                self._retry_conflicts(
                    lambda: self._client.update_item(
                        TableName=self._table,
                        Key=self._key(account_id, service_id),
                        UpdateExpression=(
                            "SET deleted = :true, deleted_by = :request, updated_at = :now, "
                            "pending_since = :now, accounted = :accounted"
                        ),
                        ConditionExpression="attribute_exists(PK) AND deleted = :false",
                        ExpressionAttributeValues=to_values(
                            {
                                ":true": True,
                                ":false": False,
                                ":request": request_id,
                                ":now": now,
                                ":accounted": accounted,
                            }
                        ),
                        ReturnValuesOnConditionCheckFailure="ALL_OLD",
                    )
                )
        except ClientError as error:
            if error_code(error) != CONDITION_FAILED:
                raise
            current = from_item(error.response.get("Item") or {})  # type: ignore[arg-type]
            if current.get("deleted_by") == request_id:
                return SoftDeleteOutcome.DELETED
            if current.get("deleted") and current.get("accounted") is True:
                return SoftDeleteOutcome.GONE_ACCOUNTED
            return SoftDeleteOutcome.GONE
        return SoftDeleteOutcome.DELETED

    def remove_uncounted(self, account_id: str, service_id: str) -> bool:
        """Hard-delete a service the processor has not counted yet (create rollback).

        ``False`` when it was counted meanwhile: then it must be soft-deleted instead.
        """
        try:
            with unavailable_as_domain_error("roll back service"):
                self._retry_conflicts(
                    lambda: self._client.delete_item(
                        TableName=self._table,
                        Key=self._key(account_id, service_id),
                        ConditionExpression="counter_processed = :false AND deleted = :false",
                        ExpressionAttributeValues=to_values({":false": False}),
                    )
                )
        except ClientError as error:
            if error_code(error) == CONDITION_FAILED:
                return False
            raise
        return True

    def has_any(self, account_id: str) -> bool:
        """Whether the account has any Service item, live or pending (consistent)."""
        with unavailable_as_domain_error("check services"):
            page = self._client.query(
                TableName=self._table,
                KeyConditionExpression="PK = :pk AND begins_with(SK, :prefix)",
                ExpressionAttributeValues=to_values(
                    {":pk": account_pk(account_id), ":prefix": SERVICE_PREFIX}
                ),
                ConsistentRead=True,
                Limit=1,
                ProjectionExpression="PK",
            )
        return bool(page.get("Items"))

    def pending(self, account_id: str, *, limit: int | None = None) -> list[tuple[str, str]]:
        """Services with stream work left, oldest first: (service_id, pending_since).

        A strongly consistent query of the sparse PendingIndex.
        """
        found: list[tuple[str, str]] = []
        start: dict[str, Any] | None = None
        for _ in range(1000):  # bounded: 1000 pages
            query: dict[str, Any] = {
                "TableName": self._table,
                "IndexName": PENDING_INDEX,
                "KeyConditionExpression": "PK = :pk",
                "ExpressionAttributeValues": to_values({":pk": account_pk(account_id)}),
                "ConsistentRead": True,
            }
            if limit is not None:
                query["Limit"] = limit - len(found)
            if start:
                query["ExclusiveStartKey"] = start
            with unavailable_as_domain_error("find pending services"):
                page = self._client.query(**query)
            found += [
                (str(v["SK"]).removeprefix(SERVICE_PREFIX), str(v["pending_since"]))
                for v in map(from_item, page.get("Items", []))
            ]
            start = page.get("LastEvaluatedKey")
            if not start or (limit is not None and len(found) >= limit):
                break
        return found

    def count_pending(self, account_id: str) -> int:
        with unavailable_as_domain_error("count pending services"):
            page = self._client.query(
                TableName=self._table,
                IndexName=PENDING_INDEX,
                KeyConditionExpression="PK = :pk",
                ExpressionAttributeValues=to_values({":pk": account_pk(account_id)}),
                ConsistentRead=True,
                Select="COUNT",
            )
        return int(page.get("Count", 0))
