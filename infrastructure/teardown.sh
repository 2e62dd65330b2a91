#!/usr/bin/env bash
# Remove one stage, in the reverse order of deploy.sh (each step skips what is gone,
# so it is safe to rerun after a partial teardown):
#   1. disable the stream mapping, so nothing is processed while the app goes away;
#   2. the app: chalice delete (reads .chalice/deployed/<stage>.json, written by
#      chalice deploy on this machine);
#   3. the data stack and its table -- dev only: prod keeps its data stack (table,
#      queues, alarms); docs/deploy.md says how to remove it deliberately.
#
#   infrastructure/teardown.sh dev|prod
set -euo pipefail

usage() {
    echo "usage: $0 dev|prod" >&2
    exit 2
}

[[ $# -eq 1 ]] || usage
stage=$1
case "$stage" in
    dev | prod) ;;
    *) usage ;;
esac

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
python=${PYTHON:-$root/.venv/bin/python}
chalice=${CHALICE:-$root/.venv/bin/chalice}

echo "==> [1/3] disable the stream mapping of $stage" >&2
"$python" -m infrastructure.stream_mapping disable "$stage"

echo "==> [2/3] app: chalice delete --stage $stage" >&2
"$chalice" delete --stage "$stage"

if [[ "$stage" == prod ]]; then
    echo "==> [3/3] prod keeps its data: the data stack and table stay" >&2
else
    echo "==> [3/3] data stack and table of $stage" >&2
    "$python" -m infrastructure.data_stack delete "$stage"
fi

echo "==> $stage torn down" >&2
