"""The ``chalice deploy`` step that finishes the stream mapping Chalice created.

Chalice 1.34 creates the mapping with batch size, starting position and batching
window only. This step updates it with everything else from
:mod:`chalicelib.event_sources` (partial batch responses, bisect, retries, record age,
filters, parallelisation) plus the tier-1 queue as OnFailure destination, then reads
it back. It is idempotent: run it after every ``chalice deploy``::

    python -m infrastructure.stream_mapping apply dev
    python -m infrastructure.stream_mapping disable dev   # first step of teardown
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

import boto3

from chalicelib.event_sources import STREAM_STARTING_POSITION, stream_mapping_properties
from infrastructure.data_stack import StackMissingError, read_outputs
from infrastructure.stages import DEPLOYED_STAGES, STREAM_HANDLER, Stage, configure_logging

if TYPE_CHECKING:
    from mypy_boto3_lambda import LambdaClient
    from mypy_boto3_lambda.type_defs import (
        EventSourceMappingConfigurationResponseTypeDef,
        EventSourceMappingConfigurationTypeDef,
    )

logger = logging.getLogger(__name__)

#: States in which Lambda accepts an update (the others are transitions).
_SETTLED: Final = frozenset({"Enabled", "Disabled"})
#: Lambda fixes the starting position at creation; it cannot be updated.
_CREATE_ONLY: Final = frozenset({"StartingPosition"})


class MappingError(RuntimeError):
    """The mapping is missing, ambiguous, or not as it should be after the update."""


def desired_settings(on_failure_arn: str) -> dict[str, Any]:
    """UpdateEventSourceMapping arguments for the stream mapping."""
    settings = {
        key: value for key, value in stream_mapping_properties().items() if key not in _CREATE_ONLY
    }
    settings["DestinationConfig"] = {"OnFailure": {"Destination": on_failure_arn}}
    settings["Enabled"] = True
    return settings


def find_mapping(
    client: LambdaClient, function_name: str, stream_arn: str
) -> EventSourceMappingConfigurationTypeDef | None:
    """The one mapping from ``stream_arn`` to ``function_name``, or None.

    Raises
    ------
    MappingError
        More than one mapping joins them (someone added one by hand).
    """
    found: list[EventSourceMappingConfigurationTypeDef] = []
    # Listed by stream only, then matched on the function's name: Lambda accepts a
    # name or an ARN in the FunctionName filter, but Chalice subscribes with the ARN
    # and moto compares the filter with what the mapping was created with, literally.
    for page in client.get_paginator("list_event_source_mappings").paginate(
        EventSourceArn=stream_arn
    ):
        found.extend(
            m
            for m in page.get("EventSourceMappings", [])
            if m.get("FunctionArn", "").rsplit(":function:", 1)[-1].split(":")[0] == function_name
        )
    if len(found) > 1:
        uuids = ", ".join(m.get("UUID", "?") for m in found)
        raise MappingError(f"{len(found)} mappings from {stream_arn} to {function_name}: {uuids}")
    return found[0] if found else None


def wait_until_settled(
    client: LambdaClient,
    uuid: str,
    *,
    timeout_seconds: float = 300.0,
    poll_seconds: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
) -> EventSourceMappingConfigurationResponseTypeDef:
    """The mapping once it is Enabled or Disabled (updates are refused in between)."""
    attempts = max(1, int(timeout_seconds / poll_seconds))
    state = "unknown"
    for attempt in range(attempts):
        mapping = client.get_event_source_mapping(UUID=uuid)
        state = mapping.get("State", "unknown")
        if state in _SETTLED:
            return mapping
        if attempt + 1 < attempts:
            sleep(poll_seconds)
    raise MappingError(f"mapping {uuid} still {state} after {timeout_seconds} s")


def differences(actual: Mapping[str, object], desired: Mapping[str, Any]) -> dict[str, Any]:
    """``{key: (actual, desired)}`` for every desired setting the mapping lacks."""
    out: dict[str, Any] = {}
    for key, want in desired.items():
        if key == "Enabled":
            have: Any = actual.get("State") == "Enabled"
        elif key == "FilterCriteria":
            # Compare patterns as JSON values: Lambda may re-serialise the strings.
            have = _patterns(actual.get(key))
            want = _patterns(want)
        else:
            have = actual.get(key)
        if have != want:
            out[key] = (have, want)
    return out


def _patterns(criteria: Any) -> list[Any]:
    filters = criteria.get("Filters", []) if isinstance(criteria, dict) else []
    return sorted((json.loads(f["Pattern"]) for f in filters), key=json.dumps)


def apply(
    client: LambdaClient,
    *,
    function_name: str,
    stream_arn: str,
    on_failure_arn: str,
    sleep: Callable[[float], None] = time.sleep,
) -> EventSourceMappingConfigurationResponseTypeDef:
    """Bring the stream mapping of ``function_name`` to the desired settings.

    Raises
    ------
    MappingError
        No mapping (``chalice deploy`` did not subscribe the stream ``stream_arn``),
        a starting position that needs a new mapping, or settings that did not stick.
    """
    mapping = find_mapping(client, function_name, stream_arn)
    if mapping is None:
        raise MappingError(
            f"no mapping from {stream_arn} to {function_name}: deploy the app with "
            "COUNTER_STREAM_ARN set to the data stack's StreamArn (infrastructure/deploy.sh)"
        )
    uuid = mapping["UUID"]
    if mapping.get("StartingPosition") != STREAM_STARTING_POSITION:
        raise MappingError(
            f"mapping {uuid} starts at {mapping.get('StartingPosition')}, not "
            f"{STREAM_STARTING_POSITION}; the position is fixed at creation: delete the "
            "mapping and deploy again"
        )
    desired = desired_settings(on_failure_arn)
    current = wait_until_settled(client, uuid, sleep=sleep)
    if differences(current, desired):
        client.update_event_source_mapping(UUID=uuid, **desired)
        current = wait_until_settled(client, uuid, sleep=sleep)
    left = differences(current, desired)
    if left:
        raise MappingError(f"mapping {uuid} differs after the update: {left}")
    return current


def disable(
    client: LambdaClient,
    *,
    function_name: str,
    stream_arn: str,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Stop the mapping delivering records; ``False`` if there is none (nothing to do)."""
    try:
        mapping = find_mapping(client, function_name, stream_arn)
    except client.exceptions.ResourceNotFoundException:
        return False
    if mapping is None:
        return False
    uuid = mapping["UUID"]
    current = wait_until_settled(client, uuid, sleep=sleep)
    if current.get("State") != "Disabled":
        client.update_event_source_mapping(UUID=uuid, Enabled=False)
        wait_until_settled(client, uuid, sleep=sleep)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infrastructure.stream_mapping",
        description="Apply the stream mapping settings Chalice cannot set, or disable it.",
    )
    parser.add_argument("action", choices=("apply", "disable"))
    parser.add_argument("stage", choices=DEPLOYED_STAGES)
    args = parser.parse_args(argv)
    configure_logging()

    stage = Stage.named(args.stage)
    function_name = stage.function_name(STREAM_HANDLER)
    try:
        outputs = read_outputs(boto3.client("cloudformation"), stage)
    except StackMissingError:
        if args.action == "disable":
            logger.info("no data stack %s: no stream mapping to disable", stage.data_stack_name)
            return 0
        raise
    client: LambdaClient = boto3.client("lambda")
    if args.action == "disable":
        if disable(client, function_name=function_name, stream_arn=outputs.stream_arn):
            logger.info("stream mapping of %s disabled", function_name)
        else:
            logger.info("%s has no stream mapping: nothing to disable", function_name)
        return 0
    mapping = apply(
        client,
        function_name=function_name,
        stream_arn=outputs.stream_arn,
        on_failure_arn=outputs.tier1_queue_arn,
    )
    logger.info("stream mapping %s of %s is up to date", mapping["UUID"], function_name)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MappingError as error:
        sys.exit(f"stream mapping: {error}")
