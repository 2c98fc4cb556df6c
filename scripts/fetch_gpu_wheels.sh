#!/usr/bin/env bash
# Downloads, on a machine with network, the pure-Python wheels that the GPU machine lacks
# (it has torch, transformers, safetensors, imageio, cupy, ... but no diffusers) into
# .whl/ (git-ignored), for scripts/gpu_check.sh to install there without network.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d .whl diffusers==0.42.1 importlib_metadata
ls -la .whl
