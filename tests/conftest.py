"""Shared fixtures: two virtual CPU devices for MirroredStrategy, tiny data."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import xnor_larq  # noqa: E402,F401  (selects Keras 2 before TensorFlow loads)

import tensorflow as tf  # noqa: E402  isort: skip

# Must run before TensorFlow initialises its devices, i.e. at collection time.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(_cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)


@pytest.fixture(autouse=True)
def seeded_initializers():
    """Seed Python, numpy and TensorFlow before every test.

    Keras initializers draw from the global generators; without a seed each run
    builds different weights, and a float near-tie in one of them can flip a
    sign somewhere (seen in CI: a 1-in-8 top-1 disagreement between LCE and
    Keras on a random BinaryNet VGG). Seeded, every run tests the same weights,
    whichever worker and order pytest-xdist gives the test.
    """
    tf.keras.utils.set_random_seed(0)


@pytest.fixture
def mirrored_strategy():
    """MirroredStrategy over two virtual CPU devices, built as the CLI builds it."""
    from xnor_larq.training import make_strategy

    return make_strategy("mirrored", ["/cpu:0", "/cpu:1"])


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def tiny_images(rng):
    """16 random 8×8×3 images with labels in 0..3."""
    images = rng.normal(size=(16, 8, 8, 3)).astype("float32")
    labels = rng.integers(0, 4, size=16)
    return images, labels
