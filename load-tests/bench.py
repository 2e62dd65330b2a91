"""Bench: start the local stack, run the k6 scenarios against every strategy, report.

``make bench`` (or ``python load-tests/bench.py --help``). One run, one backend:

1. start the embedded backend (moto, requests serialised) on a free 127.0.0.1 port;
2. measure its raw capacity (GetItem, PutItem, UpdateItem, TransactWriteItems /s);
3. for each scenario, for each strategy (ours, original, transactional): provision a
   fresh stack from the template, serve the strategy's app on a free port, start its
   stream processor, run the k6 scenario, wait (bounded) until the eventual counter
   has applied every change, check the table against the tracked counts, drop it;
4. run the counter decision micro-benchmark (pytest-benchmark);
5. write ``report.md``, ``counts.png`` and the raw ``results.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

LOAD_TESTS: Final = Path(__file__).resolve().parent
REPO_ROOT: Final = LOAD_TESTS.parent
for _path in (str(REPO_ROOT), str(LOAD_TESTS)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from harness import capacity as capacity_module  # noqa: E402
from harness import k6, report, stack  # noqa: E402
from harness.results import RunResult, TableCheck  # noqa: E402
from harness.units import item_size  # noqa: E402

logger = logging.getLogger("bench")

API_THREADS: Final = 8


@dataclass(frozen=True)
class Scenario:
    script: str
    env: dict[str, int] = field(default_factory=dict)
    #: The env keys that are rates (scaled by --scale).
    rates: tuple[str, ...] = ("RATE",)

    def environment(self, scale: float) -> dict[str, int]:
        return {
            k: (max(1, round(v * scale)) if k in self.rates else v) for k, v in self.env.items()
        }


#: Rates for an idle 2-core machine (REFERENCE_PUT_PER_SECOND); ``--scale auto`` scales
#: them to the capacity measured in the run, so a busy machine runs the same shapes
#: below saturation and latency reflects the strategies, not an overloaded host.
SCENARIOS: Final = {
    "original": Scenario("original.js", {"RATE": 25}),
    "many_accounts": Scenario("many_accounts.js", {"RATE": 60, "ACCOUNTS": 50}),
    # A closed loop of concurrent clients, not a rate: the same pressure at any speed.
    "hot_account": Scenario("hot_account.js", {"VUS": 16, "LIMIT": 300}, rates=()),
    "mixed": Scenario(
        "mixed.js",
        {"WRITE_RATE": 15, "USAGE_RATE": 25, "LIST_RATE": 10, "ACCOUNTS": 10},
        rates=("WRITE_RATE", "USAGE_RATE", "LIST_RATE"),
    ),
}
STRATEGIES: Final = ("ours", "original", "transactional")
#: PutItem/s of the embedded backend on an idle 2-core machine (8 client threads): the
#: capacity the scenario rates were chosen for.
REFERENCE_PUT_PER_SECOND: Final = 450.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help="comma-separated, from: %(default)s"
    )
    parser.add_argument(
        "--strategies", default=",".join(STRATEGIES), help="comma-separated, from: %(default)s"
    )
    parser.add_argument("--duration", type=int, default=20, help="seconds of load per scenario run")
    parser.add_argument(
        "--scale",
        default="auto",
        help="multiply every scenario's rates; 'auto': measured PutItem/s / "
        f"{REFERENCE_PUT_PER_SECOND} (the idle machine's), at most 1",
    )
    parser.add_argument(
        "--conflict-window-ms",
        type=float,
        default=25.0,
        help="how long a transaction holds its items (alternatives/contention.py)",
    )
    parser.add_argument(
        "--capacity-seconds", type=float, default=4.0, help="seconds per capacity probe"
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=60.0, help="max seconds to wait for the EC"
    )
    parser.add_argument("--no-micro", action="store_true", help="skip the micro-benchmark")
    parser.add_argument(
        "--stock-moto",
        action="store_true",
        help="run moto unpatched: table-copying transactions, slow GetRecords "
        "(see infrastructure/local/moto_patches.py)",
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "artifacts" / "bench")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min)"


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "os": platform.platform(),
        "load average at start": load_average(),
    }


# -- one run ---------------------------------------------------------------------------


def table_check(url: str, table: str, *, single_counter: bool) -> TableCheck:
    """Scan the table: per account BE, EC and live services; the invariants they must keep."""
    import boto3

    client = boto3.client("dynamodb", endpoint_url=url)
    per_account: dict[str, dict[str, int]] = {}
    check = TableCheck()
    start: dict[str, Any] | None = None
    for _ in range(10_000):  # pages; bounded
        page = client.scan(
            TableName=table, ConsistentRead=True, **({"ExclusiveStartKey": start} if start else {})
        )
        for item in page.get("Items", []):
            check.largest_item_bytes = max(check.largest_item_bytes, item_size(item))
            account = item["PK"]["S"].removeprefix("ACCOUNT#")
            entry = per_account.setdefault(account, {"live": 0, "be": 0, "ec": 0, "limit": 0})
            sk = item["SK"]["S"]
            if sk == "METADATA":
                entry["be"] = int(item.get("number_of_services", {"N": "0"})["N"])
                entry["limit"] = int(item["max_number_of_services"]["N"])
            elif sk.startswith("COUNT#"):
                entry["ec"] = int(item["count_value"]["N"])
            elif sk.startswith("SERVICE#") and not item.get("deleted", {}).get("BOOL", False):
                entry["live"] += 1
        start = page.get("LastEvaluatedKey")
        if not start:
            break
    for entry in per_account.values():
        check.accounts += 1
        check.live += entry["live"]
        check.best_effort += entry["be"]
        check.eventual += entry["ec"]
        check.be_above_live += entry["be"] > entry["live"]
        counted = entry["be"] if single_counter else entry["ec"]
        check.ec_mismatch += counted != entry["live"]
        check.max_over_limit = max(check.max_over_limit, entry["live"] - entry["limit"])
    return check


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process (this one by default), from /proc."""
    try:
        fields = Path(f"/proc/{pid or 'self'}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_one(
    name: str,
    scenario: Scenario,
    strategy_name: str,
    backend: stack.BenchBackend,
    args: argparse.Namespace,
) -> RunResult:
    from alternatives.contention import OptimisticConcurrency
    from harness import strategies

    from chalicelib.bootstrap import use_container
    from infrastructure.local.wsgi import ApiServer

    label = f"{name}-{strategy_name}"
    out_dir = args.out / label
    url, backend_pid = backend.url, backend.pid
    outputs = stack.provision_table(url, f"bench-{name.replace('_', '-')}-{strategy_name}")
    contention = OptimisticConcurrency(transaction_window=args.conflict_window_ms / 1000)
    strategy = strategies.build(strategy_name, outputs, contention)
    server = ApiServer(strategy.app, port=0, threads=API_THREADS)
    try:
        base_url = server.start()
        strategy.start_pollers()
        strategy.accounting.start_sampling()
        backend.busy()  # start counting the backend's time from here
        env = scenario.environment(args.scale)
        logger.info(
            "%s: k6 %s at %s for %d s (%s)", label, scenario.script, base_url, args.duration, env
        )
        cpu_before = (
            cpu_seconds(),
            cpu_seconds(backend_pid),
            children_cpu_seconds(),
            time.monotonic(),
        )
        result = k6.run(
            LOAD_TESTS / "scenarios" / scenario.script,
            base_url,
            out_dir,
            env=env,
            duration_seconds=args.duration,
        )
        load_ended_at = time.monotonic() - strategy.accounting.started
        wall = time.monotonic() - cpu_before[3]
        cpu = {
            "api process": (cpu_seconds() - cpu_before[0]) / wall,
            "backend": (cpu_seconds(backend_pid) - cpu_before[1]) / wall,
            "k6": (children_cpu_seconds() - cpu_before[2]) / wall,
        }
        began = time.monotonic()
        deadline = began + args.drain_timeout
        while not strategy.accounting.drained() and time.monotonic() < deadline:
            time.sleep(0.1)
        drained = strategy.accounting.drained()
        drain_seconds = time.monotonic() - began
        time.sleep(0.5)  # a last sample after the drain
        strategy.accounting.stop_sampling()
        busy = backend.busy()
        busy_wall = time.monotonic() - cpu_before[3]
    finally:
        server.stop()
        strategy.stop_pollers()
        use_container(None)
    accounting = strategy.accounting
    check = table_check(url, outputs.table_name, single_counter=accounting.single_counter)
    if check.live != sum(accounting.live.values()):
        logger.warning(
            "%s: table has %d live services, the hooks tracked %d",
            label,
            check.live,
            sum(accounting.live.values()),
        )
    stack.drop_table(url, outputs)
    run = RunResult(
        scenario=name,
        strategy=strategy_name,
        k6=result,
        samples=list(accounting.samples),
        lags=list(accounting.lags),
        stats=dict(accounting.stats),
        stream_records=accounting.stream_records,
        stream_invocations=accounting.stream_invocations,
        drain_seconds=drain_seconds,
        drained=drained,
        check=check,
        conflicts=len(strategy.contention.log),
        single_counter=accounting.single_counter,
        load_ended_at=load_ended_at,
        cpu=cpu,
        busy=busy,
        busy_wall_seconds=busy_wall,
    )
    logger.info(
        "%s: %.1f req/s, p99 %.1f ms, statuses %s, errors %d, drained %s in %.1f s, cores %s, "
        "backend busy %.0f%%, backend ms per create %.1f",
        label,
        run.requests_per_second,
        run.latency_ms(99),
        run.ok_statuses(),
        run.errors_seen,
        drained,
        drain_seconds,
        {k: round(v, 2) for k, v in cpu.items()},
        100 * run.backend_utilisation,
        run.backend_ms("create"),
    )
    return run


