"""Numpy re-computations shared by several test modules."""

import numpy as np
import tensorflow as tf


def np_ap2(x):
    """docs/MATH.md §5: sign(x) · 2^round(log2|x|), 0 at 0."""
    x = np.asarray(x, np.float64)
    out = np.zeros_like(x)
    nonzero = x != 0
    out[nonzero] = np.sign(x[nonzero]) * 2.0 ** np.round(np.log2(np.abs(x[nonzero])))
    return out


#: Small inputs per model builder, which keep the ImageNet models cheap in CI.
SMALL_INPUTS = {
    "small_cnn": (28, 28, 1),
    "nin": (32, 32, 3),
    "binarynet_vgg": (32, 32, 3),
    "alexnet": (64, 64, 3),
    "resnet18": (64, 64, 3),
    "googlenet": (64, 64, 3),
}
#: Extra builder arguments for the tests (a narrow VGG).
EXTRA = {"binarynet_vgg": {"width": 16}}


def with_trained_like_batch_norm(model, seed=1):
    """Give every BatchNormalization non-trivial statistics, as training would.

    An untrained model's BN is the identity, so integer binary-conv sums hit 0
    exactly and sign(0) ties decide the output; LCE may break such ties
    differently from TensorFlow (seen on BinaryNet VGG: every top-1 differed).
    """
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 2, gamma.shape),
                    rng.normal(size=beta.shape),
                    rng.normal(size=mean.shape),
                    rng.uniform(0.5, 2, variance.shape),
                ]
            )
    return model
