"""I4 as a check on each reply: status, media type, body and headers the OpenAPI document allows.

``tests/fixtures_api.py`` checks the *status* of every reply of the contract
scenarios against the document. Under faults and load more can go wrong than the
status (a 503 without ``Retry-After``, a 200 whose body lost a field, a problem body
with an unlisted ``type``), so this checker also validates the body against the
response's JSON Schema (OpenAPI 3.1 schemas are JSON Schema 2020-12) and the headers
the document marks required. It is thread-safe: the stress test feeds it from many
client threads.
"""

from __future__ import annotations

import functools
import json
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

from chalicelib import openapi
from tests.fixtures_api import Reply


@dataclass(frozen=True)
class Operation:
    method: str
    template: str
    segments: tuple[str, ...]
    responses: Mapping[str, Any]


@functools.cache
def _document() -> dict[str, Any]:
    return openapi.document()


@functools.cache
def _operations() -> tuple[Operation, ...]:
    found = []
    for template, item in _document()["paths"].items():
        for method, operation in item.items():
            if isinstance(operation, dict) and "responses" in operation:
                segments = tuple(template.strip("/").split("/"))
                found.append(Operation(method.upper(), template, segments, operation["responses"]))
    return tuple(found)


def operation_for(method: str, path: str) -> Operation | None:
    """The documented operation a request hits (``path`` may carry a query string)."""
    segments = tuple(path.split("?", 1)[0].strip("/").split("/"))
    for operation in _operations():
        if operation.method == method.upper() and len(operation.segments) == len(segments):
            pairs = zip(operation.segments, segments, strict=True)
            if all(t == s or t.startswith("{") for t, s in pairs):
                return operation
    return None


@functools.cache
def _validator(template: str, method: str, status: str, media: str) -> Draft202012Validator:
    operation = next(o for o in _operations() if o.template == template and o.method == method)
    schema = operation.responses[status]["content"][media]["schema"]
    return Draft202012Validator({**schema, "components": _document()["components"]})


def violations(method: str, path: str, reply: Reply) -> list[str]:
    """What is wrong with ``reply`` to ``method path`` under the contract (empty: nothing)."""
    where = f"{method} {path.split('?', 1)[0]} -> {reply.status}"
    operation = operation_for(method, path)
    if operation is None:
        return [f"{where}: no documented operation"]
    if reply.status >= 500 and reply.status != 503:
        return [f"{where}: server error {reply.body[:300]!r}"]
    response = operation.responses.get(str(reply.status))
    if response is None:
        listed = sorted(operation.responses)
        return [f"{where}: status not listed ({listed}); body {reply.body[:300]!r}"]
    found: list[str] = []
    for name, header in response.get("headers", {}).items():
        if header.get("required") and reply.header(name) is None:
            found.append(f"{where}: required header {name} missing")
    content = response.get("content", {})
    if not content:
        return found
    media = (reply.header("Content-Type") or "application/json").split(";", 1)[0].strip()
    if media not in content:
        return [*found, f"{where}: media type {media} not in {sorted(content)}"]
    try:
        body = json.loads(reply.body)
    except ValueError:
        return [*found, f"{where}: body is not JSON: {reply.body[:300]!r}"]
    validator = _validator(operation.template, operation.method, str(reply.status), media)
    found += [f"{where}: {error.message}" for error in validator.iter_errors(body)]
    return found


class ContractLog:
    """Every reply checked, counted by (method, template, status), violations kept."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seen: Counter[tuple[str, str, int]] = Counter()
        self.violations: list[str] = []

    def check(self, method: str, path: str, reply: Reply) -> list[str]:
        found = violations(method, path, reply)
        operation = operation_for(method, path)
        template = operation.template if operation else path
        with self._lock:
            self.seen[(method.upper(), template, reply.status)] += 1
            self.violations += found
        return found

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.seen.values())

    def by_status(self) -> dict[int, int]:
        with self._lock:
            out: Counter[int] = Counter()
            for (_, _, status), n in self.seen.items():
                out[status] += n
            return dict(sorted(out.items()))
