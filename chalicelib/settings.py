"""Typed settings, read once from the environment (prefix ``COUNTER_``)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything configurable about the app; one instance per container."""

    model_config = SettingsConfigDict(env_prefix="COUNTER_", frozen=True, extra="ignore")

    table_name: str = "distributed-counter"
    #: Stream the processor consumes. Deployed stages set the real ARN; the local
    #: runtime polls the table's current stream whatever this says.
    stream_arn: str = (
        "arn:aws:dynamodb:us-east-1:000000000000:table/distributed-counter/stream/local"
    )
    tier1_queue_name: str = "distributed-counter-dlq-tier1"
    tier2_queue_name: str = "distributed-counter-dlq-tier2"
    default_service_limit: int = Field(default=5000, ge=0)
    #: Per-call backend timeouts (seconds). The healer's quiet period must exceed
    #: the longest an API request can take, see ``api_request_budget_seconds``.
    connect_timeout_seconds: float = Field(default=2.0, gt=0)
    read_timeout_seconds: float = Field(default=3.0, gt=0)
    #: Attempts for calls that are safe to retry (reads, decrements, conditional
    #: writes that prove non-application).
    max_attempts: int = Field(default=5, ge=1)
    #: Transactions the processor tries per account per batch before reporting failure.
    processor_attempts: int = Field(default=8, ge=1)
    heal_quiet_seconds: float = Field(default=120.0, gt=0)
    heal_shards: int = Field(default=4, ge=1, le=100)
    heal_batch_limit: int = Field(default=100, ge=1)
    #: A pending service older than this is treated as stuck: the healer replays it
    #: from the table (the stream gave up on it or trimmed it).
    stuck_after_seconds: float = Field(default=900.0, gt=0)
    #: Minutes between scheduled healer runs.
    heal_every_minutes: int = Field(default=5, ge=1)

    @model_validator(mode="after")
    def _quiet_period_outlasts_requests(self) -> Settings:
        # A delete decrements the best-effort counter before it soft-deletes; the
        # healer must not look at the account until that request has surely ended.
        if self.heal_quiet_seconds <= self.api_request_budget_seconds:
            raise ValueError(
                f"heal_quiet_seconds ({self.heal_quiet_seconds}) must exceed the API "
                f"request budget ({self.api_request_budget_seconds} s)"
            )
        return self

    @property
    def api_request_budget_seconds(self) -> float:
        """Upper bound on how long one API request can keep writing (3 calls)."""
        per_call = self.connect_timeout_seconds + self.read_timeout_seconds
        return 3 * self.max_attempts * per_call


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
