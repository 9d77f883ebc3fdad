#!/usr/bin/env bash
# Set up (install + build the default model repository when missing), then run the whole test suite:
# unit tests and integration tests against the real tritonserver. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m pytest "$@"
