"""Healer: brings the best-effort counter back to the eventual count on quiet accounts."""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from chalicelib.counting.processor import StreamProcessor
from chalicelib.entities import utc_now
from chalicelib.repositories.accounts import AccountRepository
from chalicelib.repositories.counts import CountRepository
from chalicelib.repositories.services import ServiceRepository

logger = logging.getLogger(__name__)


class HealOutcome(enum.Enum):
    HEALED = "healed"
    #: Already equal: only the heal mark was cleared.
    IN_SYNC = "in_sync"
    #: Written to (or counted) within the quiet period: try on a later run.
    BUSY = "busy"
    #: Stream work outstanding: the counters are not comparable yet.
    PENDING = "pending"
    #: Pending work older than ``stuck_after``: replayed from the table.
    RECOVERED = "recovered"
    #: Someone wrote the account between our read and our write: later.
    RACED = "raced"
    GONE = "gone"
    #: An error (backend unavailable, recovery left work): logged; the account stays
    #: marked and a later run tries again.
    FAILED = "failed"


@dataclass
class HealReport:
    outcomes: dict[str, HealOutcome] = field(default_factory=dict)

    def tally(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for outcome in self.outcomes.values():
            counts[outcome.value] = counts.get(outcome.value, 0) + 1
        return counts


def _parse(moment: str) -> datetime:
    return datetime.fromisoformat(moment.replace("Z", "+00:00"))


class Healer:
    """Heals accounts marked in the HealIndex; never scans the table.

    An account is healed only when (a) no API write touched it and the processor
    changed its count for longer than ``quiet`` (longer than any API request can
    take), and (b) a strongly consistent query finds no pending item. Then the
    eventual count equals the live items and the best-effort counter is set to it,
    conditionally on the account's write revision being unchanged.
    """

    def __init__(
        self,
        accounts: AccountRepository,
        services: ServiceRepository,
        counts: CountRepository,
        processor: StreamProcessor,
        *,
        quiet: timedelta,
        stuck_after: timedelta,
        batch_limit: int,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._accounts = accounts
        self._services = services
        self._counts = counts
        self._processor = processor
        self._quiet = quiet
        self._stuck_after = stuck_after
        self._batch_limit = batch_limit
        self._clock = clock

    def run(self) -> HealReport:
        """One pass over every HealIndex shard (at most ``batch_limit`` accounts each)."""
        report = HealReport()
        cutoff = self._clock() - self._quiet
        for shard in range(self._accounts.heal_shards):
            for account_id, heal_since in self._accounts.marked_for_heal(
                shard, cutoff, self._batch_limit
            ):
                try:
                    report.outcomes[account_id] = self.heal(account_id, heal_since)
                except Exception:
                    # One account must not starve the others of their heal.
                    logger.exception("heal of account %s failed", account_id)
                    report.outcomes[account_id] = HealOutcome.FAILED
        logger.info("heal run: %s", report.tally())
        return report

    def heal(self, account_id: str, heal_since: str | None = None) -> HealOutcome:
        now = self._clock()
        found = self._accounts.get_with_revision(account_id)
        if found is None:
            return HealOutcome.GONE
        account, revision = found
        if _parse(account.updated_at) > now - self._quiet:
            return HealOutcome.BUSY
        count = self._counts.get(account_id, consistent=True)
        if count is None:
            return HealOutcome.GONE
        # A count changed recently may include an item whose create is still rolling
        # back: wait until any such request has certainly finished.
        if count.updated_at and _parse(count.updated_at) > now - self._quiet:
            return HealOutcome.BUSY
        pending = self._services.pending(account_id, limit=1)
        if pending:
            if _parse(pending[0][1]) < now - self._stuck_after:
                self._processor.recover(account_id)
                return HealOutcome.RECOVERED
            return HealOutcome.PENDING
        mark = heal_since if heal_since is not None else account.heal_since
        if mark is None:
            return HealOutcome.IN_SYNC
        in_sync = account.number_of_services == count.count_value
        healed = self._accounts.heal(
            account_id,
            observed_revision=revision,
            observed_heal_since=mark,
            value=None if in_sync else count.count_value,
        )
        if not healed:
            return HealOutcome.RACED
        return HealOutcome.IN_SYNC if in_sync else HealOutcome.HEALED
