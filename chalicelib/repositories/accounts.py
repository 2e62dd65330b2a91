"""Account items: CRUD, the best-effort counter, the eventual-count hint, heal marks."""

from __future__ import annotations

import contextlib
import enum
import functools
import zlib
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from botocore.exceptions import ClientError

from chalicelib.entities import (
    ACCOUNT_LISTING,
    ACCOUNT_SK,
    Account,
    account_pk,
    count_sk,
    timestamp,
    utc_now,
)
from chalicelib.errors import AccountNotEmptyError
from chalicelib.repositories.dynamo import (
    CONDITION_FAILED,
    decode_cursor,
    domain_error,
    encode_cursor,
    error_code,
    from_item,
    proves_not_applied,
    retry,
    to_item,
    to_values,
    unavailable_as_domain_error,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

ACCOUNTS_INDEX: Final = "AccountsIndex"
HEAL_INDEX: Final = "HealIndex"
_ACCOUNTS_INDEX_KEYS: Final = frozenset({"PK", "SK", "listing", "created_at"})
_BELOW_LIMIT: Final = (
    "number_of_services < max_number_of_services AND ec_hint < max_number_of_services"
)
_NO_DEBT: Final = "(attribute_not_exists(be_debt) OR be_debt = :zero)"
#: Rounds of a counter write that races a concurrent debt change (bounded).
_LEDGER_ROUNDS: Final = 3
#: Marks an account for the healer; if_not_exists keeps the index entry stable so
#: repeated writes to a busy account do not rewrite the index.
_MARK_FOR_HEAL: Final = (
    "heal_shard = if_not_exists(heal_shard, :shard), heal_since = if_not_exists(heal_since, :now)"
)


class IncrementOutcome(enum.Enum):
    APPLIED = "applied"
    LIMIT_REACHED = "limit_reached"
    ACCOUNT_MISSING = "account_missing"
    #: Every attempt was refused before being applied (throttled out).
    NOT_APPLIED = "not_applied"
    #: Timeout, reset or 5xx: it may or may not have been applied; never retried.
    UNKNOWN = "unknown"


class DecrementOutcome(enum.Enum):
    APPLIED = "applied"
    #: The counter was at 0 although the service is live (its create's increment is
    #: still in flight, or was lost): recorded as a debt the next increment pays.
    OWED = "owed"
    #: Counter already 0 (or account gone): nothing to take back later.
    SKIPPED = "skipped"
    UNKNOWN = "unknown"


def heal_shard(account_id: str, shards: int) -> str:
    """The HealIndex partition of an account (stable across processes)."""
    return f"HEAL#{zlib.crc32(account_id.encode()) % shards}"


class AccountRepository:
    """Account items. Every write is single-item and never creates an Account by accident.

    Parameters
    ----------
    client:
        DynamoDB client with the standard retry policy, for everything but the increment.
    increment_client:
        DynamoDB client with botocore retries disabled: the best-effort increment is
        retried only on errors that prove it was not applied.
    """

    def __init__(
        self,
        client: DynamoDBClient,
        increment_client: DynamoDBClient,
        table_name: str,
        *,
        heal_shards: int,
        increment_attempts: int,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._client = client
        self._increment_client = increment_client
        self._table = table_name
        self._heal_shards = heal_shards
        self._increment_attempts = increment_attempts
        self._clock = clock

    def _key(self, account_id: str) -> dict[str, Any]:
        return to_item({"PK": account_pk(account_id), "SK": ACCOUNT_SK})

    # -- lifecycle -----------------------------------------------------------------

    def create(self, account: Account) -> None:
        """Create the Account and its Count item together (one transaction)."""
        pk = account_pk(account.id)
        account_item = to_item(
            {"PK": pk, "SK": ACCOUNT_SK, "listing": ACCOUNT_LISTING, "revision": 0}
            | account.model_dump()
        )
        count_item = to_item(
            {
                "PK": pk,
                "SK": count_sk(),
                "account_id": account.id,
                "count_type": "SERVICES",
                "count_value": 0,
                "version": 0,
                "created_at": account.created_at,
            }
        )
        absent = "attribute_not_exists(PK)"
        try:
            self._client.transact_write_items(
                TransactItems=[
                    {
                        "Put": {
                            "TableName": self._table,
                            "Item": account_item,
                            "ConditionExpression": absent,
                        }
                    },
                    {
                        "Put": {
                            "TableName": self._table,
                            "Item": count_item,
                            "ConditionExpression": absent,
                        }
                    },
                ],
                # Makes botocore's retry of a lost response idempotent on DynamoDB.
                ClientRequestToken=account.id,
            )
        except ClientError as error:
            codes = _cancellation_codes(error)
            # Both items exist: ids are fresh UUIDs, so an earlier attempt of this
            # very call was applied (backends that ignore the token get here).
            if codes != ["ConditionalCheckFailed", "ConditionalCheckFailed"]:
                raise domain_error("create account", error) from error

    def get(self, account_id: str, *, consistent: bool = False) -> Account | None:
        with unavailable_as_domain_error("read account"):
            response = self._client.get_item(
                TableName=self._table, Key=self._key(account_id), ConsistentRead=consistent
            )
        item = response.get("Item")
        return Account.model_validate(from_item(item)) if item else None

    def get_with_revision(self, account_id: str) -> tuple[Account, int] | None:
        """Consistent read of an Account with its write revision (for the healer)."""
        with unavailable_as_domain_error("read account"):
            response = self._client.get_item(
                TableName=self._table, Key=self._key(account_id), ConsistentRead=True
            )
        item = response.get("Item")
        if not item:
            return None
        values = from_item(item)
        return Account.model_validate(values), int(values.get("revision", 0))

    def page(self, limit: int, cursor: str | None) -> tuple[list[Account], str | None]:
        """One page of accounts in creation order (index query + batch get; no scan)."""
        start = decode_cursor(
            cursor,
            _ACCOUNTS_INDEX_KEYS,
            lambda key: (
                key["listing"] == ACCOUNT_LISTING
                and key["SK"] == ACCOUNT_SK
                and key["PK"].startswith("ACCOUNT#")
            ),
        )
        query: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": ACCOUNTS_INDEX,
            "KeyConditionExpression": "listing = :listing",
            "ExpressionAttributeValues": to_values({":listing": ACCOUNT_LISTING}),
            "Limit": limit,
        }
        if start:
            query["ExclusiveStartKey"] = start
        with unavailable_as_domain_error("list accounts"):
            page = self._client.query(**query)
            keys = [{"PK": k["PK"], "SK": k["SK"]} for k in page.get("Items", [])]
            accounts = self._batch_get(keys)
        by_id = {a.id: a for a in accounts}
        ordered = [by_id[id_] for k in keys if (id_ := str(k["PK"]["S"]).split("#", 1)[1]) in by_id]
        return ordered, encode_cursor(page.get("LastEvaluatedKey"))

    def _batch_get(self, keys: Sequence[dict[str, Any]]) -> list[Account]:
        accounts: list[Account] = []
        pending: list[dict[str, Any]] = list(keys)
        for _ in range(10):  # unprocessed keys come back under throttling; bounded
            if not pending:
                break
            response = self._client.batch_get_item(RequestItems={self._table: {"Keys": pending}})
            accounts += [
                Account.model_validate(from_item(i))
                for i in response.get("Responses", {}).get(self._table, [])
            ]
            unprocessed = response.get("UnprocessedKeys", {}).get(self._table)
            pending = list(unprocessed["Keys"]) if unprocessed else []
        return accounts

    def update(
        self, account_id: str, *, username: str | None, max_number_of_services: int | None
    ) -> Account | None:
        """Change the name and/or the limit; ``None`` if the account does not exist."""
        now = timestamp(self._clock())
        sets = ["updated_at = :now"]
        values: dict[str, Any] = {":now": now}
        if username is not None:
            sets.append("username = :username")
            values[":username"] = username
        if max_number_of_services is not None:
            sets.append("max_number_of_services = :limit")
            values[":limit"] = max_number_of_services
        try:
            with unavailable_as_domain_error("update account"):
                response = self._client.update_item(
                    TableName=self._table,
                    Key=self._key(account_id),
                    UpdateExpression="SET " + ", ".join(sets),
                    ConditionExpression="attribute_exists(PK)",
                    ExpressionAttributeValues=to_values(values),
                    ReturnValues="ALL_NEW",
                )
        except ClientError as error:
            if error_code(error) == CONDITION_FAILED:
                return None
            raise
        return Account.model_validate(from_item(response["Attributes"]))

    def delete(self, account_id: str, *, observed_revision: int) -> bool:
        """Delete the Account and its Count item; ``False`` if it did not exist.

        Applies only if no best-effort write happened since ``observed_revision`` and
        the eventual count is zero: a service created after the caller checked for
        services makes this fail with ``AccountNotEmptyError`` instead of orphaning it.
        """
        pk = account_pk(account_id)
        try:
            self._client.transact_write_items(
                TransactItems=[
                    {
                        "Delete": {
                            "TableName": self._table,
                            "Key": self._key(account_id),
                            "ConditionExpression": "attribute_exists(PK) AND revision = :rev",
                            "ExpressionAttributeValues": to_values({":rev": observed_revision}),
                            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                        }
                    },
                    {
                        "Delete": {
                            "TableName": self._table,
                            "Key": to_item({"PK": pk, "SK": count_sk()}),
                            "ConditionExpression": (
                                "attribute_not_exists(PK) OR count_value = :zero"
                            ),
                            "ExpressionAttributeValues": to_values({":zero": 0}),
                        }
                    },
                ],
                ClientRequestToken=f"delete-{account_id}-{observed_revision}",
            )
        except ClientError as error:
            codes = _cancellation_codes(error)
            if "ConditionalCheckFailed" not in codes:
                raise domain_error("delete account", error) from error
            reasons = error.response.get("CancellationReasons", [])
            if codes[0] == "ConditionalCheckFailed" and not reasons[0].get("Item"):
                return False
            # Written since observed, or the count is not zero: services exist.
            raise AccountNotEmptyError(account_id) from error
        return True

    # -- best-effort counter -------------------------------------------------------

    def _counter_update(
        self, account_id: str, condition: str, *, delta: int = 0, debt: int = 0
    ) -> dict[str, Any]:
        """A best-effort counter write: BE += delta or debt += debt, revision += 1."""
        now = timestamp(self._clock())
        adds = "revision :one" + (", be_debt :debt" if debt else "")
        return {
            "TableName": self._table,
            "Key": self._key(account_id),
            "UpdateExpression": (
                f"SET number_of_services = number_of_services + :delta, updated_at = :now, "
                f"{_MARK_FOR_HEAL} ADD {adds}"
            ),
            "ConditionExpression": condition,
            "ExpressionAttributeValues": to_values(
                {
                    ":delta": delta,
                    ":now": now,
                    ":one": 1,
                    ":shard": heal_shard(account_id, self._heal_shards),
                }
                | ({":debt": debt} if debt else {})
                # DynamoDB rejects values the expressions do not use.
                | ({":zero": 0} if ":zero" in condition else {})
            ),
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }

    def increment(self, account_id: str) -> IncrementOutcome:
        """Take one slot of the limit, only while both counters are below it.

        Retried only when the error proves the write was not applied; an ambiguous
        failure is reported as UNKNOWN and never retried (a retry could overcount).
        A debt left by a delete that found the counter at 0 is paid instead of adding.
        """
        add = self._counter_update(account_id, f"{_BELOW_LIMIT} AND {_NO_DEBT}", delta=1)
        pay = self._counter_update(account_id, f"{_BELOW_LIMIT} AND be_debt > :zero", debt=-1)
        request = add
        for _ in range(_LEDGER_ROUNDS):
            try:
                retry(
                    functools.partial(self._increment_client.update_item, **request),
                    retryable=proves_not_applied,
                    attempts=self._increment_attempts,
                )
            except ClientError as error:
                if error_code(error) != CONDITION_FAILED:
                    return _unapplied_or_unknown(error)
                current = from_item(error.response.get("Item") or {})  # type: ignore[arg-type]
                if not current:
                    return IncrementOutcome.ACCOUNT_MISSING
                limit = int(current.get("max_number_of_services", 0))
                if (
                    max(int(current.get("number_of_services", 0)), int(current.get("ec_hint", 0)))
                    >= limit
                ):
                    return IncrementOutcome.LIMIT_REACHED
                request = pay if int(current.get("be_debt", 0)) > 0 else add
                continue
            except Exception as error:
                return _unapplied_or_unknown(error)
            return IncrementOutcome.APPLIED
        # The debt kept changing under us: leave this service uncounted (undercount).
        return IncrementOutcome.NOT_APPLIED

    def decrement(self, account_id: str) -> DecrementOutcome:
        """Give one slot back; guarded ``> 0``, so retries can only undercount.

        At 0 with the service still live, the decrement is recorded as a debt instead:
        the create that put the service may not have incremented yet, and its increment
        must not count a service that is gone (I1).
        """
        take = self._counter_update(
            account_id, "attribute_exists(PK) AND number_of_services > :zero", delta=-1
        )
        owe = self._counter_update(
            account_id, "attribute_exists(PK) AND number_of_services = :zero", debt=1
        )
        for _ in range(_LEDGER_ROUNDS):
            try:
                self._client.update_item(**take)
            except ClientError as error:
                if error_code(error) != CONDITION_FAILED:
                    return DecrementOutcome.UNKNOWN
                if not error.response.get("Item"):
                    return DecrementOutcome.SKIPPED
            except Exception:
                return DecrementOutcome.UNKNOWN
            else:
                return DecrementOutcome.APPLIED
            try:
                self._client.update_item(**owe)
            except ClientError as error:
                if error_code(error) != CONDITION_FAILED:
                    return DecrementOutcome.UNKNOWN
                if not error.response.get("Item"):
                    return DecrementOutcome.SKIPPED
                continue  # an increment landed meanwhile: take it from the counter
            except Exception:
                return DecrementOutcome.UNKNOWN
            return DecrementOutcome.OWED
        return DecrementOutcome.SKIPPED

    def give_back(self, account_id: str) -> None:
        """Undo a decrement that turned out to be a duplicate: no retries.

        Cancels a debt when there is one (that never raises the counter), else adds
        one back. Best effort: a lost give-back only undercounts.
        """
        cancel = self._counter_update(account_id, "be_debt > :zero", debt=-1)
        add = self._counter_update(account_id, "attribute_exists(PK)", delta=1)
        try:
            self._increment_client.update_item(**cancel)
        except ClientError as error:
            if error_code(error) == CONDITION_FAILED and error.response.get("Item"):
                with contextlib.suppress(Exception):
                    self._increment_client.update_item(**add)
        except Exception:  # noqa: S110 - an unknown outcome must not be repeated
            pass

    # -- eventual counter hint and healing -----------------------------------------

    def record_eventual_count(self, account_id: str, count_value: int, version: int) -> bool:
        """Copy the eventual count onto the Account, never moving it backwards."""
        now = timestamp(self._clock())
        try:
            with unavailable_as_domain_error("record eventual count"):
                self._client.update_item(
                    TableName=self._table,
                    Key=self._key(account_id),
                    UpdateExpression=(
                        f"SET ec_hint = :value, ec_version = :version, {_MARK_FOR_HEAL}"
                    ),
                    ConditionExpression="attribute_exists(PK) AND ec_version < :version",
                    ExpressionAttributeValues=to_values(
                        {
                            ":value": count_value,
                            ":version": version,
                            ":now": now,
                            ":shard": heal_shard(account_id, self._heal_shards),
                        }
                    ),
                )
        except ClientError as error:
            if error_code(error) == CONDITION_FAILED:
                return False
            raise
        return True

    def heal(
        self,
        account_id: str,
        *,
        observed_revision: int,
        observed_heal_since: str,
        value: int | None,
    ) -> bool:
        """Set the best-effort counter to ``value`` (or leave it) and clear the heal mark.

        Applies only if no API write touched the account since it was observed.
        """
        sets = "SET number_of_services = :value " if value is not None else ""
        values: dict[str, Any] = {":revision": observed_revision, ":since": observed_heal_since}
        if value is not None:
            values[":value"] = value
        try:
            with unavailable_as_domain_error("heal account"):
                self._client.update_item(
                    TableName=self._table,
                    Key=self._key(account_id),
                    # Healed (or in sync) on a quiet account: no create is in flight, so
                    # any debt is stale and would only make BE undercount later.
                    UpdateExpression=f"{sets}REMOVE heal_shard, heal_since, be_debt",
                    ConditionExpression=(
                        "attribute_exists(PK) AND revision = :revision AND heal_since = :since"
                    ),
                    ExpressionAttributeValues=to_values(values),
                )
        except ClientError as error:
            if error_code(error) == CONDITION_FAILED:
                return False
            raise
        return True

    def marked_for_heal(
        self, shard: int, older_than: datetime, limit: int
    ) -> list[tuple[str, str]]:
        """Accounts marked before ``older_than`` in one HealIndex shard: (id, heal_since)."""
        with unavailable_as_domain_error("find accounts to heal"):
            response = self._client.query(
                TableName=self._table,
                IndexName=HEAL_INDEX,
                KeyConditionExpression="heal_shard = :shard AND heal_since < :before",
                ExpressionAttributeValues=to_values(
                    {":shard": f"HEAL#{shard}", ":before": timestamp(older_than)}
                ),
                Limit=limit,
            )
        found = [from_item(i) for i in response.get("Items", [])]
        return [(str(v["PK"]).split("#", 1)[1], str(v["heal_since"])) for v in found]

    @property
    def heal_shards(self) -> int:
        return self._heal_shards


def _cancellation_codes(error: ClientError) -> list[str]:
    if error_code(error) != "TransactionCanceledException":
        return []
    return [str(r.get("Code", "None")) for r in error.response.get("CancellationReasons", [])]


def _unapplied_or_unknown(error: Exception) -> IncrementOutcome:
    return IncrementOutcome.NOT_APPLIED if proves_not_applied(error) else IncrementOutcome.UNKNOWN
