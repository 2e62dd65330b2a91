"""The local runtime: embedded backend, provisioning, WSGI adapter and orchestrator."""

from __future__ import annotations

import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
import requests
from chalice.app import Chalice, Response

from infrastructure.local.backend import SerialisedApp
from infrastructure.local.provision import StackOutputs, cloudformation_client, provision
from infrastructure.local.wsgi import ApiServer

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIEnvironment

    from mypy_boto3_dynamodb import DynamoDBClient

REPO_ROOT = Path(__file__).resolve().parents[2]


# -- embedded backend ------------------------------------------------------------------


def test_concurrent_adds_on_one_item_are_all_applied(
    backend_url: str, stack_outputs: StackOutputs, dynamodb_client: DynamoDBClient
) -> None:
    # GIVEN one counter item and 8 threads with their own clients
    table = stack_outputs.table_name
    key = {"PK": {"S": f"TEST#{uuid.uuid4()}"}, "SK": {"S": "COUNTER"}}
    dynamodb_client.put_item(TableName=table, Item={**key, "n": {"N": "0"}})
    clients = [boto3.client("dynamodb", endpoint_url=backend_url) for _ in range(8)]

    def add_fifty(client: DynamoDBClient) -> None:
        for _ in range(50):
            client.update_item(
                TableName=table,
                Key=key,
                UpdateExpression="ADD n :one",
                ExpressionAttributeValues={":one": {"N": "1"}},
            )

    # WHEN they ADD 1 fifty times each, with thread switches as frequent as possible
    # (without the backend's lock this loses updates: 389-393 of 400 in trials)
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(add_fifty, clients))
    finally:
        sys.setswitchinterval(previous)

    # THEN every increment counted, as single-item atomicity on DynamoDB guarantees
    item = dynamodb_client.get_item(TableName=table, Key=key, ConsistentRead=True)["Item"]
    assert item["n"] == {"N": "400"}


def test_serialised_app_keeps_the_lock_while_the_body_is_generated() -> None:
    # GIVEN a WSGI app that does a read-modify-write lazily, while its body is iterated
    state = {"value": 0, "closed": 0}

    def racy_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            seen = state["value"]
            time.sleep(0.001)  # let another request in between read and write
            state["value"] = seen + 1
            yield str(seen + 1).encode()
        finally:
            state["closed"] += 1

    app = SerialisedApp(racy_app)

    def call(_: int) -> bytes:
        return b"".join(app({}, lambda status, headers, exc_info=None: lambda data: None))

    # WHEN 8 threads call it 20 times each
    with ThreadPoolExecutor(max_workers=8) as pool:
        bodies = list(pool.map(call, range(160)))

    # THEN no update was lost, and every body iterable was closed
    assert state["value"] == 160
    assert sorted(int(body) for body in bodies) == list(range(1, 161))
    assert state["closed"] == 160


# -- provisioning ----------------------------------------------------------------------


def test_provisioning_twice_reuses_the_stack(
    backend_url: str, stack_outputs: StackOutputs, dynamodb_client: DynamoDBClient
) -> None:
    # GIVEN the session's stack (provisioned once already)
    client = cloudformation_client(backend_url)

    # WHEN provisioning runs again
    again = provision(client)

    # THEN it returns the same outputs, and the stack and its resources exist once
    assert again == stack_outputs
    stacks = [
        s
        for s in client.describe_stacks()["Stacks"]
        if s["StackName"] == stack_outputs.stack_name and s["StackStatus"] != "DELETE_COMPLETE"
    ]
    assert len(stacks) == 1
    table = dynamodb_client.describe_table(TableName=stack_outputs.table_name)["Table"]
    assert table.get("LatestStreamArn") == stack_outputs.stream_arn
    sqs = boto3.client("sqs", endpoint_url=backend_url)
    for name in (stack_outputs.tier1_queue_name, stack_outputs.tier2_queue_name):
        assert sqs.get_queue_url(QueueName=name)["QueueUrl"].endswith("/" + name)


def test_stack_outputs_become_the_app_settings(stack_outputs: StackOutputs) -> None:
    # GIVEN provisioned outputs / WHEN turned into the app's environment
    environment = stack_outputs.app_environment()

    # THEN they name exactly what chalicelib.settings reads
    assert environment == {
        "COUNTER_TABLE_NAME": "distributed-counter",
        "COUNTER_STREAM_ARN": stack_outputs.stream_arn,
        "COUNTER_TIER1_QUEUE_NAME": "distributed-counter-dlq-tier1",
        "COUNTER_TIER2_QUEUE_NAME": "distributed-counter-dlq-tier2",
    }


# -- WSGI adapter (a tiny app, independent of the real one) ----------------------------


def _tiny_app() -> Chalice:
    app = Chalice(app_name="adapter-test")
    app.api.binary_types.append("application/octet-stream")

    @app.route("/echo/{name}", methods=["GET", "POST"])
    def echo(name: str) -> Response:
        request = app.current_request
        assert request is not None
        query = request.query_params
        return Response(
            body={
                "name": name,
                "method": request.method,
                "query": {k: query.getlist(k) for k in query} if query else {},
                "json": request.json_body if request.method == "POST" else None,
                "header": request.headers.get("x-test"),
            },
            status_code=201 if request.method == "POST" else 200,
            headers={"X-Single": "one", "X-Multi": ["a", "b"]},
        )

    @app.route("/bytes", methods=["GET"])
    def raw_bytes() -> Response:
        return Response(
            body=b"\x00\x01\xff",
            status_code=200,
            headers={"Content-Type": "application/octet-stream"},
        )

    return app


@pytest.fixture(scope="module")
def tiny_api() -> Iterator[str]:
    with ApiServer(_tiny_app(), port=0) as server:
        yield server.url


