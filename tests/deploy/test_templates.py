"""Every CloudFormation template we ship passes cfn-lint, the packaged app included.

``chalice package --merge-template`` needs a region but no credentials and no stack:
the merge template imports the stream and the tier-1 queue from the data stack.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import ManualArgs, lint_file

from chalicelib.event_sources import stream_mapping_properties
from infrastructure.merge_template import merge_template, stream_event_path
from infrastructure.stages import DEPLOYED_STAGES, Stage
from tests.deploy.conftest import REPO_ROOT, copy_project, run_script, script_environment

#: Every region: the template must be valid wherever a stage is deployed.
LINT = ManualArgs(regions=["us-east-1", "eu-west-1", "ap-southeast-2"])


def _lint(path: Path) -> list[str]:
    return [str(match) for match in lint_file(path, LINT)]


def test_data_template_passes_cfn_lint() -> None:
    assert _lint(REPO_ROOT / "infrastructure" / "template.yaml") == []


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``package.sh`` output per stage (a project copy: no pip download, no stray files)."""
    project = copy_project(tmp_path_factory.mktemp("project"))
    out: dict[str, Path] = {}
    for stage in DEPLOYED_STAGES:
        target = project / "build" / stage
        result = run_script(
            project, "package.sh", stage, str(target), environment=script_environment(None)
        )
        assert result.returncode == 0, result.stderr
        out[stage] = target / "sam.json"
    return out


@pytest.mark.parametrize("stage", DEPLOYED_STAGES)
def test_packaged_app_passes_cfn_lint(packaged: dict[str, Path], stage: str) -> None:
    assert _lint(packaged[stage]) == []


@pytest.mark.parametrize("stage", DEPLOYED_STAGES)
def test_packaged_stream_mapping_has_every_setting(packaged: dict[str, Path], stage: str) -> None:
    """The overlay lands on Chalice's own event (a wrong path would add a second one)."""
    template: dict[str, Any] = json.loads(packaged[stage].read_text(encoding="utf-8"))
    function, event = stream_event_path()
    events = template["Resources"][function]["Properties"]["Events"]
    assert list(events) == [event]
    assert events[event]["Type"] == "DynamoDB"
    properties = events[event]["Properties"]
    assert properties.items() >= stream_mapping_properties().items()
    named = Stage.named(stage)
    assert properties["Stream"] == {"Fn::ImportValue": named.export_name("StreamArn")}
    assert properties["DestinationConfig"] == {
        "OnFailure": {"Destination": {"Fn::ImportValue": named.export_name("Tier1QueueArn")}}
    }


def test_merge_template_reads_the_one_place_that_defines_the_settings() -> None:
    overlay = merge_template(Stage.named("dev"))
    function, event = stream_event_path()
    properties = overlay["Resources"][function]["Properties"]["Events"][event]["Properties"]
    assert properties.items() >= stream_mapping_properties().items()
    assert properties["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
