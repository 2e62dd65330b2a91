"""Operator command for the eventual counter: tier-2 dead letters, healing, recovery.

Uses the app's own composition root (:func:`chalicelib.bootstrap.container`), so it
reads the same ``COUNTER_*`` settings and AWS environment as the Lambda functions::

    python -m infrastructure.counterctl dlq list            # tier-2 messages, a table
    python -m infrastructure.counterctl --json dlq list     # the same as JSON
    python -m infrastructure.counterctl dlq show MESSAGE_ID # one message, in full
    python -m infrastructure.counterctl dlq replay MESSAGE_ID
    python -m infrastructure.counterctl dlq replay --all
    python -m infrastructure.counterctl dlq purge --yes
    python -m infrastructure.counterctl heal [--account ID]
    python -m infrastructure.counterctl recover (--account ID | --all)

Locally, point it at the running stack first: ``AWS_ENDPOINT_URL=http://127.0.0.1:4566``
and dummy credentials (``make run`` prints them; ``make dlq``/``make heal`` set them).

Exit status: 0 done, 1 something failed (the message stays in the queue), 2 usage,
3 no such message.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, Final, TextIO

from chalicelib.bootstrap import Container, container
from chalicelib.counting.dead_letters import DeadLetter
from chalicelib.counting.processor import BatchReport

OK: Final = 0
FAILED: Final = 1
USAGE: Final = 2
NOT_FOUND: Final = 3


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m infrastructure.counterctl",
        description="Operate the eventual counter: tier-2 dead letters, healer, recovery.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    commands = parser.add_subparsers(dest="command", required=True)

    dlq = commands.add_parser("dlq", help="tier-2 dead-letter messages")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True)
    listing = dlq_commands.add_parser("list", help="list messages (they stay in the queue)")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (100)")
    show = dlq_commands.add_parser("show", help="one message with its whole body")
    show.add_argument("message_id")
    replay = dlq_commands.add_parser(
        "replay", help="replay through the processor; delete each message that succeeds"
    )
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("message_id", nargs="?", help="the message to replay")
    which.add_argument("--all", action="store_true", help="every message in the queue")
    purge = dlq_commands.add_parser("purge", help="delete every message")
    purge.add_argument("--yes", action="store_true", help="really delete them")

    heal = commands.add_parser("heal", help="run the healer now (all marked accounts)")
    heal.add_argument("--account", help="heal only this account, marked or not")

    recover = commands.add_parser(
        "recover", help="apply pending work from the table itself (not the stream)"
    )
    target = recover.add_mutually_exclusive_group(required=True)
    target.add_argument("--account", help="one account")
    target.add_argument("--all", action="store_true", help="every account")
    return parser.parse_args(argv)


def main(
    argv: Sequence[str] | None = None,
    *,
    out: TextIO | None = None,
    container_factory: Callable[[], Container] = container,
) -> int:
    """Run one command; return the exit status."""
    args = parse_args(argv)
    stream = out if out is not None else sys.stdout
    printer = Printer(stream, as_json=args.json)
    app = container_factory()
    if args.command == "dlq":
        return _dlq(app, args, printer)
    if args.command == "heal":
        return _heal(app, args.account, printer)
    return _recover(app, args.account, printer)


class Printer:
    """JSON or an aligned text table."""

    def __init__(self, out: TextIO, *, as_json: bool) -> None:
        self._out = out
        self.as_json = as_json

    def json(self, value: Any) -> None:
        self._out.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")

    def line(self, text: str) -> None:
        self._out.write(text + "\n")

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        cells = [[str(h) for h in headers], *([str(c) for c in row] for row in rows)]
        widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
        for row in cells:
            self.line("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


# -- dlq ----------------------------------------------------------------------------------


def _dlq(app: Container, args: argparse.Namespace, printer: Printer) -> int:
    queue = app.tier2_queue()
    if args.dlq_command == "list":
        letters = queue.peek(limit=args.limit)
        if printer.as_json:
            printer.json([_summary(letter) for letter in letters])
        else:
            printer.table(_SUMMARY_COLUMNS, [list(_summary(x).values()) for x in letters])
            printer.line(f"{len(letters)} message(s)")
        return OK
    if args.dlq_command == "show":
        letter = queue.show(args.message_id)
        if letter is None:
            printer.line(f"no message {args.message_id} in the tier-2 queue")
            return NOT_FOUND
        printer.json(asdict(letter) | {"sent_at": _sent_at(letter)})
        return OK
    if args.dlq_command == "replay":
        outcome = queue.replay(None if args.all else args.message_id)
        if printer.as_json:
            printer.json({"replayed": outcome.replayed, "failed": outcome.failed})
        else:
            for message_id in outcome.replayed:
                printer.line(f"replayed and deleted {message_id}")
            for message_id, error in outcome.failed.items():
                printer.line(f"FAILED {message_id} (kept in the queue): {error}")
        if outcome.failed:
            return FAILED
        if not args.all and not outcome.replayed:
            printer.line(f"no message {args.message_id} in the tier-2 queue")
            return NOT_FOUND
        return OK
    if not args.yes:
        printer.line("purge deletes every tier-2 message for good; add --yes to do it")
        return USAGE
    purged = queue.purge()
    if printer.as_json:
        printer.json({"purged": purged})
    else:
        printer.line(f"purged about {purged} message(s)")
    return OK


_SUMMARY_COLUMNS: Final = (
    "message_id",
    "receives",
    "sent_at",
    "condition",
    "shard",
    "first_sequence",
    "last_sequence",
    "records",
)


def _summary(letter: DeadLetter) -> dict[str, Any]:
    context = letter.body.get("requestContext") or {}
    info = letter.body.get("DDBStreamBatchInfo") or {}
    return {
        "message_id": letter.message_id,
        "receives": letter.receive_count,
        "sent_at": _sent_at(letter),
        "condition": context.get("condition", "-"),
        "shard": info.get("shardId", "-"),
        "first_sequence": info.get("startSequenceNumber", "-"),
        "last_sequence": info.get("endSequenceNumber", "-"),
        "records": info.get("batchSize", "-"),
    }


def _sent_at(letter: DeadLetter) -> str:
    try:
        moment = datetime.fromtimestamp(int(letter.sent_at) / 1000, tz=UTC)
    except ValueError:
        return letter.sent_at
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# -- heal and recover ---------------------------------------------------------------------


def _heal(app: Container, account_id: str | None, printer: Printer) -> int:
    if account_id is not None:
        try:
            outcome = app.healer.heal(account_id).value
        except Exception as error:  # e.g. a stuck account whose recovery left work
            printer.line(f"heal of {account_id} failed: {error}")
            return FAILED
        if printer.as_json:
            printer.json({"outcomes": {account_id: outcome}})
        else:
            printer.table(("account", "outcome"), [(account_id, outcome)])
        return OK
    report = app.healer.run()
    outcomes = {account: outcome.value for account, outcome in report.outcomes.items()}
    if printer.as_json:
        printer.json({"outcomes": outcomes, "tally": report.tally()})
    else:
        printer.table(("account", "outcome"), sorted(outcomes.items()))
        printer.line(", ".join(f"{k}: {v}" for k, v in sorted(report.tally().items())) or "none")
    return FAILED if "failed" in report.tally() else OK


def _recover(app: Container, account_id: str | None, printer: Printer) -> int:
    try:
        if account_id is not None:
            report = app.processor.recover(account_id)
        else:
            report = app.replayer.recover_all()
    except Exception as error:  # an operator wants the reason, not a traceback
        printer.line(f"recovery failed: {error}")
        return FAILED
    summary = _report(report)
    if printer.as_json:
        printer.json(summary)
    else:
        printer.table(tuple(summary), [tuple(summary.values())])
    return OK


def _report(report: BatchReport) -> dict[str, Any]:
    return {
        "pending_items": report.relevant,
        "transactions": report.transactions,
        "applied": sum(report.applied.values()),
    }


if __name__ == "__main__":
    sys.exit(main())
