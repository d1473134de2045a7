#!/usr/bin/env bash
# The newest supported stack, from a clean virtual environment (.venv-newest):
# Python 3.12, TensorFlow 2.21 with tf-keras 2.21, larq 0.14, numpy < 2 (larq's
# pin), numba current, no Larq Zoo. First TensorFlow as a user would have it,
# then a check that installing xnor_larq replaces none of it, then the core,
# model, training and inference tests. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
find_python312() {
  for candidate in "${PYTHON_NEWEST:-}" python3.12; do
    if [ -n "$candidate" ] && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  if command -v pyenv >/dev/null 2>&1; then
    local version
    version=$(pyenv versions --bare 2>/dev/null | grep -E '^3\.12(\.|$)' | tail -1 || true)
    if [ -n "$version" ]; then echo "$(pyenv root)/versions/$version/bin/python3.12"; return 0; fi
  fi
  return 1
}
if ! PYTHON=$(find_python312); then
  echo "scripts/test-newest.sh needs Python 3.12 (apt-get install python3.12, or pyenv install 3.12);" \
       "set PYTHON_NEWEST to its path, or XNOR_LARQ_STACKS=pinned to skip this stack." >&2
  exit 2
fi
VENV=.venv-newest
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade "pip>=23"
# The user's environment before xnor_larq.
"$VENV/bin/python" -m pip install --quiet "tensorflow==2.21.*" "tf-keras==2.21.*" "numpy<2"
"$VENV/bin/python" - <<'PY'
import json, subprocess, sys, tempfile, os
kept = ("tensorflow", "tf-keras", "tf_keras", "protobuf", "numpy")
report = os.path.join(tempfile.mkdtemp(), "report.json")
subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report",
                report, ".[test,fast]"], check=True)
install = json.load(open(report))["install"]
replaced = {i["metadata"]["name"]: i["metadata"]["version"] for i in install
            if i["metadata"]["name"].lower() in kept}
print("newest stack: installing xnor_larq[test,fast] would add",
      sorted(i["metadata"]["name"] for i in install))
if replaced:
    sys.exit(f"installing xnor_larq would replace {replaced}")
PY
"$VENV/bin/python" -m pip install --quiet -e ".[test,fast]"
"$VENV/bin/python" -m pip list --format=freeze | grep -iE "^(tensorflow|tf-keras|tf_keras|larq|numpy|numba|protobuf|tensorboard)==" || true
exec "$VENV/bin/python" -m pytest -n auto --maxprocesses=4 \
  tests/test_quantizers.py tests/test_layers.py tests/test_normalization.py \
  tests/test_optimizers.py tests/test_power_of_two.py tests/test_models.py \
  tests/test_keras2.py tests/test_serialization.py tests/test_data.py tests/test_pipeline.py \
  tests/test_training.py tests/test_inference.py tests/test_packaging.py "$@"
