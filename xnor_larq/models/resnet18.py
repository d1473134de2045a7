"""ResNet-18 with binary 3×3 convolutions, as in XNOR-Net's ResNet experiments."""

from __future__ import annotations

import tensorflow as tf

from .blocks import (
    model_input,
    batch_norm,
    binary_conv_block,
    float_classifier,
    float_stem,
    layer_kwargs,
    model_builder,
)


def _basic_block(x, filters, strides, kwargs, bn_momentum):
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        # The downsampling shortcut stays full precision (1×1 conv + BN).
        shortcut = tf.keras.layers.Conv2D(filters, 1, strides=strides, use_bias=False)(x)
        shortcut = batch_norm(shortcut, momentum=bn_momentum)
    y = binary_conv_block(x, filters, kwargs, strides=strides, bn_momentum=bn_momentum)
    y = binary_conv_block(y, filters, kwargs, bn_momentum=bn_momentum)
    return tf.keras.layers.Add()([y, shortcut])


@model_builder
def resnet18(
    *,
    mode: str = "xnor",
    input_scaling: bool | None = None,
    stochastic: bool = False,
    seed: int | None = None,
    num_classes: int = 1000,
    input_shape=(224, 224, 3),
    bn_momentum: float = 0.9,
    **quantizer_options,
) -> tf.keras.Model:
    """ResNet-18: float 7×7 stem, 8 basic blocks of two binary 3×3 convs, float FC.

    Sixteen binary layers; the three downsampling shortcuts are float 1×1 convs.

    Reference ImageNet top-1/top-5 (XNOR-Net paper, table 2): full precision
    69.3/89.2, BWN 60.8/83.0, XNOR-Net 51.2/73.2. https://arxiv.org/abs/1603.05279
    """
    kwargs = layer_kwargs(
        mode, input_scaling=input_scaling, stochastic=stochastic, seed=seed, **quantizer_options
    )
    inputs, x = model_input(input_shape)
    x = float_stem(x, 64, 7, strides=2, pool=3, pool_strides=2, bn_momentum=bn_momentum)
    for stage, filters in enumerate((64, 128, 256, 512)):
        for block in range(2):
            strides = 2 if stage > 0 and block == 0 else 1
            x = _basic_block(x, filters, strides, kwargs, bn_momentum)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    outputs = float_classifier(x, num_classes, bn_momentum=bn_momentum)
    return tf.keras.Model(inputs, outputs, name=f"resnet18_{mode}")
