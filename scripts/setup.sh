#!/usr/bin/env bash
# Set up everything xnor_larq needs, idempotently: a virtual environment in .venv
# with the pinned, tested packages, and Debian's Fashion-MNIST where apt exists.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade "pip>=23"
# constraints.txt pins every package, transitive ones included.
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[test,export,fast,zoo,bench]"

FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$FMNIST" ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO=sudo; fi
  fi
  if [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; then
    echo "Installing Debian's dataset-fashion-mnist ..."
    $SUDO apt-get update -qq >/dev/null
    $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "note: not root; install Fashion-MNIST with 'apt-get install dataset-fashion-mnist'" \
         "or pass --data-dir (tests that need it will be skipped)." >&2
  fi
fi
