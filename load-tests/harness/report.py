"""The bench report: Markdown tables and one PNG of the counters over time."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.capacity import Capacity
from harness.results import RunResult


def _f(value: float, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


def _ratio(ours: float, other: float, digits: int = 2) -> str:
    if math.isnan(ours) or math.isnan(other):
        return "n/a"
    if other == 0:
        return "n/a" if ours == 0 else "∞"
    return f"{ours / other:.{digits}f}"


def _crossed(run: RunResult) -> str:
    """The thresholds k6 saw crossed, shortened: ``create p(95)<250``."""
    names = [
        re.sub(r"http_req_duration\{name:(\w+)\}:", r"\1", name).replace(": ", " ")
        for name in run.k6.crossed()
    ]
    return ", ".join(names) or "none"


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _header(*names: str, align: str) -> list[str]:
    """A table header; ``align`` has one letter per column: l(eft) or r(ight)."""
    return [_row(*names), _row(*("---:" if a == "r" else "---" for a in align))]


def _ops(by_operation: Mapping[str, float]) -> str:
    short = {
        "GetItem": "Get",
        "PutItem": "Put",
        "UpdateItem": "Upd",
        "DeleteItem": "Del",
        "TransactWriteItems": "Txn",
        "Query": "Qry",
        "BatchGetItem": "BGet",
    }
    return " ".join(
        f"{v:.2g}{short.get(k, k)}" for k, v in sorted(by_operation.items()) if v >= 0.005
    )


def markdown(
    runs: Sequence[RunResult],
    capacity: Sequence[Capacity],
    micro: Mapping[str, Any],
    machine: Mapping[str, Any],
    settings: Mapping[str, Any],
    plot_name: str,
) -> str:
    lines: list[str] = ["# Bench report", ""]
    lines += [f"- {k}: {v}" for k, v in machine.items()]
    lines += [f"- {k}: {v}" for k, v in settings.items()]
    lines += ["", "## Throughput, latency, errors and lag", ""]
    lines += _header(
        "scenario",
        "strategy",
        "req/s",
        "as expected /s",
        "creates/s (200)",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "responses by status",
        "errors seen by callers",
        "outside contract",
        "thresholds crossed",
        "EC lag p50 / p99 s",
        "drained",
        align="llrrrrrrlrrlll",
    )
    for r in runs:
        lines.append(
            _row(
                r.scenario,
                r.strategy,
                _f(r.requests_per_second),
                _f(r.good_per_second),
                _f(r.creates_per_second),
                _f(r.latency_ms(50)),
                _f(r.latency_ms(95)),
                _f(r.latency_ms(99)),
                r.ok_statuses(),
                r.errors_seen,
                r.outside_contract,
                _crossed(r),
                f"{_f(r.lag_s(50), 2)} / {_f(r.lag_s(99), 2)}",
                f"{'yes' if r.drained else 'NO'} ({_f(r.drain_seconds)} s)",
            )
        )
    lines += [
        "",
        "## Backend calls and DynamoDB units",
        "",
        "Per create / per delete: the calls the API route made, per request (409s included). "
        "Processor: the stream processor's table work per change it counted. WCU: 1 per 1 KB "
        "written, 2 per transactional item; RCU: 1 per 4 KB consistent, 0.5 eventual.",
        "",
    ]
    lines += _header(
        "scenario",
        "strategy",
        "calls/create",
        "WCU / RCU per create",
        "calls/delete",
        "WCU / RCU per delete",
        "processor calls / WCU / RCU per change",
        "stream records per txn",
        "conflicts injected",
        "table check",
        align="lllrlrlrrl",
    )
    for r in runs:
        c, d, p, check = r.per_create(), r.per_delete(), r.per_counted_change(), r.check
        ec = "= BE" if r.single_counter else str(check.eventual)
        verdict = (
            f"live {check.live}, BE {check.best_effort}, EC {ec}; "
            f"BE>live in {check.be_above_live}, EC≠live in {check.ec_mismatch}, "
            f"over limit by {max(0, check.max_over_limit)}; largest item "
            f"{check.largest_item_bytes} B"
        )
        lines.append(
            _row(
                r.scenario,
                r.strategy,
                f"{_f(c.calls, 2)} ({_ops(c.by_operation)})",
                f"{_f(c.wcu, 2)} / {_f(c.rcu, 2)}",
                f"{_f(d.calls, 2)} ({_ops(d.by_operation)})",
                f"{_f(d.wcu, 2)} / {_f(d.rcu, 2)}",
                f"{_f(p.calls, 2)} / {_f(p.wcu, 2)} / {_f(p.rcu, 2)}",
                _f(r.records_per_transaction, 1),
                r.conflicts,
                verdict,
            )
        )
    lines += [
        "",
        "## Time the serialised backend spent per request",
        "",
        "Measured inside the backend's request lock (harness/backend.py). Utilisation: share of "
        "the run's wall time the backend was serving anyone; at 100 % it is the bottleneck. "
        "Ceiling: 1000 / (ms per create, the processor's share included).",
        "",
    ]
    lines += _header(
        "scenario",
        "strategy",
        "backend utilisation",
        "ms per create",
        "ms per delete",
        "processor ms per change",
        "ms per create, all in",
        "ceiling creates/s",
        "cores: API / backend / k6",
        align="llrrrrrrl",
    )
    for r in runs:
        all_in = r.backend_ms_per_create_all_in()
        cores = " / ".join(_f(r.cpu.get(k, math.nan), 2) for k in ("api process", "backend", "k6"))
        lines.append(
            _row(
                r.scenario,
                r.strategy,
                f"{_f(100 * r.backend_utilisation, 0)} %",
                _f(r.backend_ms("create"), 2),
                _f(r.backend_ms("delete"), 2),
                _f(r.backend_ms("processor"), 2),
                _f(all_in, 2),
                _f(1000 / all_in if all_in else math.nan, 0),
                cores,
            )
        )
    lines += [
        "",
        "## Ours / alternative",
        "",
        "Throughput: responses/s answered as the scenario expects (200; 409 in hot_account), "
        "at the same offered load (1.00 = both kept up). "
        "Ceiling: the creates/s the backend time per create allows. Errors: responses a caller "
        "saw as failures (5xx, none). Units: WCU + RCU per create, API and stream processor "
        "together.",
        "",
    ]
    lines += _header(
        "scenario",
        "vs",
        "throughput",
        "ceiling",
        "errors seen by callers (ours vs theirs)",
        "units per create",
        align="llrrlr",
    )
    by_key = {(r.scenario, r.strategy): r for r in runs}
    for scenario in dict.fromkeys(r.scenario for r in runs):
        ours = by_key.get((scenario, "ours"))
        for other_name in ("original", "transactional"):
            other = by_key.get((scenario, other_name))
            if ours is None or other is None:
                continue
            lines.append(
                _row(
                    scenario,
                    other_name,
                    _ratio(ours.good_per_second, other.good_per_second),
                    _ratio(
                        other.backend_ms_per_create_all_in(), ours.backend_ms_per_create_all_in()
                    ),
                    f"{_ratio(ours.errors_seen, other.errors_seen)} "
                    f"({ours.errors_seen} vs {other.errors_seen})",
                    _ratio(_units_per_create(ours), _units_per_create(other)),
                )
            )
    lines += ["", "## Backend capacity (same run, same backend)", ""]
    lines += _header("operation", "calls/s", "p50 ms", align="lrr")
    lines += [_row(c.operation, _f(c.per_second), _f(c.p50_ms, 2)) for c in capacity]
    lines += [
        "",
        "Create rate against the bound that capacity implies for each run's calls per "
        "create (create-only scenarios charge the stream processor's calls to the creates too):",
        "",
    ]
    lines += _header(
        "scenario", "strategy", "create requests/s", "bound creates/s", "fraction", align="llrrr"
    )
    for r in runs:
        route = r.k6.routes.get("create")
        rate = (route.count if route else 0) / r.k6.seconds
        bound = r.create_bound(list(capacity))
        fraction = rate / bound if bound else math.nan
        lines.append(_row(r.scenario, r.strategy, _f(rate), _f(bound), _f(fraction, 2)))
    if micro:
        lines += ["", "## Counter decision micro-benchmark (in process, pytest-benchmark)", ""]
        lines += _header("benchmark", "median µs", "mean µs", "rounds", align="lrrr")
        for name, stats in micro.items():
            lines.append(
                _row(
                    name, _f(stats["median"] * 1e6, 2), _f(stats["mean"] * 1e6, 2), stats["rounds"]
                )
            )
    lines += ["", f"![counts over time]({plot_name})", ""]
    return "\n".join(lines)


def _units_per_create(run: RunResult) -> float:
    c, p = run.per_create(), run.per_counted_change()
    processor = (p.wcu + p.rcu) if run.lags else 0.0
    return c.wcu + c.rcu + processor


def plot(runs: Sequence[RunResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(dict.fromkeys(r.scenario for r in runs))
    strategies = list(dict.fromkeys(r.strategy for r in runs))
    figure, axes = plt.subplots(
        len(scenarios),
        len(strategies),
        squeeze=False,
        figsize=(4.2 * len(strategies), 2.8 * len(scenarios)),
        sharex="row",
    )
    for r in runs:
        axis = axes[scenarios.index(r.scenario)][strategies.index(r.strategy)]
        t = [s.at for s in r.samples]
        axis.plot(
            t,
            [s.true for s in r.samples],
            label="true (live services)",
            color="black",
            linewidth=1.2,
        )
        axis.plot(
            t,
            [s.best_effort for s in r.samples],
            label="best-effort (BE)",
            color="tab:orange",
            linewidth=1,
            linestyle="--",
        )
        if not r.single_counter:
            axis.plot(
                t,
                [s.eventual for s in r.samples],
                label="eventual (EC)",
                color="tab:blue",
                linewidth=1,
            )
        axis.axvline(r.load_ended_at, color="grey", linewidth=0.6, linestyle=":")
        axis.set_title(f"{r.scenario} — {r.strategy}", fontsize=9)
        axis.tick_params(labelsize=7)
        axis.set_xlabel("s since start (dotted: load ends)", fontsize=7)
    axes[0][0].legend(fontsize=7, loc="upper left")
    figure.suptitle("Counters over time, summed over the scenario's accounts", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
