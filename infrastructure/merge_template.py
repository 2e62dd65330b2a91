"""The ``chalice package --merge-template`` overlay: what Chalice's decorators cannot set.

Chalice 1.34 writes the stream mapping with batch size, starting position and batching
window only. This overlay adds the rest from :mod:`chalicelib.event_sources` (the one
place that defines them) and takes the stream and the OnFailure queue from the data
stack's exports, so packaging needs neither AWS credentials nor the stream's ARN::

    python -m infrastructure.merge_template --stage dev --output build/dev/merge.json
    chalice package --stage dev --merge-template build/dev/merge.json build/dev
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from chalice.utils import to_cfn_resource_name

from chalicelib.event_sources import stream_mapping_properties
from infrastructure.stages import DEPLOYED_STAGES, STREAM_HANDLER, Stage

#: Chalice names a function's stream subscription ``<handler>-dynamodb-event-source``
#: and its SAM event after that name (``chalice.package``).
_EVENT_SUFFIX = "-dynamodb-event-source"


def stream_event_path(handler: str = STREAM_HANDLER) -> tuple[str, str]:
    """Logical ids of the stream function and of its DynamoDB event in Chalice's SAM output."""
    return to_cfn_resource_name(handler), to_cfn_resource_name(handler + _EVENT_SUFFIX)


def merge_template(stage: Stage) -> dict[str, Any]:
    """The overlay for ``stage`` (a CloudFormation fragment Chalice deep-merges)."""
    properties = stream_mapping_properties()
    properties["Stream"] = {"Fn::ImportValue": stage.export_name("StreamArn")}
    properties["DestinationConfig"] = {
        "OnFailure": {"Destination": {"Fn::ImportValue": stage.export_name("Tier1QueueArn")}}
    }
    function, event = stream_event_path()
    events = {event: {"Properties": properties}}
    return {"Resources": {function: {"Properties": {"Events": events}}}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infrastructure.merge_template",
        description="Write the chalice package --merge-template overlay for a stage.",
    )
    parser.add_argument("--stage", required=True, choices=DEPLOYED_STAGES)
    parser.add_argument("--output", type=Path, help="file to write (default: stdout)")
    args = parser.parse_args(argv)
    text = json.dumps(merge_template(Stage.named(args.stage)), indent=2) + "\n"
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