def test_adapter_passes_status_headers_and_json_body(tiny_api: str) -> None:
    # WHEN a JSON body is posted with a custom header
    response = requests.post(
        f"{tiny_api}/echo/ada", json={"k": [1, 2]}, headers={"X-Test": "yes"}, timeout=10
    )

    # THEN the app's status, headers (single and multi-value) and body come back
    assert response.status_code == 201
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["X-Single"] == "one"
    assert response.raw.headers.getlist("X-Multi") == ["a", "b"]
    body = response.json()
    assert body["name"] == "ada"
    assert body["method"] == "POST"
    assert body["json"] == {"k": [1, 2]}
    assert body["header"] == "yes"


def test_adapter_passes_the_query_string(tiny_api: str) -> None:
    response = requests.get(f"{tiny_api}/echo/ada?a=1&a=2&empty=", timeout=10)

    assert response.status_code == 200
    assert response.json()["query"] == {"a": ["1", "2"], "empty": [""]}


def test_adapter_answers_unknown_routes_like_api_gateway(tiny_api: str) -> None:
    response = requests.get(f"{tiny_api}/no/such/route", timeout=10)

    assert response.status_code == 403
    assert response.json() == {"message": "Missing Authentication Token"}
    assert response.headers["x-amzn-ErrorType"] == "UnauthorizedException"


def test_adapter_answers_wrong_methods_with_405(tiny_api: str) -> None:
    response = requests.delete(f"{tiny_api}/echo/ada", timeout=10)

    assert response.status_code == 405


def test_adapter_decodes_binary_responses(tiny_api: str) -> None:
    response = requests.get(
        f"{tiny_api}/bytes", headers={"Accept": "application/octet-stream"}, timeout=10
    )

    assert response.status_code == 200
    assert response.content == b"\x00\x01\xff"


def test_concurrent_requests_each_see_their_own_request(tiny_api: str) -> None:
    # GIVEN 8 clients at once, each with its own name and query
    def call(i: int) -> tuple[int, Any]:
        with requests.Session() as session:
            answers = [
                session.get(f"{tiny_api}/echo/n{i}?i={i}", timeout=10).json() for _ in range(10)
            ]
        return i, answers

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(call, range(8)))

    # THEN no answer mixes up the path of one request with the query of another
    for i, answers in results:
        for answer in answers:
            assert answer["name"] == f"n{i}"
            assert answer["query"] == {"i": [str(i)]}


def test_keep_alive_requests_do_not_stall(tiny_api: str) -> None:
    # chalice local's server takes ~44 ms per keep-alive request (Nagle + delayed
    # ACK); the adapter takes a few. The bound leaves room for a busy machine.
    with requests.Session() as session:
        session.get(f"{tiny_api}/echo/warm", timeout=10)
        latencies = []
        for _ in range(50):
            started = time.perf_counter()
            session.get(f"{tiny_api}/echo/x", timeout=10)
            latencies.append(time.perf_counter() - started)

    assert statistics.median(latencies) < 0.025


# -- the real app through the session fixtures -----------------------------------------


def test_the_real_app_answers_health(api: requests.Session) -> None:
    response = api.get("/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


# -- orchestrator ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_for_health(url: str, process: subprocess.Popen[str], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "orchestrator exited before serving"
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url}/health did not answer within {timeout} s")


def _is_listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _run_orchestrator(*args: str, environment: dict[str, str]) -> tuple[subprocess.Popen[str], int]:
    api_port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "infrastructure.local", "--port", str(api_port), *args],
        cwd=REPO_ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return process, api_port


def _stop(process: subprocess.Popen[str], signum: int) -> tuple[int, str]:
    process.send_signal(signum)
    try:
        output, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate(timeout=10)
        raise AssertionError(f"orchestrator did not stop:\n{output}") from None
    return process.returncode, output


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_orchestrator_serves_then_stops_everything_on_a_signal(signum: int) -> None:
    # GIVEN no external backend configured
    environment = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
    backend_port = _free_port()
    process, api_port = _run_orchestrator(
        "--backend-port", str(backend_port), environment=environment
    )
    try:
        # WHEN it has started, the API answers
        _wait_for_health(f"http://127.0.0.1:{api_port}", process)
    except BaseException:
        process.kill()
        output, _ = process.communicate(timeout=10)
        print(output)
        raise

    # ... and then it gets the signal
    code, output = _stop(process, signum)

    # THEN it exits 0 and leaves nothing running or listening
    assert code == 0, output
    match = re.search(r"embedded backend \(pid (\d+)\)", output)
    assert match, output
    assert not _pid_alive(int(match.group(1))), output
    assert not _is_listening(api_port)
    assert not _is_listening(backend_port)
    assert "stopped (exit 0)" in output


def test_orchestrator_uses_an_external_backend_without_starting_one(
    backend_url: str, stack_outputs: StackOutputs
) -> None:
    # GIVEN a backend that is already running (the session's), with the stack in it
    process, api_port = _run_orchestrator(
        "--backend-url", backend_url, "--no-event-sources", environment=dict(os.environ)
    )
    try:
        # WHEN the orchestrator starts against it
        _wait_for_health(f"http://127.0.0.1:{api_port}", process)
    except BaseException:
        process.kill()
        print(process.communicate(timeout=10)[0])
        raise
    code, output = _stop(process, signal.SIGINT)

    # THEN it reused the backend and the stack, and left the backend running
    assert code == 0, output
    assert f"using the backend at {backend_url}" in output
    assert "embedded backend (pid" not in output
    assert stack_outputs.stream_arn in output
    assert requests.get(backend_url, timeout=5).status_code < 500
