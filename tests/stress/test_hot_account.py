"""Many clients on one hot account at its limit, over HTTP, while the processor runs with faults.

The real app is served by the local stack's API server (``api_url``); for this test
the process container is one whose clients carry a fault injector, on a stack of the
test's own. Clients create and delete services as fast as they can; the stream
processor (behind the local stream poller, with delivery faults and faulted backend
calls) and the tier-1 consumer run in an event-source thread; a sampler reads the
account's partition with one consistent query at a time (an atomic snapshot on the
serialised embedded backend) and checks:

* I1 ``0 <= BE <= live`` at every sample;
* I3 ``BE <= limit`` and ``live <= limit + u + c + d`` at every sample
  (docs/invariants.md): ``u`` bounds the undercount the injected faults can have caused
  so far, ``c`` and ``d`` are the creates and deletes in flight (high-water marks over
  the sample); ``live <= limit + u`` once the clients have stopped;
* I4 on every reply: a status, body and headers the OpenAPI document allows; no 500.

At the end the faults stop, everything drains, the healer runs, and the counters
converge: ``BE == EC == live <= limit + u`` (I2, I5).

``COUNTER_STRESS_SECONDS`` (default 12; ``make soak`` sets more) is how long the
clients run.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import boto3
import pytest
import requests

from chalicelib.bootstrap import Container
from chalicelib.counting.healer import Healer
from chalicelib.entities import utc_now
from infrastructure.local.event_sources import (
    SqsOnFailureDestination,
    SqsPoller,
    SqsSettings,
    StreamPoller,
)
from tests.delivery import (
    DeliveryFaults,
    TransactionCrash,
    counts_transaction,
    crashes_as_errors,
    processor_handler,
    replay_handler,
)
from tests.events.live import app_settings, fast_stream_settings, isolated_stack
from tests.faults import (
    FaultInjector,
    InjectionLog,
    Predicate,
    expression_contains,
    installed,
)
from tests.fixtures_api import Reply
from tests.model.contract import ContractLog
from tests.model.invariants import Partition, read_partition
from tests.model.machine import canceled_reasons, injections_by_kind, set_enabled

if TYPE_CHECKING:
    from infrastructure.local.provision import StackOutputs

pytestmark = pytest.mark.stack

SOAK = os.environ.get("COUNTER_SOAK") == "1"
SECONDS = float(os.environ.get("COUNTER_STRESS_SECONDS", "120" if SOAK else "12"))
REPORT = os.environ.get("COUNTER_STRESS_REPORT", "artifacts/soak/stress.json")
CLIENTS: Final = 8
LIMIT: Final = 8
#: What the increment and the decrement look like on the wire.
INCREMENT: Final[Predicate] = expression_contains("ConditionExpression", "< max_number_of_services")
DECREMENT: Final[Predicate] = expression_contains(
    "ConditionExpression", "number_of_services > :zero"
)
SOFT_DELETE: Final[Predicate] = expression_contains("UpdateExpression", "deleted = :true")
MAX_STEPS: Final = 2000


# -- who is in flight, and what could have made BE undercount ------------------------------


@dataclass
class Traffic:
    """Shared by the client threads and the sampler (thread-safe)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    creates: int = 0
    deletes: int = 0
    creates_high: int = 0
    deletes_high: int = 0
    #: Replies that may have left an undercount behind (503 to a create or delete).
    unavailable: int = 0
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)

    def start(self, kind: str) -> None:
        with self.lock:
            if kind == "create":
                self.creates += 1
                self.creates_high = max(self.creates_high, self.creates)
            else:
                self.deletes += 1
                self.deletes_high = max(self.deletes_high, self.deletes)

    def end(self, kind: str, status: int) -> None:
        with self.lock:
            self.statuses[(kind, status)] += 1
            if status == 503:
                self.unavailable += 1  # counted before it leaves the in-flight count
            if kind == "create":
                self.creates -= 1
            else:
                self.deletes -= 1

    def open_window(self) -> None:
        """Start a sample: the high-water marks restart from what is in flight now."""
        with self.lock:
            self.creates_high, self.deletes_high = self.creates, self.deletes

    def window(self) -> tuple[int, int, int]:
        with self.lock:
            return self.creates_high, self.deletes_high, self.unavailable


