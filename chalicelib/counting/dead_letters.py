"""Tier-2 dead letters: messages tier 1 could not replay, kept for people to act on."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from chalicelib.counting.replay import DeadLetterReplayer

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

_MAX_RECEIVES: Final = 100
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeadLetter:
    message_id: str
    receive_count: int
    sent_at: str
    body: dict[str, Any]


@dataclass
class ReplayOutcome:
    """Which messages a replay applied (and deleted), and which failed (kept)."""

    replayed: list[str] = field(default_factory=list)
    #: Message id -> why its replay failed.
    failed: dict[str, str] = field(default_factory=dict)


class Tier2Queue:
    """List, inspect, replay and purge tier-2 messages (an operator's tool)."""

    def __init__(self, sqs: SQSClient, queue_url: str, replayer: DeadLetterReplayer) -> None:
        self._sqs = sqs
        self._url = queue_url
        self._replayer = replayer

    def _receive(self, visibility: int) -> list[tuple[DeadLetter, str]]:
        response = self._sqs.receive_message(
            QueueUrl=self._url,
            MaxNumberOfMessages=10,
            VisibilityTimeout=visibility,
            WaitTimeSeconds=0,
            MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
        )
        letters = []
        for message in response.get("Messages", []):
            attributes = message.get("Attributes", {})
            try:
                body = json.loads(message.get("Body", "{}"))
            except ValueError:
                body = {"raw": message.get("Body", "")}
            letter = DeadLetter(
                message_id=message["MessageId"],
                receive_count=int(attributes.get("ApproximateReceiveCount", 0)),
                sent_at=str(attributes.get("SentTimestamp", "")),
                body=body if isinstance(body, dict) else {"raw": body},
            )
            letters.append((letter, message["ReceiptHandle"]))
        return letters

    def _release(self, receipts: list[str]) -> None:
        for receipt in receipts:
            self._sqs.change_message_visibility(
                QueueUrl=self._url, ReceiptHandle=receipt, VisibilityTimeout=0
            )

    def peek(self, limit: int = 100) -> list[DeadLetter]:
        """Peek at up to ``limit`` messages; they stay in the queue."""
        seen: dict[str, DeadLetter] = {}
        receipts: list[str] = []
        try:
            for _ in range(_MAX_RECEIVES):
                batch = self._receive(visibility=30)
                if not batch:
                    break
                for letter, receipt in batch:
                    seen.setdefault(letter.message_id, letter)
                    receipts.append(receipt)
                if len(seen) >= limit:
                    break
        finally:
            self._release(receipts)
        return list(seen.values())[:limit]

    def show(self, message_id: str) -> DeadLetter | None:
        return next((m for m in self.peek(limit=10_000) if m.message_id == message_id), None)

    def replay(self, message_id: str | None = None) -> ReplayOutcome:
        """Replay one message (or all when ``None``); delete each one that succeeds.

        A message whose replay fails stays in the queue, visible again when this call
        returns, and the others are still replayed.
        """
        outcome = ReplayOutcome()
        # Every receipt not deleted is made visible again at the end, whatever happens.
        held: list[str] = []
        try:
            for _ in range(_MAX_RECEIVES):
                batch = self._receive(visibility=300)
                if not batch:
                    break
                held += [receipt for _, receipt in batch]
                for letter, receipt in batch:
                    if message_id is not None and letter.message_id != message_id:
                        continue
                    try:
                        self._replayer.replay(letter.body)
                    except Exception as error:
                        logger.warning("replay of %s failed: %r", letter.message_id, error)
                        outcome.failed[letter.message_id] = f"{type(error).__name__}: {error}"
                        continue
                    self._sqs.delete_message(QueueUrl=self._url, ReceiptHandle=receipt)
                    held.remove(receipt)
                    outcome.replayed.append(letter.message_id)
                if message_id is not None and (outcome.replayed or outcome.failed):
                    break
        finally:
            self._release(held)
        return outcome

    def purge(self) -> int:
        """Delete every message; returns how many there were (approximately)."""
        attributes = self._sqs.get_queue_attributes(
            QueueUrl=self._url, AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]
        self._sqs.purge_queue(QueueUrl=self._url)
        return int(attributes.get("ApproximateNumberOfMessages", 0))
