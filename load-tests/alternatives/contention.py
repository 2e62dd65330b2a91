"""DynamoDB's optimistic concurrency for transactions, reproduced on the local backend.

The embedded backend serialises requests, so no transaction is ever "in flight" next
to another write and DynamoDB's conflicts never happen locally. This model restores
them on the client side, with DynamoDB's rules:

* a ``TransactWriteItems`` that names an item held by another in-flight transaction
  or single-item write is cancelled (``TransactionCanceledException``, reason
  ``TransactionConflict`` for that item);
* a single-item write (Put/Update/Delete) to an item held by an in-flight transaction
  fails with ``TransactionConflictException``;
* single-item writes never conflict with each other (DynamoDB serialises them).

How long a write is "in flight" follows DynamoDB's timing, not the local backend's: a
transaction holds its items from the moment it is sent for ``transaction_window``
seconds (default 25 ms, a typical TransactWriteItems latency in one region), a single
write for ``single_window`` (5 ms), and never after its response has arrived. The
local round trip alone is not used: it includes the wait in the serialised backend's
queue, which would make conflicts depend on how busy this machine is. The model applies
to every strategy alike (the API's and the stream processor's clients).

Refusals happen in ``before-send``, like ``tests.faults``: the forged response goes
through botocore's parser and retry policy as DynamoDB's would. Each one is recorded
in a :class:`tests.faults.InjectionLog`.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

from botocore.awsrequest import AWSResponse

from tests.faults import Injection, InjectionLog

if TYPE_CHECKING:
    from botocore.client import BaseClient

_PARAMS_KEY: Final = "bench_contention_params"
_CALL_KEY: Final = "bench_contention_call"
_HELD_KEY: Final = "bench_contention_held"
_PREFIX: Final = "com.amazonaws.dynamodb.v20120810#"
_SINGLE_WRITES: Final = frozenset({"PutItem", "UpdateItem", "DeleteItem"})

ItemKey = tuple[str, str, str]


def _item_keys(operation: str, params: Mapping[str, Any]) -> list[ItemKey]:
    def key(table: str, attrs: Mapping[str, Any]) -> ItemKey:
        return table, str(attrs["PK"].get("S", "")), str(attrs["SK"].get("S", ""))

    if operation == "TransactWriteItems":
        keys = []
        for entry in params.get("TransactItems", []):
            ((action, body),) = entry.items()
            keys.append(key(body["TableName"], body["Item"] if action == "Put" else body["Key"]))
        return keys
    attrs = params.get("Item") if operation == "PutItem" else params.get("Key")
    return [key(str(params.get("TableName")), attrs)] if attrs else []


class _Raw:
    def __init__(self, payload: bytes) -> None:
        self._payload = payload

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._payload


def _error(url: str, code: str, message: str, **extra: Any) -> AWSResponse:
    payload = json.dumps({"__type": _PREFIX + code, "message": message, **extra}).encode()
    headers = {
        "Content-Type": "application/x-amz-json-1.0",
        "Content-Length": str(len(payload)),
        "x-amzn-RequestId": "bench-contention",
    }
    return AWSResponse(url, 400, headers, _Raw(payload))


class OptimisticConcurrency:
    """Items recently written by one strategy's clients, and the conflicts they cause."""

    def __init__(
        self,
        *,
        transaction_window: float = 0.025,
        single_window: float = 0.005,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self._transaction_window = transaction_window
        self._single_window = single_window
        self._clock = clock
        #: item -> {call: until when that call holds it}, for transactions / single writes
        self._in_transactions: dict[ItemKey, dict[int, float]] = {}
        self._in_single_writes: dict[ItemKey, dict[int, float]] = {}
        self._calls = itertools.count(1)
        self.log = InjectionLog()

    def attach(self, client: BaseClient, *, label: str = "") -> BaseClient:
        uid = f"bench-contention-{id(self)}"
        events = client.meta.events
        events.register("before-parameter-build.dynamodb", self._remember, unique_id=f"{uid}-p")
        events.register("before-send.dynamodb", self._before_send(label), unique_id=f"{uid}-s")
        events.register("after-call.dynamodb", self._release, unique_id=f"{uid}-c")
        events.register("after-call-error.dynamodb", self._release, unique_id=f"{uid}-e")
        return client

    def _remember(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context[_PARAMS_KEY] = params

    @staticmethod
    def _held(holders: dict[ItemKey, dict[int, float]], key: ItemKey, now: float) -> bool:
        calls = holders.get(key)
        if not calls:
            return False
        for call, until in list(calls.items()):
            if until <= now:
                del calls[call]
        if not calls:
            del holders[key]
        return bool(calls)

    def _hold(
        self,
        holders: dict[ItemKey, dict[int, float]],
        keys: list[ItemKey],
        until: float,
        context: dict[str, Any],
    ) -> None:
        call = context.setdefault(_CALL_KEY, next(self._calls))
        for key in keys:
            holders.setdefault(key, {})[call] = until
        context[_HELD_KEY] = (holders, keys)

    def _release(self, context: dict[str, Any], **_: Any) -> None:
        held = context.pop(_HELD_KEY, None)
        if held is None:
            return
        holders, keys = held
        call = context.get(_CALL_KEY)
        with self._lock:
            for key in keys:
                calls = holders.get(key)
                if calls is not None:
                    calls.pop(call, None)
                    if not calls:
                        del holders[key]

    def _before_send(self, label: str) -> Any:
        def hook(request: Any, event_name: str, **_: Any) -> AWSResponse | None:
            operation = event_name.rsplit(".", 1)[-1]
            if operation != "TransactWriteItems" and operation not in _SINGLE_WRITES:
                return None
            params = request.context.get(_PARAMS_KEY, {})
            keys = _item_keys(operation, params)
            now = self._clock()
            with self._lock:
                if operation == "TransactWriteItems":
                    busy = [
                        self._held(self._in_transactions, k, now)
                        or self._held(self._in_single_writes, k, now)
                        for k in keys
                    ]
                    if any(busy):
                        reasons = [{"Code": "TransactionConflict" if b else "None"} for b in busy]
                        return self._refuse(
                            request,
                            label,
                            operation,
                            params,
                            "TransactionCanceledException",
                            "Transaction cancelled, please refer cancellation reasons for specific "
                            "reasons",
                            CancellationReasons=reasons,
                        )
                    self._hold(
                        self._in_transactions, keys, now + self._transaction_window, request.context
                    )
                else:
                    if any(self._held(self._in_transactions, k, now) for k in keys):
                        return self._refuse(
                            request,
                            label,
                            operation,
                            params,
                            "TransactionConflictException",
                            "Transaction is ongoing for the item",
                        )
                    self._hold(
                        self._in_single_writes, keys, now + self._single_window, request.context
                    )
            return None

        return hook

    def _refuse(
        self,
        request: Any,
        label: str,
        operation: str,
        params: Mapping[str, Any],
        code: str,
        message: str,
        **extra: Any,
    ) -> AWSResponse:
        self.log.record(
            Injection(kind="conflict", operation=operation, rule=code, client=label, params=params)
        )
        return _error(request.url, code, message, **extra)
