"""The hand-written IAM policies allow every call the handlers make, and nothing else.

GIVEN the dev data stack on the embedded backend and the app wired to it through a
container whose clients are hooked (:class:`tests.deploy.iam.CallRecorder`)
WHEN every flow runs (all routes, the stream processor, the tier-1 replay from the
stream and from the table, the healer healing and recovering)
THEN each function's policy file allows every permission its calls needed plus what
Lambda itself does with the role (logs, the stream and queue pollers, the OnFailure
destination), and it grants nothing beyond that.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from chalice.test import Client

from chalicelib.bootstrap import Container, use_container
from chalicelib.entities import account_pk, count_sk, service_sk
from chalicelib.settings import Settings
from infrastructure.local.event_sources import (
    FailureCondition,
    FunctionIdentity,
    StreamPoller,
    StreamSettings,
    invoke,
    scheduled_event,
    stream_failure_message,
    to_stream_record,
)
from infrastructure.local.provision import StackOutputs
from infrastructure.stages import (
    API_HANDLER,
    DEAD_LETTER_HANDLER,
    DEPLOYED_STAGES,
    HANDLERS,
    HEALER,
    STREAM_HANDLER,
    Stage,
)
from tests.deploy.iam import Arns, CallRecorder, Permission, Policy

REPO_ROOT = Path(__file__).resolve().parents[2]
CHALICE_DIR = REPO_ROOT / ".chalice"
REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's account
LONG_AGO = "2000-01-01T00:00:00.000000Z"
MAX_POLLS = 50


def policy_path(stage: str, handler: str) -> Path:
    config = json.loads((CHALICE_DIR / "config.json").read_text(encoding="utf-8"))
    name = config["stages"][stage]["lambda_functions"][handler]["iam_policy_file"]
    return CHALICE_DIR / name


def lambda_service_needs(stage: Stage, handler: str, outputs: StackOutputs) -> list[Permission]:
    """What Lambda does with the function's role on its behalf (no app code runs it)."""
    arns = Arns(REGION, ACCOUNT)
    group = arns.log_group(stage.function_name(handler))
    stream = f"{group}:log-stream:2024/01/01/[$LATEST]0123456789abcdef"
    needs = [
        # CloudWatch Logs names a group with and without a trailing ":*".
        Permission("logs:CreateLogGroup", group),
        Permission("logs:CreateLogGroup", f"{group}:*"),
        Permission("logs:CreateLogStream", stream),
        Permission("logs:PutLogEvents", stream),
    ]
    tier1 = arns.queue(outputs.tier1_queue_name)
    if handler == STREAM_HANDLER:
        # The mapping's poller reads the stream with the function's role, and
        # delivers OnFailure records to the tier-1 queue with it too.
        needs += [
            Permission(f"dynamodb:{action}", outputs.stream_arn)
            for action in ("DescribeStream", "GetShardIterator", "GetRecords")
        ]
        needs += [Permission("dynamodb:ListStreams", "*"), Permission("sqs:SendMessage", tier1)]
    if handler == DEAD_LETTER_HANDLER:
        needs += [
            Permission(f"sqs:{action}", tier1)
            for action in ("ReceiveMessage", "DeleteMessage", "GetQueueAttributes")
        ]
    return needs


# -- driving every flow ----------------------------------------------------------------


@pytest.fixture(scope="module")
def recorded(dev_stack: StackOutputs, backend_url: str) -> CallRecorder:
    """Runs every flow of the app against the dev stack; returns what each function needed."""
    settings = Settings(
        table_name=dev_stack.table_name,
        stream_arn=dev_stack.stream_arn,
        tier1_queue_name=dev_stack.tier1_queue_name,
        tier2_queue_name=dev_stack.tier2_queue_name,
    )
    container = Container(settings)
    recorder = CallRecorder(Arns(REGION, ACCOUNT))
    for client in (
        container.dynamodb,
        container.dynamodb_no_retry,
        container.streams,
        container.sqs,
    ):
        recorder.attach(client)
    use_container(container)
    try:
        Flows(recorder, container, dev_stack, backend_url).run_all()
    finally:
        use_container(None)
    return recorder


def _client(service: str, url: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )


