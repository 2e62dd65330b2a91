#!/usr/bin/env bash
# Deploy one stage to AWS, in three idempotent steps (rerun after any change):
#   1. the data stack (infrastructure/template.yaml): table, stream, queues, alarms;
#   2. the app: chalice deploy, with the stack's outputs in the environment, so
#      app.py's @app.on_dynamodb_record subscribes the stack's stream;
#   3. the stream mapping settings Chalice 1.34 cannot set (chalicelib/event_sources.py).
#
#   infrastructure/deploy.sh dev|prod [--parameter KEY=VALUE ...]
#
# --parameter goes to the data stack, e.g. AlarmTopicArn=arn:aws:sns:... or
# BillingMode=PROVISIONED. Needs AWS credentials and a region, like the AWS CLI.
# PYTHON and CHALICE override the interpreter and CLI (default: the repo's .venv).
set -euo pipefail

usage() {
    echo "usage: $0 dev|prod [--parameter KEY=VALUE ...]" >&2
    exit 2
}

[[ $# -ge 1 ]] || usage
stage=$1
shift
case "$stage" in
    dev | prod) ;;
    *) usage ;;
esac

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
python=${PYTHON:-$root/.venv/bin/python}
chalice=${CHALICE:-$root/.venv/bin/chalice}

echo "==> [1/3] data stack of $stage" >&2
# The stack's outputs as `export COUNTER_...=...` lines (quoted by the module).
exports=$("$python" -m infrastructure.data_stack deploy "$stage" "$@")
eval "$exports"

echo "==> [2/3] app: chalice deploy --stage $stage (stream ${COUNTER_STREAM_ARN})" >&2
"$chalice" deploy --stage "$stage"

echo "==> [3/3] stream mapping settings" >&2
"$python" -m infrastructure.stream_mapping apply "$stage"

echo "==> $stage deployed" >&2
