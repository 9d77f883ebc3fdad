#!/usr/bin/env bash
# Set up (install + build the default model repository) and start tritonserver on loopback.
#   ./scripts/serve.sh                      the simulator's build (model_repository/)
#   ./scripts/serve.sh --dataset DIR        validates DIR (docs/dataset.md), builds it into builds/<name>-<key>/
#                                           (printed; rebuilt when DIR's files change) and serves that
# Other arguments go to the launcher, e.g. --grpc-port 9001.
set -euo pipefail
cd "$(dirname "$0")/.."
DATASET=""
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dataset) [ $# -ge 2 ] || { echo "error: --dataset needs a directory" >&2; exit 2; }; DATASET="$2"; shift 2 ;;
    --dataset=*) DATASET="${1#*=}"; shift ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
if [ -n "$DATASET" ]; then BUILD_DEFAULT=0 bash scripts/setup.sh; else bash scripts/setup.sh; fi
. .venv/bin/activate
REPOSITORY=model_repository
if [ -n "$DATASET" ]; then
  python -m data.dataset "$DATASET" >/dev/null  # a clear error naming the file, column and row, before any training
  REPOSITORY=$(python -m exporters.build_repository --dataset "$DATASET" --print-repository)
  if [ "${REBUILD:-0}" = 1 ] || [ ! -f "$REPOSITORY/build_manifest.json" ]; then
    python -m exporters.build_repository --dataset "$DATASET" --out "$REPOSITORY"
  fi
  echo "model repository: $REPOSITORY"
fi
exec python -m serving.launcher --model-repository "$REPOSITORY" "${ARGS[@]+"${ARGS[@]}"}"
