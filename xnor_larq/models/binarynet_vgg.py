"""The VGG-style CIFAR-10 model of BinaryNet (Courbariaux, Hubara et al. 2016)."""

from __future__ import annotations

import tensorflow as tf

from .blocks import (
    model_input,
    binary_conv_block,
    binary_dense_block,
    float_classifier,
    float_stem,
    layer_kwargs,
    model_builder,
)


@model_builder
def binarynet_vgg(
    *,
    mode: str = "bnn",
    input_scaling: bool | None = None,
    stochastic: bool = False,
    seed: int | None = None,
    num_classes: int = 10,
    input_shape=(32, 32, 3),
    width: int = 128,
    bn_momentum: float = 0.9,
    **quantizer_options,
) -> tf.keras.Model:
    """(2×128C3)-MP2-(2×256C3)-MP2-(2×512C3)-MP2-(2×1024FC)-10FC.

    The first conv and the last FC are full precision; the other five convs and
    two FCs are binary (seven binary layers). ``width`` scales every layer
    (128 is the paper's).

    Reference CIFAR-10 accuracy: BNN 88.6% (Theano), 89.9% (Torch7); Larq's
    BinaryNet tutorial about 83% after 100 epochs. https://arxiv.org/abs/1602.02830
    """
    kwargs = layer_kwargs(
        mode, input_scaling=input_scaling, stochastic=stochastic, seed=seed, **quantizer_options
    )
    block = dict(bn_momentum=bn_momentum)
    inputs, x = model_input(input_shape)
    x = float_stem(x, width, 3, **block)
    x = binary_conv_block(x, width, kwargs, pool=2, **block)
    x = binary_conv_block(x, 2 * width, kwargs, **block)
    x = binary_conv_block(x, 2 * width, kwargs, pool=2, **block)
    x = binary_conv_block(x, 4 * width, kwargs, **block)
    x = binary_conv_block(x, 4 * width, kwargs, pool=2, **block)
    x = tf.keras.layers.Flatten()(x)
    x = binary_dense_block(x, 8 * width, kwargs, **block)
    x = binary_dense_block(x, 8 * width, kwargs, **block)
    outputs = float_classifier(x, num_classes, **block)
    return tf.keras.Model(inputs, outputs, name=f"binarynet_vgg_{mode}")
