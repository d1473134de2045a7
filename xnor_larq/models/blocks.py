"""Building blocks in XNOR-Net's order (SPEC.md §4): BN → binarize → conv → pool."""

from __future__ import annotations

import tensorflow as tf

from ..layers import ScaledQuantConv2D, ScaledQuantDense
from ..modes import binary_layer_kwargs


def layer_kwargs(mode, *, input_scaling=None, stochastic=False, seed=None, **quantizer_options):
    """``binary_layer_kwargs`` with the seed passed only where it applies."""
    if stochastic:
        quantizer_options["seed"] = seed
    return binary_layer_kwargs(
        mode, input_scaling=input_scaling, stochastic=stochastic, **quantizer_options
    )


def _real_input_activation(x, kwargs):
    # Modes without binary inputs (fp, bwn) get the ReLU of their float twin where
    # the binary modes binarize.
    if kwargs["input_quantizer"] is None:
        x = tf.keras.layers.Activation("relu")(x)
    return x


def batch_norm(x, momentum=0.9, epsilon=1e-4, name=None):
    return tf.keras.layers.BatchNormalization(momentum=momentum, epsilon=epsilon, name=name)(x)


def binary_conv_block(x, filters, kwargs, *, kernel_size=3, strides=1, padding="same",
                      pool=None, bn_momentum=0.9, name=None):
    """BN → (binarize inside the conv) → binary conv → optional max-pool."""
    x = batch_norm(x, momentum=bn_momentum)
    x = _real_input_activation(x, kwargs)
    x = ScaledQuantConv2D(filters, kernel_size, strides=strides, padding=padding,
                          use_bias=False, name=name, **kwargs)(x)
    if pool:
        x = tf.keras.layers.MaxPool2D(pool)(x)
    return x


def binary_dense_block(x, units, kwargs, *, bn_momentum=0.9, name=None):
    """BN → (binarize inside the layer) → binary dense."""
    x = batch_norm(x, momentum=bn_momentum)
    x = _real_input_activation(x, kwargs)
    return ScaledQuantDense(units, use_bias=False, name=name, **kwargs)(x)
