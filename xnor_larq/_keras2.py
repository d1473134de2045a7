"""Make sure TensorFlow resolves ``tf.keras`` to Keras 2 (``tf-keras``) for Larq.

Larq is written against Keras 2. TensorFlow >= 2.16 hands out Keras 3 as
``tf.keras`` unless ``TF_USE_LEGACY_KERAS`` is set *before* ``tf.keras`` is
first touched. This module sets it, and refuses to go on when it is too late.
"""

import os
import sys

_ENV = "TF_USE_LEGACY_KERAS"
_TRUE = ("1", "true", "True")

_HOW_TO_FIX = (
    "xnor_larq (like Larq) needs Keras 2, which TensorFlow provides through the "
    "`tf-keras` package when the environment variable TF_USE_LEGACY_KERAS=1 is "
    "set before TensorFlow loads. Fix: make `import xnor_larq` come before "
    "`import tensorflow` (and before larq), or run `export TF_USE_LEGACY_KERAS=1` before "
    "starting Python (in a notebook: restart the kernel and make "
    "`import xnor_larq` the first import)."
)


def ensure_legacy_keras() -> None:
    """Select Keras 2 for TensorFlow, or raise ImportError saying what to do."""
    value = os.environ.get(_ENV)
    if value is not None and value not in _TRUE:
        raise ImportError(f"{_ENV}={value!r} asks TensorFlow for Keras 3. {_HOW_TO_FIX}")
    os.environ[_ENV] = "1"

    tf = sys.modules.get("tensorflow")
    # TensorFlow reads the variable once, at its own import; Larq then needs both
    # `tf.keras` and the `tensorflow.keras` module path to point at tf-keras.
    if tf is not None and not tf.__dict__.get("_tf_uses_legacy_keras", False):
        raise ImportError(f"{_first_import_culprit()} {_HOW_TO_FIX}")


def _first_import_culprit() -> str:
    """Which earlier import loaded TensorFlow with Keras 3, in words."""
    keras = sys.modules.get("keras")
    version = getattr(keras, "__version__", "") if keras is not None else ""
    if version.startswith("3"):
        # `import tensorflow` loads Keras 3 too, so either import may have come first.
        return (
            f"TensorFlow or Keras {version} (`import tensorflow` / `import keras`) was "
            "imported before xnor_larq without TF_USE_LEGACY_KERAS=1, so TensorFlow serves "
            "Keras 3, and Larq's layers are Keras 2 layers. In code that uses Larq or "
            "xnor_larq layers, use `tf.keras` (after `import xnor_larq`) instead of "
            "standalone `keras`."
        )
    return (
        "TensorFlow was imported before xnor_larq without TF_USE_LEGACY_KERAS=1, so it "
        "serves Keras 3."
    )


def check_keras_version() -> None:
    """Fail clearly if ``tf.keras`` still is not Keras 2 after ensure_legacy_keras."""
    import tensorflow as tf

    tf_minor = ".".join(tf.__version__.split(".")[:2])
    module = tf.keras.layers.Layer.__module__
    if not module.startswith("tf_keras"):
        raise ImportError(
            f"`tf.keras` comes from {module.split('.')[0]!r}, not from Keras 2's "
            "`tf_keras` (is `tf-keras` installed? It must match TensorFlow's minor "
            f"version: `pip install 'tf-keras~={tf_minor}.0'`). {_HOW_TO_FIX}"
        )
    import tf_keras

    keras_minor = ".".join(tf_keras.__version__.split(".")[:2])
    if keras_minor != tf_minor:
        raise ImportError(
            f"tf-keras {tf_keras.__version__} does not match TensorFlow {tf.__version__}: "
            f"tf-keras must have TensorFlow's minor version. Fix: "
            f"`pip install 'tf-keras~={tf_minor}.0'`."
        )
