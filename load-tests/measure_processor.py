"""Measure the eventual counter on the local stack: transactions per record, and lag.

``python load-tests/measure_processor.py`` (``--help`` for the knobs). It starts the
embedded backend in its own process, as ``make run`` does, provisions a fresh stack
from the template for each measurement, and prints two tables:

1. **Transactions per processed record** at stream batch sizes 10, 100 and 1,000:
   creates (then deletes) through the app's services, spread over a number of
   accounts; the stream mapping's poller (deployed filter, batching window) delivers
   them to the app's stream handler at the given batch size. Every
   ``TransactWriteItems`` call is counted (botocore hook), as are the records the
   handler received.

2. **Lag, write to counted**, at a steady create rate through the HTTP API (waitress,
   as ``make run`` serves it): for each service, from the moment its ``POST /services``
   was answered to the moment the stream handler returned from the batch that
   counted it. The creates come from a separate process (open loop, 16 connections);
   the API and the stream poller share this one, as under ``make run``. The stream
   mapping runs with the deployed settings (batch 100, window 1 s, 4 polls a second
   when idle).

``--backend item-rollback`` runs the backend with the bench harness's moto patch
(``infrastructure/local/moto_patches.py``): moto copies the whole table, stream included,
on every ``TransactWriteItems``, which DynamoDB does not; with the patch a
transaction's cost no longer grows with the table. Counts do not depend on it; lag does.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final

LOAD_TESTS: Final = Path(__file__).resolve().parent
REPO_ROOT: Final = LOAD_TESTS.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import requests  # noqa: E402

from infrastructure.local import backend  # noqa: E402
from infrastructure.local.event_sources import (  # noqa: E402
    StreamOutcome,
    StreamPoller,
    StreamSettings,
)
from infrastructure.local.provision import (  # noqa: E402
    StackOutputs,
    cloudformation_client,
    provision,
)

BATCH_SIZES: Final = (10, 100, 1000)
#: Bounds for every wait below.
MAX_POLL_STEPS: Final = 100_000
DRAIN_TIMEOUT_SECONDS: Final = 600.0


# -- the stack ---------------------------------------------------------------------------


@contextmanager
def backend_process(kind: str) -> Iterator[str]:
    """The embedded backend in a child process on a free port; yields its URL."""
    import socket

    with socket.socket() as probe:
        probe.bind((backend.DEFAULT_HOST, 0))
        port = int(probe.getsockname()[1])
    arguments = ["--port", str(port), "--parent-pid", str(os.getpid())]
    if kind == "stock":
        arguments.append("--stock-moto")
    command = [sys.executable, "-m", "infrastructure.local.backend", *arguments]
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://{backend.DEFAULT_HOST}:{port}"
    try:
        backend.wait_until_ready(url, timeout_seconds=30, process=process)
        for name in backend.AWS_VARIABLES_TO_CLEAR:
            os.environ.pop(name, None)
        os.environ.update(backend.aws_environment(url))
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def fresh_stack(url: str) -> StackOutputs:
    name = f"measure-{uuid.uuid4().hex[:8]}"
    return provision(
        cloudformation_client(url),
        stack_name=name,
        parameters={"Stage": "local", "TableName": name},
    )


def install_container(outputs: StackOutputs) -> Any:
    """The app's container for ``outputs``, installed for the handlers; returns it."""
    from chalicelib.bootstrap import Container, use_container
    from chalicelib.settings import Settings

    container = Container(
        Settings(
            table_name=outputs.table_name,
            stream_arn=outputs.stream_arn,
            tier1_queue_name=outputs.tier1_queue_name,
            tier2_queue_name=outputs.tier2_queue_name,
        )
    )
    use_container(container)
    return container


