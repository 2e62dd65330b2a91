"""Deploy and tear down a stage's data stack (``infrastructure/template.yaml``).

Unlike the local provisioning (:mod:`infrastructure.local.provision`, create once and
reuse), a deployed stage must roll template changes out, so ``deploy`` creates the
stack or updates it, and is a no-op when nothing changed. It prints the app's settings
as shell ``export`` lines for ``deploy.sh`` to evaluate::

    eval "$(python -m infrastructure.data_stack deploy dev)"
    python -m infrastructure.data_stack delete dev    # dev only: prod data is kept
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

import boto3
from botocore.exceptions import ClientError, NoRegionError, WaiterError

from infrastructure.local.provision import StackOutputs
from infrastructure.stages import DEPLOYED_STAGES, Stage, configure_logging

if TYPE_CHECKING:
    from mypy_boto3_cloudformation import CloudFormationClient
    from mypy_boto3_cloudformation.type_defs import ParameterTypeDef, StackTypeDef
    from mypy_boto3_dynamodb import DynamoDBClient

TEMPLATE_PATH: Final = Path(__file__).resolve().parent / "template.yaml"
#: Creating a table with three indexes takes minutes on AWS; the bound is generous.
WAIT_DELAY_SECONDS: Final = 10
WAIT_MAX_ATTEMPTS: Final = 180

logger = logging.getLogger(__name__)


class StackError(RuntimeError):
    """The stack could not be deployed or deleted as asked."""


class StackMissingError(StackError):
    """The stage has no data stack."""


def describe(client: CloudFormationClient, stack_name: str) -> StackTypeDef | None:
    """The live stack, or None if it does not exist."""
    try:
        stacks = client.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as error:
        # CloudFormation reports a missing stack as a generic ValidationError.
        if "does not exist" in str(error):
            return None
        raise
    live = [s for s in stacks if s["StackStatus"] != "DELETE_COMPLETE"]
    return live[0] if live else None


def outputs_of(stack: StackTypeDef) -> StackOutputs:
    values = {
        o["OutputKey"]: o["OutputValue"]
        for o in stack.get("Outputs", [])
        if "OutputKey" in o and "OutputValue" in o
    }
    return StackOutputs.from_outputs(stack["StackName"], values)


def read_outputs(client: CloudFormationClient, stage: Stage) -> StackOutputs:
    """Outputs of the stage's data stack.

    Raises
    ------
    StackMissingError
        The stage has no data stack yet.
    """
    stack = describe(client, stage.data_stack_name)
    if stack is None:
        raise StackMissingError(f"stack {stage.data_stack_name} does not exist")
    return outputs_of(stack)


def _parameters(
    stage: Stage, overrides: Mapping[str, str], existing: StackTypeDef | None
) -> list[ParameterTypeDef]:
    given = {**stage.template_parameters(), **overrides}
    parameters: list[ParameterTypeDef] = [
        {"ParameterKey": k, "ParameterValue": v} for k, v in given.items()
    ]
    # An update keeps what an earlier deploy set (e.g. AlarmTopicArn) unless told
    # otherwise, rather than silently resetting it to the template default.
    for previous in existing.get("Parameters", []) if existing else []:
        key = previous.get("ParameterKey")
        if key and key not in given:
            parameters.append({"ParameterKey": key, "UsePreviousValue": True})
    return parameters


def _wait(client: CloudFormationClient, waiter: str, stack_name: str) -> None:
    try:
        client.get_waiter(waiter).wait(  # type: ignore[call-overload]
            StackName=stack_name,
            WaiterConfig={"Delay": WAIT_DELAY_SECONDS, "MaxAttempts": WAIT_MAX_ATTEMPTS},
        )
    except WaiterError as error:
        raise StackError(f"{stack_name}: {waiter} failed: {error}") from error


def deploy(
    client: CloudFormationClient,
    stage: Stage,
    *,
    overrides: Mapping[str, str] | None = None,
    template_path: Path = TEMPLATE_PATH,
) -> StackOutputs:
    """Create or update the stage's data stack and return its outputs (idempotent).

    Raises
    ------
    StackError
        The stack failed, or sits in a state only a person should resolve.
    """
    name = stage.data_stack_name
    body = template_path.read_text(encoding="utf-8")
    existing = describe(client, name)
    parameters = _parameters(stage, overrides or {}, existing)
    # Deleting prod's data stack must take two deliberate steps, not one command.
    protect = stage.retains_data
    if existing is None:
        logger.info("creating stack %s", name)
        client.create_stack(
            StackName=name,
            TemplateBody=body,
            Parameters=parameters,
            EnableTerminationProtection=protect,
        )
        _wait(client, "stack_create_complete", name)
    else:
        status = existing["StackStatus"]
        if status.endswith("_IN_PROGRESS"):
            raise StackError(f"stack {name} is {status}; run again when it has finished")
        if status in {"ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "CREATE_FAILED", "DELETE_FAILED"}:
            raise StackError(
                f"stack {name} is {status} and cannot be updated; look at its events, "
                "delete it (the table is retained) and deploy again"
            )
        try:
            client.update_stack(StackName=name, TemplateBody=body, Parameters=parameters)
        except ClientError as error:
            if "No updates are to be performed" not in str(error):
                raise StackError(f"update of {name} refused: {error}") from error
            logger.info("stack %s is up to date", name)
        else:
            logger.info("updating stack %s", name)
            _wait(client, "stack_update_complete", name)
        if protect and not existing.get("EnableTerminationProtection"):
            client.update_termination_protection(EnableTerminationProtection=True, StackName=name)
    return read_outputs(client, stage)


def delete(client: CloudFormationClient, dynamodb: DynamoDBClient, stage: Stage) -> None:
    """Delete a non-retaining stage's data stack, then its (retained) table.

    Safe to repeat: whatever is already gone is skipped.

    Raises
    ------
    StackError
        The stage keeps its data (prod), or the deletion failed.
    """
    if stage.retains_data:
        raise StackError(
            f"stage {stage.name} keeps its data: stack {stage.data_stack_name} and table "
            f"{stage.table_name} are left in place (docs/deploy.md says how to remove them)"
        )
    name = stage.data_stack_name
    if describe(client, name) is not None:
        logger.info("deleting stack %s", name)
        client.delete_stack(StackName=name)
        _wait(client, "stack_delete_complete", name)
    # The template retains the table on every stage, so a dev table outlives its stack.
    try:
        dynamodb.delete_table(TableName=stage.table_name)
    except dynamodb.exceptions.ResourceNotFoundException:
        return
    logger.info("deleting table %s", stage.table_name)
    try:
        dynamodb.get_waiter("table_not_exists").wait(
            TableName=stage.table_name,
            WaiterConfig={"Delay": WAIT_DELAY_SECONDS, "MaxAttempts": WAIT_MAX_ATTEMPTS},
        )
    except WaiterError as error:
        raise StackError(f"table {stage.table_name} not deleted: {error}") from error


def shell_exports(outputs: StackOutputs) -> str:
    """``export NAME=value`` lines of the app's settings, quoted for ``eval``."""
    return "".join(
        f"export {name}={shlex.quote(value)}\n"
        for name, value in sorted(outputs.app_environment().items())
    )


def _overrides(pairs: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--parameter expects KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infrastructure.data_stack",
        description="Deploy (create or update) or delete a stage's data stack.",
    )
    parser.add_argument("action", choices=("deploy", "outputs", "delete"))
    parser.add_argument("stage", choices=DEPLOYED_STAGES)
    parser.add_argument(
        "--parameter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="template parameter (deploy), e.g. AlarmTopicArn=arn:aws:sns:...",
    )
    args = parser.parse_args(argv)
    configure_logging()  # stderr: stdout carries the export lines deploy.sh evaluates

    stage = Stage.named(args.stage)
    try:
        cloudformation: CloudFormationClient = boto3.client("cloudformation")
    except NoRegionError:
        logger.error("no AWS region: set AWS_REGION (or AWS_DEFAULT_REGION, or a profile's)")
        return 2
    try:
        if args.action == "deploy":
            outputs = deploy(cloudformation, stage, overrides=_overrides(args.parameter))
            sys.stdout.write(shell_exports(outputs))
        elif args.action == "outputs":
            sys.stdout.write(shell_exports(read_outputs(cloudformation, stage)))
        else:
            delete(cloudformation, boto3.client("dynamodb"), stage)
    except StackError as error:
        logger.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
