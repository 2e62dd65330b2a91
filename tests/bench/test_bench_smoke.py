"""The bench machinery still works: a tiny run of ``load-tests/bench.py`` end to end.

A few seconds of the original project's scenario against all three strategies, the
capacity probe and the micro-benchmark: everything ``make bench`` does, at a size CI
can afford. Nothing here asserts a timing; the assertions are about what the bench
must always produce and what our strategy must always satisfy (answers inside the
contract, counters that converge, a table that agrees with what was tracked).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCH = REPO_ROOT / "load-tests" / "bench.py"


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("bench")
    # The bench points boto3 at its own backend; drop what the suite's conftest exported.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "COUNTER_"))}
    command = [
        sys.executable,
        str(BENCH),
        "--scenarios",
        "original",
        "--duration",
        "3",
        "--scale",
        "0.2",
        "--capacity-seconds",
        "0.5",
        "--drain-timeout",
        "30",
        "--out",
        str(out),
    ]
    completed = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=280, check=False
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    return out, json.loads((out / "results.json").read_text())


def test_the_bench_runs_every_strategy_and_writes_the_report(
    bench_run: tuple[Path, dict[str, Any]],
) -> None:
    # GIVEN a tiny bench run  WHEN it finishes
    out, results = bench_run
    # THEN each strategy ran the scenario, and the report, the plot and the raw numbers exist
    assert {r["strategy"] for r in results["runs"]} == {"ours", "original", "transactional"}
    report = (out / "report.md").read_text()
    for strategy in ("ours", "original", "transactional"):
        assert f"| original | {strategy} |" in report
    assert (out / "counts.png").stat().st_size > 0
    assert {c["operation"] for c in results["capacity"]} >= {"PutItem", "UpdateItem"}
    assert all(c["per_second"] > 0 for c in results["capacity"])
    assert "test_create_decision_accepts" in results["micro"]


def test_our_strategy_answers_inside_the_contract_and_its_counters_converge(
    bench_run: tuple[Path, dict[str, Any]],
) -> None:
    # GIVEN the run of our strategy
    _, results = bench_run
    ours = next(r for r in results["runs"] if r["strategy"] == "ours")
    # THEN k6 saw requests, none outside the contract and no server errors
    assert sum(ours["statuses"].values()) > 0
    assert ours["outside_contract"] == 0
    assert ours["errors_seen"] == 0
    # AND the eventual counter caught up, and the table agrees: BE never above the
    # live services, EC equal to them after the drain
    assert ours["drained"]
    check = ours["table_check"]
    assert check["be_above_live"] == 0
    assert check["ec_mismatch"] == 0
    assert check["eventual"] == check["live"]
    # AND the calls were counted: three per create on the API side
    assert ours["per_create"]["calls"] == pytest.approx(3.0, abs=0.5)
