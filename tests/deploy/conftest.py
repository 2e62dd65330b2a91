"""Fixtures of the deployment tests: a stage's data stack on the embedded backend."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from infrastructure import data_stack
from infrastructure.local.backend import aws_environment
from infrastructure.local.provision import StackOutputs, cloudformation_client
from infrastructure.stages import Stage

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


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


#: What ``chalice package``/``deploy`` and the scripts in infrastructure/ read.
_PROJECT_FILES = ("app.py", "chalicelib", "infrastructure", ".chalice")


def copy_project(destination: Path) -> Path:
    """A copy of the app and its deployment files, with an empty ``requirements.txt``.

    Chalice vendors ``requirements.txt`` by downloading Linux wheels from PyPI. These
    tests check what is deployed and how, not the wheels, and must not need a network.
    The copy also keeps ``.chalice/deployed`` and ``.chalice/deployments`` out of the
    working tree.
    """
    for name in _PROJECT_FILES:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(
                source,
                destination / name,
                ignore=shutil.ignore_patterns("__pycache__", "deployed", "deployments"),
            )
        else:
            shutil.copy2(source, destination / name)
    (destination / "requirements.txt").write_text(
        "# empty on purpose: see tests/deploy/conftest.py copy_project\n", encoding="utf-8"
    )
    return destination


def script_environment(endpoint_url: str | None) -> dict[str, str]:
    """Environment for the deploy scripts: this venv, a region, the backend if given."""
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "COUNTER_"))
    }
    environment.update(aws_environment(endpoint_url or "http://127.0.0.1:9"))
    if endpoint_url is None:
        # Packaging must work without credentials or an endpoint: only a region.
        for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            environment.pop(key)
    environment["PYTHON"] = str(VENV_BIN / "python")
    environment["CHALICE"] = str(VENV_BIN / "chalice")
    return environment


def run_script(
    project: Path, script: str, *args: str, environment: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``infrastructure/<script>`` of ``project``; its output is kept for asserts."""
    return subprocess.run(
        [str(project / "infrastructure" / script), *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
