"""Faults on the API: the harness itself, then every failure the create/delete flows meet.

The app runs in process (``chalice.test.Client``) on a :class:`Container` whose two
DynamoDB clients carry a :class:`FaultInjector` and a :class:`CallCounter`. Faults
fire per botocore attempt, so the standard client's own retries are real.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    HTTPClientError,
    ReadTimeoutError,
)
from chalice.test import Client

from chalicelib.bootstrap import Container
from chalicelib.entities import account_pk, service_sk
from chalicelib.repositories.dynamo import from_item, to_item
from chalicelib.settings import Settings
from tests.calls import CallCounter
from tests.faults import (
    FaultInjector,
    FaultKind,
    Predicate,
    all_of,
    expression_contains,
    installed,
    key_matches,
    nth,
    times,
)
from tests.fixtures_api import Caller, Reply, assert_problem, partition_items

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

    from infrastructure.local.provision import StackOutputs

REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.stack

NO_RETRY = "dynamodb_no_retry"
STANDARD = "dynamodb"

# What each counter write looks like on the wire (chalicelib/repositories/accounts.py).
#: The conditional BE increment of a create (no-retry client).
INCREMENT: Predicate = expression_contains("ConditionExpression", "< max_number_of_services")
#: The guarded BE decrement of a delete (standard client).
DECREMENT: Predicate = expression_contains("ConditionExpression", "number_of_services > :zero")
#: The soft delete of a Service (standard client).
SOFT_DELETE: Predicate = expression_contains("UpdateExpression", "deleted = :true")


# -- the harness on a bare table ---------------------------------------------------------


@pytest.fixture(scope="module")
def scratch_table(stack_outputs: StackOutputs) -> Iterator[str]:
    client = boto3.client("dynamodb")
    name = f"faults-{uuid.uuid4().hex[:12]}"
    client.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "PK", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "PK", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    yield name
    client.delete_table(TableName=name)


def _client(attempts: int) -> Any:
    return boto3.client(
        "dynamodb", config=Config(retries={"mode": "standard", "total_max_attempts": attempts})
    )


def _get(client: Any, table: str, pk: str) -> dict[str, Any] | None:
    item = client.get_item(TableName=table, Key={"PK": {"S": pk}}, ConsistentRead=True).get("Item")
    return from_item(item) if item else None


def _put(client: Any, table: str, pk: str) -> None:
    client.put_item(TableName=table, Item={"PK": {"S": pk}})


def test_harness_throttle_is_refused_before_sending_and_retried_by_botocore(
    scratch_table: str,
) -> None:
    # GIVEN a standard-retry client whose first two PutItem attempts are throttled
    client, faults, calls = _client(3), FaultInjector(), CallCounter()
    faults.attach(client, label="std")
    calls.attach(client, label="std")
    faults.throttle("PutItem", when=times(2))
    pk = f"throttled-{uuid.uuid4()}"

    # WHEN one put is made
    _put(client, scratch_table, pk)

    # THEN botocore retried: 3 attempts for 1 call, the last one landed
    stats = calls.snapshot()
    assert (stats.total("PutItem"), stats.total_attempts("PutItem")) == (1, 3)
    assert [(i.kind, i.attempt) for i in faults.injections] == [("throttle", 1), ("throttle", 2)]
    assert _get(client, scratch_table, pk) == {"PK": pk}


def test_harness_throttle_without_retries_surfaces_and_writes_nothing(scratch_table: str) -> None:
    client, faults = _client(1), FaultInjector()
    faults.attach(client)
    faults.throttle("PutItem", code="ProvisionedThroughputExceededException")
    pk = f"refused-{uuid.uuid4()}"

    with pytest.raises(ClientError) as raised:
        _put(client, scratch_table, pk)

    assert raised.value.response["Error"]["Code"] == "ProvisionedThroughputExceededException"
    assert _get(client, scratch_table, pk) is None


@pytest.mark.parametrize("error", [ReadTimeoutError, ConnectionClosedError])
def test_harness_ambiguous_applies_the_write_then_loses_the_response(
    scratch_table: str, error: type[HTTPClientError]
) -> None:
    # GIVEN a client without retries whose next PutItem response is lost
    client, faults = _client(1), FaultInjector()
    faults.attach(client)
    faults.ambiguous("PutItem", error=error, when=nth(1))
    pk = f"ambiguous-{uuid.uuid4()}"

    # WHEN it puts an item THEN it sees the failure...
    with pytest.raises(error):
        _put(client, scratch_table, pk)

    # ...although the backend applied it, and the record says so
    assert _get(client, scratch_table, pk) == {"PK": pk}
    [injection] = faults.injections
    assert (injection.kind, injection.backend_status, injection.applied) == ("ambiguous", 200, True)


def test_harness_ambiguous_unsent_is_not_applied(scratch_table: str) -> None:
    client, faults = _client(1), FaultInjector()
    faults.attach(client)
    faults.ambiguous("PutItem", send=False)
    pk = f"unsent-{uuid.uuid4()}"
    with pytest.raises(ReadTimeoutError):
        _put(client, scratch_table, pk)
    assert _get(client, scratch_table, pk) is None
    assert faults.injections[0].applied is False


def test_harness_standard_client_retries_an_ambiguous_write(scratch_table: str) -> None:
    # GIVEN a standard client whose first UpdateItem response is lost after applying
    client, faults = _client(3), FaultInjector()
    faults.attach(client)
    faults.ambiguous("UpdateItem", when=nth(1))
    pk = f"twice-{uuid.uuid4()}"

    # WHEN it adds 1 once
    client.update_item(
        TableName=scratch_table,
        Key={"PK": {"S": pk}},
        UpdateExpression="ADD n :one",
        ExpressionAttributeValues={":one": {"N": "1"}},
    )

    # THEN botocore retried it and the addition landed twice: why the app never lets
    # botocore retry its increment
    assert _get(client, scratch_table, pk) == {"PK": pk, "n": 2}


def test_harness_canceled_carries_the_reasons(scratch_table: str) -> None:
    client, faults = _client(3), FaultInjector()
    faults.attach(client)
    reasons = [{"Code": "None"}, {"Code": "ConditionalCheckFailed", "Message": "failed"}]
    faults.canceled(reasons=reasons)
    items = [{"Put": {"TableName": scratch_table, "Item": {"PK": {"S": str(n)}}}} for n in (1, 2)]

    with pytest.raises(ClientError) as raised:
        client.transact_write_items(TransactItems=items)

    assert raised.value.response["Error"]["Code"] == "TransactionCanceledException"
    assert raised.value.response["CancellationReasons"] == reasons
    assert faults.count(FaultKind.CANCELED, "TransactWriteItems") == 1  # not retried


def test_harness_conflict_is_not_retried_by_botocore(scratch_table: str) -> None:
    client, faults = _client(3), FaultInjector()
    faults.attach(client)
    faults.conflict("UpdateItem")
    with pytest.raises(ClientError) as raised:
        client.update_item(
            TableName=scratch_table,
            Key={"PK": {"S": "c"}},
            UpdateExpression="SET a = :a",
            ExpressionAttributeValues={":a": {"S": "x"}},
        )
    assert raised.value.response["Error"]["Code"] == "TransactionConflictException"
    assert faults.count(FaultKind.CONFLICT) == 1


def test_harness_server_error_is_retried_to_the_last_attempt(scratch_table: str) -> None:
    client, faults = _client(3), FaultInjector()
    faults.attach(client)
    faults.server_error("GetItem")
    with pytest.raises(ClientError) as raised:
        _get(client, scratch_table, "x")
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert [i.attempt for i in faults.injections] == [1, 2, 3]


def test_harness_predicate_selects_requests(scratch_table: str) -> None:
    client, faults = _client(1), FaultInjector()
    faults.attach(client)
    faults.throttle("PutItem", where=key_matches(PK="victim-*"))
    _put(client, scratch_table, f"bystander-{uuid.uuid4()}")
    with pytest.raises(ClientError):
        _put(client, scratch_table, f"victim-{uuid.uuid4()}")
    [injection] = faults.injections
    assert injection.params["Item"]["PK"]["S"].startswith("victim-")


# -- the app under faults ---------------------------------------------------------------


@pytest.fixture(scope="module")
def chalice_client(stack_outputs: StackOutputs) -> Iterator[Client]:
    from app import app

    with Client(app, project_dir=str(REPO_ROOT)) as client:
        yield client


@pytest.fixture
def faults() -> FaultInjector:
    return FaultInjector(seed=11)


@pytest.fixture
def calls() -> CallCounter:
    return CallCounter()


@pytest.fixture
def settings(stack_outputs: StackOutputs) -> Settings:
    return Settings()


@pytest.fixture
def container(settings: Settings, faults: FaultInjector, calls: CallCounter) -> Iterator[Container]:
    with installed(Container(settings), calls, faults) as container:
        yield container


@pytest.fixture
def call(chalice_client: Client, container: Container) -> Caller:
    def send(method: str, path: str, headers: Mapping[str, str], body: bytes) -> Reply:
        response = chalice_client.http.request(method, path, headers=dict(headers), body=body)
        return Reply(response.status_code, dict(response.headers), response.body)

    return Caller(send, content_type_defaulted=False)


@pytest.fixture
def table(stack_outputs: StackOutputs) -> str:
    return stack_outputs.table_name


def be(dynamodb_client: DynamoDBClient, table: str, account_id: str) -> int:
    item = dynamodb_client.get_item(
        TableName=table,
        Key=to_item({"PK": account_pk(account_id), "SK": "METADATA"}),
        ConsistentRead=True,
    )["Item"]
    return int(from_item(item)["number_of_services"])


def service_items(dynamodb_client: DynamoDBClient, table: str, account_id: str) -> list[Any]:
    return [
        from_item(i)
        for i in partition_items(dynamodb_client, table, account_id)
        if i["SK"]["S"].startswith("SERVICE#")
    ]


def create_service(call: Caller, account_id: str, name: str = "svc") -> Reply:
    return call("POST", "/services", json_body={"account_id": account_id, "name": name})


@pytest.mark.parametrize("error", [ReadTimeoutError, ConnectionClosedError])
def test_ambiguous_increment_is_not_retried_and_never_overcounts(
    call: Caller,
    faults: FaultInjector,
    calls: CallCounter,
    dynamodb_client: DynamoDBClient,
    table: str,
    error: type[HTTPClientError],
) -> None:
    # GIVEN the increment's response is lost after DynamoDB applied it
    account = call.new_account(limit=5)
    faults.ambiguous("UpdateItem", where=INCREMENT, error=error, client=NO_RETRY, when=nth(1))

    # WHEN a service is created
    with calls.measure() as stats:
        reply = create_service(call, account["id"])

    # THEN the caller gets the service, exactly one increment attempt reached the
    # backend, and BE is 1 (applied once), never 2
    assert reply.status == 200
    assert stats.total_attempts("UpdateItem", NO_RETRY) == 1
    [injection] = faults.injections
    assert injection.applied
    assert be(dynamodb_client, table, account["id"]) == 1
    assert len(service_items(dynamodb_client, table, account["id"])) == 1


def test_ambiguous_increment_that_was_not_applied_leaves_an_undercount(
    call: Caller, faults: FaultInjector, dynamodb_client: DynamoDBClient, table: str
) -> None:
    # GIVEN the increment's connection drops before it reaches DynamoDB
    account = call.new_account(limit=5)
    faults.ambiguous("UpdateItem", where=INCREMENT, send=False, when=nth(1))

    # WHEN a service is created THEN it is returned; BE undercounts (0 <= 1 live)
    assert create_service(call, account["id"]).status == 200
    assert be(dynamodb_client, table, account["id"]) == 0
    assert len(service_items(dynamodb_client, table, account["id"])) == 1


def test_throttled_increment_is_retried_and_applied_once(
    call: Caller,
    faults: FaultInjector,
    calls: CallCounter,
    dynamodb_client: DynamoDBClient,
    table: str,
) -> None:
    # GIVEN the first two increment attempts are throttled
    account = call.new_account(limit=5)
    faults.throttle("UpdateItem", where=INCREMENT, when=times(2))

    # WHEN a service is created
    with calls.measure() as stats:
        reply = create_service(call, account["id"])

    # THEN the app retried (3 attempts on the no-retry client) and counted it once
    assert reply.status == 200
    assert stats.total_attempts("UpdateItem", NO_RETRY) == 3
    assert faults.count(FaultKind.THROTTLE) == 2
    assert be(dynamodb_client, table, account["id"]) == 1


def test_increment_throttled_out_still_returns_the_service(
    call: Caller,
    faults: FaultInjector,
    settings: Settings,
    dynamodb_client: DynamoDBClient,
    table: str,
) -> None:
    # GIVEN every increment attempt is throttled
    account = call.new_account(limit=5)
    faults.throttle("UpdateItem", where=INCREMENT)

    # WHEN a service is created THEN it exists and is returned; BE undercounts
    assert create_service(call, account["id"]).status == 200
    assert faults.count(FaultKind.THROTTLE) == settings.max_attempts
    assert be(dynamodb_client, table, account["id"]) == 0
    assert len(service_items(dynamodb_client, table, account["id"])) == 1


def test_conflict_on_soft_delete_is_retried_and_the_caller_sees_200(
    call: Caller,
    faults: FaultInjector,
    calls: CallCounter,
    dynamodb_client: DynamoDBClient,
    table: str,
) -> None:
    # GIVEN a service whose soft delete meets a processor transaction twice
    account = call.new_account()
    service = call.new_service(account["id"])
    faults.conflict("UpdateItem", where=SOFT_DELETE, when=times(2))

    # WHEN it is deleted
    with calls.measure() as stats:
        reply = call.delete_service(account["id"], service["id"])

    # THEN 200 after two retries; BE decremented once; the item flagged deleted
    assert reply.status == 200
    assert faults.count(FaultKind.CONFLICT) == 2
    assert stats.total("UpdateItem", STANDARD) == 4  # decrement + 3 soft-delete calls
    assert be(dynamodb_client, table, account["id"]) == 0
    [item] = service_items(dynamodb_client, table, account["id"])
    assert item["deleted"] is True


def test_ambiguous_soft_delete_retried_by_botocore_recognises_its_own_write(
    call: Caller, faults: FaultInjector, dynamodb_client: DynamoDBClient, table: str
) -> None:
    # GIVEN the soft delete is applied but its response lost; botocore retries it,
    # and the retry's condition fails on our own flag
    account = call.new_account()
    service = call.new_service(account["id"])
    faults.ambiguous("UpdateItem", where=SOFT_DELETE, when=nth(1))

    # WHEN it is deleted THEN 200 (not 404), BE decremented exactly once
    assert call.delete_service(account["id"], service["id"]).status == 200
    assert faults.injections[0].applied
    assert be(dynamodb_client, table, account["id"]) == 0


def test_ambiguous_put_retried_by_botocore_creates_one_service(
    call: Caller, faults: FaultInjector, dynamodb_client: DynamoDBClient, table: str
) -> None:
    # GIVEN the service put is applied but its response lost (botocore retries it)
    account = call.new_account()
    faults.ambiguous("PutItem", when=nth(1))

    # WHEN a service is created THEN one service, counted once
    assert create_service(call, account["id"]).status == 200
    assert len(service_items(dynamodb_client, table, account["id"])) == 1
    assert be(dynamodb_client, table, account["id"]) == 1


def test_failed_put_is_503_with_retry_after_and_no_count_change(
    call: Caller,
    faults: FaultInjector,
    settings: Settings,
    dynamodb_client: DynamoDBClient,
    table: str,
) -> None:
    # GIVEN every PutItem attempt fails with a 500
    account = call.new_account()
    faults.server_error("PutItem")

    # WHEN a service is created
    reply = create_service(call, account["id"])

    # THEN 503 with Retry-After, after botocore's retries; nothing written or counted
    assert_problem(reply, 503, "backend-unavailable")
    assert int(reply.header("Retry-After") or "0") >= 1
    assert faults.count(FaultKind.SERVER_ERROR, "PutItem") == settings.max_attempts
    assert service_items(dynamodb_client, table, account["id"]) == []
    assert be(dynamodb_client, table, account["id"]) == 0


class TestThrottledOut:
    """Throttling through every retry answers 503, on every route that reads or writes."""

    @pytest.fixture
    def settings(self, stack_outputs: StackOutputs) -> Settings:
        # Two attempts: botocore's throttling backoff is up to 1 s, then 2 s, ...
        return Settings(max_attempts=2)

    @pytest.mark.parametrize(
        ("operation", "method", "path", "body"),
        [
            ("GetItem", "GET", "/accounts/{account}", None),
            ("GetItem", "POST", "/services", {"account_id": "{account}", "name": "x"}),
            ("TransactWriteItems", "POST", "/accounts", {"username": "x"}),
            ("UpdateItem", "PUT", "/accounts/{account}", {"username": "y"}),
            ("Query", "GET", "/accounts/{account}/services", None),
        ],
        ids=["get-account", "create-service", "create-account", "update-account", "list"],
    )
    def test_throttled_through_all_retries_is_503_not_500(
        self,
        call: Caller,
        faults: FaultInjector,
        operation: str,
        method: str,
        path: str,
        body: dict[str, str] | None,
    ) -> None:
        # GIVEN an account, then DynamoDB throttling every attempt of one operation
        account = call.new_account()["id"]
        faults.throttle(operation)
        if body is not None:
            body = {k: v.format(account=account) for k, v in body.items()}

        # WHEN the route is called
        reply = call(method, path.format(account=account), json_body=body)

        # THEN 503 with Retry-After
        assert_problem(reply, 503, "backend-unavailable")
        assert reply.header("Retry-After")
        assert faults.count(FaultKind.THROTTLE, operation) == 2


def test_concurrent_deletes_of_one_service_one_200_one_404_decrement_once(
    call: Caller,
    faults: FaultInjector,
    api_url: str,
    dynamodb_client: DynamoDBClient,
    table: str,
) -> None:
    # GIVEN two services, and a second DELETE of the first one that gets in between
    # our read-and-decrement and our soft delete (over HTTP, same process, same app)
    account = call.new_account()
    service = call.new_service(account["id"])
    call.new_service(account["id"])
    assert be(dynamodb_client, table, account["id"]) == 2
    other: list[requests.Response] = []

    def other_delete() -> None:
        other.append(
            requests.delete(
                f"{api_url}/services/{service['id']}",
                params={"ownerAccountId": account["id"]},
                timeout=30,
            )
        )

    faults.interleave("UpdateItem", where=SOFT_DELETE, action=other_delete, when=nth(1))

    # WHEN our delete runs
    ours = call.delete_service(account["id"], service["id"])

    # THEN the other one won (200), ours is 404, and BE went down exactly once
    assert [r.status_code for r in other] == [200]
    assert_problem(ours, 404, "service-not-found")
    assert be(dynamodb_client, table, account["id"]) == 1
    deleted = [s for s in service_items(dynamodb_client, table, account["id"]) if s["deleted"]]
    assert [s["id"] for s in deleted] == [service["id"]]


def test_concurrent_create_taking_the_last_slot_rolls_ours_back(
    call: Caller,
    faults: FaultInjector,
    api_url: str,
    dynamodb_client: DynamoDBClient,
    table: str,
) -> None:
    # GIVEN an account with one slot left, and another create that takes it between
    # our limit check and our increment
    account = call.new_account(limit=1)
    other: list[requests.Response] = []

    def other_create() -> None:
        other.append(
            requests.post(
                f"{api_url}/services",
                json={"account_id": account["id"], "name": "other"},
                timeout=30,
            )
        )

    faults.interleave("UpdateItem", where=INCREMENT, action=other_create, when=nth(1))

    # WHEN ours runs
    ours = create_service(call, account["id"], "ours")

    # THEN the other got the slot, ours is 409 and was rolled back (hard delete)
    assert [r.status_code for r in other] == [200]
    assert_problem(ours, 409, "service-limit-reached")
    assert [s["name"] for s in service_items(dynamodb_client, table, account["id"])] == ["other"]
    assert be(dynamodb_client, table, account["id"]) == 1


def test_rollback_of_a_counted_service_soft_deletes_it(
    call: Caller,
    faults: FaultInjector,
    api_url: str,
    dynamodb_client: DynamoDBClient,
    table: str,
) -> None:
    # GIVEN a create whose slot is taken concurrently and whose service the stream
    # processor counts before the rollback
    account = call.new_account(limit=1)

    def processor_counts_ours_and_other_takes_the_slot() -> None:
        [ours] = service_items(dynamodb_client, table, account["id"])
        dynamodb_client.update_item(
            TableName=table,
            Key=to_item({"PK": account_pk(account["id"]), "SK": service_sk(ours["id"])}),
            UpdateExpression="SET counter_processed = :true REMOVE pending_since",
            ExpressionAttributeValues={":true": {"BOOL": True}},
        )
        requests.post(
            f"{api_url}/services", json={"account_id": account["id"], "name": "b"}, timeout=30
        ).raise_for_status()

    faults.interleave(
        "UpdateItem",
        where=INCREMENT,
        action=processor_counts_ours_and_other_takes_the_slot,
        when=nth(1),
    )

    # WHEN ours runs THEN 409, and ours is soft-deleted (left for the processor)
    assert_problem(create_service(call, account["id"], "a"), 409, "service-limit-reached")
    by_name = {s["name"]: s for s in service_items(dynamodb_client, table, account["id"])}
    assert by_name["a"]["deleted"] is True
    assert by_name["b"]["deleted"] is False
    assert be(dynamodb_client, table, account["id"]) == 1


def test_decrement_retried_after_ambiguous_failure_only_undercounts(
    call: Caller, faults: FaultInjector, dynamodb_client: DynamoDBClient, table: str
) -> None:
    # GIVEN three services and a decrement whose response is lost (botocore retries)
    account = call.new_account()
    services = [call.new_service(account["id"]) for _ in range(3)]
    faults.ambiguous("UpdateItem", where=DECREMENT, when=nth(1))

    # WHEN one is deleted
    assert call.delete_service(account["id"], services[0]["id"]).status == 200

    # THEN BE may undercount (applied twice) but never exceeds the live services
    live = [s for s in service_items(dynamodb_client, table, account["id"]) if not s["deleted"]]
    assert 0 <= be(dynamodb_client, table, account["id"]) <= len(live) == 2


# -- backend calls per request ------------------------------------------------------------


def test_backend_calls_per_create_and_delete(
    call: Caller, calls: CallCounter, record_property: Any
) -> None:
    # GIVEN an account
    account = call.new_account(limit=1)

    # WHEN a service is created, refused at the limit, and deleted
    with calls.measure() as create:
        service = call.new_service(account["id"])
    with calls.measure() as refused:
        assert create_service(call, account["id"]).status == 409
    with calls.measure() as delete:
        assert call.delete_service(account["id"], service["id"]).status == 200

    # THEN create and delete take 3 calls each, no transactions; a refusal 1
    report = {
        "create": create.by_operation(),
        "create_refused_at_limit": refused.by_operation(),
        "delete": delete.by_operation(),
    }
    print(f"\nbackend calls per request: {report}")
    record_property("backend_calls", report)
    assert report["create"] == {"GetItem": 1, "PutItem": 1, "UpdateItem": 1}
    assert report["create_refused_at_limit"] == {"GetItem": 1}
    assert report["delete"] == {"GetItem": 1, "UpdateItem": 2}
    assert create.total_attempts() == create.total() == 3
    assert delete.total_attempts() == delete.total() == 3
    assert "TransactWriteItems" not in report["create"] | report["delete"]


def test_with_all_of_predicates(faults: FaultInjector) -> None:
    # The predicate combinators compose (used by later harness extensions).
    both = all_of(INCREMENT, expression_contains("UpdateExpression", "number_of_services"))
    params = {
        "ConditionExpression": "number_of_services < max_number_of_services",
        "UpdateExpression": "SET number_of_services = number_of_services + :delta",
    }
    assert both(params)
    assert not both({"ConditionExpression": "x"})


# -- account transactions under contention, lost responses and races ---------------------


@pytest.mark.parametrize("reason", ["ThrottlingError", "TransactionConflict"])
def test_account_create_canceled_by_contention_is_503(
    call: Caller, faults: FaultInjector, reason: str
) -> None:
    # GIVEN DynamoDB cancels the create transaction for a reason that proves nothing
    # was applied (throttled or conflicting item inside the transaction)
    faults.canceled(reasons=[{"Code": reason}, {"Code": "None"}])

    # WHEN an account is created THEN 503 with Retry-After (the Caller rejects a 500)
    reply = call("POST", "/accounts", json_body={"username": "x"})
    assert_problem(reply, 503, "backend-unavailable")


def test_account_create_retried_after_lost_response_succeeds_once(
    call: Caller, faults: FaultInjector, dynamodb_client: DynamoDBClient, table: str
) -> None:
    # GIVEN the create transaction is applied but its response lost (botocore retries)
    faults.ambiguous("TransactWriteItems", when=nth(1))

    # WHEN an account is created THEN 200, and the account exists once
    account = call.ok("POST", "/accounts", json_body={"username": "x"})
    assert faults.injections[0].applied
    assert len(partition_items(dynamodb_client, table, account["id"])) == 2


@pytest.mark.parametrize("reason", ["ThrottlingError", "TransactionConflict"])
def test_account_delete_canceled_by_contention_is_not_404(
    call: Caller, faults: FaultInjector, reason: str
) -> None:
    # GIVEN an empty account whose delete transaction is canceled by contention
    account = call.new_account()
    faults.canceled(reasons=[{"Code": reason}, {"Code": "None"}], when=nth(1))

    # WHEN it is deleted THEN it is not reported missing while it still exists
    reply = call("DELETE", f"/accounts/{account['id']}")
    still_there = call("GET", f"/accounts/{account['id']}").status == 200
    assert reply.status in (200, 503)
    assert still_there == (reply.status == 503)


def test_account_delete_racing_a_create_leaves_no_orphan_service(
    call: Caller,
    faults: FaultInjector,
    api_url: str,
    dynamodb_client: DynamoDBClient,
    table: str,
) -> None:
    # GIVEN an empty account, and a service create that completes between the
    # delete's "no services" check and its transaction
    account = call.new_account()
    created: list[int] = []

    def concurrent_create() -> None:
        created.append(
            requests.post(
                f"{api_url}/services",
                json={"account_id": account["id"], "name": "late"},
                timeout=30,
            ).status_code
        )

    faults.interleave("TransactWriteItems", action=concurrent_create, when=nth(1))

    # WHEN the account is deleted
    reply = call("DELETE", f"/accounts/{account['id']}")

    # THEN either the delete lost (409, account and service kept) or the create lost;
    # never an account gone with its service left behind
    items = partition_items(dynamodb_client, table, account["id"])
    services = [i for i in items if i["SK"]["S"].startswith("SERVICE#")]
    assert created == [200]
    assert reply.status == 409
    assert len(services) == 1


def test_delete_race_with_a_skipped_winner_never_overcounts(
    call: Caller,
    faults: FaultInjector,
    api_url: str,
    dynamodb_client: DynamoDBClient,
    table: str,
) -> None:
    # GIVEN one service (BE == live == 1), and a second DELETE of it that runs after
    # our decrement (its own decrement finds BE at 0: SKIPPED) and soft-deletes first
    account = call.new_account()
    service = call.new_service(account["id"])
    other: list[int] = []

    def other_delete() -> None:
        other.append(
            requests.delete(
                f"{api_url}/services/{service['id']}",
                params={"ownerAccountId": account["id"]},
                timeout=30,
            ).status_code
        )

    faults.interleave("UpdateItem", where=SOFT_DELETE, action=other_delete, when=nth(1))

    # WHEN our delete continues: it loses the soft delete and gives its decrement back
    assert_problem(call.delete_service(account["id"], service["id"]), 404)

    # THEN BE never exceeds the live services (I1): none live, so BE is 0 (it is 1)
    assert other == [200]
    live = [s for s in service_items(dynamodb_client, table, account["id"]) if not s["deleted"]]
    assert be(dynamodb_client, table, account["id"]) <= len(live) == 0
