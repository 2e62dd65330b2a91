"""Fault injection for boto3 clients, through botocore's event hooks.

A :class:`FaultInjector` is attached to one or more clients and holds *rules*: which
operation (and optionally which request, by a predicate on its parameters) fails,
how (a :class:`FaultKind`), and when (a :class:`Schedule`). Every injection is
recorded, so a test can assert what happened as well as what it caused.

Where the fault is injected, and why there
------------------------------------------
Faults fire in ``before-send``, which botocore emits once per *attempt*, inside its
retry loop. So an injected error goes through botocore's real parser and its real
retry policy, exactly as an error from DynamoDB would:

* refusals (``throttle``, ``conflict``, ``canceled``, ``server_error``) return a
  canned HTTP error response instead of sending the request; nothing reaches the
  backend. On a client with standard retries a throttle or a 500 is retried by
  botocore (each retry is a new matching attempt); ``TransactionConflictException``
  and ``TransactionCanceledException`` are not.
* ``interleave`` runs an action (another request, say) before the attempt is sent,
  then lets it go: deterministic races.
* ``ambiguous`` sends the request to the backend for real (so the write is applied,
  or refused by its condition: :attr:`Injection.backend_status` says which), then
  raises ``ReadTimeoutError`` or ``ConnectionClosedError`` as if the response had been
  lost. botocore's standard policy retries those, like it would a real timeout.

(A ``before-call`` hook could short-circuit the call too, but it fires once per API
call, outside the retry loop: it would hide botocore's retries from the test.)

Example
-------
::

    faults = FaultInjector(seed=7)
    faults.attach(client, label="dynamodb_no_retry")
    counter = expression_contains("UpdateExpression", "number_of_services")
    faults.ambiguous("UpdateItem", where=counter)
    faults.throttle("GetItem", when=times(2))
    ...
    assert faults.count(FaultKind.AMBIGUOUS) == 1

Extending
---------
:class:`Schedule` and :class:`InjectionLog` know nothing about botocore: a stream
processor harness (crash after k records, deliver a batch twice) can reuse them to
decide when to fire and to record what it did (``InjectionLog.record``).
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import json
import random
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from botocore.compat import HTTPHeaders
from botocore.exceptions import ConnectionClosedError, HTTPClientError, ReadTimeoutError
from botocore.httpsession import URLLib3Session

from chalicelib.bootstrap import Container, use_container

if TYPE_CHECKING:
    from botocore.client import BaseClient

#: Key under which the hooks keep a call's API parameters in botocore's request context.
_PARAMS_KEY: Final = "fault_injection_params"
_CALL_KEY: Final = "fault_injection_call"
_DYNAMODB_ERROR_PREFIX: Final = "com.amazonaws.dynamodb.v20120810#"


class FaultKind(enum.StrEnum):
    THROTTLE = "throttle"
    AMBIGUOUS = "ambiguous"
    CONFLICT = "conflict"
    CANCELED = "canceled"
    SERVER_ERROR = "server_error"
    #: Not a failure: run an action (a concurrent writer) just before the attempt is
    #: sent, then send it. Makes races deterministic.
    INTERLEAVE = "interleave"


# -- schedules: when a rule fires -----------------------------------------------------


class Schedule(Protocol):
    """Decides whether the ``index``-th matching event (1-based) fires."""

    def __call__(self, index: int) -> bool: ...


@dataclass(frozen=True)
class Always:
    def __call__(self, index: int) -> bool:
        return True


@dataclass(frozen=True)
class Indices:
    """Fire on exactly these matching events (1-based)."""

    indices: frozenset[int]

    def __call__(self, index: int) -> bool:
        return index in self.indices


@dataclass
class Probability:
    """Fire with probability ``p``, from a seeded RNG (reproducible for one order of calls)."""

    p: float
    seed: int = 0
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"probability must be in [0, 1], got {self.p}")
        self._rng = random.Random(self.seed)

    def __call__(self, index: int) -> bool:
        return self._rng.random() < self.p


def always() -> Schedule:
    """Every matching event."""
    return Always()


def nth(n: int) -> Schedule:
    """Only the ``n``-th matching event (1-based)."""
    if n < 1:
        raise ValueError("n is 1-based")
    return Indices(frozenset({n}))


def times(k: int, *, skip: int = 0) -> Schedule:
    """The next ``k`` matching events, after letting ``skip`` of them through."""
    if k < 0 or skip < 0:
        raise ValueError("k and skip must be >= 0")
    return Indices(frozenset(range(skip + 1, skip + k + 1)))


def probability(p: float, *, seed: int = 0) -> Schedule:
    """Each matching event independently with probability ``p`` (seeded)."""
    return Probability(p, seed)


# -- predicates on the request parameters ---------------------------------------------

Params = Mapping[str, Any]
Predicate = Callable[[Params], bool]


def expression_contains(parameter: str, text: str) -> Predicate:
    """The request's ``parameter`` (e.g. ``UpdateExpression``) contains ``text``."""
    return lambda params: text in str(params.get(parameter, ""))