def undercount_faults(faults: FaultInjector) -> int:
    """Injections that can undercount BE without a 503: an increment lost before it
    applied, or a decrement applied and then retried (docs/invariants.md, I3)."""
    lost_increments = sum(
        1 for i in faults.log.select(kind="ambiguous", operation="UpdateItem")
        if INCREMENT(i.params) and not i.applied
    )  # fmt: skip
    repeated_decrements = sum(
        1 for i in faults.log.select(kind="ambiguous", operation="UpdateItem")
        if DECREMENT(i.params) and i.applied
    )  # fmt: skip
    return lost_increments + repeated_decrements


# -- the stack, the app, the event sources --------------------------------------------------


@dataclass
class Hot:
    outputs: StackOutputs
    api: Container
    proc: Container
    api_faults: FaultInjector
    proc_faults: FaultInjector
    delivery: DeliveryFaults
    crash: TransactionCrash
    crash_log: InjectionLog
    stream: StreamPoller
    tier1: SqsPoller
    account_id: str = ""


@pytest.fixture(scope="module")
def hot_stack(backend_url: str) -> StackOutputs:
    return isolated_stack(backend_url, "stress")


@pytest.fixture
def hot(hot_stack: StackOutputs, api_url: str) -> Iterator[Hot]:
    # Generous timeouts: a real timeout would be an uncounted fault.
    settings = app_settings(
        hot_stack, read_timeout_seconds=10.0, connect_timeout_seconds=2.0, heal_quiet_seconds=120.0
    )
    api, proc = Container(settings), Container(settings)
    rng = random.Random(7)
    api_faults, proc_faults = FaultInjector(seed=1), FaultInjector(seed=2)
    p = api_faults.probability
    api_faults.throttle("GetItem", when=p(0.03))
    api_faults.throttle("PutItem", when=p(0.03))
    api_faults.ambiguous("PutItem", when=p(0.03))
    # Often: at the limit most increments fail their condition, and the lost response of
    # one that applied is what a wrongly retried increment would double.
    api_faults.ambiguous("UpdateItem", where=INCREMENT, when=p(0.15))
    api_faults.ambiguous("UpdateItem", where=DECREMENT, when=p(0.03))
    api_faults.throttle("UpdateItem", where=DECREMENT, when=p(0.03))
    api_faults.conflict("UpdateItem", where=SOFT_DELETE, when=p(0.05))
    api_faults.ambiguous("UpdateItem", where=SOFT_DELETE, when=p(0.03))
    api_faults.conflict("DeleteItem", when=p(0.05))
    q = proc_faults.probability
    tx = "TransactWriteItems"
    proc_faults.conflict(tx, where=counts_transaction, when=q(0.1))
    proc_faults.canceled(tx, reasons=canceled_reasons(rng), where=counts_transaction, when=q(0.1))
    proc_faults.throttle(tx, where=counts_transaction, when=q(0.05))
    proc_faults.ambiguous(tx, where=counts_transaction, when=q(0.1))
    proc_faults.server_error(tx, where=counts_transaction, when=q(0.03))
    for operation in ("GetItem", "BatchGetItem", "UpdateItem"):
        proc_faults.throttle(operation, when=q(0.05))
        proc_faults.ambiguous(operation, when=q(0.05))
    crash_log = InjectionLog()
    crash = TransactionCrash(crash_log)
    crash.arm(before=q(0.03), after=q(0.03))
    proc_faults.attach(proc.dynamodb, label="dynamodb")
    crash.attach(proc.dynamodb)
    tier1 = SqsOnFailureDestination(proc.sqs, hot_stack.tier1_queue_url)
    delivery = DeliveryFaults(
        processor_handler(proc), streams=proc.streams, tier1=tier1, log=crash_log
    )
    delivery.crash_after(lambda size: rng.randint(0, size), when=q(0.1))
    delivery.duplicate(when=q(0.1))
    delivery.tier1_later(when=q(0.1))
    stream = StreamPoller(
        delivery,
        proc.streams,
        hot_stack.stream_arn,
        settings=fast_stream_settings(),
        on_failure=tier1,
    )
    queue = SqsPoller(
        crashes_as_errors(replay_handler(proc)),
        proc.sqs,
        hot_stack.tier1_queue_url,
        settings=SqsSettings(retry_visibility_seconds=0),
    )
    for _ in range(MAX_STEPS):  # history of earlier runs is not ours
        if stream.poll_once().idle:
            break
    with installed(api, api_faults):
        yield Hot(
            hot_stack, api, proc, api_faults, proc_faults, delivery, crash, crash_log, stream, queue
        )


