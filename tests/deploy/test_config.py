"""The hand-written deployment settings agree with the code and with each other.

``.chalice/config.json``, ``infrastructure/template.yaml`` and the app each spell out
names and numbers that must match; these tests fail when one of them drifts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import decode_str

from chalicelib import event_sources
from infrastructure.stages import (
    API_HANDLER,
    APP_NAME,
    DEAD_LETTER_HANDLER,
    DEPLOYED_STAGES,
    HANDLERS,
    STREAM_HANDLER,
    Stage,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = json.loads((REPO_ROOT / ".chalice" / "config.json").read_text(encoding="utf-8"))
#: What CloudFormation generates and a hand-written config must never hold.
GENERATED = re.compile(r"arn:aws|/stream/\d{4}-|amazonaws\.com|\d{12}")


def _template() -> dict[str, Any]:
    text = (REPO_ROOT / "infrastructure" / "template.yaml").read_text(encoding="utf-8")
    template, matches = decode_str(text)
    assert template is not None, matches
    return dict(template)


@pytest.mark.parametrize("name", DEPLOYED_STAGES)
def test_stage_names_match_what_the_data_stack_creates(name: str) -> None:
    stage = Stage.named(name)
    environment = CONFIG["stages"][name]["environment_variables"]
    assert environment["COUNTER_TABLE_NAME"] == stage.table_name
    assert environment["COUNTER_TIER1_QUEUE_NAME"] == stage.tier1_queue_name
    assert environment["COUNTER_TIER2_QUEUE_NAME"] == stage.tier2_queue_name
    # The stream ARN is only known once the stack exists: deploy.sh exports it.
    assert "COUNTER_STREAM_ARN" not in environment


@pytest.mark.parametrize("name", DEPLOYED_STAGES)
def test_stage_config_is_hand_written_least_privilege(name: str) -> None:
    stage = CONFIG["stages"][name]
    assert stage["autogen_policy"] is False
    assert set(stage["lambda_functions"]) == set(HANDLERS)
    for handler, settings in stage["lambda_functions"].items():
        assert (REPO_ROOT / ".chalice" / settings["iam_policy_file"]).is_file(), handler
    assert not GENERATED.search(json.dumps(stage)), "generated values in config.json"


def test_every_lambda_function_of_the_app_has_settings() -> None:
    import app

    functions = {API_HANDLER} | {source.name for source in app.app.event_sources}
    assert functions == set(HANDLERS)
    assert CONFIG["app_name"] == APP_NAME


def test_stream_decorator_creates_the_mapping_as_event_sources_defines_it() -> None:
    """``chalice deploy`` sets these at creation; the starting position cannot change later."""
    import app

    (stream,) = [s for s in app.app.event_sources if s.name == STREAM_HANDLER]
    assert stream.starting_position == event_sources.STREAM_STARTING_POSITION
    assert stream.batch_size == event_sources.STREAM_BATCH_SIZE
    assert stream.maximum_batching_window_in_seconds == (
        event_sources.STREAM_BATCHING_WINDOW_SECONDS
    )
    (queue,) = [s for s in app.app.event_sources if s.name == DEAD_LETTER_HANDLER]
    assert queue.batch_size == event_sources.TIER1_BATCH_SIZE


def test_tier1_queue_matches_event_sources_and_outlasts_its_consumer() -> None:
    tier1 = _template()["Resources"]["DeadLetterTier1Queue"]["Properties"]
    assert tier1["VisibilityTimeout"] == event_sources.TIER1_VISIBILITY_TIMEOUT_SECONDS
    assert tier1["RedrivePolicy"]["maxReceiveCount"] == event_sources.TIER1_MAX_RECEIVE_COUNT
    for name in DEPLOYED_STAGES:
        timeout = CONFIG["stages"][name]["lambda_functions"][DEAD_LETTER_HANDLER]["lambda_timeout"]
        # Lambda requires visibility >= the function timeout and advises 6x.
        assert 6 * timeout <= event_sources.TIER1_VISIBILITY_TIMEOUT_SECONDS


def test_iterator_age_alarm_fires_before_records_expire() -> None:
    alarm = _template()["Resources"]["StreamIteratorAgeAlarm"]["Properties"]
    window = alarm["Period"] * alarm["EvaluationPeriods"]
    threshold_seconds = alarm["Threshold"] / 1000
    assert threshold_seconds + window < event_sources.STREAM_MAXIMUM_RECORD_AGE_SECONDS
