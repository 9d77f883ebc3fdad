#!/usr/bin/env bash
# Installs the pinned environment into .venv and builds the default model repository (simulated data,
# trained and exported models, rendered configs). Idempotent: skips the build when it is already there;
# REBUILD=1 forces it; BUILD_DEFAULT=0 installs only (serve.sh --dataset builds its own repository).
set -euo pipefail
cd "$(dirname "$0")/.."
# From Debian: real product images for CLIP (Fashion-MNIST, read from /usr/share/datasets), and nginx-light,
# the proxy in front of tritonserver that enforces the request size limit (serving/proxy.py).
DEBS=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || DEBS+=(dataset-fashion-mnist)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || DEBS+=(nginx-light)
if [ ${#DEBS[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q "${DEBS[@]}" >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q "${DEBS[@]}" >/dev/null; }
fi
# kubectl (its kustomize) builds deploy/ for the manifest tests; these machines ship it, this covers one that does not.
if ! command -v kubectl >/dev/null; then
  { [ "$(id -u)" = 0 ] && apt-get install -y -q kubectl >/dev/null 2>&1; } \
    || { command -v sudo >/dev/null && sudo apt-get install -y -q kubectl >/dev/null 2>&1; } \
    || echo "setup: kubectl could not be installed; tests/deploy will say so" >&2
fi
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -r requirements.txt
# open_clip only for its tokenizer and BPE file (the parity test); without its deps: torchvision would pull CUDA torch.
python -m pip install --quiet --no-deps open_clip_torch==3.3.0
python -m pip install --quiet --no-deps -e .
if [ "${BUILD_DEFAULT:-1}" = 1 ] && { [ "${REBUILD:-0}" = 1 ] || [ ! -f model_repository/build_manifest.json ]; }; then
  python -m exporters.build_repository --out model_repository
fi
