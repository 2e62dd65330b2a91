"""The data stack, deployed through CloudFormation like on AWS, and the app on top of it.

GIVEN ``infrastructure/data_stack.py deploy`` (deploy.sh's first step) on the embedded
backend, THEN the resources are as the design needs them, the app works against them
end to end (API, stream processor, dead-letter redrive), a redeploy changes nothing,
and teardown removes dev but refuses to remove prod's data.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import boto3
import pytest
from chalice.test import Client

from chalicelib import event_sources
from chalicelib.bootstrap import Container, use_container
from chalicelib.settings import Settings
from infrastructure import data_stack
from infrastructure.local.event_sources import StreamPoller, StreamSettings
from infrastructure.local.provision import StackOutputs, cloudformation_client
from infrastructure.stages import Stage
from tests.deploy.conftest import deploy_data_stack, moto_skips_alarms

pytestmark = pytest.mark.stack
REGION = "us-east-1"
MAX_POLLS = 50


def _client(service: str, url: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )


def test_table_has_the_keys_stream_and_indexes_the_code_uses(
    dev_stack: StackOutputs, backend_url: str
) -> None:
    table = _client("dynamodb", backend_url).describe_table(TableName=dev_stack.table_name)["Table"]
    assert {k["AttributeName"]: k["KeyType"] for k in table["KeySchema"]} == {
        "PK": "HASH",
        "SK": "RANGE",
    }
    assert table["StreamSpecification"]["StreamViewType"] == "NEW_AND_OLD_IMAGES"
    assert table["LatestStreamArn"] == dev_stack.stream_arn
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert table["DeletionProtectionEnabled"] is False  # dev; prod: see below
    assert {i["IndexName"] for i in table["LocalSecondaryIndexes"]} == {"PendingIndex"}
    assert {i["IndexName"] for i in table["GlobalSecondaryIndexes"]} == {
        "AccountsIndex",
        "HealIndex",
    }


def test_tier1_redrives_to_tier2_after_the_configured_receives(
    dev_stack: StackOutputs, backend_url: str
) -> None:
    sqs = _client("sqs", backend_url)
    attributes = sqs.get_queue_attributes(
        QueueUrl=dev_stack.tier1_queue_url, AttributeNames=["All"]
    )["Attributes"]
    assert int(attributes["VisibilityTimeout"]) == event_sources.TIER1_VISIBILITY_TIMEOUT_SECONDS
    redrive = json.loads(attributes["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == dev_stack.tier2_queue_arn
    assert int(redrive["maxReceiveCount"]) == event_sources.TIER1_MAX_RECEIVE_COUNT
    # GIVEN a tier-1 message whose replay keeps failing (received, never deleted)
    sqs.send_message(QueueUrl=dev_stack.tier1_queue_url, MessageBody='{"poison": true}')
    for _ in range(event_sources.TIER1_MAX_RECEIVE_COUNT):
        received = sqs.receive_message(QueueUrl=dev_stack.tier1_queue_url, VisibilityTimeout=0)
        assert len(received.get("Messages", [])) == 1
    # WHEN it is received once more THEN it has moved to tier 2, for a person
    assert "Messages" not in sqs.receive_message(QueueUrl=dev_stack.tier1_queue_url)
    moved = sqs.receive_message(QueueUrl=dev_stack.tier2_queue_url)["Messages"]
    assert [m["Body"] for m in moved] == ['{"poison": true}']
    sqs.delete_message(QueueUrl=dev_stack.tier2_queue_url, ReceiptHandle=moved[0]["ReceiptHandle"])


def test_the_app_counts_services_on_the_deployed_stack(
    dev_stack: StackOutputs, backend_url: str
) -> None:
    import app as app_module

    container = Container(
        Settings(
            table_name=dev_stack.table_name,
            stream_arn=dev_stack.stream_arn,
            tier1_queue_name=dev_stack.tier1_queue_name,
            tier2_queue_name=dev_stack.tier2_queue_name,
        )
    )
    poller = StreamPoller(
        app_module.handle_stream_records,
        _client("dynamodbstreams", backend_url),
        dev_stack.stream_arn,
        settings=dataclasses.replace(StreamSettings.from_mapping(), batching_window_seconds=0),
    )

    def drain() -> None:
        for _ in range(MAX_POLLS):
            if poller.poll_once().idle:
                return
        raise AssertionError("stream not drained")

    # The clients exist before the test client patches the environment with the
    # "local" stage's (which names another endpoint).
    container.dynamodb  # noqa: B018
    container.dynamodb_no_retry  # noqa: B018
    use_container(container)
    try:
        with Client(app_module.app, stage_name="local") as client:

            def call(method: str, path: str, body: object = None) -> Any:
                response = getattr(client.http, method)(
                    path,
                    headers={"Content-Type": "application/json"},
                    body=json.dumps(body) if body is not None else b"",
                )
                return response.status_code, json.loads(response.body or b"null")

            drain()  # whatever earlier tests left on this table
            # GIVEN an account with room for two services
            status, account = call(
                "post", "/accounts", {"username": "d", "max_number_of_services": 2}
            )
            assert status == 200
            account_id = account["id"]
            # WHEN three are created THEN the third is refused
            created = [
                call("post", "/services", {"account_id": account_id, "name": f"s{i}"})
                for i in range(3)
            ]
            assert [status for status, _ in created] == [200, 200, 409]
            drain()
            # THEN the stream processor has counted both
            status, counts = call("get", f"/counts/{account_id}")
            assert [c["count_value"] for c in counts["items"]] == [2]
            # WHEN one is deleted THEN the eventual count follows
            service_id = created[0][1]["id"]
            status, _ = call("delete", f"/services/{service_id}?ownerAccountId={account_id}")
            assert status == 200
            drain()
            status, counts = call("get", f"/counts/{account_id}")
            assert [c["count_value"] for c in counts["items"]] == [1]
    finally:
        use_container(None)


def test_redeploying_keeps_the_stack_and_its_stream(
    dev_stack: StackOutputs, backend_url: str
) -> None:
    again = deploy_data_stack(backend_url, Stage.named("dev"))
    assert again == dev_stack


def test_prod_is_protected_and_its_data_is_never_deleted(backend_url: str) -> None:
    prod = Stage.named("prod")
    outputs = deploy_data_stack(backend_url, prod)
    dynamodb = _client("dynamodb", backend_url)
    table = dynamodb.describe_table(TableName=outputs.table_name)["Table"]
    assert table["DeletionProtectionEnabled"] is True
    with pytest.raises(data_stack.StackError, match="keeps its data"):
        data_stack.delete(cloudformation_client(backend_url), dynamodb, prod)
    assert outputs.table_name in dynamodb.list_tables()["TableNames"]


def test_deleting_dev_removes_stack_and_retained_table_and_can_repeat(backend_url: str) -> None:
    # A stage of its own would be cleaner, but only dev may be deleted: it is
    # recreated afterwards, as the other tests expect it.
    dev = Stage.named("dev")
    deploy_data_stack(backend_url, dev)
    cloudformation = cloudformation_client(backend_url)
    dynamodb = _client("dynamodb", backend_url)
    with moto_skips_alarms():
        for _ in range(2):
            data_stack.delete(cloudformation, dynamodb, dev)
    assert dev.table_name not in dynamodb.list_tables()["TableNames"]
    assert data_stack.describe(cloudformation, dev.data_stack_name) is None
    deploy_data_stack(backend_url, dev)
