"""What IAM allows, and what the app's calls need: enough of both to test our policies.

:class:`CallRecorder` hooks botocore clients and turns every call into the IAM
permissions it needs (action + resource ARN), attributed to the Lambda function the
test is acting as. :class:`Policy` evaluates our hand-written policy documents, which
only use ``Allow`` statements with ``Action`` and ``Resource`` (a test checks that), so
a small wildcard matcher is exact for them.
"""

from __future__ import annotations

import fnmatch
import json
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from botocore.client import BaseClient


@dataclass(frozen=True, order=True)
class Permission:
    action: str  # "dynamodb:PutItem"
    resource: str  # an ARN

    def __str__(self) -> str:
        return f"{self.action} on {self.resource}"


#: Transactions are authorised per item action, there is no TransactWriteItems
#: permission (DynamoDB developer guide, "Using IAM with DynamoDB transactions").
_TRANSACT_WRITE_ACTIONS = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
}


class Arns:
    """ARNs in one region and account."""

    def __init__(self, region: str, account: str) -> None:
        self.region = region
        self.account = account

    def table(self, name: str) -> str:
        if name.startswith("arn:"):
            return name
        return f"arn:aws:dynamodb:{self.region}:{self.account}:table/{name}"

    def index(self, table: str, index: str) -> str:
        return f"{self.table(table)}/index/{index}"

    def queue(self, url_or_name: str) -> str:
        name = url_or_name.rstrip("/").rsplit("/", 1)[-1]
        return f"arn:aws:sqs:{self.region}:{self.account}:{name}"

    def log_group(self, function_name: str) -> str:
        return f"arn:aws:logs:{self.region}:{self.account}:log-group:/aws/lambda/{function_name}"


def dynamodb_permissions(operation: str, params: Mapping[str, Any], arns: Arns) -> list[Permission]:
    """What one DynamoDB API call needs."""
    if operation == "TransactWriteItems":
        out = []
        for item in params.get("TransactItems", []):
            for kind, body in item.items():
                action = f"dynamodb:{_TRANSACT_WRITE_ACTIONS[kind]}"
                out.append(Permission(action, arns.table(body["TableName"])))
        return out
    if operation == "TransactGetItems":
        return [
            Permission("dynamodb:GetItem", arns.table(item["Get"]["TableName"]))
            for item in params.get("TransactItems", [])
        ]
    if operation in {"BatchGetItem", "BatchWriteItem"}:
        return [
            Permission(f"dynamodb:{operation}", arns.table(table))
            for table in params.get("RequestItems", {})
        ]
    table = params["TableName"]
    index = params.get("IndexName")
    resource = arns.index(table, index) if index else arns.table(table)
    return [Permission(f"dynamodb:{operation}", resource)]


class CallRecorder:
    """Records the permissions every call of the hooked clients needs, per function."""

    def __init__(self, arns: Arns) -> None:
        self._arns = arns
        self._lock = threading.Lock()
        self._function = "unattributed"
        self._iterators: dict[str, str] = {}  # shard iterator -> stream ARN
        self._stream_arn = "unknown-stream"  # of the latest call that named one
        self.permissions: defaultdict[str, set[Permission]] = defaultdict(set)
        self.operations: defaultdict[str, set[str]] = defaultdict(set)

    @contextmanager
    def acting_as(self, function: str) -> Iterator[None]:
        """Attribute the calls made inside the block to ``function``."""
        previous, self._function = self._function, function
        try:
            yield
        finally:
            self._function = previous

    def attach(self, client: BaseClient) -> None:
        # Event names use the hyphenised service id ("dynamodb-streams").
        service = client.meta.service_model.service_id.hyphenize()
        events = client.meta.events
        uid = f"iam-recorder-{id(self)}"
        events.register(f"before-parameter-build.{service}", self._before, unique_id=uid)
        events.register(f"after-call.{service}", self._after, unique_id=uid + "-after")

    def _before(self, params: Mapping[str, Any], model: Any, **_: Any) -> None:
        service = model.service_model.service_name
        operation = model.name
        needed = self._needed(service, operation, params)
        with self._lock:
            self.operations[self._function].add(f"{service}:{operation}")
            self.permissions[self._function].update(needed)

    def _needed(self, service: str, operation: str, params: Mapping[str, Any]) -> list[Permission]:
        if service == "dynamodb":
            return dynamodb_permissions(operation, params, self._arns)
        if service == "dynamodbstreams":
            # Stream actions are DynamoDB actions on the stream's ARN; GetRecords
            # names only an iterator, so remember which stream each one reads.
            if operation == "GetRecords":
                arn = self._iterators.get(params["ShardIterator"], "unknown-stream")
            else:
                arn = self._stream_arn = params.get("StreamArn", "*")
            return [Permission(f"dynamodb:{operation}", arn)]
        if service == "sqs":
            if "QueueUrl" in params:
                return [Permission(f"sqs:{operation}", self._arns.queue(params["QueueUrl"]))]
            if "QueueName" in params:
                return [Permission(f"sqs:{operation}", self._arns.queue(params["QueueName"]))]
            return [Permission(f"sqs:{operation}", "*")]
        raise AssertionError(f"no IAM mapping for {service}:{operation}")

    def _after(self, parsed: Mapping[str, Any], model: Any, **_: Any) -> None:
        if model.service_model.service_name != "dynamodbstreams":
            return
        with self._lock:
            if model.name == "GetShardIterator" and parsed.get("ShardIterator"):
                self._iterators[parsed["ShardIterator"]] = self._stream_arn
            elif model.name == "GetRecords" and parsed.get("NextShardIterator"):
                self._iterators[parsed["NextShardIterator"]] = self._stream_arn


@dataclass(frozen=True)
class Grant:
    """One (action pattern, resource pattern) pair of an Allow statement."""

    sid: str
    action: str
    resource: str

    def allows(self, permission: Permission) -> bool:
        # Actions are case-insensitive in IAM; resource ARNs are not.
        return fnmatch.fnmatchcase(
            permission.action.lower(), self.action.lower()
        ) and fnmatch.fnmatchcase(permission.resource, self.resource)


class Policy:
    """An identity policy made of ``Allow`` statements only."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        self.document = document
        self.grants: list[Grant] = []
        for statement in document["Statement"]:
            actions = _as_list(statement["Action"])
            resources = _as_list(statement["Resource"])
            sid = str(statement.get("Sid", ""))
            self.grants += [Grant(sid, a, r) for a in actions for r in resources]

    @classmethod
    def load(cls, path: Path) -> Policy:
        return cls(json.loads(path.read_text(encoding="utf-8")))

    def allows(self, permission: Permission) -> bool:
        return any(grant.allows(permission) for grant in self.grants)

    def missing(self, needed: Iterable[Permission]) -> list[Permission]:
        return sorted(p for p in needed if not self.allows(p))

    def unused(self, used: Iterable[Permission]) -> list[Grant]:
        """Grants no permission in ``used`` needs."""
        used = list(used)
        return [g for g in self.grants if not any(g.allows(p) for p in used)]


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)
