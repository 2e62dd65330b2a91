"""Event source mapping settings: the one place that defines them.

The deployed mapping (merge template, deploy script) and the local event sources
both read these values, so local and cloud deliver records the same way.
"""

from __future__ import annotations

import json
from typing import Any, Final

#: Service items live under ``SK = SERVICE#<id>``.
SERVICE_SK_PREFIX: Final = "SERVICE#"

STREAM_BATCH_SIZE: Final = 100
STREAM_BATCHING_WINDOW_SECONDS: Final = 1
STREAM_STARTING_POSITION: Final = "TRIM_HORIZON"
STREAM_MAXIMUM_RETRY_ATTEMPTS: Final = 5
STREAM_MAXIMUM_RECORD_AGE_SECONDS: Final = 3600
STREAM_BISECT_ON_ERROR: Final = True
STREAM_PARALLELIZATION_FACTOR: Final = 1
STREAM_FUNCTION_RESPONSE_TYPES: Final = ("ReportBatchItemFailures",)

#: Tier-1 queue consumer: one OnFailure message (a shard + sequence range) at a time.
TIER1_BATCH_SIZE: Final = 1
#: Receives before the tier-1 redrive policy moves a message to tier 2.
TIER1_MAX_RECEIVE_COUNT: Final = 5
TIER1_VISIBILITY_TIMEOUT_SECONDS: Final = 360

#: Records the processor acts on: a Service INSERT, and a Service MODIFY whose
#: ``deleted`` flag went false -> true. Lambda evaluates these before invoking.
_SERVICE_KEYS: Final[dict[str, Any]] = {"SK": {"S": [{"prefix": SERVICE_SK_PREFIX}]}}
STREAM_FILTER_PATTERNS: Final[tuple[dict[str, Any], ...]] = (
    {"eventName": ["INSERT"], "dynamodb": {"Keys": _SERVICE_KEYS}},
    {
        "eventName": ["MODIFY"],
        "dynamodb": {
            "Keys": _SERVICE_KEYS,
            "OldImage": {"deleted": {"BOOL": [False]}},
            "NewImage": {"deleted": {"BOOL": [True]}},
        },
    },
)


def stream_mapping_properties() -> dict[str, Any]:
    """The stream mapping's settings as CloudFormation/Lambda API properties."""
    return {
        "BatchSize": STREAM_BATCH_SIZE,
        "MaximumBatchingWindowInSeconds": STREAM_BATCHING_WINDOW_SECONDS,
        "StartingPosition": STREAM_STARTING_POSITION,
        "MaximumRetryAttempts": STREAM_MAXIMUM_RETRY_ATTEMPTS,
        "MaximumRecordAgeInSeconds": STREAM_MAXIMUM_RECORD_AGE_SECONDS,
        "BisectBatchOnFunctionError": STREAM_BISECT_ON_ERROR,
        "ParallelizationFactor": STREAM_PARALLELIZATION_FACTOR,
        "FunctionResponseTypes": list(STREAM_FUNCTION_RESPONSE_TYPES),
        "FilterCriteria": {"Filters": [{"Pattern": json.dumps(p)} for p in STREAM_FILTER_PATTERNS]},
    }