def key_matches(**attributes: str) -> Predicate:
    """The request's ``Key`` (or ``Item``) has these string attribute values.

    ``key_matches(PK="ACCOUNT#...", SK="METADATA")``; a value ending in ``*`` matches
    as a prefix (``SK="SERVICE#*"``).
    """

    def matches(params: Params) -> bool:
        key = params.get("Key") or params.get("Item") or {}
        for name, wanted in attributes.items():
            actual = key.get(name, {}).get("S")
            if actual is None:
                return False
            if wanted.endswith("*"):
                if not actual.startswith(wanted[:-1]):
                    return False
            elif actual != wanted:
                return False
        return True

    return matches


def all_of(*predicates: Predicate) -> Predicate:
    return lambda params: all(p(params) for p in predicates)


# -- the record -----------------------------------------------------------------------


@dataclass(frozen=True)
class Injection:
    """One fault that fired."""

    kind: str
    operation: str
    rule: str
    #: Label of the client it fired on (``attach(..., label=)``).
    client: str = ""
    #: Which API call on that client (1-based, per client) and which botocore attempt.
    call: int = 0
    attempt: int = 1
    params: Mapping[str, Any] = field(default_factory=dict, repr=False)
    #: ``ambiguous`` only: HTTP status the backend answered before the response was
    #: dropped (200: the write was applied), or ``None`` if it was never sent.
    backend_status: int | None = None

    @property
    def applied(self) -> bool:
        """Whether the backend applied the request despite the failure the client saw."""
        return self.backend_status is not None and 200 <= self.backend_status < 300