class Flows:
    """Every entry point of the app, each attributed to the function that runs it."""

    def __init__(
        self,
        recorder: CallRecorder,
        container: Container,
        outputs: StackOutputs,
        backend_url: str,
    ) -> None:
        import app as app_module

        self.app_module = app_module
        self.recorder = recorder
        self.container = container
        self.outputs = outputs
        # Unhooked: the test's own reads and its "time machine" writes.
        self.plain = _client("dynamodb", backend_url)
        self.streams = _client("dynamodbstreams", backend_url)
        self.poller = StreamPoller(
            app_module.handle_stream_records,
            self.streams,
            outputs.stream_arn,
            settings=dataclasses.replace(StreamSettings.from_mapping(), batching_window_seconds=0),
        )

    def run_all(self) -> None:
        # The test client puts the stage's variables in the environment during each
        # request; the container's clients already exist (hooked), so they keep theirs.
        with Client(self.app_module.app, stage_name="local") as client:
            self.http = client.http
            self.drain_stream()  # records of earlier tests on this table
            account = self.api_flows()
            self.drain_stream()
            self.dead_letter_flows(account)
            self.drain_stream()
            self.healer_flows(account)
            self.api_account_delete(account)

    # -- API -------------------------------------------------------------------------

    def call(self, method: str, path: str, body: object = None, expect: int = 200) -> Any:
        with self.recorder.acting_as(API_HANDLER):
            response = getattr(self.http, method)(
                path,
                headers={"Content-Type": "application/json"},
                body=json.dumps(body) if body is not None else b"",
            )
        assert response.status_code == expect, (method, path, response.body)
        return json.loads(response.body) if response.body else None

    def api_flows(self) -> str:
        self.call("get", "/health")
        account = self.call(
            "post", "/accounts", {"username": "policy", "max_number_of_services": 10}
        )
        account_id = account["id"]
        self.call("post", "/accounts", {"username": "second"})
        page = self.call("get", "/accounts?limit=1")
        self.call("get", f"/accounts?limit=1&cursor={page['next_cursor']}")
        self.call("get", f"/accounts/{account_id}")
        self.call("put", f"/accounts/{account_id}", {"username": "renamed"})
        services = [
            self.call("post", "/services", {"account_id": account_id, "name": f"s{i}"})["id"]
            for i in range(2)
        ]
        owner = f"?ownerAccountId={account_id}"
        self.call("get", f"/services/{services[0]}{owner}")
        self.call("put", f"/services/{services[0]}{owner}", {"name": "renamed"})
        self.call("get", f"/accounts/{account_id}/services?limit=1")
        self.call("get", f"/accounts/{account_id}/usage")
        self.call("get", f"/counts/{account_id}")
        self.call("delete", f"/services/{services[1]}{owner}")
        self.create_losing_the_last_slot(account_id)
        return str(account_id)

    def create_losing_the_last_slot(self, account_id: str) -> None:
        """A concurrent create takes the last slot between the check and the increment."""
        key = {"PK": {"S": account_pk(account_id)}, "SK": {"S": "METADATA"}}

        def take_last_slot(**_: Any) -> None:
            self.plain.update_item(
                TableName=self.outputs.table_name,
                Key=key,
                UpdateExpression="SET number_of_services = max_number_of_services",
            )

        table = self.outputs.table_name
        before = self.plain.get_item(TableName=table, Key=key, ConsistentRead=True)["Item"]
        client = self.container.dynamodb_no_retry
        with one_shot(client, "before-call.dynamodb.UpdateItem", take_last_slot):
            self.call("post", "/services", {"account_id": account_id, "name": "late"}, expect=409)
        # The other create goes away again, so the later flows have room.
        self.plain.update_item(
            TableName=table,
            Key=key,
            UpdateExpression="SET number_of_services = :n",
            ExpressionAttributeValues={":n": before["number_of_services"]},
        )

    def api_account_delete(self, account_id: str) -> None:
        services = self.call("get", f"/accounts/{account_id}/services")["items"]
        owner = f"?ownerAccountId={account_id}"
        for service in services:
            self.call("delete", f"/services/{service['id']}{owner}")
        self.drain_stream()
        self.call("delete", f"/accounts/{account_id}")

    # -- stream and dead letters -----------------------------------------------------

    def drain_stream(self) -> None:
        with self.recorder.acting_as(STREAM_HANDLER):
            for _ in range(MAX_POLLS):
                if self.poller.poll_once().idle:
                    return
        raise AssertionError(f"stream not drained in {MAX_POLLS} polls")

    def dead_letter_flows(self, account_id: str) -> None:
        function = FunctionIdentity.for_handler(
            "distributed-counter", "dev", STREAM_HANDLER, REGION, ACCOUNT
        )
        # GIVEN a create and a create-then-delete whose records the processor gave up on
        shard_id, seen = self.stream_records()
        owner = f"?ownerAccountId={account_id}"
        self.call("post", "/services", {"account_id": account_id, "name": "dead-letter-1"})
        doomed = self.call("post", "/services", {"account_id": account_id, "name": "dead-letter-2"})
        self.call("delete", f"/services/{doomed['id']}{owner}")
        _, records = self.stream_records()
        message = self.on_failure(records[len(seen) :], shard_id, function)
        self.replay(message, function)  # WHEN tier 1 replays the range THEN it is counted
        self.assert_all_counted(account_id)
        # A range the stream no longer has (trimmed after 24 h): the replay recovers
        # from the table instead. moto never trims, so the hook says it did.
        self.call("post", "/services", {"account_id": account_id, "name": "dead-letter-3"})
        streams = self.container.streams
        with one_shot(streams, "before-call.dynamodb-streams.GetShardIterator", trimmed):
            self.replay(message, function)
        self.assert_all_counted(account_id)

    def stream_records(self) -> tuple[str, list[Any]]:
        """The shard id and every record of the (single-shard) stream, oldest first."""
        arn = self.outputs.stream_arn
        shards = self.streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]
        shard_id = shards[-1]["ShardId"]
        iterator = self.streams.get_shard_iterator(
            StreamArn=arn, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
        ).get("ShardIterator")
        raw: list[Any] = []
        for _ in range(MAX_POLLS):
            if not iterator:
                break
            page = self.streams.get_records(ShardIterator=iterator, Limit=1000)
            if not page["Records"]:
                break
            raw += page["Records"]
            iterator = page.get("NextShardIterator")
        return shard_id, [to_stream_record(r, arn) for r in raw]

    def assert_all_counted(self, account_id: str) -> None:
        pending = self.plain.query(
            TableName=self.outputs.table_name,
            IndexName="PendingIndex",
            KeyConditionExpression="PK = :pk",
            ExpressionAttributeValues={":pk": {"S": account_pk(account_id)}},
            ConsistentRead=True,
        )["Items"]
        assert pending == []

    def replay(self, message: Any, function: FunctionIdentity) -> None:
        event = {"Records": [sqs_record(message, self.outputs.tier1_queue_arn)]}
        with self.recorder.acting_as(DEAD_LETTER_HANDLER):
            result = invoke(self.app_module.handle_dead_letters, event, function)
        assert not result.failed, result.error

    def on_failure(self, records: Any, shard_id: str, function: FunctionIdentity) -> Any:
        return stream_failure_message(
            records=records,
            shard_id=shard_id,
            stream_arn=self.outputs.stream_arn,
            function=function,
            condition=FailureCondition.RETRY_ATTEMPTS_EXHAUSTED,
            last_invocation=None,
            invoke_count=6,
            now=records[-1].created_at,
        )

    # -- healer ----------------------------------------------------------------------

    def healer_flows(self, account_id: str) -> None:
        # GIVEN a quiet account whose best-effort counter drifted ...
        self.age_account(account_id, drift_to=0)
        self.age_item(account_id, count_sk(), "updated_at")
        self.run_healer()  # ... WHEN the healer runs THEN it is healed
        # GIVEN a create and a delete the stream never delivered, pending for long ...
        owner = f"?ownerAccountId={account_id}"
        deleted = self.call("post", "/services", {"account_id": account_id, "name": "gone"})
        self.drain_stream()
        self.call("delete", f"/services/{deleted['id']}{owner}")
        created = self.call("post", "/services", {"account_id": account_id, "name": "stuck"})
        for service in (created, deleted):
            self.age_item(account_id, service_sk(service["id"]), "pending_since")
        self.age_item(account_id, count_sk(), "updated_at")
        self.age_account(account_id)
        self.run_healer()  # ... WHEN the healer runs THEN it settles both from the table
        self.assert_all_counted(account_id)
        self.drain_stream()

    def age_item(self, account_id: str, sort_key: str, attribute: str) -> None:
        """Move an item's timestamp far into the past (the healer waits for quiet)."""
        self.plain.update_item(
            TableName=self.outputs.table_name,
            Key={"PK": {"S": account_pk(account_id)}, "SK": {"S": sort_key}},
            UpdateExpression=f"SET {attribute} = :old",
            ExpressionAttributeValues={":old": {"S": LONG_AGO}},
        )

    def age_account(self, account_id: str, drift_to: int | None = None) -> None:
        values: dict[str, Any] = {":old": {"S": LONG_AGO}}
        update = "SET updated_at = :old, heal_since = :old"
        if drift_to is not None:
            update += ", number_of_services = :n"
            values[":n"] = {"N": str(drift_to)}
        self.plain.update_item(
            TableName=self.outputs.table_name,
            Key={"PK": {"S": account_pk(account_id)}, "SK": {"S": "METADATA"}},
            UpdateExpression=update,
            ExpressionAttributeValues=values,
        )

    def run_healer(self) -> None:
        function = FunctionIdentity.for_handler(
            "distributed-counter", "dev", HEALER, REGION, ACCOUNT
        )
        event = scheduled_event(
            "arn:aws:events:us-east-1:123456789012:rule/heal", REGION, ACCOUNT, 0
        )
        with self.recorder.acting_as(HEALER):
            result = invoke(self.app_module.heal_counters, event, function)
        assert not result.failed, result.error


