"""The counters under random operations, races and faults: I1-I6 after every step.

See :mod:`tests.model.machine` for the model and what is checked when. By default a
few short examples run (part of the normal suite). ``COUNTER_SOAK=1`` runs examples
for ``COUNTER_SOAK_SECONDS`` (default 600) and writes the counts of steps and of
fault injections by kind to ``COUNTER_SOAK_REPORT`` (default ``artifacts/soak/model.json``);
``make soak`` does that.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from chalice.test import Client
from hypothesis import HealthCheck, Phase, reproduce_failure, settings
from hypothesis.stateful import run_state_machine_as_test

from tests.events.live import isolated_stack
from tests.model.machine import STATS, CounterMachine, World

SOAK = os.environ.get("COUNTER_SOAK") == "1"
SOAK_SECONDS = float(os.environ.get("COUNTER_SOAK_SECONDS", "600"))
REPORT = Path(os.environ.get("COUNTER_SOAK_REPORT", "artifacts/soak/model.json"))
SHRINK = os.environ.get("COUNTER_MODEL_SHRINK") == "1"
#: ``<hypothesis version>:<blob>`` from a failure report: run exactly that example.
REPRODUCE = os.environ.get("COUNTER_MODEL_REPRODUCE")
#: Normal suite: a few short examples; soak: longer ones, batch after batch.
EXAMPLES, STEPS = (8, 40) if SOAK else (6, 15)


def machine_settings() -> settings:
    return settings(
        max_examples=EXAMPLES,
        stateful_step_count=STEPS,
        deadline=None,
        # Every example talks to the backend: slow by nature, and failures are stateful.
        suppress_health_check=list(HealthCheck),
        # A failure is reported as found: every shrink attempt replays an example
        # against the backend, minutes in all. COUNTER_MODEL_SHRINK=1 shrinks it.
        phases=[Phase.explicit, Phase.reuse, Phase.generate, *([Phase.shrink] if SHRINK else [])],
        report_multiple_bugs=False,
        print_blob=True,
    )


@pytest.fixture(scope="module")
def http() -> Iterator[Client]:
    from app import app

    with Client(app) as client:
        yield client


@pytest.fixture
def new_world(backend_url: str, http: Client) -> Iterator[Callable[[], World]]:
    """Builds worlds on stacks of their own (small tables, quick transactions); drops
    them after the test."""
    built: list[World] = []

    def build() -> World:
        world = World.build(isolated_stack(backend_url, "model"), http)
        built.append(world)
        return world

    yield build
    for world in built:
        world.close()


@pytest.mark.timeout(SOAK_SECONDS + 900 if SOAK else 300)
def test_counters_keep_their_invariants_under_random_operations_races_and_faults(
    new_world: Callable[[], World],
) -> None:
    # GIVEN the app on its own stack, with fault injectors on the API and processor
    deadline = time.monotonic() + (SOAK_SECONDS if SOAK else 0)

    # WHEN random sequences of operations, races and faults run (batch after batch in a soak)
    # THEN every step keeps I1-I6 and the model (the machine asserts), and each example
    # converges at its end
    machine: type[CounterMachine] = CounterMachine
    if REPRODUCE:
        version, blob = REPRODUCE.split(":", 1)
        machine = reproduce_failure(version, blob.encode())(type("Replay", (CounterMachine,), {}))
    for _batch in range(100_000):
        # A fresh stack per batch: moto copies the whole table, stream included, on
        # every transaction, so a long stream would slow the soak down.
        previous = getattr(CounterMachine, "world", None)
        CounterMachine.world = new_world()
        if previous is not None:
            previous.close()
        run_state_machine_as_test(machine, settings=machine_settings())
        if time.monotonic() >= deadline:
            break

    report = STATS.report()
    print("\ncounter model:", json.dumps(report, indent=2))
    if SOAK:
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        REPORT.write_text(json.dumps(report, indent=2) + "\n")
    assert report["steps"] > 0
    assert report["i1_checks"] > 0