class InjectionLog:
    """Thread-safe list of injections with counting helpers (reusable by other harnesses)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[Injection] = []

    def record(self, injection: Injection) -> None:
        with self._lock:
            self._items.append(injection)

    def __iter__(self) -> Iterator[Injection]:
        with self._lock:
            return iter(list(self._items))

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def select(
        self, kind: str | None = None, operation: str | None = None, rule: str | None = None
    ) -> list[Injection]:
        return [
            i
            for i in self
            if (kind is None or i.kind == kind)
            and (operation is None or i.operation == operation)
            and (rule is None or i.rule == rule)
        ]

    def count(
        self, kind: str | None = None, operation: str | None = None, rule: str | None = None
    ) -> int:
        return len(self.select(kind, operation, rule))

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


# -- rules ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """What to do to a matching attempt."""

    kind: FaultKind
    #: Error code for refusals (e.g. ``ThrottlingException``).
    code: str = ""
    status: int = 400
    message: str = "injected fault"
    #: Extra top-level fields of the error body (e.g. ``CancellationReasons``).
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: ``ambiguous`` only: the exception the client sees, and whether the request
    #: reaches the backend first.
    error: type[HTTPClientError] = ReadTimeoutError
    send: bool = True
    #: ``interleave`` only: what runs before the attempt is sent.
    action: Callable[[], None] | None = None
    #: Extra top-level fields computed from the refused request's parameters (e.g.
    #: ``CancellationReasons`` with one reason per item of that very transaction).
    extra_for: Callable[[Params], Mapping[str, Any]] | None = None


@dataclass
class Rule:
    """Operation + predicate + schedule -> fault. ``matched``/``fired`` count attempts."""

    name: str
    operation: str | None
    where: Predicate | None
    fault: Fault
    when: Schedule
    client: str | None = None
    matched: int = 0
    fired: int = 0
    enabled: bool = True

    def matches(self, client: str, operation: str, params: Params) -> bool:
        return (
            self.enabled
            and (self.client is None or self.client == client)
            and (self.operation is None or self.operation == operation)
            and (self.where is None or self.where(params))
        )


def _error_response(
    request: AWSPreparedRequest, fault: Fault, params: Params | None = None
) -> AWSResponse:
    body = {"__type": _DYNAMODB_ERROR_PREFIX + fault.code, "message": fault.message}
    body |= dict(fault.extra)
    if fault.extra_for is not None:
        body |= dict(fault.extra_for(params or {}))
    payload = json.dumps(body).encode()
    headers = {
        "Content-Type": "application/x-amz-json-1.0",
        "Content-Length": str(len(payload)),
        "x-amzn-RequestId": "injected-fault",
    }
    return AWSResponse(request.url, fault.status, HTTPHeaders.from_dict(headers), _Raw(payload))


class _Raw:
    """The minimal raw body AWSResponse reads from."""

    def __init__(self, payload: bytes) -> None:
        self._payload = payload

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._payload


def _cancellation(reasons: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    codes = ", ".join(str(r.get("Code", "None")) for r in reasons)
    return {
        "message": f"Transaction cancelled, please refer cancellation reasons for "
        f"specific reasons [{codes}]",
        "CancellationReasons": [dict(r) for r in reasons],
    }


class FaultInjector:
    """Rules, the hooks that apply them, and the log of what fired.

    Thread-safe: the concurrency tests drive one injector from many threads. Rules are
    evaluated in the order they were added; the first that fires wins the attempt.
    """

    def __init__(self, *, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._calls: dict[str, itertools.count[int]] = {}
        self._rng = random.Random(seed)
        self._http = URLLib3Session(timeout=10)
        self.log = InjectionLog()

    # -- wiring ------------------------------------------------------------------

    def attach(self, client: BaseClient, *, label: str = "") -> BaseClient:
        """Register the hooks on ``client`` (idempotent per injector and client)."""
        label = label or f"client-{id(client)}"
        service = client.meta.service_model.service_id.hyphenize()
        uid = f"fault-injector-{id(self)}"
        with self._lock:
            self._calls.setdefault(label, itertools.count(1))
        client.meta.events.register(
            f"before-parameter-build.{service}",
            self._remember_params(label),
            unique_id=f"{uid}-params",
        )
        client.meta.events.register(
            f"before-send.{service}", self._before_send(label), unique_id=f"{uid}-send"
        )
        return client

    def detach(self, client: BaseClient) -> None:
        service = client.meta.service_model.service_id.hyphenize()
        uid = f"fault-injector-{id(self)}"
        client.meta.events.unregister(
            f"before-parameter-build.{service}", unique_id=f"{uid}-params"
        )
        client.meta.events.unregister(f"before-send.{service}", unique_id=f"{uid}-send")

    def _remember_params(self, label: str) -> Callable[..., None]:
        def hook(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
            context[_PARAMS_KEY] = params
            with self._lock:
                context[_CALL_KEY] = next(self._calls[label])

        return hook

    def _before_send(self, label: str) -> Callable[..., Any]:
        def hook(request: AWSPreparedRequest, event_name: str, **_: Any) -> AWSResponse | None:
            return self._apply(label, event_name.rsplit(".", 1)[-1], request)

        return hook

    # -- rules -------------------------------------------------------------------

    def add(
        self,
        fault: Fault,
        operation: str | None = None,
        *,
        where: Predicate | None = None,
        when: Schedule | None = None,
        client: str | None = None,
        name: str | None = None,
        first: bool = False,
    ) -> Rule:
        """Add a rule. ``when`` defaults to every matching attempt.

        Rules are tried in order; ``first=True`` puts this one ahead of the others
        (e.g. a race that must run before a random fault can refuse the attempt).
        """
        with self._lock:
            rule = Rule(
                name=name or f"{fault.kind}#{len(self._rules) + 1}",
                operation=operation,
                where=where,
                fault=fault,
                when=when or always(),
                client=client,
            )
            if first:
                self._rules.insert(0, rule)
            else:
                self._rules.append(rule)
        return rule

    def throttle(
        self,
        operation: str | None = None,
        *,
        code: str = "ThrottlingException",
        **options: Any,
    ) -> Rule:
        """Refuse before sending: ``ThrottlingException`` (or e.g.
        ``ProvisionedThroughputExceededException``). Never applied; retryable."""
        return self.add(
            Fault(FaultKind.THROTTLE, code=code, message="Rate exceeded"), operation, **options
        )

    def conflict(self, operation: str | None = None, **options: Any) -> Rule:
        """Refuse before sending with ``TransactionConflictException`` (never applied)."""
        fault = Fault(
            FaultKind.CONFLICT,
            code="TransactionConflictException",
            message="Transaction is ongoing for the item",
        )
        return self.add(fault, operation, **options)

    def canceled(
        self,
        operation: str | None = "TransactWriteItems",
        *,
        reasons: Sequence[Mapping[str, Any]] | Callable[[Params], Sequence[Mapping[str, Any]]],
        **options: Any,
    ) -> Rule:
        """Refuse before sending with ``TransactionCanceledException``.

        ``reasons`` are the ``CancellationReasons``, one per transaction item, e.g.
        ``[{"Code": "None"}, {"Code": "ConditionalCheckFailed", "Message": "..."}]``;
        or a function of the request's parameters that returns them (so they can
        match the size of whatever transaction is refused).
        """
        if callable(reasons):
            compute = reasons
            fault = Fault(
                FaultKind.CANCELED,
                code="TransactionCanceledException",
                extra_for=lambda params: _cancellation(compute(params)),
            )
            return self.add(fault, operation, **options)
        fault = Fault(
            FaultKind.CANCELED,
            code="TransactionCanceledException",
            message=_cancellation(reasons)["message"],
            extra={"CancellationReasons": [dict(r) for r in reasons]},
        )
        return self.add(fault, operation, **options)

    def server_error(self, operation: str | None = None, **options: Any) -> Rule:
        """Refuse before sending with a 500 ``InternalServerError``."""
        fault = Fault(
            FaultKind.SERVER_ERROR,
            code="InternalServerError",
            status=500,
            message="Internal server error",
        )
        return self.add(fault, operation, **options)

    def ambiguous(
        self,
        operation: str | None = None,
        *,
        error: type[HTTPClientError] = ReadTimeoutError,
        send: bool = True,
        **options: Any,
    ) -> Rule:
        """Send the request (unless ``send=False``), then lose the response.

        ``error`` is ``ReadTimeoutError`` (timeout) or ``ConnectionClosedError``
        (connection reset).
        """
        if error not in (ReadTimeoutError, ConnectionClosedError):
            raise ValueError("ambiguous faults are ReadTimeoutError or ConnectionClosedError")
        return self.add(Fault(FaultKind.AMBIGUOUS, error=error, send=send), operation, **options)

    def interleave(
        self, operation: str | None = None, *, action: Callable[[], None], **options: Any
    ) -> Rule:
        """Run ``action`` just before a matching attempt is sent, then send it.

        For deterministic races: ``action`` is the concurrent request that gets in
        between two steps. It runs on the calling thread; calls it makes through an
        attached client are matched by the rules too (schedule with ``nth(1)``).
        """
        return self.add(Fault(FaultKind.INTERLEAVE, action=action), operation, **options)

    def probability(self, p: float) -> Schedule:
        """A :func:`probability` schedule seeded from this injector's seed."""
        return Probability(p, seed=self._rng.randrange(2**32))

    def clear(self) -> None:
        """Remove every rule (the log stays)."""
        with self._lock:
            self._rules.clear()

    @property
    def rules(self) -> list[Rule]:
        with self._lock:
            return list(self._rules)

    # -- the log -----------------------------------------------------------------

    @property
    def injections(self) -> list[Injection]:
        return list(self.log)

    def count(
        self, kind: str | None = None, operation: str | None = None, rule: str | None = None
    ) -> int:
        return self.log.count(kind, operation, rule)

    # -- applying ----------------------------------------------------------------

    def _choose(self, label: str, operation: str, params: Params) -> Rule | None:
        with self._lock:
            for rule in self._rules:
                if not rule.matches(label, operation, params):
                    continue
                rule.matched += 1
                if rule.when(rule.matched):
                    rule.fired += 1
                    return rule
        return None

    def _apply(self, label: str, operation: str, request: AWSPreparedRequest) -> AWSResponse | None:
        context: dict[str, Any] = getattr(request, "context", None) or {}
        params: Params = context.get(_PARAMS_KEY, {})
        rule = self._choose(label, operation, params)
        if rule is None:
            return None
        fault = rule.fault
        attempt = int(context.get("retries", {}).get("attempt", 1))
        record = Injection(
            kind=fault.kind.value,
            operation=operation,
            rule=rule.name,
            client=label,
            call=int(context.get(_CALL_KEY, 0)),
            attempt=attempt,
            params=params,
        )
        if fault.kind is FaultKind.INTERLEAVE:
            self.log.record(record)
            assert fault.action is not None
            fault.action()
            return None
        if fault.kind is not FaultKind.AMBIGUOUS:
            self.log.record(record)
            return _error_response(request, fault, params)
        status: int | None = None
        if fault.send:
            response = self._http.send(request)
            _ = response.content  # drain: the backend has answered
            status = response.status_code
        self.log.record(dataclasses.replace(record, backend_status=status))
        raise fault.error(endpoint_url=request.url, error="injected ambiguous failure")


# -- the app ----------------------------------------------------------------------------

#: The clients a Container builds, by the attribute (and label) that holds them.
CONTAINER_CLIENTS: Final = ("dynamodb", "dynamodb_no_retry")


class Attachable(Protocol):
    def attach(self, client: BaseClient, *, label: str = "") -> BaseClient: ...


def attach_to_container(container: Container, hooks: Iterable[Attachable]) -> Container:
    """Attach each of ``hooks`` to every client of ``container`` (labelled by attribute)."""
    for hook in hooks:
        for name in CONTAINER_CLIENTS:
            hook.attach(getattr(container, name), label=name)
    return container


@contextmanager
def installed(container: Container, *hooks: Attachable) -> Iterator[Container]:
    """Attach ``hooks`` to ``container``'s clients and make it the app's container.

    ``with installed(Container(settings), faults, calls): client.http.post(...)``
    """
    attach_to_container(container, hooks)
    use_container(container)
    try:
        yield container
    finally:
        use_container(None)
