#!/usr/bin/env bash
# The CloudFormation route: package the app as a SAM template with the mapping
# settings merged in (infrastructure/merge_template.py). Needs a region, no
# credentials; the template imports the stream and tier-1 queue from the data stack.
#
#   infrastructure/package.sh dev|prod OUT_DIR
#
# Then deploy OUT_DIR/sam.json as in docs/deploy.md ("The CloudFormation route").
set -euo pipefail

usage() {
    echo "usage: $0 dev|prod OUT_DIR" >&2
    exit 2
}

[[ $# -eq 2 ]] || usage
stage=$1
out=$2
case "$stage" in
    dev | prod) ;;
    *) usage ;;
esac

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$root"
python=${PYTHON:-$root/.venv/bin/python}
chalice=${CHALICE:-$root/.venv/bin/chalice}

"$python" -m infrastructure.merge_template --stage "$stage" --output "$out/merge.json"
"$chalice" package --stage "$stage" --merge-template "$out/merge.json" "$out"
echo "==> $out/sam.json and $out/deployment.zip" >&2