def event_sources(hot: Hot, stop: threading.Event, errors: list[str]) -> None:
    """The stream and tier-1 mappings, one step at a time, in one thread (bounded)."""
    deadline = time.monotonic() + SECONDS + 60
    for step in range(1_000_000):
        if stop.is_set() or time.monotonic() > deadline:
            return
        try:
            idle = hot.stream.poll_once().idle
            if step % 10 == 0:
                hot.tier1.poll_once()
            if step % 50 == 0:
                hot.delivery.release()
        except Exception as error:  # the pollers' own backend calls are not faulted
            errors.append(f"event sources: {error!r}")
            return
        if idle:
            stop.wait(0.02)


def client(
    api_url: str,
    hot: Hot,
    traffic: Traffic,
    contract: ContractLog,
    seed: int,
    stop: threading.Event,
) -> None:
    """Creates and deletes on the hot account until ``stop`` (bounded)."""
    rng = random.Random(seed)
    mine: list[str] = []
    with requests.Session() as http:
        for _ in range(100_000):
            if stop.is_set():
                return
            roll = rng.random()
            if roll < 0.55 or not mine:
                kind, method, path = "create", "POST", "/services"
                body: Any = {"account_id": hot.account_id, "name": "hot"}
            elif roll < 0.9:
                victim = mine.pop(rng.randrange(len(mine)))
                kind, method = "delete", "DELETE"
                path = f"/services/{victim}?ownerAccountId={hot.account_id}"
                body = None
            else:
                kind, method, body = "read", "GET", None
                path = rng.choice(
                    [f"/accounts/{hot.account_id}/usage", f"/accounts/{hot.account_id}/services"]
                )
            if kind != "read":
                traffic.start(kind)
            response = http.request(method, api_url + path, json=body, timeout=60)
            reply = Reply(response.status_code, dict(response.headers), response.content)
            contract.check(method, path, reply)
            if kind == "read":
                continue
            if kind == "create" and reply.status == 200:
                mine.append(reply.json()["id"])
            elif kind == "delete" and reply.status == 503:
                mine.append(victim)  # not known to be deleted: try again later
            traffic.end(kind, reply.status)


def sampler(
    hot: Hot, traffic: Traffic, stop: threading.Event, found: list[str], samples: list[Partition]
) -> None:
    """Reads the partition (one atomic query) and checks I1 and the I3 bound (bounded)."""
    reader = boto3.client("dynamodb")
    for _ in range(100_000):
        if stop.is_set():
            return
        traffic.open_window()
        partition = read_partition(reader, hot.outputs.table_name, hot.account_id)
        creating, deleting, unavailable = traffic.window()
        u = unavailable + undercount_faults(hot.api_faults)
        samples.append(partition)
        if not partition.snapshot:
            found.append(f"not a snapshot: {partition.describe()}")
        if not 0 <= partition.be <= partition.live:
            found.append(f"I1 broken: {partition.describe()}")
        if partition.be > LIMIT:
            # The limit does not change and the healer does not run during the load:
            # only an increment that ignored the limit can take BE past it.
            found.append(f"I3 broken: BE above the limit: {partition.describe()}")
        bound = LIMIT + u + creating + deleting
        if partition.live > bound:
            found.append(
                f"I3 broken: live {partition.live} > {LIMIT} + u {u} + in flight "
                f"{creating}+{deleting}: {partition.describe()}"
            )
        if partition.live - partition.be > u + creating + deleting:
            found.append(f"undercount beyond the faults (u {u}): {partition.describe()}")
        stop.wait(0.01)


def drain(hot: Hot) -> None:
    """Faults off; stream, held tier-1 messages, tier 1 and tier 2 until nothing is left."""
    for _round in range(3):
        for _ in range(MAX_STEPS):
            if hot.stream.poll_once().idle:
                break
        hot.delivery.release()
        for _ in range(MAX_STEPS):
            if hot.tier1.poll_once().idle:
                break
        if not hot.proc.tier2_queue().replay().replayed:
            break
    for _ in range(MAX_STEPS):
        if hot.stream.poll_once().idle:
            return
    raise AssertionError("the stream did not drain")