class one_shot:  # noqa: N801 (used as a context manager, reads as a phrase)
    """Run ``hook`` on the next ``event`` of ``client`` only, while inside the block."""

    def __init__(self, client: Any, event: str, hook: Callable[..., Any]) -> None:
        self._events = client.meta.events
        self._event = event
        self._hook = hook
        self._fired = False

    def _once(self, **kwargs: Any) -> Any:
        if self._fired:
            return None
        self._fired = True
        return self._hook(**kwargs)

    def __enter__(self) -> None:
        self._events.register(self._event, self._once, unique_id=f"one-shot-{id(self)}")

    def __exit__(self, *_: object) -> None:
        self._events.unregister(self._event, unique_id=f"one-shot-{id(self)}")
        assert self._fired, f"{self._event} never happened"


def trimmed(**_: Any) -> tuple[AWSResponse, dict[str, Any]]:
    """A before-call answer: the stream no longer holds the requested range."""
    error = {"Code": "TrimmedDataAccessException", "Message": "trimmed"}
    return AWSResponse("", 400, {}, None), {"Error": error, "ResponseMetadata": {}}


def sqs_record(body: Any, queue_arn: str) -> dict[str, Any]:
    return {
        "messageId": "00000000-0000-4000-8000-000000000001",
        "receiptHandle": "receipt",
        "body": json.dumps(body),
        "attributes": {"ApproximateReceiveCount": "1"},
        "messageAttributes": {},
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": REGION,
    }


