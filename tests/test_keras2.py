"""`import xnor_larq` selects Keras 2, or says exactly what to do."""

import os
import subprocess
import sys

import pytest


def run_python(code, **env):
    environment = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    environment.update(env, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=300
    )


def test_import_selects_keras2_without_environment_variable():
    result = run_python(
        "import xnor_larq, tensorflow as tf, larq as lq;"
        "print(tf.keras.layers.Layer.__module__.split('.')[0]);"
        "lq.layers.QuantDense(2, kernel_quantizer='scaled_sign')"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("tf_keras")


def test_tensorflow_imported_first_works_when_the_variable_was_set():
    result = run_python("import tensorflow; import xnor_larq; print('ok')", TF_USE_LEGACY_KERAS="1")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "code,env",
    [
        ("import tensorflow; import xnor_larq", {}),
        ("import xnor_larq", {"TF_USE_LEGACY_KERAS": "0"}),
    ],
)
def test_keras3_gives_an_import_error_that_says_what_to_do(code, env):
    result = run_python(code, **env)
    assert result.returncode != 0
    assert "ImportError" in result.stderr
    assert "TF_USE_LEGACY_KERAS=1" in result.stderr


@pytest.mark.parametrize(
    "code,cause",
    [
        ("import keras; import xnor_larq", "use `tf.keras`"),
        ("import tensorflow; import xnor_larq", "TensorFlow or Keras"),
        ("import xnor_larq", "asks TensorFlow for Keras 3"),
    ],
    ids=["keras first", "tensorflow first", "variable 0"],
)
def test_the_import_error_names_the_real_cause(code, cause):
    env = {"TF_USE_LEGACY_KERAS": "0"} if code == "import xnor_larq" else {}
    result = run_python(code, **env)
    assert result.returncode != 0
    assert cause in result.stderr, result.stderr[-2000:]