# -- micro-benchmark ---------------------------------------------------------------------


def micro_benchmark(out: Path) -> dict[str, Any]:
    target = out / "micro-benchmark.json"
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(LOAD_TESTS / "test_counter_decision.py"),
        "-q",
        "-p",
        "no:cacheprovider",
        f"--benchmark-json={target}",
        "--benchmark-max-time=1",
        "--rootdir",
        str(REPO_ROOT),
    ]
    completed = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    if completed.returncode != 0 or not target.exists():
        logger.warning(
            "micro-benchmark failed:\n%s", completed.stdout[-2000:] + completed.stderr[-2000:]
        )
        return {}
    data = json.loads(target.read_text())
    return {
        b["name"]: {k: b["stats"][k] for k in ("median", "mean", "rounds")}
        for b in data["benchmarks"]
    }


# -- main --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    for noisy in ("botocore", "urllib3", "waitress", "infrastructure", "chalicelib", "app"):
        logging.getLogger(noisy).setLevel(logging.WARNING if not args.verbose else logging.INFO)
    # Requests waiting for a free API thread: visible in the latencies already.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    scenarios = [s for s in args.scenarios.split(",") if s]
    chosen = [s for s in args.strategies.split(",") if s]
    unknown = [s for s in scenarios if s not in SCENARIOS] + [
        s for s in chosen if s not in STRATEGIES
    ]
    if unknown:
        raise SystemExit(f"unknown scenario or strategy: {', '.join(unknown)}")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    info = machine()
    backend = stack.BenchBackend(stock_moto=args.stock_moto, log_path=args.out / "backend.log")
    url = backend.start()
    stack.point_boto3_at(url)
    logger.info(
        "backend (pid %s) on %s%s", backend.pid, url, " (stock moto)" if args.stock_moto else ""
    )
    runs: list[RunResult] = []
    try:
        outputs = stack.provision_table(url, "bench-capacity")
        capacity = capacity_module.measure(outputs, args.capacity_seconds)
        stack.drop_table(url, outputs)
        for c in capacity:
            logger.info("capacity %s: %.0f/s (p50 %.2f ms)", c.operation, c.per_second, c.p50_ms)
        if args.scale == "auto":
            put = next(c.per_second for c in capacity if c.operation == "PutItem")
            args.scale = min(1.0, put / REFERENCE_PUT_PER_SECOND)
            logger.info(
                "rates scaled by %.2f (PutItem %.0f/s of %.0f/s)",
                args.scale,
                put,
                REFERENCE_PUT_PER_SECOND,
            )
        args.scale = float(args.scale)
        for name in scenarios:
            for strategy in chosen:
                runs.append(run_one(name, SCENARIOS[name], strategy, backend, args))
    finally:
        backend.stop()
    micro = {} if args.no_micro else micro_benchmark(args.out)
    info["load average at end"] = load_average()
    info["bench wall time"] = f"{time.monotonic() - started:.0f} s"
    settings = {
        "duration per run": f"{args.duration} s",
        "rate scale": f"{args.scale:.2f} (rates below are after scaling)",
        "conflict window": f"{args.conflict_window_ms:g} ms per transaction, 5 ms per single write",
        "rates (per second) and sizes": "; ".join(
            f"{n}: "
            + ", ".join(f"{k}={v}" for k, v in SCENARIOS[n].environment(args.scale).items())
            for n in scenarios
        ),
        "API": f"waitress, {API_THREADS} threads, one process with the stream processor",
        "backend": "moto 5.2.5, requests serialised"
        + (
            ""
            if args.stock_moto
            else ", item-level transaction rollback (infrastructure/local/moto_patches.py)"
        ),
    }
    plot_path = args.out / "counts.png"
    report.plot(runs, plot_path)
    text = report.markdown(runs, capacity, micro, info, settings, plot_path.name)
    (args.out / "report.md").write_text(text, encoding="utf-8")
    (args.out / "results.json").write_text(
        json.dumps(_raw(runs, capacity, micro, info), indent=1, default=str)
    )
    print(text)
    logger.info("report: %s (%.0f s)", args.out / "report.md", time.monotonic() - started)
    return 0


