"""AP2 against numpy."""

import numpy as np
import pytest
import tensorflow as tf
from references import np_ap2

from xnor_larq import ap2


def test_exact_at_powers_of_two_and_zero():
    powers = np.ldexp(1.0, np.arange(-60, 60)).astype("float32")
    values = np.concatenate([powers, -powers, [0.0]]).astype("float32")
    np.testing.assert_array_equal(ap2(values).numpy(), values)


def test_matches_numpy_and_is_a_power_of_two(rng):
    x = (rng.normal(size=2000) * np.exp(rng.uniform(-8, 8, size=2000))).astype("float32")
    out = ap2(x).numpy()
    np.testing.assert_array_equal(out, np_ap2(x).astype("float32"))
    mantissa, _ = np.frexp(out)
    assert np.all(np.abs(mantissa) == 0.5)
    assert np.all(np.sign(out) == np.sign(x))
    ratio = np.abs(out / x)  # nearest in the log domain: within a factor sqrt(2)
    assert np.all((ratio >= 2**-0.5 - 1e-6) & (ratio <= 2**0.5 + 1e-6))


def test_float64_and_gradients():
    x = tf.constant([3.0, -0.3, 0.0], tf.float64)
    np.testing.assert_array_equal(ap2(x), [4.0, -0.25, 0.0])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reduce_sum(ap2(x) * [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(tape.gradient(y, x), [1.0, 2.0, 3.0])  # straight through
    with pytest.raises(TypeError, match="int32"):
        ap2(tf.constant([1, 2]))
