"""deploy.sh and teardown.sh, end to end, against the embedded backend.

moto implements what ``chalice deploy`` calls (IAM, Lambda, API Gateway, EventBridge,
event source mappings) without Docker; only its REST API import needs the shim in
:mod:`tests.deploy.moto_compat`. moto cannot *run* the functions (that needs Docker),
so whether the deployed app works is shown in ``test_data_stack.py`` instead, by the
same code against the same stack.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from chalicelib import event_sources
from infrastructure.local.provision import StackOutputs
from infrastructure.stages import (
    DEAD_LETTER_HANDLER,
    HANDLERS,
    HEALER,
    STREAM_HANDLER,
    Stage,
)
from infrastructure.stream_mapping import desired_settings, differences
from tests.deploy.conftest import (
    copy_project,
    deploy_data_stack,
    run_script,
    script_environment,
)
from tests.deploy.moto_compat import ShimmedBackend

pytestmark = [
    pytest.mark.stack,
    # The data stack is created through the shimmed server's thread (deploy.sh).
    pytest.mark.filterwarnings("ignore:Tried to parse AWS.+CloudWatch.+Alarm"),
]
REGION = "us-east-1"
DEV = Stage.named("dev")
PROD = Stage.named("prod")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_project(tmp_path_factory.mktemp("project"))


@pytest.fixture(scope="module")
def shimmed_url(backend_url: str) -> Iterator[str]:
    # backend_url first: the session backend owns moto's state; this one shares it.
    with ShimmedBackend() as backend:
        yield backend.url


def _client(service: str, url: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )


def _succeeds(result: Any) -> str:
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return str(result.stderr)


def _remove_dev_table(url: str) -> None:
    # moto keeps a deleted stream mapping's hook on its table and would try to run the
    # function (Docker) on the next write; a dev table without it is a new table.
    dynamodb = _client("dynamodb", url)
    with contextlib.suppress(dynamodb.exceptions.ResourceNotFoundException):
        dynamodb.delete_table(TableName=DEV.table_name)
    cloudformation = _client("cloudformation", url)
    cloudformation.delete_stack(StackName=DEV.data_stack_name)


def test_deploy_twice_then_teardown_dev(project: Path, shimmed_url: str) -> None:
    environment = script_environment(shimmed_url)
    try:
        # WHEN deploy.sh runs twice (the second run changes nothing and must succeed)
        _succeeds(run_script(project, "deploy.sh", "dev", environment=environment))
        log = _succeeds(run_script(project, "deploy.sh", "dev", environment=environment))
        # AWS answers "no updates"; moto applies the same template again.
        assert re.search(r"stack distributed-counter-dev-data is up to date|updating stack", log)
        # THEN every function, role, mapping and schedule is as configured
        assert_deployed(project, shimmed_url)
        # WHEN teardown.sh runs (a rerun skips what is gone: see the prod test below)
        log = _succeeds(run_script(project, "teardown.sh", "dev", environment=environment))
        assert "stream mapping of distributed-counter-dev-handle_stream_records disabled" in log
        # THEN nothing of the stage is left
        assert_torn_down(shimmed_url)
    finally:
        _remove_dev_table(shimmed_url)


def assert_deployed(project: Path, url: str) -> None:
    lambda_ = _client("lambda", url)
    iam = _client("iam", url)
    cloudformation = _client("cloudformation", url)
    stack = cloudformation.describe_stacks(StackName=DEV.data_stack_name)["Stacks"][0]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    config = json.loads((project / ".chalice" / "config.json").read_text(encoding="utf-8"))
    functions = config["stages"]["dev"]["lambda_functions"]

    for handler in HANDLERS:
        function = lambda_.get_function(FunctionName=DEV.function_name(handler))["Configuration"]
        # The stage's settings, and no stream ARN baked into the function.
        assert function["Environment"]["Variables"] == (
            config["environment_variables"] | config["stages"]["dev"]["environment_variables"]
        )
        assert function["Timeout"] == functions[handler]["lambda_timeout"]
        # Its own role, carrying exactly the hand-written policy.
        role = function["Role"].rsplit("/", 1)[-1]
        (policy_name,) = iam.list_role_policies(RoleName=role)["PolicyNames"]
        document = iam.get_role_policy(RoleName=role, PolicyName=policy_name)["PolicyDocument"]
        if isinstance(document, str):
            document = json.loads(document)
        policy_file = project / ".chalice" / functions[handler]["iam_policy_file"]
        assert document == json.loads(policy_file.read_text(encoding="utf-8"))

    # By source: moto filters FunctionName literally, and Chalice subscribes by ARN.
    (stream,) = lambda_.list_event_source_mappings(EventSourceArn=outputs["StreamArn"])[
        "EventSourceMappings"
    ]
    assert stream["FunctionArn"].endswith(":" + DEV.function_name(STREAM_HANDLER))
    assert stream["StartingPosition"] == event_sources.STREAM_STARTING_POSITION
    assert differences(stream, desired_settings(outputs["Tier1QueueArn"])) == {}

    (queue,) = lambda_.list_event_source_mappings(EventSourceArn=outputs["Tier1QueueArn"])[
        "EventSourceMappings"
    ]
    assert queue["FunctionArn"].endswith(":" + DEV.function_name(DEAD_LETTER_HANDLER))
    assert queue["BatchSize"] == event_sources.TIER1_BATCH_SIZE

    rules = _client("events", url).list_rules(NamePrefix=DEV.function_name(HEALER))["Rules"]
    assert [rule["ScheduleExpression"] for rule in rules] == ["rate(5 minutes)"]
    apis = _client("apigateway", url).get_rest_apis()["items"]
    assert "distributed-counter" in [api["name"] for api in apis]


def assert_torn_down(url: str) -> None:
    lambda_ = _client("lambda", url)
    names = {f["FunctionName"] for f in lambda_.list_functions()["Functions"]}
    assert not names & {DEV.function_name(handler) for handler in HANDLERS}
    tables = _client("dynamodb", url).list_tables()["TableNames"]
    assert DEV.table_name not in tables
    stacks = _client("cloudformation", url).list_stacks()["StackSummaries"]
    live = [s for s in stacks if s["StackName"] == DEV.data_stack_name]
    assert all(s["StackStatus"] == "DELETE_COMPLETE" for s in live)


def test_teardown_keeps_prod_data(project: Path, shimmed_url: str, backend_url: str) -> None:
    # GIVEN prod's data stack and no app: every teardown step finds nothing to do,
    # as on a rerun after a teardown that stopped half way
    outputs: StackOutputs = deploy_data_stack(backend_url, PROD)
    environment = script_environment(shimmed_url)
    # WHEN prod is torn down
    log = _succeeds(run_script(project, "teardown.sh", "prod", environment=environment))
    assert "prod keeps its data" in log
    # THEN its table and stack are still there, and the stack refuses a casual delete
    cloudformation = _client("cloudformation", shimmed_url)
    (stack,) = cloudformation.describe_stacks(StackName=PROD.data_stack_name)["Stacks"]
    assert stack["StackStatus"] in {"CREATE_COMPLETE", "UPDATE_COMPLETE"}
    assert stack.get("EnableTerminationProtection") is True
    table = _client("dynamodb", shimmed_url).describe_table(TableName=outputs.table_name)
    assert table["Table"]["DeletionProtectionEnabled"] is True


def test_deploy_refuses_an_unknown_stage(project: Path) -> None:
    result = run_script(project, "deploy.sh", "local", environment=script_environment(None))
    assert result.returncode == 2
    assert "usage" in result.stderr
