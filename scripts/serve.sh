#!/usr/bin/env bash
# Set up (install + build the default model repository) and start tritonserver on loopback.
# Extra arguments go to the launcher, e.g. --grpc-port 9001.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec python -m serving.launcher --model-repository model_repository "$@"
