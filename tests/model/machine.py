"""A model-based test of the counters: random operations, races and faults, I1-I6 after every step.

The system under test is the whole app on the embedded backend: the API through
``chalice.test.Client`` (every reply checked against the OpenAPI contract, I4), the
stream processor through the local stream poller (Lambda's mapping: batches, partial
failures, retries, bisect, OnFailure to tier 1), the tier-1 consumer through the local
SQS poller, the operator's tier-2 replay, and the healer. The API and the processor run
on two containers (two Lambda functions), each with its own fault injector.

The model is deliberately simple: per account, the set of live service ids, the limit,
whether it exists, and how many injected faults hit its writes since its best-effort
counter was last exact. Each API step predicts how the set changes from the reply
(a 200 create adds exactly the returned id; a 503 may or may not have) and compares
with the table; every other step (processing, replays, heals) must leave it unchanged.

Checked after every step: I1 (and, through :class:`I1Observer`, before every single
write), I6 on the whole table, the model, and the undercount bound ``0 <= live - BE
<= faults since exact``. Checked by the steps that establish their premise: I2 after a
drain, I3 after a successful create, I5 after a heal. At the end of every example:
drain, heal, and all counters equal (convergence).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Final

import boto3
from chalice.test import Client
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from chalicelib.bootstrap import Container, use_container
from chalicelib.counting.healer import Healer, HealOutcome
from chalicelib.entities import account_pk, utc_now
from chalicelib.errors import CounterError
from chalicelib.settings import Settings
from infrastructure.local.event_sources import (
    SqsOnFailureDestination,
    SqsPoller,
    SqsSettings,
    StreamPoller,
)
from infrastructure.local.provision import StackOutputs
from tests.delivery import (
    DeliveryFaults,
    ProcessCrash,
    TransactionCrash,
    counts_transaction,
    crashes_as_errors,
    processor_handler,
    replay_handler,
)
from tests.events.live import app_settings, fast_stream_settings
from tests.faults import (
    FaultInjector,
    FaultKind,
    InjectionLog,
    Predicate,
    Rule,
    all_of,
    attach_to_container,
    expression_contains,
    nth,
    times,
)
from tests.fixtures_api import Reply
from tests.model import contract
from tests.model.invariants import (
    I1Observer,
    Partition,
    accounts_written,
    i1_violations,
    i2_violations,
    i5_violations,
    i6_violations,
    read_partition,
    scan_table,
    stream_history,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodbstreams import DynamoDBStreamsClient

    from infrastructure.local.event_sources import LambdaContext

MAX_DRAIN_STEPS: Final = 300
WRITES: Final = ("PutItem", "UpdateItem", "DeleteItem")
#: What each API write looks like on the wire (chalicelib/repositories/*.py).
INCREMENT: Final[Predicate] = expression_contains("ConditionExpression", "< max_number_of_services")
DECREMENT: Final[Predicate] = expression_contains(
    "ConditionExpression", "number_of_services > :zero"
)
SOFT_DELETE: Final[Predicate] = expression_contains("UpdateExpression", "deleted = :true")
API_TARGETS: Final[dict[str, tuple[str, Predicate | None]]] = {
    "read": ("GetItem", None),
    "put": ("PutItem", None),
    "increment": ("UpdateItem", INCREMENT),
    "decrement": ("UpdateItem", DECREMENT),
    "soft_delete": ("UpdateItem", SOFT_DELETE),
    "rollback": ("DeleteItem", None),
}


SOAK: Final = os.environ.get("COUNTER_SOAK") == "1"
#: Races on a create, between its put and its increment. ``delete_listed``: a client
#: lists the account and deletes the service whose create is still in flight.
CREATE_RACES: Final = ("process", "lower_limit", "create", "delete_listed")


# -- what the soak reports ----------------------------------------------------------------


@dataclass
class Stats:
    """Accumulated over every example of a run (and over runs, for the soak)."""

    examples: int = 0
    steps: Counter[str] = field(default_factory=Counter)
    injections: Counter[str] = field(default_factory=Counter)
    i1_checks: int = 0
    replies: Counter[int] = field(default_factory=Counter)
    heal_outcomes: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)

    def report(self) -> dict[str, Any]:
        return {
            "examples": self.examples,
            "steps": sum(self.steps.values()),
            "steps_by_rule": dict(sorted(self.steps.items())),
            "injections": sum(self.injections.values()),
            "injections_by_kind": dict(sorted(self.injections.items())),
            "i1_checks": self.i1_checks,
            "replies_by_status": {str(k): v for k, v in sorted(self.replies.items())},
            "heal_outcomes": dict(sorted(self.heal_outcomes.items())),
            "seconds": round(time.monotonic() - self.started, 1),
        }


STATS = Stats()


# -- the world: what stays up across examples --------------------------------------------


@dataclass
class World:
    """The stack, the app and the pollers, shared by the examples of one test."""

    outputs: StackOutputs
    settings: Settings
    reader: DynamoDBClient
    streams: DynamoDBStreamsClient
    http: Client
    stream: StreamPoller
    tier1: SqsPoller
    #: What the pollers call; each example points them at its own handlers.
    stream_handler: Callable[[dict[str, Any], LambdaContext], object] | None = None
    tier1_handler: Callable[[dict[str, Any], LambdaContext], object] | None = None
    closed: bool = False

    @classmethod
    def build(cls, outputs: StackOutputs, http: Client) -> World:
        settings = app_settings(outputs)
        sqs = boto3.client("sqs")
        streams = boto3.client("dynamodbstreams")
        world: World

        def stream(event: dict[str, Any], context: LambdaContext) -> object:
            assert world.stream_handler is not None
            return world.stream_handler(event, context)

        def tier1(event: dict[str, Any], context: LambdaContext) -> object:
            assert world.tier1_handler is not None
            return world.tier1_handler(event, context)

        world = cls(
            outputs=outputs,
            settings=settings,
            reader=boto3.client("dynamodb"),
            streams=streams,
            http=http,
            stream=StreamPoller(
                stream,
                streams,
                outputs.stream_arn,
                settings=fast_stream_settings(),
                on_failure=SqsOnFailureDestination(sqs, outputs.tier1_queue_url),
            ),
            tier1=SqsPoller(
                tier1,
                sqs,
                outputs.tier1_queue_url,
                settings=SqsSettings(retry_visibility_seconds=0),
            ),
        )
        return world

    def close(self) -> None:
        """Drop the stack's table and the backend's shard iterators (memory).

        moto keeps every shard iterator it hands out, each holding its stream shard,
        which holds its table (with stock moto, a failed transaction's table copy too):
        over a soak that grows without bound.
        """
        from moto.dynamodbstreams.models import dynamodbstreams_backends

        if self.closed:
            return
        self.closed = True
        self.reader.delete_table(TableName=self.outputs.table_name)
        for account in dynamodbstreams_backends.values():
            for backend in account.values():
                backend.shard_iterators.clear()


# -- fault profiles -------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """How often each family of faults fires in one example (per matching attempt)."""

    api: float
    processor: float
    delivery: float
    seed: int


def canceled_reasons(rng: random.Random) -> Callable[[Mapping[str, Any]], list[dict[str, str]]]:
    """Cancellation reasons for whatever transaction is refused: one retryable reason on
    one random item, ``None`` on the others (what DynamoDB answers under contention)."""

    def reasons(params: Mapping[str, Any]) -> list[dict[str, str]]:
        size = len(params.get("TransactItems", [])) or 1
        blamed = rng.randrange(size)
        code = rng.choice(["TransactionConflict", "ThrottlingError"])
        return [{"Code": code if n == blamed else "None"} for n in range(size)]

    return reasons


def api_faults(profile: Profile, rng: random.Random) -> FaultInjector:
    """Faults on the API's clients: every kind, on every operation it makes."""
    faults = FaultInjector(seed=profile.seed)
    p = profile.api
    if p == 0:
        return faults
    tx = "TransactWriteItems"  # account create and delete
    faults.canceled(tx, reasons=canceled_reasons(rng), when=faults.probability(p))
    faults.conflict(tx, when=faults.probability(p / 2))
    faults.throttle(tx, when=faults.probability(p))
    faults.ambiguous(tx, when=faults.probability(p))
    for operation in ("GetItem", "Query", *WRITES):
        faults.throttle(operation, when=faults.probability(p))
        faults.server_error(operation, when=faults.probability(p / 3))
        faults.ambiguous(operation, when=faults.probability(p))
    for operation in WRITES:
        faults.conflict(operation, when=faults.probability(p / 2))
        faults.ambiguous(operation, send=False, when=faults.probability(p / 3))
    return faults


def processor_faults(profile: Profile, rng: random.Random) -> FaultInjector:
    """Faults on the processor's clients: its transactions, hint and healer writes, reads."""
    faults = FaultInjector(seed=profile.seed + 1)
    p = profile.processor
    if p == 0:
        return faults
    tx = "TransactWriteItems"
    faults.conflict(tx, where=counts_transaction, when=faults.probability(p))
    faults.canceled(
        tx, reasons=canceled_reasons(rng), where=counts_transaction, when=faults.probability(p)
    )
    faults.throttle(tx, where=counts_transaction, when=faults.probability(p / 2))
    faults.ambiguous(tx, where=counts_transaction, when=faults.probability(p))
    faults.server_error(tx, where=counts_transaction, when=faults.probability(p / 3))
    # Reads of items and Count items (BatchGetItem: the hints), the hint and heal writes.
    for operation in ("GetItem", "BatchGetItem", "Query", "UpdateItem"):
        faults.throttle(operation, when=faults.probability(p / 2))
        faults.server_error(operation, when=faults.probability(p / 3))
        faults.ambiguous(operation, when=faults.probability(p / 2))
    return faults


def injections_by_kind(logs: list[InjectionLog]) -> Counter[str]:
    kinds: Counter[str] = Counter()
    for log in logs:
        for injection in log:
            if injection.kind != FaultKind.INTERLEAVE:
                kinds[injection.kind] += 1
    return kinds


def set_enabled(faults: FaultInjector, enabled: bool) -> list[Rule]:
    changed = [r for r in faults.rules if r.enabled != enabled]
    for r in changed:
        r.enabled = enabled
    return changed


# -- the model --------------------------------------------------------------------------------


@dataclass
class AccountModel:
    id: str
    limit: int
    live: set[str] = field(default_factory=set)
    #: Services seen deleted (hard or soft): deleting them again must answer 404.
    gone: list[str] = field(default_factory=list)
    exists: bool = True
    #: Injected faults on this account's API writes since ``live - BE`` was last 0.
    faults_since_exact: int = 0


class CounterMachine(RuleBasedStateMachine):
    """Random API traffic, processing, replays and heals under random faults."""

    world: ClassVar[World]
    stats: ClassVar[Stats] = STATS

    def __init__(self) -> None:
        super().__init__()
        self.accounts: dict[str, AccountModel] = {}
        self.contract = contract.ContractLog()
        self.rng = random.Random(0)
        self.profile = Profile(0, 0, 0, 0)
        self.api_faults = FaultInjector()
        self.proc_faults = FaultInjector()
        self.api: Container | None = None
        self.proc: Container | None = None
        self.delivery: DeliveryFaults | None = None
        self.crash: TransactionCrash | None = None
        self.crash_log = InjectionLog()
        self.observer = I1Observer(self.world.reader, self.world.outputs.table_name)
        self._attributed = 0
        self._race_rules: list[Rule] = []
        self._raced: list[str] = []
        self._raced_unsure: list[str] = []
        #: False while a step runs: set by the invariant once everything held.
        self.step_ok = False
        self._step_faults = (0, 0)
        self.steps_since_drain = 0
        self.outages = 0

    # -- setup and teardown -----------------------------------------------------------

    @initialize(
        seed=st.integers(0, 2**31), limits=st.lists(st.integers(0, 5), min_size=1, max_size=2)
    )
    def setup(self, seed: int, limits: list[int]) -> None:
        # Fault rates come from the seed, not from strategies that shrink towards 0:
        # small runs would otherwise mostly try the fault-free profile.
        self.rng = random.Random(seed)
        # The short run of the normal suite always has faults; a soak also tries none.
        calm = [0.0] if SOAK else []
        self.profile = Profile(
            api=self.rng.choice([*calm, 0.02, 0.05, 0.1]),
            processor=self.rng.choice([*calm, 0.05, 0.15, 0.3]),
            delivery=self.rng.choice([*calm, 0.1, 0.25]),
            seed=seed,
        )
        delivery = self.profile.delivery
        world = self.world
        settings = world.settings
        self.api = Container(settings)
        self.proc = Container(settings)
        self.api_faults = api_faults(self.profile, self.rng)
        self.proc_faults = processor_faults(self.profile, self.rng)
        self.crash = TransactionCrash(self.crash_log)
        # The observer first: it reads the state each write attempt starts from.
        attach_to_container(self.api, [self.observer, self.api_faults])
        attach_to_container(self.proc, [self.observer, self.proc_faults, self.crash])
        self.delivery = DeliveryFaults(
            processor_handler(self.proc),
            streams=self.proc.streams,
            tier1=SqsOnFailureDestination(self.proc.sqs, world.outputs.tier1_queue_url),
            log=self.crash_log,
        )
        if delivery:
            schedule = self.api_faults.probability
            self.delivery.crash_after(
                lambda size: self.rng.randint(0, size), when=schedule(delivery)
            )
            self.delivery.duplicate(when=schedule(delivery))
            self.delivery.tier1_later(when=schedule(delivery))
            self.crash.arm(before=schedule(delivery / 3), after=schedule(delivery / 3))
        world.stream_handler = self.delivery
        world.tier1_handler = crashes_as_errors(replay_handler(self.proc))
        use_container(self.api)
        self.stats.examples += 1
        for limit in limits:
            self._create_account(limit)
        self._after_step("setup")

    def teardown(self) -> None:
        try:
            if self.api is not None and self.step_ok:
                # Only after a clean run: a failure must not be masked by this one.
                self._converge()
        finally:
            use_container(None)
            self._tally()
            self._clean_up()

    def _converge(self) -> None:
        """Faults off: drain everything, heal, and every counter must agree (I2, I5)."""
        self._pause_faults()
        self._drain()
        self._heal(after=self.world.settings.heal_quiet_seconds + 1)
        for model in self._existing():
            partition = self._partition(model.id)
            found = i1_violations(partition) + i2_violations(partition) + i5_violations(partition)
            assert not found, (f"no convergence: {found}", self._diagnose(model.id))

    def _tally(self) -> None:
        logs = [self.api_faults.log, self.proc_faults.log, self.crash_log]
        self.stats.injections.update(injections_by_kind(logs))
        self.stats.i1_checks += self.observer.checks
        for (_, _, status), n in self.contract.seen.items():
            self.stats.replies[status] += n

    def _clean_up(self) -> None:
        """Delete this example's items so the next one's transactions stay cheap."""
        for account_id in self.accounts:
            items = self.world.reader.query(
                TableName=self.world.outputs.table_name,
                KeyConditionExpression="PK = :pk",
                ExpressionAttributeValues={":pk": {"S": account_pk(account_id)}},
                ProjectionExpression="PK, SK",
            ).get("Items", [])
            for item in items:
                self.world.reader.delete_item(TableName=self.world.outputs.table_name, Key=item)

    # -- plumbing ------------------------------------------------------------------------

    def _call(self, method: str, path: str, body: Any = None) -> Reply:
        response = self.world.http.http.request(
            method,
            path,
            headers={"Content-Type": "application/json"},
            body=b"" if body is None else json.dumps(body).encode(),
        )
        reply = Reply(response.status_code, dict(response.headers), response.body)
        found = self.contract.check(method, path, reply)
        assert not found, found  # I4
        return reply

    def _partition(self, account_id: str) -> Partition:
        partition = read_partition(self.world.reader, self.world.outputs.table_name, account_id)
        assert partition.snapshot, f"{account_id}: partition is more than one page"
        return partition

    def _existing(self) -> list[AccountModel]:
        return [m for m in self.accounts.values() if m.exists]

    def _pick(self, index: int) -> AccountModel:
        existing = self._existing()
        return existing[index % len(existing)]

    def _pause_faults(self) -> None:
        set_enabled(self.api_faults, False)
        set_enabled(self.proc_faults, False)
        assert self.delivery is not None
        assert self.crash is not None
        self.delivery.clear()
        self.crash.disarm()

    @property
    def has_accounts(self) -> bool:
        return bool(self._existing())

    def _create_account(self, limit: int) -> None:
        reply = self._call(
            "POST", "/accounts", {"username": "model", "max_number_of_services": limit}
        )
        if reply.status == 200:
            account_id = reply.json()["id"]
            self.accounts[account_id] = AccountModel(account_id, limit)

    def _after_step(self, name: str) -> None:
        """Attribute this step's API faults to accounts; record the step."""
        self.step_ok = False
        self.stats.steps[name] += 1
        self.steps_since_drain = 0 if name == "drain" else self.steps_since_drain + 1
        injections = [i for i in self.api_faults.log if i.kind != FaultKind.INTERLEAVE]
        for injection in injections[self._attributed :]:
            if injection.operation in WRITES:
                for account_id in accounts_written(injection.params):
                    if account_id in self.accounts:
                        self.accounts[account_id].faults_since_exact += 1
        self._attributed = len(injections)
        for race in self._race_rules:
            race.enabled = False
        self._race_rules.clear()

    # -- API rules --------------------------------------------------------------------------

    @precondition(lambda self: len(self._existing()) < 4)
    @rule(limit=st.integers(0, 5))
    def create_account(self, limit: int) -> None:
        self._create_account(limit)
        self._after_step("create_account")

    @precondition(lambda self: self.has_accounts)
    @rule(pick=st.integers(0, 2**16))
    def create_service(self, pick: int) -> None:
        self._create_service(pick, None)

    @precondition(lambda self: self.has_accounts)
    @rule(pick=st.integers(0, 2**16))
    def create_another_service(self, pick: int) -> None:
        # The commonest request, twice as likely as the others.
        self._create_service(pick, None)

    @precondition(lambda self: self.has_accounts)
    @rule(
        pick=st.integers(0, 2**16),
        race=st.sampled_from(CREATE_RACES),
    )
    def create_service_racing(self, pick: int, race: str) -> None:
        """Another request runs between the create's put and its increment."""
        self._create_service(pick, race)

    def _create_service(self, pick: int, race: str | None) -> None:
        model = self._pick(pick)
        before = self._partition(model.id)
        if race is not None:
            self._race_before_increment(model, race)
        reply = self._call("POST", "/services", {"account_id": model.id, "name": "svc"})
        self._after_step(f"create_service[{race or 'alone'}]")
        after = self._partition(model.id)
        new, gone = after.live_ids - before.live_ids, before.live_ids - after.live_ids
        raced = set(self._raced)
        if reply.status == 200:
            service_id = reply.json()["id"]
            if race == "delete_listed" and service_id in raced:
                if service_id not in self._raced_unsure:
                    assert service_id not in after.live_ids, after.describe()
            else:
                assert service_id in after.live_ids, (reply.json(), after.describe())
            # I3: an admitted create leaves BE within the limit, so the live services
            # exceed it by no more than the undercount, itself bounded by the faults.
            assert after.be <= after.limit, f"I3: BE above the limit: {after.describe()}"
            bound = after.limit + model.faults_since_exact
            assert after.live <= bound, f"I3 broken: bound {bound}, {after.describe()}"
        if race is None:
            allowed_new = {200: 1, 409: 0, 404: 0, 503: 1}[reply.status]
            assert not gone, (reply.status, gone)
            assert len(new) <= allowed_new, (reply.status, new)
            if reply.status == 200:
                assert len(new) == 1
        else:
            # A racing create may add one more; nothing else adds or removes any
            # (a listed-and-deleted service is the one being created: never in before).
            assert not gone, (race, gone)
            assert len(new) <= (2 if race == "create" else 1), (race, new)

    @precondition(lambda self: self.has_accounts)
    @rule(pick=st.integers(0, 2**16), which=st.integers(0, 2**16))
    def delete_service(self, pick: int, which: int) -> None:
        self._delete_service(pick, which, None)

    @precondition(lambda self: self.has_accounts)
    @rule(pick=st.integers(0, 2**16), which=st.integers(0, 2**16))
    def delete_another_service(self, pick: int, which: int) -> None:
        # Deletes as likely as creates.
        self._delete_service(pick, which, None)

    @precondition(lambda self: self.has_accounts)
    @rule(
        pick=st.integers(0, 2**16),
        which=st.integers(0, 2**16),
        race=st.sampled_from(["delete_same", "process", "create"]),
    )
    def delete_service_racing(self, pick: int, which: int, race: str) -> None:
        """Another request runs between the delete's decrement and its soft delete."""
        self._delete_service(pick, which, race)

    def _delete_service(self, pick: int, which: int, race: str | None) -> None:
        model = self._pick(pick)
        before = self._partition(model.id)
        # Mostly live services, sometimes one already deleted (404 whatever its state).
        candidates = before.live_in_order * 4 + model.gone[-3:]
        if not candidates:
            return
        service_id = candidates[which % len(candidates)]
        if race is not None:
            self._race_before_soft_delete(model, service_id, race)
        reply = self._call("DELETE", f"/services/{service_id}?ownerAccountId={model.id}")
        self._after_step(f"delete_service[{race or 'alone'}]")
        after = self._partition(model.id)
        new, gone = after.live_ids - before.live_ids, before.live_ids - after.live_ids
        was_live = service_id in before.live_ids
        if reply.status == 200:
            assert was_live, (service_id, before.describe())
            assert gone == {service_id}, (service_id, gone)
        elif reply.status == 404:
            assert not was_live or race == "delete_same", (service_id, before.describe())
            assert gone <= {service_id}
        else:
            assert reply.status == 503
            assert gone <= {service_id}
        if race != "create":
            assert not new

    @precondition(lambda self: self.has_accounts)
    @rule(pick=st.integers(0, 2**16), limit=st.integers(0, 6))
    def change_limit(self, pick: int, limit: int) -> None:
        model = self._pick(pick)
        reply = self._call("PUT", f"/accounts/{model.id}", {"max_number_of_services": limit})
        self._after_step("change_limit")
        stored = self._partition(model.id).limit
        if reply.status == 200:
            assert stored == limit == reply.json()["max_number_of_services"]
        else:
            assert reply.status == 503
            assert stored in (limit, model.limit)
        model.limit = stored

    @precondition(lambda self: self.has_accounts)
    @rule(pick=st.integers(0, 2**16))
    def delete_account(self, pick: int) -> None:
        model = self._pick(pick)
        before = self._partition(model.id)
        reply = self._call("DELETE", f"/accounts/{model.id}")
        self._after_step("delete_account")
        after = self._partition(model.id)
        if reply.status == 200:
            assert not before.services, before.describe()
            assert after.account is None, after.describe()
            assert after.count is None, after.describe()
            assert not after.services, after.describe()
            model.exists = False
        elif reply.status == 409:
            assert before.services or before.ec, before.describe()
            assert after.account is not None
        elif reply.status == 404:
            # Only when its first attempt applied and the response was lost: moto
            # ignores ClientRequestToken, so botocore's retry finds the account gone
            # (on DynamoDB the token makes the retry succeed). The account is deleted.
            assert after.account is None, after.describe()
            assert self._lost_response("TransactWriteItems"), self._recent_faults()
            model.exists = False
        else:
            assert reply.status == 503, reply.status
            model.exists = after.account is not None

    @precondition(lambda self: any(not m.exists for m in self.accounts.values()))
    @rule(
        pick=st.integers(0, 2**16),
        request=st.sampled_from(["create_service", "change_limit", "delete", "usage"]),
    )
    def touch_deleted_account(self, pick: int, request: str) -> None:
        """Requests for a deleted account: 404, and nothing written (no phantom, I6)."""
        gone = [m for m in self.accounts.values() if not m.exists]
        model = gone[pick % len(gone)]
        method, path, body = {
            "create_service": ("POST", "/services", {"account_id": model.id, "name": "late"}),
            "change_limit": ("PUT", f"/accounts/{model.id}", {"max_number_of_services": 3}),
            "delete": ("DELETE", f"/accounts/{model.id}", None),
            "usage": ("GET", f"/accounts/{model.id}/usage", None),
        }[request]
        reply = self._call(method, path, body)
        self._after_step("touch_deleted_account")
        assert reply.status in (404, 503), (request, reply.status)
        after = self._partition(model.id)
        assert after.account is None, after.describe()
        assert after.count is None, after.describe()
        assert not after.services, after.describe()

    @precondition(lambda self: self.has_accounts)
    @rule(pick=st.integers(0, 2**16))
    def read_usage(self, pick: int) -> None:
        model = self._pick(pick)
        reply = self._call("GET", f"/accounts/{model.id}/usage")
        self._after_step("read_usage")
        if reply.status == 200:
            usage = reply.json()
            effective = max(usage["number_of_services"], usage["count_value"])
            assert usage["effective"] == effective
            assert usage["remaining"] == max(0, usage["max_number_of_services"] - effective)

    # -- races: a second request between two steps of the first ---------------------------

    def _once_before(self, operation: str, where: Predicate, action: Callable[[], None]) -> None:
        # First among the rules: the race must run before a random fault refuses the attempt.
        race = self.api_faults.interleave(
            operation, where=where, action=action, when=nth(1), first=True
        )
        self._race_rules.append(race)

    def _on_account(self, account_id: str) -> Predicate:
        pk = account_pk(account_id)
        return lambda params: params.get("Key", {}).get("PK", {}).get("S") == pk

    def _race_before_increment(self, model: AccountModel, race: str) -> None:
        assert self.api is not None
        api = self.api
        self._raced, self._raced_unsure = [], []

        def act() -> None:
            if race == "process":
                self._poll(3)
            elif race == "lower_limit":
                current = self._partition(model.id)
                swallow(
                    lambda: api.account_service.update(
                        model.id, username=None, max_number_of_services=max(0, current.live - 1)
                    )
                )
            elif race == "create":
                swallow(lambda: api.service_service.create(model.id, "racer"))
            elif race == "delete_listed":
                # A client lists the account and deletes the service it has never seen:
                # the one whose create has put its item and not yet taken its slot.
                known = set(self.accounts[model.id].live)
                listed = swallow(lambda: api.service_service.page(model.id, 100, None))
                for service in listed[0] if listed else []:
                    if service.id not in known:
                        self._raced.append(service.id)
                        try:
                            api.service_service.delete(model.id, service.id)
                        except CounterError:
                            # A 503 under its own faults: deleted or not, either way.
                            self._raced_unsure.append(service.id)

        self._once_before("UpdateItem", all_of(INCREMENT, self._on_account(model.id)), act)

    def _race_before_soft_delete(self, model: AccountModel, service_id: str, race: str) -> None:
        assert self.api is not None
        api = self.api

        def act() -> None:
            if race == "process":
                self._poll(3)
            elif race == "create":
                swallow(lambda: api.service_service.create(model.id, "racer"))
            elif race == "delete_same":
                swallow(lambda: api.service_service.delete(model.id, service_id))

        self._once_before("UpdateItem", all_of(SOFT_DELETE, self._on_account(model.id)), act)

    # -- outages ------------------------------------------------------------------------------

    @precondition(lambda self: self.outages < 4)
    @rule(
        request=st.sampled_from(sorted(API_TARGETS)),
        kind=st.sampled_from(["throttle", "server_error", "conflict", "ambiguous"]),
        attempts=st.integers(1, 5),
    )
    def outage(self, request: str, kind: str, attempts: int) -> None:
        """The next ``attempts`` API requests of one kind fail the same way (a short outage)."""
        operation, where = API_TARGETS[request]
        self.outages += 1
        add = getattr(self.api_faults, kind)
        add(operation, where=where, when=times(attempts), first=True)
        self._after_step("outage")

    # -- processing, replays, heals ----------------------------------------------------------

    def _poll(self, steps: int) -> None:
        for _ in range(steps):
            if self.world.stream.poll_once().idle:
                return

    def _unchanged_liveness(self, name: str, work: Callable[[], object]) -> None:
        """Run ``work``; nothing but the API may change which services are live."""
        before = {m.id: self._partition(m.id).live_ids for m in self._existing()}
        work()
        self._after_step(name)
        for account_id, live in before.items():
            after = self._partition(account_id)
            assert after.live_ids == live, f"{name} changed liveness: {after.describe()}"

    @precondition(lambda self: self.has_accounts)
    @rule(steps=st.integers(1, 4))
    def process(self, steps: int) -> None:
        self._unchanged_liveness("process", lambda: self._poll(steps))

    @precondition(lambda self: self.has_accounts)
    @rule(steps=st.integers(1, 4))
    def process_again(self, steps: int) -> None:
        # Processing under faults, twice as likely as the other steps.
        self._unchanged_liveness("process", lambda: self._poll(steps))

    @precondition(lambda self: self.has_accounts)
    @rule(steps=st.integers(1, 3), release=st.booleans())
    def replay_tier1(self, steps: int, release: bool) -> None:
        assert self.delivery is not None
        delivery = self.delivery

        def replay() -> None:
            if release:
                delivery.release()
            for _ in range(steps):
                if self.world.tier1.poll_once().idle:
                    return

        self._unchanged_liveness("replay_tier1", replay)

    @precondition(lambda self: self.has_accounts and self.steps_since_drain >= 5)
    @rule()
    def drain(self) -> None:
        """Faults off until everything is processed; then I2 holds for every account."""
        api_rules = set_enabled(self.api_faults, False)
        proc_rules = set_enabled(self.proc_faults, False)
        assert self.delivery is not None
        assert self.crash is not None
        with self.delivery.paused(), self.crash.paused():
            self._unchanged_liveness("drain", self._drain)
        for r in api_rules + proc_rules:
            r.enabled = True
        for model in self._existing():
            found = i2_violations(self._partition(model.id))
            assert not found, (found, self._diagnose(model.id))

    def _drain(self) -> None:
        """Process the stream, tier 1 and tier 2 until nothing is left (bounded)."""
        assert self.delivery is not None
        assert self.proc is not None
        for _round in range(3):
            self._poll(MAX_DRAIN_STEPS)
            self.delivery.release()
            for _ in range(MAX_DRAIN_STEPS):
                if self.world.tier1.poll_once().idle:
                    break
            tier2 = self.proc.tier2_queue().replay()
            assert not tier2.failed, tier2.failed
            if not tier2.replayed:
                break
        self._poll(MAX_DRAIN_STEPS)
        assert self.world.stream.poll_once().idle, "stream not drained"

    def _heal(self, *, after: float) -> dict[str, HealOutcome]:
        assert self.proc is not None
        proc = self.proc
        offset = timedelta(seconds=after)
        healer = Healer(
            proc.accounts,
            proc.services,
            proc.counts,
            proc.processor,
            quiet=timedelta(seconds=self.world.settings.heal_quiet_seconds),
            stuck_after=timedelta(seconds=self.world.settings.stuck_after_seconds),
            batch_limit=100,
            clock=lambda: clock_ahead(offset),
        )
        try:
            outcomes = healer.run().outcomes
        except (ProcessCrash, CounterError):
            # The healer's function died (in a stuck recovery) or failed (its HealIndex
            # query met the faults): a function error; the next scheduled run retries.
            self.stats.heal_outcomes["run_failed"] += 1
            return {}
        self.stats.heal_outcomes.update(o.value for o in outcomes.values())
        return outcomes

    @precondition(lambda self: self.has_accounts)
    @rule(stuck=st.booleans())
    def heal(self, stuck: bool) -> None:
        """The scheduled healer, the quiet period (or the stuck period) later.

        I5: every quiet account it reports in sync has ``BE == EC``; and an account with
        no pending work that the healer did not visit must be in sync already
        (otherwise nothing will ever heal it).
        """
        settings = self.world.settings
        after = (settings.stuck_after_seconds if stuck else settings.heal_quiet_seconds) + 1
        outcomes: dict[str, HealOutcome] = {}
        self._unchanged_liveness("heal", lambda: outcomes.update(self._heal(after=after)))
        if not outcomes:
            return  # crashed, or nothing marked: no claim either way
        for model in self._existing():
            partition = self._partition(model.id)
            outcome = outcomes.get(model.id)
            if outcome in (HealOutcome.HEALED, HealOutcome.IN_SYNC):
                found = i5_violations(partition)
                assert not found, (outcome, found)
            elif outcome is None and not partition.pending and not partition.awaiting_hard_delete:
                ec_settled = partition.ec == partition.live
                if ec_settled:
                    found = i5_violations(partition)
                    assert not found, f"drift the healer will never see: {found}"

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def i1_i6_and_the_model(self) -> None:
        assert not self.observer.violations, (self.observer.violations[:3], self._recent_faults())
        assert not self.contract.violations, self.contract.violations[:3]
        for model in self._existing():
            partition = self._partition(model.id)
            found = i1_violations(partition)
            assert not found, (found, self._recent_faults())
            if partition.account is None:
                raise AssertionError(f"account {model.id} vanished")
            # The undercount, and the debt that will keep the next create uncounted.
            deficit = partition.live - partition.be + partition.debt
            assert deficit <= model.faults_since_exact, (
                f"undercount {deficit} > {model.faults_since_exact} faults: {partition.describe()}"
            )
            if deficit == 0:
                model.faults_since_exact = 0
            model.gone += [s for s in sorted(model.live) if s not in partition.live_ids]
            model.live = partition.live_ids
            model.limit = partition.limit
        found = i6_violations(scan_table(self.world.reader, self.world.outputs.table_name))
        assert not found, found[:3]
        self.step_ok = True
        self._step_faults = (len(self.api_faults.log), len(self.proc_faults.log))

    def _diagnose(self, account_id: str) -> str:
        """The account's items, stream records, the poller's state and what was injected."""
        world = self.world
        partition = self._partition(account_id)
        history = stream_history(world.streams, world.outputs.stream_arn, account_id)
        services = [
            {k: v for k, v in s.items() if k not in ("PK", "name", "account_id")}
            for s in partition.services
        ]
        kinds = injections_by_kind([self.crash_log])
        return "\n".join(
            [
                partition.describe(),
                f"services: {services}",
                f"checkpoints: {dict(world.stream.checkpoints)}",
                f"delivery faults: {dict(kinds)}",
                "stream:",
                *history,
            ]
        )

    def _lost_response(self, operation: str) -> bool:
        """Whether this step had a write of ``operation`` applied with its response lost."""
        recent = list(self.api_faults.log)[self._step_faults[0] :]
        return any(i.operation == operation and i.kind == "ambiguous" and i.applied for i in recent)

    def _recent_faults(self) -> str:
        """This step's injected faults, for failure messages."""
        api, proc = self._step_faults
        lines = []
        for label, log in (
            ("api", list(self.api_faults.log)[api:]),
            ("proc", list(self.proc_faults.log)[proc:]),
        ):
            for i in log:
                what = str(
                    i.params.get("UpdateExpression") or i.params.get("ConditionExpression") or ""
                )[:50]
                lines.append(
                    f"{label} {i.kind} {i.operation} call={i.call} attempt={i.attempt} "
                    f"applied={i.applied} {what!r}"
                )
        return "\n  ".join(["faults this step:", *lines])


def clock_ahead(offset: timedelta) -> datetime:
    return utc_now() + offset


def swallow(call: Callable[[], Any]) -> Any:
    """Run a racing request; its domain errors (404, 409, 503) are its own business."""
    try:
        return call()
    except CounterError:
        return None
