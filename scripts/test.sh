#!/usr/bin/env bash
# Set up, then run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Tests run in up to 4 processes (pytest-xdist); pass -n 0 to run in one.
exec .venv/bin/python -m pytest -n auto --maxprocesses=4 "$@"
