#!/usr/bin/env bash
# Download the wheels scripts/gpu_check.sh installs on the lent GPU machine, which has
# Python 3.12 with torch, transformers, accelerate, scipy and scikit-image but no diffusers,
# no peft and no network. They go to .gpu-wheels/ (git-ignored); carry that folder with the call.
# The diffusers and peft versions are the ones vendor/requirements-worker.txt pins. Refresh after a pin
# changes: rm -rf .gpu-wheels && bash scripts/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DIFFUSERS=$(grep '^diffusers==' vendor/requirements-worker.txt)
PEFT=$(grep '^peft==' vendor/requirements-worker.txt)  # VSD's LoRA (bench speed's method rows)
mkdir -p .gpu-wheels
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu-wheels "$DIFFUSERS" "$PEFT" importlib_metadata
ls -l .gpu-wheels
