#!/usr/bin/env bash
# The open_clip checkpoint parity test (tests/models/clip/test_open_clip_checkpoint.py) in a side environment:
# open_clip's model needs torchvision, and PyPI's torchvision only imports beside the CUDA torch it was built
# against, not beside the project's CPU torch 2.13. This venv (.venv-openclip, ~5.6 GB; on these machines pip
# takes torch 2.14.1 and torchvision 0.29.1 from the local disk) runs only that test, on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${OPEN_CLIP_VENV:-.venv-openclip}
PYTHON=${PYTHON:-python3.11}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet torch==2.14.1 torchvision==0.29.1 open_clip_torch==3.3.0 numpy==1.26.4 \
  pytest==9.2.0 pytest-timeout==2.4.0
PYTHONPATH=. "$VENV/bin/python" -m pytest tests/models/clip/test_open_clip_checkpoint.py -p no:cacheprovider "$@"
