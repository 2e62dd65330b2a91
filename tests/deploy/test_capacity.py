"""The capacity note in docs/deploy.md is what the code consumes, measured by counting.

``python -m infrastructure.capacity`` prints the table the note shows; this test
produces it again against the dev stack and compares, so the note cannot drift from
the code it describes.
"""

from __future__ import annotations

import re
from pathlib import Path

import boto3
import pytest

from chalicelib.bootstrap import Container, use_container
from chalicelib.settings import Settings
from infrastructure.capacity import DEFAULT_BATCH, measure
from infrastructure.local.provision import StackOutputs

pytestmark = pytest.mark.stack
DOC = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"
#: The table sits between these markers in the document.
BEGIN, END = "<!-- capacity:begin -->", "<!-- capacity:end -->"


def _client(service: str, url: str) -> object:
    return boto3.client(
        service,
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )


def test_capacity_note_matches_counted_calls(dev_stack: StackOutputs, backend_url: str) -> None:
    import app

    container = Container(
        Settings(table_name=dev_stack.table_name, stream_arn=dev_stack.stream_arn)
    )
    use_container(container)
    try:
        report = measure(
            container,
            _client("dynamodbstreams", backend_url),  # type: ignore[arg-type]
            _client("dynamodb", backend_url),  # type: ignore[arg-type]
            stream_handler=app.handle_stream_records,
            batch=DEFAULT_BATCH,
        )
    finally:
        use_container(None)
    text = DOC.read_text(encoding="utf-8")
    documented = re.search(re.escape(BEGIN) + r"\n(.*?)" + re.escape(END), text, re.S)
    assert documented is not None, f"no {BEGIN} ... {END} block in {DOC}"
    assert documented.group(1) == report.markdown()
