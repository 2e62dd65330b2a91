"""What the backend was asked to do during a run, seen from the API process.

Botocore event hooks on every client a strategy uses (the API's and the stream
processor's) record, per *role* and operation: calls, HTTP attempts, errors by code
and the DynamoDB capacity units the call consumed (:mod:`harness.units`). The role is
the API route whose request made the call (``POST /services``), read from the
thread's current Chalice request, or the name of the thread that made it
(``processor``, ``dead-letters``).

The same hooks keep three running totals, from the writes that succeeded:

* **true**: live services (a service put +1; a soft delete, or a hard delete of a live
  service, -1);
* **BE**: the best-effort counter (``number_of_services = number_of_services + :delta``);
* **EC**: the eventual counter (``ADD count_value :delta``), or BE for a strategy whose
  one counter is exact.

and the time each counted change (service created, service deleted) was acknowledged
by the backend, so that :meth:`Accounting.stream_handler` can measure how long the
eventual counter took to apply it (its *lag*).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from chalice.local import LocalChalice

from harness.units import item_size, units_of

if TYPE_CHECKING:
    from botocore.client import BaseClient

_CONTEXT_KEY: Final = "bench_accounting"
_STARTED_KEY: Final = "bench_accounting_started"
ACCOUNT_PREFIX: Final = "ACCOUNT#"
SERVICE_PREFIX: Final = "SERVICE#"
ROLE_HEADER: Final = "X-Bench-Role"
BE_UPDATE: Final = "number_of_services = number_of_services + :delta"
EC_UPDATE: Final = "ADD count_value :delta"

Key = tuple[str, str]


@dataclass
class OperationStats:
    calls: int = 0
    attempts: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    wcu: float = 0.0
    rcu: float = 0.0
    seconds: float = 0.0  # summed client-side duration of the calls


@dataclass(frozen=True)
class CountSample:
    at: float  # seconds since the run started
    best_effort: int
    eventual: int
    true: int


def current_role() -> str:
    """The API route the current thread serves, else the thread's name."""
    thread = threading.current_thread()
    if thread.name.startswith("waitress"):
        request = getattr(LocalChalice._THREAD_LOCAL, "current_request", None)
        if request is not None:
            return f"{request.method} {request.context.get('resourcePath', '?')}"
    return thread.name


def _s(key: Mapping[str, Any], name: str) -> str:
    return str((key.get(name) or {}).get("S", ""))


def _n(values: Mapping[str, Any] | None, name: str) -> int:
    return int((values or {}).get(name, {}).get("N", "0"))


