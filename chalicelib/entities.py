"""Entities: the table's items as typed models, with their keys."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

from pydantic import BaseModel, ConfigDict

ACCOUNT_PREFIX: Final = "ACCOUNT#"
SERVICE_PREFIX: Final = "SERVICE#"
COUNT_PREFIX: Final = "COUNT#"
ACCOUNT_SK: Final = "METADATA"
SERVICES_COUNT_TYPE: Final = "SERVICES"
#: Value of ``listing`` on Account items: the AccountsIndex partition.
ACCOUNT_LISTING: Final = "ACCOUNT"


def utc_now() -> datetime:
    """The current time (the default clock)."""
    return datetime.now(UTC)


def timestamp(moment: datetime) -> str:
    """ISO-8601 UTC with microseconds: sorts lexicographically in time order."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def account_pk(account_id: str) -> str:
    return f"{ACCOUNT_PREFIX}{account_id}"


def service_sk(service_id: str) -> str:
    return f"{SERVICE_PREFIX}{service_id}"


def count_sk(count_type: str = SERVICES_COUNT_TYPE) -> str:
    return f"{COUNT_PREFIX}{count_type}"


def account_id_of(pk: str) -> str:
    return pk.removeprefix(ACCOUNT_PREFIX)


class _Entity(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Account(_Entity):
    """``PK=ACCOUNT#<id>, SK=METADATA``: the limit and the best-effort counter."""

    id: str
    username: str
    max_number_of_services: int
    #: Best-effort counter (BE): never above the live services.
    number_of_services: int = 0
    #: Last eventual count (EC) the stream processor copied here, and its version.
    ec_hint: int = 0
    ec_version: int = 0
    #: Set while the account awaits the healer (it is in the HealIndex).
    heal_since: str | None = None
    created_at: str
    updated_at: str

    @property
    def effective_count(self) -> int:
        """What limit checks use: the larger of both counters."""
        return max(self.number_of_services, self.ec_hint)


class Service(_Entity):
    """``PK=ACCOUNT#<account>, SK=SERVICE#<id>``: one counted item."""

    id: str
    account_id: str
    name: str
    created_at: str
    updated_at: str
    deleted: bool = False
    counter_processed: bool = False


class Count(_Entity):
    """``PK=ACCOUNT#<id>, SK=COUNT#SERVICES``: the eventual counter (EC)."""

    account_id: str
    count_type: str = SERVICES_COUNT_TYPE
    count_value: int = 0
    version: int = 0
    created_at: str
    updated_at: str | None = None
