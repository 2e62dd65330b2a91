"""Counting backend calls per client and operation, through botocore's event hooks.

``provide-client-params`` fires once per API call (first thing, even when a stub
answers the call); ``before-send`` once per HTTP attempt (so ``attempts - calls`` is
what botocore retried). The hooks are registered *first*, so
attempts that a fault injector (``tests.faults``) refuses or fails are counted too:
the counter sees what the client tried, whether or not it reached the backend.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from botocore.client import BaseClient


@dataclass(frozen=True)
class CallStats:
    """Calls and attempts, each by ``(client label, operation)``."""

    calls: Counter[tuple[str, str]]
    attempts: Counter[tuple[str, str]]

    def total(self, operation: str | None = None, client: str | None = None) -> int:
        return _sum(self.calls, operation, client)

    def total_attempts(self, operation: str | None = None, client: str | None = None) -> int:
        return _sum(self.attempts, operation, client)

    def by_operation(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for (_, operation), n in self.calls.items():
            out[operation] += n
        return dict(sorted(out.items()))


def _sum(counter: Counter[tuple[str, str]], operation: str | None, client: str | None) -> int:
    return sum(
        n
        for (label, op), n in counter.items()
        if (operation is None or op == operation) and (client is None or label == client)
    )


class CallCounter:
    """Thread-safe per-client, per-operation counts of calls and attempts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: Counter[tuple[str, str]] = Counter()
        self._attempts: Counter[tuple[str, str]] = Counter()

    def attach(self, client: BaseClient, *, label: str = "") -> BaseClient:
        """Count ``client``'s calls under ``label`` (idempotent per counter and client)."""
        label = label or f"client-{id(client)}"
        service = client.meta.service_model.service_id.hyphenize()
        uid = f"call-counter-{id(self)}"
        client.meta.events.register_first(
            f"provide-client-params.{service}",
            self._hook(label, self._calls),
            unique_id=f"{uid}-call",
        )
        client.meta.events.register_first(
            f"before-send.{service}", self._hook(label, self._attempts), unique_id=f"{uid}-send"
        )
        return client

    def _hook(self, label: str, counter: Counter[tuple[str, str]]) -> Any:
        def hook(event_name: str, **_: Any) -> None:
            with self._lock:
                counter[(label, event_name.rsplit(".", 1)[-1])] += 1

        return hook

    def snapshot(self) -> CallStats:
        with self._lock:
            return CallStats(Counter(self._calls), Counter(self._attempts))

    def reset(self) -> None:
        with self._lock:
            self._calls.clear()
            self._attempts.clear()

    @contextmanager
    def measure(self) -> Iterator[CallStats]:
        """Counts of what happens inside the block only (filled in on exit)."""
        before = self.snapshot()
        result = CallStats(Counter(), Counter())
        try:
            yield result
        finally:
            after = self.snapshot()
            result.calls.update(after.calls - before.calls)
            result.attempts.update(after.attempts - before.attempts)