class Accounting:
    """Hooks and tallies for one strategy in one run.

    Parameters
    ----------
    single_counter:
        The strategy's one counter is exact (EC is BE).
    hard_deletes_are_counted:
        The API hard-deletes services and the stream processor counts the REMOVE
        (the original flow); otherwise a soft delete is what gets counted.
    """

    def __init__(self, *, single_counter: bool = False, hard_deletes_are_counted: bool = False):
        self._lock = threading.Lock()
        self._single = single_counter
        self._hard = hard_deletes_are_counted
        self.started = time.monotonic()
        self.stats: dict[tuple[str, str], OperationStats] = {}
        self.best_effort: Counter[str] = Counter()
        self.eventual: Counter[str] = Counter()
        self.live: Counter[str] = Counter()
        self.samples: list[CountSample] = []
        self._created: dict[Key, float] = {}
        self._deleted: dict[Key, float] = {}
        self.lags: list[float] = []
        self.stream_invocations = 0
        self.stream_records = 0
        self.largest_item = 0
        self._sampler: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def single_counter(self) -> bool:
        """The strategy has one exact counter (EC is BE)."""
        return self._single

    # -- hooks ---------------------------------------------------------------------

    def attach(self, client: BaseClient) -> BaseClient:
        service = client.meta.service_model.service_id.hyphenize()
        uid = f"bench-accounting-{id(self)}"
        events = client.meta.events
        events.register_first(
            f"before-parameter-build.{service}", self._remember, unique_id=f"{uid}-p"
        )
        events.register_first(f"before-send.{service}", self._attempt, unique_id=f"{uid}-s")
        events.register(f"after-call.{service}", self._after_call, unique_id=f"{uid}-c")
        events.register(f"after-call-error.{service}", self._after_error, unique_id=f"{uid}-e")
        return client

    def _remember(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context[_CONTEXT_KEY] = (current_role(), params)
        context[_STARTED_KEY] = time.monotonic()

    def _entry(self, role: str, operation: str) -> OperationStats:
        entry = self.stats.get((role, operation))
        if entry is None:
            entry = self.stats[(role, operation)] = OperationStats()
        return entry

    def _attempt(self, event_name: str, request: Any, **_: Any) -> None:
        context = getattr(request, "context", None) or {}
        role, _params = context.get(_CONTEXT_KEY, (current_role(), {}))
        # Lets the bench's backend charge the time it spends on this request to the role.
        request.headers[ROLE_HEADER] = role.encode("ascii", "replace")
        with self._lock:
            self._entry(role, event_name.rsplit(".", 1)[-1]).attempts += 1

    def _after_call(
        self,
        event_name: str,
        http_response: Any,
        parsed: Mapping[str, Any],
        context: dict[str, Any],
        **_: Any,
    ) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        role, params = context.get(_CONTEXT_KEY, (current_role(), {}))
        ok = int(getattr(http_response, "status_code", 500)) < 300
        units = (
            units_of(operation, params, parsed) if event_name.split(".")[1] == "dynamodb" else None
        )
        now = time.monotonic()
        with self._lock:
            entry = self._entry(role, operation)
            entry.calls += 1
            entry.seconds += now - context.get(_STARTED_KEY, now)
            if not ok:
                entry.errors[str(parsed.get("Error", {}).get("Code", "Unknown"))] += 1
            if units is not None:
                entry.wcu += units.wcu
                entry.rcu += units.rcu
            if ok and units is not None:
                self._track(role, operation, params, now)

    def _after_error(
        self, event_name: str, exception: Exception, context: dict[str, Any], **_: Any
    ) -> None:
        role, _params = context.get(_CONTEXT_KEY, (current_role(), {}))
        with self._lock:
            entry = self._entry(role, event_name.rsplit(".", 1)[-1])
            entry.calls += 1
            entry.errors[type(exception).__name__] += 1

    # -- counts --------------------------------------------------------------------

    def _track(self, role: str, operation: str, params: Mapping[str, Any], now: float) -> None:
        table = params.get("TableName")
        if operation == "TransactWriteItems":
            for entry in params.get("TransactItems", []):
                ((action, body),) = entry.items()
                self._track_write(role, action, body, now)
        elif operation in ("PutItem", "UpdateItem", "DeleteItem") and table:
            self._track_write(role, operation.removesuffix("Item"), params, now)

    def _track_write(self, role: str, action: str, body: Mapping[str, Any], now: float) -> None:
        key = body.get("Item") if action == "Put" else body.get("Key")
        if not key:
            return
        if action == "Put":
            self.largest_item = max(self.largest_item, item_size(key))
        pk, sk = _s(key, "PK"), _s(key, "SK")
        account = pk.removeprefix(ACCOUNT_PREFIX)
        expression = str(body.get("UpdateExpression", ""))
        condition = str(body.get("ConditionExpression", ""))
        values = body.get("ExpressionAttributeValues")
        is_api = not role.startswith(("processor", "dead-letters"))
        if sk.startswith(SERVICE_PREFIX):
            if action == "Put":
                self.live[account] += 1
                if is_api:
                    self._created[(pk, sk)] = now
            elif action == "Update" and "deleted = :true" in expression:
                self.live[account] -= 1
                if is_api and not self._hard:
                    self._deleted[(pk, sk)] = now
            elif action == "Delete" and "deleted = :true" not in condition:
                # A hard delete of a live service (a rollback, or the original's delete).
                self.live[account] -= 1
                if is_api and self._hard:
                    self._deleted[(pk, sk)] = now
                if not self._hard:
                    self._created.pop((pk, sk), None)  # rolled back: nothing to count
        if action == "Update" and BE_UPDATE in expression:
            self.best_effort[account] += _n(values, ":delta")
        if action == "Update" and EC_UPDATE in expression:
            self.eventual[account] += _n(values, ":delta")

    def totals(self) -> CountSample:
        with self._lock:
            be = sum(self.best_effort.values())
            ec = be if self._single else sum(self.eventual.values())
            return CountSample(time.monotonic() - self.started, be, ec, sum(self.live.values()))

    def pending_changes(self) -> int:
        """Counted changes acknowledged to callers that the eventual counter has not applied."""
        if self._single:
            return 0
        with self._lock:
            return len(self._created) + len(self._deleted)

    def drained(self) -> bool:
        """The eventual counter has caught up with the truth, account by account."""
        if self.pending_changes():
            return False
        with self._lock:
            accounts = set(self.live) | set(self.eventual)
            counter = self.best_effort if self._single else self.eventual
            return all(counter[a] == self.live[a] for a in accounts)

    # -- sampling --------------------------------------------------------------------

    def start_sampling(self, interval_seconds: float = 0.25) -> None:
        self.started = time.monotonic()

        def sample() -> None:
            while not self._stop.wait(interval_seconds):
                self.samples.append(self.totals())

        self._sampler = threading.Thread(target=sample, name="bench-sampler", daemon=True)
        self._sampler.start()

    def stop_sampling(self) -> None:
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join(5)
        self.samples.append(self.totals())

    # -- the stream processor ----------------------------------------------------------

    def stream_handler(
        self, handler: Callable[[dict[str, Any], Any], Any]
    ) -> Callable[[dict[str, Any], Any], Any]:
        """Wrap a stream handler: count records, and measure the lag of each counted change."""

        def wrapped(event: dict[str, Any], context: Any) -> Any:
            records: Sequence[Mapping[str, Any]] = event.get("Records", [])
            response = handler(event, context)  # a raised error: nothing was applied
            done = _records_done(records, response)
            now = time.monotonic()
            with self._lock:
                self.stream_invocations += 1
                self.stream_records += len(records)
                for record in records[:done]:
                    self._applied(record, now)
            return response

        return wrapped

    def _applied(self, record: Mapping[str, Any], now: float) -> None:
        body = record.get("dynamodb", {})
        keys = body.get("Keys", {})
        key = (_s(keys, "PK"), _s(keys, "SK"))
        event = record.get("eventName")
        pending = self._created if event == "INSERT" else self._deleted
        started = pending.pop(key, None)
        if started is not None:
            self.lags.append(now - started)


def _records_done(records: Sequence[Mapping[str, Any]], response: Any) -> int:
    failures = response.get("batchItemFailures") if isinstance(response, Mapping) else None
    if not failures:
        return len(records)
    failed = {str(f.get("itemIdentifier")) for f in failures if isinstance(f, Mapping)}
    for index, record in enumerate(records):
        if str(record.get("dynamodb", {}).get("SequenceNumber")) in failed:
            return index
    return 0