def _raw(
    runs: list[RunResult], capacity: list[Any], micro: dict[str, Any], info: dict[str, Any]
) -> dict[str, Any]:
    def run_dict(r: RunResult) -> dict[str, Any]:
        return {
            "scenario": r.scenario,
            "strategy": r.strategy,
            "requests_per_second": r.requests_per_second,
            "good_per_second": r.good_per_second,
            "creates_per_second": r.creates_per_second,
            "p50_ms": r.latency_ms(50),
            "p95_ms": r.latency_ms(95),
            "p99_ms": r.latency_ms(99),
            "statuses": dict(r.k6.statuses()),
            "errors_seen": r.errors_seen,
            "outside_contract": r.outside_contract,
            "unexpected": r.unexpected,
            "thresholds_crossed": r.k6.crossed(),
            "ec_lag_p50_s": r.lag_s(50),
            "ec_lag_p99_s": r.lag_s(99),
            "per_create": asdict(r.per_create()),
            "per_delete": asdict(r.per_delete()),
            "processor_per_change": asdict(r.per_counted_change()),
            "records_per_transaction": r.records_per_transaction,
            "conflicts": r.conflicts,
            "cpu_cores": r.cpu,
            "backend_busy": r.busy,
            "backend_utilisation": r.backend_utilisation,
            "backend_ms_per_create": r.backend_ms("create"),
            "backend_ms_per_delete": r.backend_ms("delete"),
            "backend_ms_per_change": r.backend_ms("processor"),
            "drained": r.drained,
            "drain_seconds": r.drain_seconds,
            "table_check": asdict(r.check),
            "backend_calls": r.backend_calls(),
            "polling_calls": r.polling_calls(),
            "create_bound": r.create_bound(capacity),
            "calls": {
                f"{role} {op}": {
                    "calls": e.calls,
                    "attempts": e.attempts,
                    "errors": dict(e.errors),
                    "wcu": e.wcu,
                    "rcu": e.rcu,
                    "mean_ms": 1000 * e.seconds / e.calls if e.calls else None,
                }
                for (role, op), e in sorted(r.stats.items())
            },
        }

    clean = json.loads(
        json.dumps([run_dict(r) for r in runs], default=lambda v: None),
        parse_constant=lambda c: None,
    )
    return {
        "machine": info,
        "capacity": [asdict(c) for c in capacity],
        "micro": micro,
        "runs": clean,
    }


if __name__ == "__main__":
    sys.exit(main())