def run_threads(targets: list[Callable[[], None]], timeout: float) -> None:
    threads = [threading.Thread(target=t, daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
        assert not thread.is_alive(), "a stress thread did not stop"


@pytest.mark.timeout(SECONDS + 600)
def test_a_hot_account_keeps_its_limit_and_its_contract_under_faults_and_converges(
    hot: Hot, api_url: str
) -> None:
    # GIVEN an account at its limit, and a processor whose calls and deliveries fail
    created = requests.post(
        f"{api_url}/accounts",
        json={"username": "hot", "max_number_of_services": LIMIT},
        timeout=30,
    )
    assert created.status_code == 200, created.text
    hot.account_id = created.json()["id"]
    traffic, contract = Traffic(), ContractLog()
    stop, sources_stop = threading.Event(), threading.Event()
    found: list[str] = []
    samples: list[Partition] = []
    source_errors: list[str] = []

    # WHEN many clients create and delete on it for a while
    sources = threading.Thread(
        target=event_sources, args=(hot, sources_stop, source_errors), daemon=True
    )
    sources.start()
    timer = threading.Timer(SECONDS, stop.set)
    timer.start()
    run_threads(
        [
            *[partial(client, api_url, hot, traffic, contract, n, stop) for n in range(CLIENTS)],
            partial(sampler, hot, traffic, stop, found, samples),
        ],
        timeout=SECONDS + 120,
    )
    timer.cancel()
    sources_stop.set()
    sources.join(60)
    assert not sources.is_alive()

    # THEN every sample kept I1 and the I3 bound, and every reply kept the contract
    quiet = read_partition(boto3.client("dynamodb"), hot.outputs.table_name, hot.account_id)
    u = traffic.unavailable + undercount_faults(hot.api_faults)
    assert quiet.live <= LIMIT + u, f"I3 broken with nothing in flight: u {u}, {quiet.describe()}"
    assert not source_errors, source_errors
    assert samples, "the sampler took no sample"
    assert not found, found[:5]
    assert not contract.violations, contract.violations[:5]
    assert contract.total > 100, contract.seen
    assert traffic.statuses[("create", 200)] > 0
    assert traffic.statuses[("delete", 200)] > 0

    # WHEN the faults stop, everything is processed and the healer runs
    set_enabled(hot.api_faults, False)
    set_enabled(hot.proc_faults, False)
    hot.delivery.clear()
    hot.crash.disarm()
    drain(hot)
    settings = hot.proc.settings
    healer = Healer(
        hot.proc.accounts,
        hot.proc.services,
        hot.proc.counts,
        hot.proc.processor,
        quiet=timedelta(seconds=settings.heal_quiet_seconds),
        stuck_after=timedelta(seconds=settings.stuck_after_seconds),
        batch_limit=100,
        clock=lambda: utc_now() + timedelta(seconds=settings.heal_quiet_seconds + 1),
    )
    outcome = healer.heal(hot.account_id)

    # THEN the counters converge: BE == EC == live, within the bound (I2, I5, I3)
    final = read_partition(boto3.client("dynamodb"), hot.outputs.table_name, hot.account_id)
    u = traffic.unavailable + undercount_faults(hot.api_faults)
    assert final.pending == 0, final.describe()
    assert final.ec == final.live, final.describe()
    assert final.be == final.ec, (outcome, final.describe())
    assert final.live <= LIMIT + u, (u, final.describe())

    report = {
        "seconds": SECONDS,
        "samples": len(samples),
        "max_live": max(s.live for s in samples),
        "limit": LIMIT,
        "u_final": u,
        "live_when_clients_stopped": quiet.live,
        "final": {"be": final.be, "ec": final.ec, "live": final.live},
        "replies": contract.total,
        "replies_by_status": {str(k): v for k, v in contract.by_status().items()},
        "requests": {f"{k} {s}": n for (k, s), n in sorted(traffic.statuses.items())},
        "injections_by_kind": dict(
            sorted(
                injections_by_kind([hot.api_faults.log, hot.proc_faults.log, hot.crash_log]).items()
            )
        ),
        "heal": outcome.value,
    }
    print("\nhot account stress:", json.dumps(report, indent=2))
    if SOAK:
        os.makedirs(os.path.dirname(REPORT) or ".", exist_ok=True)
        with open(REPORT, "w") as out:
            out.write(json.dumps(report, indent=2) + "\n")