# -- the tests -------------------------------------------------------------------------


@pytest.mark.stack
def test_each_policy_allows_exactly_what_its_function_needs(
    recorded: CallRecorder, dev_stack: StackOutputs
) -> None:
    stage = Stage.named("dev")
    problems: list[str] = []
    for handler in HANDLERS:
        policy = Policy.load(policy_path("dev", handler))
        needed = recorded.permissions[handler] | set(
            lambda_service_needs(stage, handler, dev_stack)
        )
        problems += [f"{handler}: missing {p}" for p in policy.missing(needed)]
        problems += [
            f"{handler}: unused grant {g.action} on {g.resource} ({g.sid})"
            for g in policy.unused(needed)
        ]
    assert not recorded.permissions["unattributed"], recorded.permissions["unattributed"]
    assert problems == [], "\n".join(problems)


@pytest.mark.stack
def test_the_flows_reach_every_kind_of_call(recorded: CallRecorder) -> None:
    """Guards the test above: a flow that silently did nothing would prove nothing."""
    assert {
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
        "dynamodb:Query",
        "dynamodb:BatchGetItem",
        "dynamodb:TransactWriteItems",
    } <= recorded.operations[API_HANDLER]
    assert "dynamodb:TransactWriteItems" in recorded.operations[STREAM_HANDLER]
    assert {
        "dynamodbstreams:GetShardIterator",
        "dynamodbstreams:GetRecords",
        "dynamodb:TransactWriteItems",
    } <= recorded.operations[DEAD_LETTER_HANDLER]
    assert "dynamodb:TransactWriteItems" in recorded.operations[HEALER]


def test_policies_use_only_allow_action_resource() -> None:
    """The matcher in tests/deploy/iam.py is exact for this subset, and only for it."""
    for stage in DEPLOYED_STAGES:
        for handler in HANDLERS:
            document = json.loads(policy_path(stage, handler).read_text(encoding="utf-8"))
            assert document["Version"] == "2012-10-17"
            for statement in document["Statement"]:
                assert statement["Effect"] == "Allow"
                assert set(statement) <= {"Sid", "Effect", "Action", "Resource"}


def test_prod_policies_are_the_dev_policies_for_prod_names() -> None:
    """Coverage is proven on dev; prod must differ only in the names it points at."""
    for handler in HANDLERS:
        dev = policy_path("dev", handler).read_text(encoding="utf-8")
        prod = policy_path("prod", handler).read_text(encoding="utf-8")
        assert prod == dev.replace("distributed-counter-dev", "distributed-counter-prod")
