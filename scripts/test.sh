#!/usr/bin/env bash
# Set up, then run the tests on the two tested stacks:
# 1. the pinned set (constraints.txt, .venv): the full suite;
# 2. the newest supported stack (scripts/test-newest.sh, .venv-newest: Python 3.12,
#    TensorFlow 2.21): the core, model, training and inference tests.
# Extra arguments go to pytest on the pinned stack alone (then the newest stack is
# skipped); XNOR_LARQ_STACKS=pinned skips it too.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Tests run in up to 4 processes (pytest-xdist); pass -n 0 to run in one.
.venv/bin/python -m pytest -n auto --maxprocesses=4 "$@"
if [ $# -eq 0 ] && [ "${XNOR_LARQ_STACKS:-both}" != pinned ]; then
  bash scripts/test-newest.sh
fi
