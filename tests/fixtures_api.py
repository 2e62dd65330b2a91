"""The API contract as one scenario class, run through two transports.

``ApiContract`` holds the functional tests; ``tests/functional/test_api_client.py``
runs them through ``chalice.test.Client`` (in process, no sockets) and
``tests/functional/test_api_http.py`` over real HTTP against ``api_url``. Both give
the tests a :class:`Caller`, which checks on *every* reply that the contract's error
shape holds: an error is ``application/problem+json`` with ``type``, ``title``,
``status`` (equal to the HTTP status) and ``detail``, nothing answers 500, and the
status is one the OpenAPI document (``chalicelib.openapi``) lists for the operation.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlencode

import pytest

from chalicelib import openapi
from chalicelib.entities import account_pk

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

    from infrastructure.local.provision import StackOutputs

PROBLEM_JSON = "application/problem+json"
PROBLEMS = "https://distributed-counter.dev/problems/"


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), None)

    def json(self) -> Any:
        return json.loads(self.body)


class Send(Protocol):
    """One transport: method, path (with query), headers, body -> reply."""

    def __call__(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> Reply: ...


@functools.cache
def _operations() -> dict[tuple[str, tuple[str, ...]], frozenset[int]]:
    paths = openapi.document()["paths"]
    return {
        (method.upper(), tuple(path.strip("/").split("/"))): frozenset(map(int, op["responses"]))
        for path, operations in paths.items()
        for method, op in operations.items()
        if isinstance(op, dict) and "responses" in op
    }


def contract_statuses(method: str, path: str) -> frozenset[int] | None:
    """Statuses the OpenAPI document lists for this request, or None if no operation."""
    segments = tuple(path.split("?", 1)[0].strip("/").split("/"))
    for (op_method, template), statuses in _operations().items():
        if op_method == method.upper() and len(template) == len(segments):
            pairs = zip(template, segments, strict=True)
            if all(t == s or t.startswith("{") for t, s in pairs):
                return statuses
    return None


def assert_problem(reply: Reply, status: int, slug: str | None = None) -> dict[str, Any]:
    """``reply`` is the problem the contract lists for ``status`` (and ``slug``)."""
    assert reply.status == status, (reply.status, reply.body[:500])
    content_type = reply.header("Content-Type") or ""
    assert content_type.startswith(PROBLEM_JSON), content_type
    body = reply.json()
    assert isinstance(body, dict)
    assert {"type", "title", "status", "detail"} <= set(body), body
    assert body["status"] == status
    assert isinstance(body["title"], str)
    assert body["title"]
    assert isinstance(body["detail"], str)
    if slug is not None:
        assert body["type"] == PROBLEMS + slug, body["type"]
    return body


@dataclass
class Caller:
    """Calls the API through ``send`` and checks every reply's contract shape."""

    send: Send
    #: API Gateway (and the local server) default a missing Content-Type to JSON;
    #: ``chalice.test.Client`` passes the Lambda's headers through as they are.
    content_type_defaulted: bool = True
    replies: list[Reply] = field(default_factory=list)

    def __call__(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        raw: bytes | None = None,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        all_headers = {"Content-Type": "application/json"} | dict(headers or {})
        body = raw if raw is not None else b""
        if json_body is not None:
            body = json.dumps(json_body).encode()
        if query:
            path = f"{path}?{urlencode(query)}"
        reply = self.send(method, path, all_headers, body)
        self.replies.append(reply)
        assert reply.status != 500, reply.body[:500]
        listed = contract_statuses(method, path)
        if listed is not None:  # I4: only statuses the OpenAPI document lists
            assert reply.status in listed, (method, path, reply.status, sorted(listed))
        if reply.status >= 400:
            assert_problem(reply, reply.status)
        return reply

    def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        reply = self(method, path, **kwargs)
        assert reply.status == 200, (reply.status, reply.body[:500])
        content_type = reply.header("Content-Type")
        if content_type is not None or self.content_type_defaulted:
            assert (content_type or "").startswith("application/json"), content_type
        return reply.json()

    # -- arrangement ------------------------------------------------------------------

    def new_account(self, limit: int | None = 5, username: str = "owner") -> dict[str, Any]:
        body: dict[str, Any] = {"username": username}
        if limit is not None:
            body["max_number_of_services"] = limit
        account: dict[str, Any] = self.ok("POST", "/accounts", json_body=body)
        return account

    def new_service(self, account_id: str, name: str = "svc") -> dict[str, Any]:
        service: dict[str, Any] = self.ok(
            "POST", "/services", json_body={"account_id": account_id, "name": name}
        )
        return service

    def account(self, account_id: str) -> dict[str, Any]:
        account: dict[str, Any] = self.ok("GET", f"/accounts/{account_id}")
        return account

    def delete_service(self, account_id: str, service_id: str) -> Reply:
        return self("DELETE", f"/services/{service_id}", query={"ownerAccountId": account_id})

    def walk(self, path: str, limit: int, max_pages: int = 200) -> list[dict[str, Any]]:
        """Every item of a paginated listing, following ``next_cursor``."""
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(max_pages):
            query = {"limit": str(limit)} | ({"cursor": cursor} if cursor else {})
            page = self.ok("GET", path, query=query)
            assert len(page["items"]) <= limit
            items += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                return items
        raise AssertionError(f"{path}: more than {max_pages} pages")


def partition_items(client: DynamoDBClient, table: str, account_id: str) -> list[dict[str, Any]]:
    """Every item stored under the account's partition (consistent read)."""
    page = client.query(
        TableName=table,
        KeyConditionExpression="PK = :pk",
        ExpressionAttributeValues={":pk": {"S": account_pk(account_id)}},
        ConsistentRead=True,
    )
    return list(page.get("Items", []))


def new_id() -> str:
    return str(uuid.uuid4())


class ApiContract:
    """Every route and error path; subclasses provide the ``call`` fixture."""

    @pytest.fixture
    def call(self) -> Iterator[Caller]:  # pragma: no cover - overridden
        raise NotImplementedError

    @pytest.fixture
    def table_name(self, stack_outputs: StackOutputs) -> str:
        return stack_outputs.table_name

    # -- health -----------------------------------------------------------------------

    def test_health(self, call: Caller) -> None:
        assert call.ok("GET", "/health") == {"status": "ok"}

    # -- accounts ---------------------------------------------------------------------

    def test_create_account_returns_it_with_zero_services(self, call: Caller) -> None:
        # WHEN an account is created
        account = call.new_account(limit=3, username="alice")

        # THEN it comes back with an id and zero services, and can be read
        assert uuid.UUID(account["id"])
        assert (account["username"], account["max_number_of_services"]) == ("alice", 3)
        assert account["number_of_services"] == 0
        assert call.account(account["id"]) == account

    def test_create_account_without_limit_gets_the_default(self, call: Caller) -> None:
        account = call.new_account(limit=None)
        assert account["max_number_of_services"] == 5000

    @pytest.mark.parametrize(
        "raw",
        [b"", b"{", b"not json", b'{"username": "a"} x'],
        ids=["empty", "open", "text", "tail"],
    )
    def test_create_account_with_malformed_body_is_400(self, call: Caller, raw: bytes) -> None:
        assert_problem(call("POST", "/accounts", raw=raw), 400, "malformed-request")

    @pytest.mark.parametrize(
        "body",
        [
            {},
            [],
            {"username": ""},
            {"username": "x" * 51},
            {"username": "a", "max_number_of_services": -1},
            {"username": "a", "max_number_of_services": "5"},
            {"username": "a", "max_number_of_services": 10**30},
            {"username": "a", "number_of_services": 3},
        ],
        ids=[
            "missing",
            "array",
            "empty-name",
            "long-name",
            "negative",
            "string-limit",
            "huge-limit",
            "counter-not-writable",
        ],
    )
    def test_create_account_with_invalid_body_is_422(self, call: Caller, body: Any) -> None:
        problem = assert_problem(
            call("POST", "/accounts", json_body=body), 422, "validation-failed"
        )
        assert problem["errors"]

    def test_get_missing_account_is_404(self, call: Caller) -> None:
        assert_problem(call("GET", f"/accounts/{new_id()}"), 404, "account-not-found")

    def test_account_path_must_be_a_uuid(self, call: Caller) -> None:
        problem = assert_problem(call("GET", "/accounts/not-a-uuid"), 422, "validation-failed")
        assert problem["errors"][0]["location"] == "path.account_id"

    def test_list_accounts_pages_through_everything_once(self, call: Caller) -> None:
        # GIVEN three new accounts
        mine = [call.new_account()["id"] for _ in range(3)]

        # WHEN every page of 100 is walked (the session's other accounts included)
        seen = [a["id"] for a in call.walk("/accounts", 100, max_pages=1000)]

        # THEN no account repeats and ours come in creation order
        assert len(seen) == len(set(seen))
        assert [a for a in seen if a in mine] == mine

    def test_list_accounts_small_pages(self, call: Caller) -> None:
        call.new_account()
        call.new_account()
        page = call.ok("GET", "/accounts", query={"limit": "1"})
        assert len(page["items"]) == 1
        assert page["next_cursor"]

    @pytest.mark.parametrize(
        "query",
        [
            {"limit": "0"},
            {"limit": "101"},
            {"limit": "x"},
            {"cursor": "garbage!"},
            {"cursor": "e30"},
            {"colour": "red"},
        ],
        ids=["zero", "too-many", "not-int", "bad-cursor", "foreign-cursor", "unknown-param"],
    )
    def test_list_accounts_rejects_bad_query(self, call: Caller, query: dict[str, str]) -> None:
        assert_problem(call("GET", "/accounts", query=query), 422, "validation-failed")

    def test_update_account_changes_name_and_limit(self, call: Caller) -> None:
        account = call.new_account(limit=3)
        updated = call.ok(
            "PUT",
            f"/accounts/{account['id']}",
            json_body={"username": "bob", "max_number_of_services": 7},
        )
        assert (updated["username"], updated["max_number_of_services"]) == ("bob", 7)
        assert call.account(account["id"]) == updated

    def test_update_account_with_empty_object_changes_nothing(self, call: Caller) -> None:
        account = call.new_account(limit=3)
        assert call.ok("PUT", f"/accounts/{account['id']}", json_body={}) == account

    def test_update_never_creates_an_account(self, call: Caller) -> None:
        # GIVEN an id nobody created
        missing = new_id()

        # WHEN it is updated THEN 404, and it still does not exist
        reply = call("PUT", f"/accounts/{missing}", json_body={"username": "ghost"})
        assert_problem(reply, 404, "account-not-found")
        assert_problem(call("GET", f"/accounts/{missing}"), 404, "account-not-found")

    @pytest.mark.parametrize(
        ("raw", "status"),
        [
            (b"{", 400),
            (b'{"username": 1}', 422),
            (b'{"number_of_services": 0}', 422),
            (b'{"max_number_of_services": -5}', 422),
        ],
        ids=["malformed", "wrong-type", "counter-not-writable", "negative"],
    )
    def test_update_account_bad_bodies(self, call: Caller, raw: bytes, status: int) -> None:
        account = call.new_account()
        assert_problem(call("PUT", f"/accounts/{account['id']}", raw=raw), status)

    def test_delete_empty_account_leaves_no_item(
        self, call: Caller, dynamodb_client: DynamoDBClient, table_name: str
    ) -> None:
        # GIVEN an account without services
        account = call.new_account()

        # WHEN it is deleted
        assert call.ok("DELETE", f"/accounts/{account['id']}") == {"deleted": True}

        # THEN it is gone, its Count item too
        assert_problem(call("GET", f"/accounts/{account['id']}"), 404, "account-not-found")
        assert partition_items(dynamodb_client, table_name, account["id"]) == []
        reply = call("DELETE", f"/accounts/{account['id']}")
        assert_problem(reply, 404, "account-not-found")

    def test_delete_account_with_live_service_is_409(self, call: Caller) -> None:
        account = call.new_account()
        call.new_service(account["id"])
        reply = call("DELETE", f"/accounts/{account['id']}")
        assert_problem(reply, 409, "account-not-empty")
        assert call.account(account["id"])["id"] == account["id"]

    def test_delete_account_with_pending_deleted_service_is_409(
        self, call: Caller, dynamodb_client: DynamoDBClient, table_name: str
    ) -> None:
        # GIVEN an account whose only service was deleted but not yet processed
        account = call.new_account()
        service = call.new_service(account["id"])
        assert call.delete_service(account["id"], service["id"]).status == 200

        # WHEN the account is deleted THEN 409, and nothing was removed
        assert_problem(call("DELETE", f"/accounts/{account['id']}"), 409, "account-not-empty")
        assert len(partition_items(dynamodb_client, table_name, account["id"])) == 3

    # -- usage and counts --------------------------------------------------------------

    def test_usage_reports_counters_and_pending(self, call: Caller) -> None:
        account = call.new_account(limit=4)
        call.new_service(account["id"])
        call.new_service(account["id"])
        usage = call.ok("GET", f"/accounts/{account['id']}/usage")
        assert usage["account_id"] == account["id"]
        assert usage["max_number_of_services"] == 4
        assert usage["number_of_services"] == 2
        assert usage["effective"] >= 2
        assert usage["remaining"] == 4 - usage["effective"]
        assert usage["pending"] == 2 - usage["count_value"]

    def test_counts_of_an_account(self, call: Caller) -> None:
        account = call.new_account()
        counts = call.ok("GET", f"/counts/{account['id']}")
        [count] = counts["items"]
        assert (count["account_id"], count["count_type"]) == (account["id"], "SERVICES")
        assert count["count_value"] == 0

    @pytest.mark.parametrize("path", ["/accounts/{id}/usage", "/counts/{id}"])
    def test_usage_and_counts_of_missing_account_are_404(self, call: Caller, path: str) -> None:
        assert_problem(call("GET", path.format(id=new_id())), 404, "account-not-found")

    # -- services -----------------------------------------------------------------------

    def test_create_service_counts_it(self, call: Caller) -> None:
        # GIVEN an account
        account = call.new_account(limit=2)

        # WHEN a service is created
        service = call.new_service(account["id"], "web")

        # THEN it is returned, readable, and the best-effort counter went up
        assert (service["account_id"], service["name"]) == (account["id"], "web")
        assert set(service) == {"id", "account_id", "name", "created_at", "updated_at"}
        fetched = call.ok(
            "GET", f"/services/{service['id']}", query={"ownerAccountId": account["id"]}
        )
        assert fetched == service
        assert call.account(account["id"])["number_of_services"] == 1

    def test_create_service_beyond_limit_is_409(self, call: Caller) -> None:
        account = call.new_account(limit=1)
        call.new_service(account["id"])
        reply = call("POST", "/services", json_body={"account_id": account["id"], "name": "x"})
        problem = assert_problem(reply, 409, "service-limit-reached")
        assert problem["limit"] == 1
        assert call.account(account["id"])["number_of_services"] == 1
        assert len(call.walk(f"/accounts/{account['id']}/services", 10)) == 1

    def test_create_service_with_zero_limit_is_409(self, call: Caller) -> None:
        account = call.new_account(limit=0)
        reply = call("POST", "/services", json_body={"account_id": account["id"], "name": "x"})
        assert_problem(reply, 409, "service-limit-reached")

    def test_create_service_for_missing_account_is_404(self, call: Caller) -> None:
        reply = call("POST", "/services", json_body={"account_id": new_id(), "name": "x"})
        assert_problem(reply, 404, "account-not-found")

    @pytest.mark.parametrize(
        ("raw", "status"),
        [
            (b"", 400),
            (b"[1", 400),
            (b'{"name": "x"}', 422),
            (b'{"account_id": "nope", "name": "x"}', 422),
            (b'{"account_id": "01234567-89ab-cdef-0123-456789abcdef", "name": ""}', 422),
            (b'{"account_id": "01234567-89ab-cdef-0123-456789abcdef", "name": "x", "y": 1}', 422),
        ],
        ids=["empty", "malformed", "no-account", "bad-uuid", "empty-name", "unknown-field"],
    )
    def test_create_service_bad_bodies(self, call: Caller, raw: bytes, status: int) -> None:
        assert_problem(call("POST", "/services", raw=raw), status)

    def test_get_service_requires_owner(self, call: Caller) -> None:
        account = call.new_account()
        service = call.new_service(account["id"])
        problem = assert_problem(call("GET", f"/services/{service['id']}"), 422)
        assert problem["errors"][0]["location"] == "query.ownerAccountId"
        reply = call("GET", f"/services/{service['id']}", query={"ownerAccountId": "x"})
        assert_problem(reply, 422, "validation-failed")

    def test_get_service_of_another_owner_is_404(self, call: Caller) -> None:
        account = call.new_account()
        service = call.new_service(account["id"])
        reply = call("GET", f"/services/{service['id']}", query={"ownerAccountId": new_id()})
        assert_problem(reply, 404, "service-not-found")

    def test_service_path_must_be_a_uuid(self, call: Caller) -> None:
        reply = call("GET", "/services/nope", query={"ownerAccountId": new_id()})
        assert_problem(reply, 422, "validation-failed")

    def test_rename_service(self, call: Caller) -> None:
        account = call.new_account()
        service = call.new_service(account["id"], "web")
        owner = {"ownerAccountId": account["id"]}
        renamed = call.ok(
            "PUT", f"/services/{service['id']}", query=owner, json_body={"name": "api"}
        )
        assert (renamed["id"], renamed["name"]) == (service["id"], "api")
        assert call.ok("GET", f"/services/{service['id']}", query=owner)["name"] == "api"

    def test_rename_errors(self, call: Caller) -> None:
        account = call.new_account()
        service = call.new_service(account["id"])
        owner = {"ownerAccountId": account["id"]}
        path = f"/services/{service['id']}"
        assert_problem(call("PUT", path, json_body={"name": "x"}), 422)  # no owner
        assert_problem(call("PUT", path, query=owner, json_body={"name": ""}), 422)
        assert_problem(call("PUT", path, query=owner, raw=b"{"), 400)
        missing = f"/services/{new_id()}"
        assert_problem(call("PUT", missing, query=owner, json_body={"name": "x"}), 404)
        assert call.delete_service(account["id"], service["id"]).status == 200
        assert_problem(call("PUT", path, query=owner, json_body={"name": "x"}), 404)

    def test_delete_service_decrements_and_hides_it(self, call: Caller) -> None:
        # GIVEN an account with two services
        account = call.new_account()
        first = call.new_service(account["id"])
        second = call.new_service(account["id"])

        # WHEN one is deleted
        reply = call.delete_service(account["id"], first["id"])

        # THEN it is gone from reads and listings, and BE went down by one
        assert (reply.status, reply.json()) == (200, {"deleted": True})
        owner = {"ownerAccountId": account["id"]}
        assert_problem(call("GET", f"/services/{first['id']}", query=owner), 404)
        listed = call.walk(f"/accounts/{account['id']}/services", 10)
        assert [s["id"] for s in listed] == [second["id"]]
        assert call.account(account["id"])["number_of_services"] == 1

    def test_delete_service_twice_is_404_and_decrements_once(self, call: Caller) -> None:
        account = call.new_account()
        service = call.new_service(account["id"])
        call.new_service(account["id"])
        assert call.delete_service(account["id"], service["id"]).status == 200
        assert_problem(call.delete_service(account["id"], service["id"]), 404, "service-not-found")
        assert call.account(account["id"])["number_of_services"] == 1

    def test_delete_service_errors(self, call: Caller) -> None:
        account = call.new_account()
        service = call.new_service(account["id"])
        assert_problem(call("DELETE", f"/services/{service['id']}"), 422)  # no owner
        assert_problem(call.delete_service(account["id"], new_id()), 404, "service-not-found")
        assert_problem(call.delete_service(new_id(), service["id"]), 404, "service-not-found")
        assert call.account(account["id"])["number_of_services"] == 1

    def test_delete_frees_a_slot(self, call: Caller) -> None:
        account = call.new_account(limit=1)
        service = call.new_service(account["id"])
        assert call.delete_service(account["id"], service["id"]).status == 200
        call.new_service(account["id"])
        assert call.account(account["id"])["number_of_services"] == 1

    def test_list_services_pages(self, call: Caller) -> None:
        # GIVEN five services
        account = call.new_account()
        created = {call.new_service(account["id"], f"s{n}")["id"] for n in range(5)}

        # WHEN listed two at a time THEN each comes once
        listed = [s["id"] for s in call.walk(f"/accounts/{account['id']}/services", 2)]
        assert sorted(listed) == sorted(created)

    @pytest.mark.parametrize(
        "query",
        [{"limit": "0"}, {"cursor": "%%%"}, {"cursor": "e30"}, {"limit": "1", "x": "1"}],
        ids=["zero", "garbage-cursor", "foreign-cursor", "unknown-param"],
    )
    def test_list_services_rejects_bad_query(self, call: Caller, query: dict[str, str]) -> None:
        account = call.new_account()
        reply = call("GET", f"/accounts/{account['id']}/services", query=query)
        assert_problem(reply, 422, "validation-failed")

    def test_list_services_of_missing_account_is_404(self, call: Caller) -> None:
        reply = call("GET", f"/accounts/{new_id()}/services")
        assert_problem(reply, 404, "account-not-found")

    # -- framework-level errors keep the problem shape --------------------------------

    def test_method_not_allowed_is_a_problem(self, call: Caller) -> None:
        reply = call("PATCH", "/accounts")
        assert_problem(reply, 405)

    def test_wrong_content_type_is_a_problem(self, call: Caller) -> None:
        reply = call("POST", "/accounts", raw=b"username=a", headers={"Content-Type": "text/plain"})
        assert_problem(reply, 415)
