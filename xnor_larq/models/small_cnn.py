"""A small binary CNN for 28×28 grey images (MNIST, Fashion-MNIST).

Trains in minutes on two CPU cores. First and last layers are full precision;
the three binary convolutions and the binary dense layer follow XNOR-Net's
block order (BN → binarize → conv → pool).
"""

from __future__ import annotations

import tensorflow as tf

from .blocks import batch_norm, binary_conv_block, binary_dense_block, layer_kwargs, model_builder, model_input


@model_builder
def small_cnn(
    *,
    mode: str = "xnor",
    input_scaling: bool | None = None,
    stochastic: bool = False,
    seed: int | None = None,
    num_classes: int = 10,
    input_shape=(28, 28, 1),
    width: int = 32,
    bn_momentum: float = 0.9,
    **quantizer_options,
) -> tf.keras.Model:
    """Build the small CNN.

    Layers: float conv(width/2) → [BN → bconv(width) → pool] →
    [BN → bconv(2·width) → pool] → [BN → bconv(2·width) → pool] → flatten →
    [BN → bdense(256)] → BN → float dense(num_classes) → softmax. Four binary
    layers; per 28×28 image about 9.3 M multiply-accumulates at width 32 (37 M at
    width 64), 99% of them binary.

    Reference accuracy: none published; on Fashion-MNIST our results document
    reports what it reaches in each mode (the goal is XNOR within 1 point of
    full precision, at or above 92%).

    Arguments:
        mode: ``fp``, ``bwn``, ``xnor`` or ``bnn`` (see ``xnor_larq.modes``).
        input_scaling: K on/off; by default on for ``xnor`` only.
        stochastic: BNN's stochastic binarization (``mode="bnn"`` only).
        seed: op seed for stochastic binarization.
        num_classes, input_shape: the task.
        width: channels of the first layers (doubled later).
        bn_momentum: momentum of every BatchNormalization.
        quantizer_options: ``backward``, ``per_channel``, ``clip_value``.
    """
    kwargs = layer_kwargs(
        mode, input_scaling=input_scaling, stochastic=stochastic, seed=seed, **quantizer_options
    )
    inputs, x = model_input(input_shape)
    x = tf.keras.layers.Conv2D(width // 2, 3, padding="same", use_bias=False, name="float_conv")(
        x
    )
    x = binary_conv_block(x, width, kwargs, pool=2, bn_momentum=bn_momentum)
    x = binary_conv_block(x, 2 * width, kwargs, pool=2, bn_momentum=bn_momentum)
    x = binary_conv_block(x, 2 * width, kwargs, pool=2, bn_momentum=bn_momentum)
    x = tf.keras.layers.Flatten()(x)
    x = binary_dense_block(x, 256, kwargs, bn_momentum=bn_momentum)
    x = batch_norm(x, momentum=bn_momentum)
    x = tf.keras.layers.Dense(num_classes, name="float_dense")(x)
    outputs = tf.keras.layers.Activation("softmax", dtype="float32")(x)
    return tf.keras.Model(inputs, outputs, name=f"small_cnn_{mode}")
