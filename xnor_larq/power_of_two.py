"""AP2, the power of two nearest to x (BNN, Courbariaux/Hubara et al. 2016, §5).

``AP2(x) = sign(x) · 2^round(log2 |x|)``, with ``AP2(0) = 0``. Multiplying by
an AP2 value is a bit shift in hardware, which is what the shift-based
BatchNorm and AdaMax are built from.
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["ap2"]


@tf.custom_gradient
def _ap2_straight_through(x):
    return _ap2(x), lambda dy: dy


def _ap2(x):
    magnitude = tf.abs(x)
    nonzero = magnitude > 0
    # log2 of a zero is -inf; a placeholder 1 keeps the gradient graph finite.
    exponent = tf.round(
        tf.math.log(tf.where(nonzero, magnitude, tf.ones_like(x)))
        / tf.math.log(tf.constant(2.0, x.dtype))
    )
    # pow(2, integer) is exact in float32 and float64 for the normal range.
    power = tf.pow(tf.constant(2.0, x.dtype), exponent)
    return tf.where(nonzero, tf.sign(x) * power, tf.zeros_like(x))


def ap2(x, straight_through: bool = True):
    """The power of two nearest to ``x`` (in the log domain), elementwise.

    Exact at powers of two (``ap2(0.25) == 0.25``), signed (``ap2(-3) == -4``)
    and 0 at 0. ``round`` rounds halves to even, so ``2^(k+0.5)`` maps to the
    even exponent. The backward pass is the identity (straight-through), so that
    parameters behind an AP2, like the BatchNorm scale γ, still learn; pass
    ``straight_through=False`` for a plain function with TensorFlow's gradient.
    """
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        raise TypeError(f"ap2 needs a floating-point tensor. Received: dtype={x.dtype.name}")
    return _ap2_straight_through(x) if straight_through else _ap2(x)
