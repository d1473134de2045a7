#!/usr/bin/env bash
# Set up, then run the main job: train the small XNOR-Net CNN on Fashion-MNIST
# and print its test accuracy. Extra arguments go to `xnor-larq train`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/xnor-larq train "$@"
