"""Fixtures of the deployment tests: a stage's data stack on the embedded backend."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from infrastructure import data_stack
from infrastructure.local.provision import StackOutputs, cloudformation_client
from infrastructure.stages import Stage


@contextmanager
def moto_skips_alarms() -> Iterator[None]:
    """moto's CloudFormation skips AWS::CloudWatch::Alarm with a warning; it is expected."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Tried to parse AWS::CloudWatch::Alarm")
        yield


def deploy_data_stack(backend_url: str, stage: Stage) -> StackOutputs:
    """``deploy.sh``'s first step, in process (idempotent: creates the stack once)."""
    with moto_skips_alarms():
        return data_stack.deploy(cloudformation_client(backend_url), stage)


@pytest.fixture(scope="module")
def dev_stack(backend_url: str) -> StackOutputs:
    """The dev data stack, deployed through CloudFormation (created on first use)."""
    return deploy_data_stack(backend_url, Stage.named("dev"))
