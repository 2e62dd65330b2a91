"""One run's numbers, reduced from k6's points and the accounting hooks."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

from harness.accounting import CountSample
from harness.capacity import Capacity
from harness.k6 import K6Result, percentile

#: Operations charged against the table (the rest are stream and queue reads).
TABLE_OPERATIONS: Final = frozenset(
    {
        "GetItem",
        "PutItem",
        "UpdateItem",
        "DeleteItem",
        "Query",
        "Scan",
        "BatchGetItem",
        "BatchWriteItem",
        "TransactWriteItems",
        "TransactGetItems",
    }
)
CREATE_ROUTE: Final = "POST /services"
DELETE_ROUTE: Final = "DELETE /services/{service_id}"
#: For operations the capacity run does not measure: the closest one it does.
CAPACITY_PROXY: Final = {
    "DeleteItem": "UpdateItem",
    "Query": "GetItem",
    "BatchGetItem": "GetItem",
    "Scan": "GetItem",
    "TransactGetItems": "TransactWriteItems",
    "BatchWriteItem": "PutItem",
}


@dataclass(frozen=True)
class Cost:
    calls: float = 0.0
    wcu: float = 0.0
    rcu: float = 0.0
    by_operation: dict[str, float] = field(default_factory=dict)


@dataclass
class TableCheck:
    """The table itself after the drain, against what the hooks tracked."""

    accounts: int = 0
    live: int = 0
    best_effort: int = 0
    eventual: int = 0
    max_over_limit: int = 0
    be_above_live: int = 0  # accounts whose BE overcounts (I1 broken)
    ec_mismatch: int = 0  # accounts whose EC != live after the drain (I2 broken)
    largest_item_bytes: int = 0


@dataclass
class RunResult:
    scenario: str
    strategy: str
    k6: K6Result
    samples: list[CountSample]
    lags: list[float]
    stats: dict[tuple[str, str], Any]
    stream_records: int
    stream_invocations: int
    drain_seconds: float
    drained: bool
    check: TableCheck
    conflicts: int
    single_counter: bool
    #: Seconds from the start of sampling to the end of the load (for the plot).
    load_ended_at: float = 0.0
    #: Cores used during the load, per process (CPU seconds / wall seconds).
    cpu: dict[str, float] = field(default_factory=dict)
    #: "role operation" -> (requests, seconds they held the serialised backend)
    busy: dict[str, tuple[int, float]] = field(default_factory=dict)
    busy_wall_seconds: float = 0.0

    @property
    def backend_utilisation(self) -> float:
        """Share of the run's wall time the serialised backend was serving requests."""
        total = sum(seconds for _, seconds in self.busy.values())
        return total / self.busy_wall_seconds if self.busy_wall_seconds else math.nan

    def backend_ms_per_create_all_in(self) -> float:
        """Backend ms per create request, its share of the stream processor's work included."""
        create = self.backend_ms("create")
        processor = self.backend_ms("processor")
        if math.isnan(processor) or not self._requests("create"):
            return create
        changes_per_create = len(self.lags) / (self._requests("create") + self._requests("delete"))
        return create + processor * changes_per_create

    def backend_ms(self, what: str) -> float:
        """Backend milliseconds per create / per delete request, or per counted change."""
        role = {"create": CREATE_ROUTE, "delete": DELETE_ROUTE, "processor": "processor"}[what]
        per = len(self.lags) if what == "processor" else self._requests(what)
        seconds = sum(
            s
            for key, (_, s) in self.busy.items()
            if key.rsplit(" ", 1)[0] == role
            and (what != "processor" or key.rsplit(" ", 1)[1] in TABLE_OPERATIONS)
        )
        return 1000 * seconds / per if per else math.nan

    # -- throughput and latency ------------------------------------------------------

    @property
    def requests_per_second(self) -> float:
        return self.k6.requests / self.k6.seconds

    @property
    def good_per_second(self) -> float:
        """Responses the scenario expected (200; 409 where the limit is the point) per second."""
        return (self.k6.requests - self.unexpected) / self.k6.seconds

    @property
    def creates_per_second(self) -> float:
        route = self.k6.routes.get("create")
        return (route.statuses[200] if route else 0) / self.k6.seconds

    def latency_ms(self, p: float) -> float:
        return percentile(self.k6.durations(), p)

    @property
    def errors_seen(self) -> int:
        """Responses a caller would treat as a failure: 5xx and no response at all."""
        return sum(n for status, n in self.k6.statuses().items() if status >= 500 or status == 0)

    @property
    def outside_contract(self) -> int:
        return int(self.k6.counters.get("outside_contract", 0))

    @property
    def unexpected(self) -> int:
        return int(self.k6.counters.get("unexpected_responses", 0))

    def lag_s(self, p: float) -> float:
        if self.single_counter:
            return 0.0
        return percentile(self.lags, p)

    # -- cost ------------------------------------------------------------------------

    def _cost(self, roles: set[str], per: float) -> Cost:
        calls = wcu = rcu = 0.0
        by_operation: Counter[str] = Counter()
        for (role, operation), entry in self.stats.items():
            if role not in roles or operation not in TABLE_OPERATIONS:
                continue
            calls += entry.calls
            wcu += entry.wcu
            rcu += entry.rcu
            by_operation[operation] += entry.calls
        if per <= 0:
            return Cost()
        return Cost(
            calls / per, wcu / per, rcu / per, {k: v / per for k, v in by_operation.items()}
        )

    def _requests(self, name: str) -> int:
        route = self.k6.routes.get(name)
        return route.count if route else 0

    def per_create(self) -> Cost:
        return self._cost({CREATE_ROUTE}, self._requests("create"))

    def per_delete(self) -> Cost:
        return self._cost({DELETE_ROUTE}, self._requests("delete"))

    def per_counted_change(self) -> Cost:
        """The stream processor's table work per change it counted."""
        return self._cost({"processor"}, len(self.lags))

    @property
    def records_per_transaction(self) -> float:
        transactions = sum(
            e.calls
            for (role, op), e in self.stats.items()
            if role == "processor" and op == "TransactWriteItems"
        )
        return self.stream_records / transactions if transactions else math.nan

    def backend_calls(self) -> int:
        return sum(e.calls for e in self.stats.values())

    def polling_calls(self) -> int:
        return sum(e.calls for (_, op), e in self.stats.items() if op not in TABLE_OPERATIONS)

    def create_bound(self, capacity: list[Capacity]) -> float:
        """Creates/s the backend could serve at this run's table calls per create.

        Every table call of the run (API and processor alike) is charged to the creates
        in create-only scenarios; with deletes the create route's own calls only.
        """
        rates = {c.operation: c.per_second for c in capacity}
        creates = self._requests("create")
        if not creates or not rates:
            return math.nan
        create_only = not self._requests("delete")
        roles = {CREATE_ROUTE, "processor"} if create_only else {CREATE_ROUTE}
        seconds_per_create = 0.0
        for (role, operation), entry in self.stats.items():
            if role in roles and operation in TABLE_OPERATIONS:
                rate = rates.get(operation) or rates.get(CAPACITY_PROXY.get(operation, ""), 0)
                if rate:
                    seconds_per_create += entry.calls / creates / rate
        return 1 / seconds_per_create if seconds_per_create else math.nan

    def ok_statuses(self) -> str:
        return ", ".join(f"{status}: {n}" for status, n in sorted(self.k6.statuses().items()))
