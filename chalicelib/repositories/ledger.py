"""The eventual counter's writes: item state change + count change in one transaction."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from botocore.exceptions import ClientError

from chalicelib.counting.records import Action, action_for
from chalicelib.entities import account_pk, count_sk, service_sk, timestamp, utc_now
from chalicelib.repositories.dynamo import error_code, to_item, to_values

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

#: TransactWriteItems takes at most 100 actions: 99 items + the Count item.
MAX_ITEMS_PER_TRANSACTION: Final = 99
_CONDITIONS: Final = {
    Action.COUNT: "counter_processed = :false AND deleted = :false",
    Action.REMOVE_COUNTED: "deleted = :true AND counter_processed = :true",
    Action.REMOVE_UNCOUNTED: "deleted = :true AND counter_processed = :false",
}
#: Cancellation codes that prove the item was not changed and may simply be retried.
RETRYABLE_REASONS: Final = frozenset(
    {"None", "TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded"}
)


@dataclass
class TransactionOutcome:
    """What one ``TransactWriteItems`` call achieved."""

    committed: bool
    #: Items whose condition failed, with the action their *current* state needs
    #: (``None``: nothing left to do, e.g. already applied by an earlier delivery).
    replanned: dict[str, Action | None] = field(default_factory=dict)
    #: The Count item is gone: the account was deleted; nothing can be counted.
    account_gone: bool = False
    #: A reason to back off before retrying (conflict or throttling).
    contended: bool = False


class CountLedger:
    """Applies planned actions atomically with the Count item (exactly-once by conditions)."""

    def __init__(
        self,
        client: DynamoDBClient,
        table_name: str,
        *,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._client = client
        self._table = table_name
        self._clock = clock

    def _item_write(self, account_id: str, item_id: str, action: Action) -> dict[str, Any]:
        common: dict[str, Any] = {
            "TableName": self._table,
            "Key": to_item({"PK": account_pk(account_id), "SK": service_sk(item_id)}),
            "ConditionExpression": _CONDITIONS[action],
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
        if action is Action.COUNT:
            common["ExpressionAttributeValues"] = to_values({":true": True, ":false": False})
            return {
                "Update": common
                | {"UpdateExpression": "SET counter_processed = :true REMOVE pending_since"}
            }
        common["ExpressionAttributeValues"] = to_values({":true": True, ":false": False})
        return {"Delete": common}

    def _count_write(self, account_id: str, delta: int) -> dict[str, Any]:
        return {
            "Update": {
                "TableName": self._table,
                "Key": to_item({"PK": account_pk(account_id), "SK": count_sk()}),
                "UpdateExpression": "ADD count_value :delta, version :one SET updated_at = :now",
                # Never re-create the Count item of a deleted account.
                "ConditionExpression": "attribute_exists(PK)",
                "ExpressionAttributeValues": to_values(
                    {":delta": delta, ":one": 1, ":now": timestamp(self._clock())}
                ),
            }
        }

    def apply(self, account_id: str, actions: Sequence[tuple[str, Action]]) -> TransactionOutcome:
        """One transaction: the items' actions plus the summed delta on the Count item."""
        if not 0 < len(actions) <= MAX_ITEMS_PER_TRANSACTION:
            raise ValueError(f"1..{MAX_ITEMS_PER_TRANSACTION} actions per transaction")
        delta = sum(action.delta for _, action in actions)
        writes = [self._item_write(account_id, item_id, a) for item_id, a in actions]
        writes.append(self._count_write(account_id, delta))
        try:
            self._client.transact_write_items(TransactItems=writes)  # type: ignore[arg-type]
        except ClientError as error:
            code = error_code(error)
            if code == "TransactionCanceledException":
                return _canceled(actions, error.response.get("CancellationReasons", []))
            if code in {"TransactionConflictException", "ThrottlingException"} or code.startswith(
                "ProvisionedThroughput"
            ):
                return TransactionOutcome(committed=False, contended=True)
            raise
        return TransactionOutcome(committed=True)


def _canceled(
    actions: Sequence[tuple[str, Action]], reasons: Sequence[Mapping[str, Any]]
) -> TransactionOutcome:
    if len(reasons) != len(actions) + 1:
        # No usable reasons (some backends omit them): retry everything.
        return TransactionOutcome(committed=False, contended=True)
    outcome = TransactionOutcome(committed=False)
    for (item_id, _), reason in zip(actions, reasons, strict=False):
        code = str(reason.get("Code", "None"))
        if code == "ConditionalCheckFailed":
            outcome.replanned[item_id] = action_for(reason.get("Item"))
        elif code in RETRYABLE_REASONS:
            outcome.contended = outcome.contended or code != "None"
        else:
            raise RuntimeError(f"transaction item {item_id} failed: {code} {reason.get('Message')}")
    count_reason = str(reasons[-1].get("Code", "None"))
    if count_reason == "ConditionalCheckFailed":
        outcome.account_gone = True
    elif count_reason not in RETRYABLE_REASONS:
        raise RuntimeError(f"count item failed: {count_reason}")
    else:
        outcome.contended = outcome.contended or count_reason != "None"
    return outcome
