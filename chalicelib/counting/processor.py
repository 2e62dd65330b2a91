"""Stream processor: applies item changes to the eventual counter exactly once."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from chalicelib.counting.records import (
    Action,
    ItemChange,
    action_for,
    changes_by_account,
)
from chalicelib.errors import CounterError
from chalicelib.repositories.accounts import AccountRepository
from chalicelib.repositories.counts import CountRepository
from chalicelib.repositories.dynamo import backoff
from chalicelib.repositories.ledger import MAX_ITEMS_PER_TRANSACTION, CountLedger
from chalicelib.repositories.services import ServiceRepository

logger = logging.getLogger(__name__)


class AccountNotSettledError(Exception):
    """Some of an account's changes could not be applied within the attempts allowed."""


@dataclass
class BatchReport:
    """What one batch did; ``failed_sequence`` is where Lambda must resume."""

    records: int = 0
    relevant: int = 0
    transactions: int = 0
    applied: dict[str, int] = field(default_factory=dict)
    failed_accounts: list[str] = field(default_factory=list)
    failed_sequence: str | None = None

    def response(self) -> dict[str, Any]:
        """The Lambda partial-batch response."""
        failures = (
            [] if self.failed_sequence is None else [{"itemIdentifier": self.failed_sequence}]
        )
        return {"batchItemFailures": failures}


class StreamProcessor:
    """Aggregates a batch per account and applies it in few transactions.

    Exactly-once comes from each item's condition (``counter_processed``/``deleted``),
    never from request tokens: a replayed record finds its item already changed,
    its condition fails, and the item's *current* state (returned with the failure)
    decides what, if anything, is still to do.
    """

    def __init__(
        self,
        ledger: CountLedger,
        accounts: AccountRepository,
        counts: CountRepository,
        services: ServiceRepository,
        *,
        attempts: int,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._ledger = ledger
        self._accounts = accounts
        self._counts = counts
        self._services = services
        self._attempts = attempts
        self._sleep = sleep

    def process(self, records: Iterable[Mapping[str, Any]]) -> BatchReport:
        """Process a batch of stream records (Lambda's ``Records``), in order."""
        batch = list(records)
        report = BatchReport(records=len(batch))
        grouped = changes_by_account(batch)
        report.relevant = sum(len(c) for c in grouped.values())
        failed: set[str] = set()
        touched: set[str] = set()
        for account_id, changes in grouped.items():
            try:
                self._settle(account_id, _latest_actions(changes), report, touched)
            except Exception:
                # Report and move on: the failed account's records are redelivered.
                logger.exception("account %s not settled", account_id)
                failed.add(account_id)
        # Every account with relevant changes, not only those committed now: a
        # redelivery after a crash or a failed hint finds its changes applied, and the
        # hint (which also marks the account for the healer) must still be published.
        failed |= self._publish_hints(set(grouped))
        report.failed_accounts = sorted(failed)
        # Lambda resumes from the earliest failed record; later ones are redelivered
        # too, which the item conditions make harmless.
        # (A batch comes from one shard: its sequence numbers order it.)
        report.failed_sequence = min(
            (grouped[a][0].sequence_number for a in failed), key=int, default=None
        )
        return report

    def recover(self, account_id: str) -> BatchReport:
        """Apply whatever the account's pending items need, read from the table itself."""
        report = BatchReport()
        planned: dict[str, Action | None] = {}
        for item_id, _ in self._services.pending(account_id):
            service = self._services.get(account_id, item_id, consistent=True)
            planned[item_id] = action_for(service.model_dump()) if service else None
        report.relevant = len(planned)
        touched: set[str] = set()
        try:
            self._settle(account_id, planned, report, touched)
        finally:
            unpublished = self._publish_hints({account_id})
        if unpublished:
            raise AccountNotSettledError(f"hint of account {account_id} not published")
        return report

    def _settle(
        self,
        account_id: str,
        planned: dict[str, Action | None],
        report: BatchReport,
        touched: set[str],
    ) -> None:
        """Apply ``planned`` for one account; adds it to ``touched`` once a chunk commits."""
        todo = {item: action for item, action in planned.items() if action is not None}
        # ``attempts`` bounds the transactions that changed nothing (conflicts,
        # throttling); a committed chunk or a re-planned item is progress. An item is
        # re-planned at most twice (its states only move forward), so this bound is
        # never reached while work gets done.
        failures = 0
        for _ in range(len(todo) * 3 + self._attempts):
            if not todo or failures >= self._attempts:
                break
            chunk = list(todo.items())[:MAX_ITEMS_PER_TRANSACTION]
            outcome = self._ledger.apply(account_id, chunk)
            report.transactions += 1
            if outcome.account_gone:
                logger.warning("account %s is gone; dropping %d changes", account_id, len(todo))
                return
            if outcome.committed:
                touched.add(account_id)
                for item_id, action in chunk:
                    report.applied[action.value] = report.applied.get(action.value, 0) + 1
                    del todo[item_id]
                continue
            progressed = False
            for item_id, replanned in outcome.replanned.items():
                if replanned is None:
                    del todo[item_id]
                elif replanned is todo[item_id]:
                    continue
                else:
                    todo[item_id] = replanned
                progressed = True
            if not progressed:
                failures += 1
            if outcome.contended:
                self._sleep(backoff(failures))
        if todo:
            raise AccountNotSettledError(f"{len(todo)} changes left for account {account_id}")

    def _publish_hints(self, account_ids: set[str]) -> set[str]:
        """Copy each eventual count onto its Account (never backwards).

        Runs for what was committed even when some changes are left for a retry. One
        consistent batch read serves every account of the batch. Returns the accounts
        whose hint could not be written: they are reported failed, so the records are
        redelivered, because the hint write is also what marks an account for the
        healer (an undercount nobody marks would never be healed).
        """
        if not account_ids:
            return set()
        try:
            counts = self._counts.get_many(sorted(account_ids))
        except CounterError as error:
            logger.warning("hints not updated: %s", error)
            return set(account_ids)
        unpublished: set[str] = set()
        for count in counts:
            try:
                self._accounts.record_eventual_count(
                    count.account_id, count.count_value, count.version
                )
            except CounterError as error:
                logger.warning("hint for account %s not updated: %s", count.account_id, error)
                unpublished.add(count.account_id)
        return unpublished


def _latest_actions(changes: list[ItemChange]) -> dict[str, Action | None]:
    """One guess per item from its latest image: an INSERT and its delete collapse."""
    latest: dict[str, Action | None] = {}
    for change in changes:
        latest[change.item_id] = action_for(change.image)
    return latest
