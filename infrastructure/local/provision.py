"""Deploy the data template to a local backend through CloudFormation (idempotent).

The same ``infrastructure/template.yaml`` provisions AWS, so local and cloud share one
source of truth. Nothing here touches ``os.environ``: callers get the outputs back
and decide what to export.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import boto3
from botocore.exceptions import ClientError

from infrastructure.local.backend import DEFAULT_REGION, LOCAL_ACCESS_KEY_ID, LOCAL_SECRET_KEY

if TYPE_CHECKING:
    from mypy_boto3_cloudformation import CloudFormationClient
    from mypy_boto3_cloudformation.type_defs import StackTypeDef

TEMPLATE_PATH: Final = Path(__file__).resolve().parent.parent / "template.yaml"
DEFAULT_STACK_NAME: Final = "distributed-counter-local"
DEFAULT_PARAMETERS: Final[Mapping[str, str]] = {
    "Stage": "local",
    "TableName": "distributed-counter",
}

_READY: Final = frozenset(
    {"CREATE_COMPLETE", "UPDATE_COMPLETE", "UPDATE_ROLLBACK_COMPLETE", "IMPORT_COMPLETE"}
)
# A stack left in one of these needs a person (or a fresh backend); recreating it
# silently could drop data the developer still wants to look at.
_BROKEN: Final = frozenset(
    {
        "CREATE_FAILED",
        "ROLLBACK_COMPLETE",
        "ROLLBACK_FAILED",
        "DELETE_FAILED",
        "UPDATE_FAILED",
        "UPDATE_ROLLBACK_FAILED",
        "IMPORT_ROLLBACK_COMPLETE",
        "IMPORT_ROLLBACK_FAILED",
    }
)


class ProvisioningError(RuntimeError):
    """The stack could not be created or is in a state that needs attention."""


@dataclass(frozen=True, slots=True)
class StackOutputs:
    """What the data stack created, from its CloudFormation outputs."""

    stack_name: str
    table_name: str
    table_arn: str
    stream_arn: str
    tier1_queue_name: str
    tier1_queue_arn: str
    tier1_queue_url: str
    tier2_queue_name: str
    tier2_queue_arn: str
    tier2_queue_url: str

    @classmethod
    def from_outputs(cls, stack_name: str, outputs: Mapping[str, str]) -> StackOutputs:
        """Build from ``{OutputKey: OutputValue}``.

        Raises
        ------
        ProvisioningError
            An output the template promises is missing.
        """
        try:
            return cls(
                stack_name=stack_name,
                table_name=outputs["TableName"],
                table_arn=outputs["TableArn"],
                stream_arn=outputs["StreamArn"],
                tier1_queue_name=outputs["Tier1QueueName"],
                tier1_queue_arn=outputs["Tier1QueueArn"],
                tier1_queue_url=outputs["Tier1QueueUrl"],
                tier2_queue_name=outputs["Tier2QueueName"],
                tier2_queue_arn=outputs["Tier2QueueArn"],
                tier2_queue_url=outputs["Tier2QueueUrl"],
            )
        except KeyError as missing:
            raise ProvisioningError(f"stack {stack_name} has no output {missing}") from None

    def app_environment(self) -> dict[str, str]:
        """The app's settings (``chalicelib.settings``, prefix ``COUNTER_``) for this stack."""
        return {
            "COUNTER_TABLE_NAME": self.table_name,
            "COUNTER_STREAM_ARN": self.stream_arn,
            "COUNTER_TIER1_QUEUE_NAME": self.tier1_queue_name,
            "COUNTER_TIER2_QUEUE_NAME": self.tier2_queue_name,
        }


def cloudformation_client(
    endpoint_url: str, region_name: str = DEFAULT_REGION
) -> CloudFormationClient:
    """A CloudFormation client for a local backend, with dummy credentials.

    Explicit credentials keep a developer's real AWS profile out of the picture.
    """
    session = boto3.session.Session(
        aws_access_key_id=LOCAL_ACCESS_KEY_ID,
        aws_secret_access_key=LOCAL_SECRET_KEY,
        region_name=region_name,
    )
    return session.client("cloudformation", endpoint_url=endpoint_url)


def provision(
    client: CloudFormationClient,
    *,
    stack_name: str = DEFAULT_STACK_NAME,
    template_path: Path = TEMPLATE_PATH,
    parameters: Mapping[str, str] = DEFAULT_PARAMETERS,
    timeout_seconds: float = 120.0,
    poll_seconds: float = 0.5,
) -> StackOutputs:
    """Create the stack, or reuse it if it already exists; return its outputs.

    Safe to call any number of times, also concurrently: an existing stack is
    waited for, never changed.

    Raises
    ------
    ProvisioningError
        The stack failed, is in a broken state, or did not finish in time.
    """
    stack = _describe(client, stack_name)
    if stack is None:
        try:
            client.create_stack(
                StackName=stack_name,
                TemplateBody=template_path.read_text(encoding="utf-8"),
                Parameters=[
                    {"ParameterKey": key, "ParameterValue": value}
                    for key, value in parameters.items()
                ],
            )
        except ClientError as error:
            # Someone else created it between our describe and create: wait for theirs.
            if error.response.get("Error", {}).get("Code") != "AlreadyExistsException":
                raise ProvisioningError(f"create_stack {stack_name}: {error}") from error
    stack = _wait_until_settled(client, stack_name, timeout_seconds, poll_seconds)
    outputs = {
        output["OutputKey"]: output["OutputValue"]
        for output in stack.get("Outputs", [])
        if "OutputKey" in output and "OutputValue" in output
    }
    return StackOutputs.from_outputs(stack_name, outputs)


def _describe(client: CloudFormationClient, stack_name: str) -> StackTypeDef | None:
    """The stack, or None if it does not exist (or was deleted)."""
    try:
        stacks = client.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as error:
        # CloudFormation says "does not exist" with a generic ValidationError.
        if "does not exist" in str(error):
            return None
        raise ProvisioningError(f"describe_stacks {stack_name}: {error}") from error
    live = [stack for stack in stacks if stack["StackStatus"] != "DELETE_COMPLETE"]
    return live[0] if live else None


def _wait_until_settled(
    client: CloudFormationClient, stack_name: str, timeout_seconds: float, poll_seconds: float
) -> StackTypeDef:
    deadline = time.monotonic() + timeout_seconds
    status = "unknown"
    while time.monotonic() < deadline:
        stack = _describe(client, stack_name)
        if stack is not None:
            status = stack["StackStatus"]
            if status in _READY:
                return stack
            if status == "DELETE_IN_PROGRESS":
                raise ProvisioningError(
                    f"stack {stack_name} is being deleted; provision again once it is gone"
                )
            if status in _BROKEN:
                reason = stack.get("StackStatusReason", "no reason given")
                raise ProvisioningError(
                    f"stack {stack_name} is {status} ({reason}); delete it or restart "
                    "the backend, then provision again"
                )
        time.sleep(poll_seconds)
    raise ProvisioningError(
        f"stack {stack_name} not ready after {timeout_seconds} s (last status {status})"
    )