class OperationCounter:
    """Counts a client's calls per operation (botocore ``before-call``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()

    def attach(self, client: Any) -> None:
        client.meta.events.register(
            "before-call.dynamodb", self._count, unique_id=f"measure-{id(self)}"
        )

    def _count(self, event_name: str, **_: Any) -> None:
        with self._lock:
            self.calls[event_name.rsplit(".", 1)[-1]] += 1


# -- 1. transactions per record -------------------------------------------------------------


@dataclass
class BatchRow:
    batch_size: int
    accounts: int
    records: int
    invocations: int
    transactions: int
    hint_writes: int
    seconds: float

    @property
    def per_record(self) -> float:
        return self.transactions / self.records if self.records else 0.0


def measure_batch_size(
    url: str, batch_size: int, *, accounts: int, creates: int, deletes: int
) -> BatchRow:
    """Creates, drained at ``batch_size``; then deletes, drained the same way."""
    import app as app_module

    container = install_container(fresh_stack(url))
    counter = OperationCounter()
    counter.attach(container.dynamodb)
    ids = [container.account_service.create(f"m{n}", creates + 1).id for n in range(accounts)]
    settings = replace(StreamSettings.from_mapping(), batch_size=batch_size, idle_poll_seconds=0)
    poller = StreamPoller(
        app_module.handle_stream_records, container.streams, container.settings.stream_arn,
        settings=settings,
    )  # fmt: skip
    created: dict[str, list[str]] = {account: [] for account in ids}
    row = BatchRow(batch_size, accounts, 0, 0, 0, 0, 0.0)
    for n in range(creates):
        account = ids[n % accounts]
        created[account].append(container.service_service.create(account, f"s{n}").id)
    _drain_into(poller, counter, row)
    for n in range(min(deletes, creates)):  # round-robin over the accounts too
        account = ids[n % accounts]
        container.service_service.delete(account, created[account][n // accounts])
    _drain_into(poller, counter, row)
    return row


def _drain_into(poller: StreamPoller, counter: OperationCounter, row: BatchRow) -> None:
    before = Counter(counter.calls)
    started = time.perf_counter()
    for _ in range(MAX_POLL_STEPS):
        result = poller.poll_once()
        if result.idle:
            break
        if result.invocation is not None:
            row.invocations += 1
            if result.outcome is not StreamOutcome.SUCCEEDED:
                raise RuntimeError(f"batch failed: {result.outcome} {result.invocation}")
            row.records += len(result.sequence_numbers)
    row.seconds += time.perf_counter() - started
    spent = counter.calls - before
    row.transactions += spent["TransactWriteItems"]
    row.hint_writes += spent["UpdateItem"]


# -- 2. lag ------------------------------------------------------------------------------------


@dataclass
class LagRow:
    rate: float
    seconds: float
    accounts: int
    created: int
    achieved_rate: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    #: Of the lag: until the batch holding the INSERT was handed to the handler.
    delivered_p50_ms: float
    delivered_p99_ms: float
    transactions_per_record: float


class CountedAt:
    """Wraps the stream handler: when each service's batch was delivered, and when the
    handler returned from it (wall clock, comparable across processes)."""

    def __init__(self, handler: Callable[[dict[str, Any], Any], Any]) -> None:
        self._handler = handler
        self._lock = threading.Lock()
        self.delivered: dict[str, float] = {}
        self.at: dict[str, float] = {}
        self.records = 0

    def __call__(self, event: dict[str, Any], context: Any) -> Any:
        delivered = time.time()
        response = self._handler(event, context)
        done = time.time()
        failed = bool((response or {}).get("batchItemFailures"))
        with self._lock:
            self.records += len(event["Records"])
            for record in event["Records"]:
                if failed:
                    break  # counted on a later delivery
                if record["eventName"] == "INSERT":
                    sid = record["dynamodb"]["Keys"]["SK"]["S"].removeprefix("SERVICE#")
                    self.delivered.setdefault(sid, delivered)
                    self.at.setdefault(sid, done)
        return response


def generate(api_url: str, accounts: list[str], rate: float, seconds: float) -> int:
    """Child process: open-loop creates at ``rate``; prints ``id acked-at`` per line."""
    local = threading.local()
    lock = threading.Lock()

    def create(n: int) -> None:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        response = local.session.post(
            f"{api_url}/services",
            json={"account_id": accounts[n % len(accounts)], "name": f"s{n}"},
            timeout=30,
        )
        acked = time.time()
        response.raise_for_status()
        with lock:
            print(response.json()["id"], acked, flush=True)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=16) as pool:
        for n in range(int(rate * seconds)):
            delay = started + n / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool.submit(create, n)
    print("elapsed", time.monotonic() - started, flush=True)
    return 0


def measure_lag(url: str, *, rate: float, seconds: float, accounts: int) -> LagRow:
    """Open-loop creates at ``rate``/s through HTTP from another process; lag until the
    stream handler counted each."""
    import app as app_module
    from infrastructure.local.wsgi import ApiServer

    container = install_container(fresh_stack(url))
    counter = OperationCounter()
    counter.attach(container.dynamodb)
    counted = CountedAt(app_module.handle_stream_records)
    poller = StreamPoller(counted, container.streams, container.settings.stream_arn)
    stop = threading.Event()
    thread = threading.Thread(target=poller.run, args=(stop,), daemon=True)
    with ApiServer(app_module.app, port=0, threads=8) as server:
        session = requests.Session()
        ids = [
            session.post(
                f"{server.url}/accounts",
                json={"username": f"lag{n}", "max_number_of_services": 1_000_000},
                timeout=30,
            ).json()["id"]
            for n in range(accounts)
        ]
        thread.start()
        command = [sys.executable, __file__, "--generate", server.url, ",".join(ids),
                   str(rate), str(seconds)]  # fmt: skip
        output = subprocess.run(
            command, capture_output=True, text=True, check=True, timeout=seconds * 10 + 60
        ).stdout.split("\n")
        acked = {sid: float(at) for sid, at in (line.split() for line in output if line.strip())}
        elapsed = acked.pop("elapsed")
        deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
        while time.monotonic() < deadline and not set(acked) <= set(counted.at):
            time.sleep(0.1)
        stop.set()
        thread.join(10)
    missing = set(acked) - set(counted.at)
    if missing:
        raise RuntimeError(f"{len(missing)} services never counted")
    lags = sorted((counted.at[sid] - at) * 1000 for sid, at in acked.items())
    waits = sorted((counted.delivered[sid] - at) * 1000 for sid, at in acked.items())
    return LagRow(
        rate=rate,
        seconds=seconds,
        accounts=accounts,
        created=len(acked),
        achieved_rate=len(acked) / elapsed,
        p50_ms=statistics.median(lags),
        p99_ms=_p99(lags),
        max_ms=lags[-1],
        delivered_p50_ms=statistics.median(waits),
        delivered_p99_ms=_p99(waits),
        transactions_per_record=counter.calls["TransactWriteItems"] / max(1, counted.records),
    )


def _p99(ordered: list[float]) -> float:
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


# -- output ------------------------------------------------------------------------------------


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [headers, *([_cell(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        print("| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if value < 10 else f"{value:.0f}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--generate"]:  # the load generator's own process
        api_url, accounts, rate, seconds = argv[1:5]
        return generate(api_url, accounts.split(","), float(rate), float(seconds))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("stock", "item-rollback"), default="stock")
    parser.add_argument("--accounts", type=int, default=10, help="accounts (batch sizes)")
    parser.add_argument("--creates", type=int, default=1000, help="creates (batch sizes)")
    parser.add_argument("--deletes", type=int, default=200, help="deletes (batch sizes)")
    parser.add_argument("--rate", type=float, default=20.0, help="creates/s (lag)")
    parser.add_argument("--seconds", type=float, default=30.0, help="duration (lag)")
    parser.add_argument("--lag-accounts", type=int, default=4, help="accounts (lag)")
    parser.add_argument("--skip", choices=("batches", "lag"), action="append", default=[])
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args(argv)
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "Task queue depth" lines

    results: dict[str, Any] = {"backend": args.backend}
    with backend_process(args.backend) as url:
        if "batches" not in args.skip:
            rows = [
                measure_batch_size(
                    url, size, accounts=args.accounts, creates=args.creates, deletes=args.deletes
                )
                for size in BATCH_SIZES
            ]
            print(
                f"\nTransactions per processed record ({args.backend} backend; "
                f"{args.creates} creates then {args.deletes} deletes over "
                f"{args.accounts} accounts)\n"
            )
            print_table(
                ["batch size", "records", "invocations", "transactions", "tx/record",
                 "hint writes", "seconds"],
                [[r.batch_size, r.records, r.invocations, r.transactions, r.per_record,
                  r.hint_writes, r.seconds] for r in rows],
            )  # fmt: skip
            results["batches"] = [asdict(r) | {"per_record": r.per_record} for r in rows]
        if "lag" not in args.skip:
            lag = measure_lag(url, rate=args.rate, seconds=args.seconds, accounts=args.lag_accounts)
            print(
                f"\nLag, create answered -> counted ({args.backend} backend; "
                f"{lag.rate:g} creates/s for {lag.seconds:g} s over {lag.accounts} accounts; "
                f"deployed stream mapping: batch 100, window 1 s)\n"
            )
            print_table(
                ["created", "achieved/s", "p50 ms", "p99 ms", "max ms",
                 "delivered p50 ms", "delivered p99 ms", "tx/record"],
                [[lag.created, lag.achieved_rate, lag.p50_ms, lag.p99_ms, lag.max_ms,
                  lag.delivered_p50_ms, lag.delivered_p99_ms, lag.transactions_per_record]],
            )  # fmt: skip
            results["lag"] = asdict(lag)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
